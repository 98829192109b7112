"""Settings shared by every test: Ray must never pick up a user's token or report usage."""

import os
import tempfile

# Ray turns on token auth when it finds ~/.ray/auth_token, so the tests turn it off explicitly.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

# Local cluster records and the job history go to a folder of this test session, never to
# the user's own state folder.
os.environ["TRAINCTL_HOME"] = tempfile.mkdtemp(prefix="trainctl-tests-")
os.environ.pop("TRAINING_HISTORY_URL", None)
