"""Keeping the job history up to date while a job runs, without ever failing the job because of it.

Pipelines and ``trainctl submit`` both record through :class:`HistoryRecorder`. A history
database that cannot be reached costs a warning, not the training run.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable

from resources.dashboard import DASHBOARD_TIMEOUT_S, job_logs, job_state
from resources.history import (
    LOG_TAIL_LINES,
    TERMINAL_STATUSES,
    HistoryError,
    JobHistory,
    JobRecord,
    default_history_url,
    history_exists,
    portable_history_url,
)

logger = logging.getLogger(__name__)

# The end states of a Ray job; LOST is the history's own.
RAY_TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


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


def other_histories(first: str | None, noted: Iterable[str]) -> list[str]:
    """Return the URLs in ``noted`` other than ``first`` (the default history when ``None``), each once.

    An SQLite file that no longer exists is left out: it contains no job, and opening it would create it.
    """
    try:
        seen = {portable_history_url(first or default_history_url())}
    except HistoryError:
        seen = set()
    others = []
    for url in noted:
        if url not in seen and history_exists(url):
            seen.add(url)
            others.append(url)
    return others


def mark_lost_in(urls: Iterable[str], cluster: str, *, message: str, deadline: float | None = None) -> None:
    """Mark the unfinished jobs of ``cluster`` LOST in each history at ``urls``; one that fails costs a warning.

    ``deadline``, a value of ``time.monotonic()``, skips the histories not yet opened when it passes.
    """
    urls = list(urls)
    for done, url in enumerate(urls):
        if deadline is not None and time.monotonic() > deadline:
            logger.warning(
                "The time to update the job histories of %s ran out; %d of them were skipped", cluster, len(urls) - done
            )
            return
        history = open_history(url)
        if history is None:
            continue
        try:
            history.mark_lost(cluster, message=message, at=_now())
        except HistoryError as err:
            logger.warning("The job history was not updated: %s", err)
        finally:
            history.close()


def mark_lost_within(urls: Iterable[str], cluster: str, *, message: str, timeout_s: float) -> bool:
    """Run :func:`mark_lost_in` for at most ``timeout_s``; return whether it finished.

    Each history has only its own timeouts (10 s to connect to PostgreSQL, 30 s for a busy
    SQLite file), so several slow ones could hold the caller for minutes. The work runs in a
    daemon thread. If the caller stops waiting, the thread finishes the history it is on, skips
    the others, and ends at the latest with the process.
    """
    deadline = time.monotonic() + timeout_s

    def mark() -> None:
        try:
            mark_lost_in(urls, cluster, message=message, deadline=deadline)
        except Exception:  # noqa: BLE001 - a thread's error would otherwise reach only stderr
            logger.exception("Failed to update the job histories of %s", cluster)

    thread = threading.Thread(target=mark, name=f"mark-lost-{cluster}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive()


def unfinished_jobs(history: JobHistory, cluster: str) -> list[JobRecord]:
    """Return the jobs of ``cluster`` that the history still has as PENDING or RUNNING."""
    return [record for record in history.list(cluster=cluster, limit=1000) if record.status not in TERMINAL_STATUSES]


def settle_jobs(
    history: JobHistory, records: list[JobRecord], dashboard_url: str, *, timeout_s: float = DASHBOARD_TIMEOUT_S
) -> None:
    """Record the real end of ``records`` that Ray has seen finish, and the last log lines of the others.

    A ``submit`` that was killed leaves its job RUNNING in the history. Before a cluster
    and its Jobs API go, each such job gets its status from Ray and its last log lines.
    A job that Ray does not know is left as it is, for the caller to mark LOST.

    Raises:
        DashboardError: the Jobs API did not respond within ``timeout_s``.
    """
    for record in records:
        state = job_state(dashboard_url, record.job_id, timeout_s=timeout_s)
        if state is None:
            continue
        tail = "\n".join(job_logs(dashboard_url, record.job_id, timeout_s=timeout_s).splitlines()[-LOG_TAIL_LINES:])
        if state.status in RAY_TERMINAL_STATUSES:
            history.record_finished(
                record.job_id,
                status=state.status,
                message=state.message,
                at=state.end_time or _now(),
                log_tail=tail,
            )
        else:
            history.record_log_tail(record.job_id, tail)
