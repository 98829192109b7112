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
    """Replace each snake_case word of ``text`` that ``names`` maps, such as ``gpu_type``, with its name there.

    Only snake_case words, because a one-word field such as "workers" is also a plain word in messages.
    """
    return re.sub(r"\b[a-z]+(?:_[a-z]+)+\b", lambda found: names.get(found[0], found[0]), text)


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
