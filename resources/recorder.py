"""Keeping the job history up to date while a job runs, without ever failing the job because of it.

Pipelines and ``trainctl submit`` both record through :class:`HistoryRecorder`. A history
database that cannot be reached costs a warning, not the training run.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from resources.history import HistoryError, JobHistory, JobRecord

logger = logging.getLogger(__name__)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class HistoryRecorder:
    """A ``resources.jobs.JobObserver`` that writes one job's progress to the history."""

    def __init__(
        self,
        history: JobHistory | None,
        record: JobRecord,
        *,
        warn: Callable[[str], None] | None = None,
        clock: Callable[[], dt.datetime] = _now,
    ) -> None:
        self._history = history
        self.record = record
        self._warn = warn or (lambda message: logger.warning("%s", message))
        self._clock = clock

    def submitted(self) -> None:
        """Record the job once the Jobs API accepted it, so a rejected submission leaves no record."""
        self._write(lambda history: history.record_submitted(self.record))

    def _write(self, action: Callable[[JobHistory], None]) -> None:
        if self._history is None:
            return
        try:
            action(self._history)
        except HistoryError as err:
            self._warn(f"The job history was not updated: {err}")

    def started(self) -> None:
        """Record that the job left PENDING."""
        self._write(lambda history: history.record_started(self.record.job_id, at=self._clock()))

    def log_tail(self, tail: str) -> None:
        """Record the job's latest log lines."""
        self._write(lambda history: history.record_log_tail(self.record.job_id, tail))

    def finished(self, status: str, message: str, tail: str) -> None:
        """Record the job's end."""
        self._write(
            lambda history: history.record_finished(
                self.record.job_id, status=status, message=message, at=self._clock(), log_tail=tail
            )
        )


def open_history(url: str | None, *, warn: Callable[[str], None] | None = None) -> JobHistory | None:
    """Open the history at ``url`` (the default location when ``None``); ``None`` with a warning if it fails."""
    try:
        return JobHistory(url)
    except HistoryError as err:
        (warn or (lambda message: logger.warning("%s", message)))(f"Jobs are not recorded in the history: {err}")
        return None
