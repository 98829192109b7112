"""Errors raised by the platform layer.

Each family has one base class so callers can catch a whole family. Every error
is picklable, because Ray and Dagster move exceptions across processes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping


class PlatformError(Exception):
    """Base class of every error the platform raises on purpose."""


class InvalidRequestError(PlatformError, ValueError):
    """A request field is invalid; nothing was created."""

    def __init__(self, field: str, problem: str, fix: str) -> None:
        super().__init__(field, problem, fix)
        self.field = field
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}. {self.fix}"


def rename_fields(text: str, names: Mapping[str, str]) -> str:
    """Replace each field of ``text`` that ``names`` maps with its name there.

    A field is a snake_case word such as ``gpu_type``, or any word in backticks. Messages put a
    one-word field such as `workers` in backticks, because "workers" is also a plain word.
    A value in single quotes and a word inside a path or file name, such as
    ``team/gpu_type.yaml``, stay as they are: they are what someone typed, not fields.
    """

    def rename(match: re.Match[str]) -> str:
        if match[1] is not None:
            return match[0]
        field = match[2] or match[0]
        return names.get(field, match[0])

    return _FIELD_OR_VALUE.sub(rename, text)


_FIELD_OR_VALUE = re.compile(
    r"(?<!\w)('[^']*')(?!\w)"  # a quoted value, left alone
    r"|`(\w+)`"
    r"|(?<![\w/.\-])[a-z]+(?:_[a-z]+)+(?![\w/\-])(?!\.\w)"
)


class ClusterStartError(PlatformError):
    """The Ray cluster did not become ready; whatever was started has been stopped."""

    def __init__(self, cluster: str, reason: str, log_tail: str = "") -> None:
        super().__init__(cluster, reason, log_tail)
        self.cluster = cluster
        self.reason = reason
        self.log_tail = log_tail

    def __str__(self) -> str:
        message = f"Ray cluster {self.cluster} failed to start: {self.reason}"
        if self.log_tail:
            message += f"\nLast log lines:\n{self.log_tail}"
        return message


class RayJobError(PlatformError):
    """A Ray job did not succeed."""

    def __init__(self, job_id: str, status: str, reason: str, log_tail: str = "") -> None:
        super().__init__(job_id, status, reason, log_tail)
        self.job_id = job_id
        self.status = status
        self.reason = reason
        self.log_tail = log_tail

    def __str__(self) -> str:
        message = f"Ray job {self.job_id} ended as {self.status}: {self.reason}"
        if self.log_tail:
            message += f"\nLast log lines of the job:\n{self.log_tail}"
        return message


class StorageError(PlatformError):
    """Reading or writing under the storage root failed."""


def failure_reason(err: BaseException) -> str:
    """Return the operating system's reason under a failed request, such as "Connection refused".

    A failed HTTP request wraps it in several layers (requests, then urllib3's retry and
    connection errors), whose combined text repeats the pool, the URL and the object addresses.
    Returns ``str(err)`` when no layer carries such a reason.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        following = current.__cause__ or current.__context__ or getattr(current, "reason", None)
        if following is None and current.args and isinstance(current.args[0], BaseException):
            following = current.args[0]
        current = following if isinstance(following, BaseException) else None
    return str(err)
