"""Retries of Kubernetes API calls that failed for a transient reason, with capped backoff."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

logger = logging.getLogger(__name__)

T = TypeVar("T")

# 429: the API server's priority and fairness or a proxy throttled us. Retry-After gives the wait.
# 500: the API server failed internally, often while its etcd leader changes.
# 502, 503, 504: a load balancer or the API server is restarting or overloaded.
TRANSIENT_STATUS_CODES = frozenset({429, 500, 502, 503, 504})
MAX_ATTEMPTS = 6
BASE_DELAY_S = 0.2
MAX_DELAY_S = 5.0

# After a reset or timed-out connection the server may or may not have acted. Trying
# again is safe for reads and deletes. A create retried this way can return 409, which
# the caller treats as its own object when the labels match.
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.TimeoutError,
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.MaxRetryError,
    ConnectionError,
    TimeoutError,
)


def is_transient(error: BaseException) -> bool:
    """Tell whether ``error`` is on the allow-list of failures worth retrying."""
    if isinstance(error, ApiException):
        return error.status in TRANSIENT_STATUS_CODES
    return isinstance(error, _TRANSIENT_ERRORS)


def _retry_after_s(error: BaseException) -> float | None:
    if not isinstance(error, ApiException) or error.headers is None:
        return None
    value = error.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def call_with_retries(
    call: Callable[[], T],
    *,
    description: str,
    max_attempts: int = MAX_ATTEMPTS,
    base_delay_s: float = BASE_DELAY_S,
    max_delay_s: float = MAX_DELAY_S,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``call``, retrying transient failures with exponential backoff capped at ``max_delay_s``.

    A 429's ``Retry-After`` header sets the delay, still capped. ``deadline`` (a value of
    ``clock``) stops retrying early so that one deadline bounds a whole wait.

    Raises:
        ApiException: a non-transient error at once, or the last transient one when
            attempts or time ran out.
    """
    attempt = 1
    while True:
        try:
            return call()
        except Exception as error:
            if not is_transient(error) or attempt >= max_attempts:
                raise
            delay = min(max_delay_s, _retry_after_s(error) or base_delay_s * 2 ** (attempt - 1))
            if deadline is not None and clock() + delay > deadline:
                raise
            logger.warning(
                "%s failed (%s), attempt %d of %d; retrying in %.1f s",
                description,
                describe_error(error),
                attempt,
                max_attempts,
                delay,
            )
            sleep(delay)
            attempt += 1


def describe_error(error: BaseException) -> str:
    """Describe a failed API call in a few words: the HTTP status and reason, or the exception type and message."""
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"
