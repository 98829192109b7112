"""Keeping the job history up to date while a job runs, without ever failing the job because of it.

Pipelines and ``trainctl submit`` both record through :class:`HistoryRecorder`. A history
database that cannot be reached costs a warning, not the training run.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from resources.history import LOG_TAIL_LINES, TERMINAL_STATUSES, HistoryError, JobHistory, JobRecord

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


def unfinished_jobs(history: JobHistory, cluster: str) -> list[JobRecord]:
    """Return the jobs of ``cluster`` that the history still has as PENDING or RUNNING."""
    return [record for record in history.list(cluster=cluster, limit=1000) if record.status not in TERMINAL_STATUSES]


def settle_jobs(history: JobHistory, records: list[JobRecord], dashboard_url: str) -> None:
    """Record the real end of ``records`` that Ray has seen finish, and the last log lines of the others.

    A ``submit`` that was killed leaves its job RUNNING in the history. Before a cluster
    and its Jobs API go, each such job gets its status from Ray and its last log lines.

    Raises:
        ConnectionError, RuntimeError or requests' errors: the Jobs API did not respond.
    """
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(dashboard_url)
    for record in records:
        info = client.get_job_info(record.job_id)
        tail = "\n".join(client.get_job_logs(record.job_id).splitlines()[-LOG_TAIL_LINES:])
        if info.status.is_terminal():
            ended = _now()
            if info.end_time:
                ended = dt.datetime.fromtimestamp(info.end_time / 1000, dt.UTC)
            history.record_finished(
                record.job_id, status=str(info.status.value), message=info.message or "", at=ended, log_tail=tail
            )
        else:
            history.record_log_tail(record.job_id, tail)
