"""Settings shared by every test: Ray must never pick up a user's token or report usage."""

import os

# Ray turns on token auth when it finds ~/.ray/auth_token, so the tests turn it off explicitly.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
