"""Running one entrypoint as a Ray job through the Jobs API, with its logs streamed to a callback."""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import requests
from ray.job_submission import JobStatus, JobSubmissionClient

from resources.errors import InvalidRequestError, RayJobError, failure_reason

logger = logging.getLogger(__name__)

JOB_POLL_INTERVAL_S = 1.0
JOB_TIMEOUT_S = 6 * 3600.0
LOG_TAIL_LINES = 40
# Lines an observer gets, as many as the job history keeps.
RECORD_TAIL_LINES = 200
# How often an observer gets the job's latest log lines while it runs.
TAIL_REPORT_INTERVAL_S = 10.0
# The Jobs API runs each job through the dashboard agent of the head node, and
# returns HTTP 500 with this text when that agent has not registered within its own 10 s wait
# (Ray 2.60). On a loaded machine that happens right after a cluster becomes ready.
NO_AGENT_MESSAGE = "No available agent to submit job"
# How long a submission keeps trying while the head's agent is missing, and the pause between tries.
AGENT_WAIT_S = 60.0
AGENT_RETRY_INTERVAL_S = 2.0


# Terminal control sequences, such as the colours Ray puts around each worker's log prefix.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def without_terminal_codes(line: str) -> str:
    """Remove terminal colour and cursor codes from ``line``, for logs that show text as it is."""
    return _ANSI_ESCAPE.sub("", line)


class JobObserver(Protocol):
    """Follows one job from submission to its end, for example to keep a record of it.

    ``run_job`` calls ``submitted`` once the Jobs API accepted the job, ``started`` once
    it leaves PENDING, ``log_tail`` every
    ``TAIL_REPORT_INTERVAL_S`` while it runs, and ``finished`` once with a
    terminal status (``STOPPED`` when the submitter was interrupted). An observer must
    not raise: a failing record must not fail the job.
    """

    def submitted(self) -> None: ...

    def started(self) -> None: ...

    def log_tail(self, tail: str) -> None: ...

    def finished(self, status: str, message: str, tail: str) -> None: ...


@dataclass(frozen=True)
class JobOutcome:
    """Timings of a job that succeeded, in seconds measured by the submitter."""

    job_id: str
    queued_s: float
    running_s: float


def run_job(
    client: JobSubmissionClient,
    *,
    entrypoint: str,
    submission_id: str,
    on_log_line: Callable[[str], None],
    env_vars: dict[str, str] | None = None,
    runtime_env: dict[str, Any] | None = None,
    timeout_s: float = JOB_TIMEOUT_S,
    observer: JobObserver | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> JobOutcome:
    """Submit ``entrypoint``, pass each new log line to ``on_log_line`` and wait for the end.

    Unless ``runtime_env`` names a ``working_dir``, the job runs the cluster's own
    Python environment and no code is uploaded. Log lines lose their terminal codes. If the caller is interrupted (run
    termination raises in the waiting thread, Ctrl-C in a terminal), the job is stopped
    before the interruption propagates.

    Raises:
        RayJobError: the job failed, was stopped, or outlived ``timeout_s``; carries
            the job's last log lines.
    """
    environment = dict(runtime_env or {})
    if env_vars:
        environment["env_vars"] = {**environment.get("env_vars", {}), **env_vars}
    try:
        job_id = _submit(
            client,
            entrypoint=entrypoint,
            submission_id=submission_id,
            runtime_env=environment or None,
            clock=clock,
            sleep=sleep,
        )
    except ValueError as err:
        # The Jobs API rejects a submission id it has seen before.
        raise InvalidRequestError(
            "job_id", f"job id {submission_id!r} was already submitted to this cluster", "Choose another job id."
        ) from err
    logger.info("Submitted Ray job %s: %s", job_id, entrypoint)
    if observer is not None:
        observer.submitted()

    submitted_at = clock()
    deadline = submitted_at + timeout_s
    started_at: float | None = None
    # The last lines for an error message, and more of them for the observer's record.
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    record_tail: deque[str] = deque(maxlen=RECORD_TAIL_LINES)
    log_offset = 0
    tail_reported_at = submitted_at
    try:
        while True:
            try:
                status = client.get_job_status(job_id)
                # Limitation: the Jobs API returns the whole log on each call, which is fine for
                # training logs of a few MB; tail_job_logs would need an event loop in this thread.
                logs = client.get_job_logs(job_id)
            except requests.exceptions.ConnectionError as err:
                raise RayJobError(
                    job_id,
                    "LOST",
                    f"the cluster stopped responding while the job ran ({failure_reason(err)})",
                    "\n".join(tail),
                ) from err
            if started_at is None and status != JobStatus.PENDING:
                started_at = clock()
                if observer is not None:
                    observer.started()

            # A line still being written is passed on once its newline arrives, or at the end.
            complete_up_to = len(logs) if status.is_terminal() else logs.rfind("\n", log_offset) + 1
            for raw_line in logs[log_offset:complete_up_to].splitlines():
                # Ray colours each worker's log prefix, and Dagster's log, error messages and the
                # job history would show the codes as characters.
                line = without_terminal_codes(raw_line)
                tail.append(line)
                record_tail.append(line)
                on_log_line(line)
            log_offset = max(log_offset, complete_up_to)

            if status.is_terminal():
                break
            if clock() > deadline:
                raise RayJobError(job_id, "TIMED_OUT", f"still running after {timeout_s:.0f} s", "\n".join(tail))
            if observer is not None and clock() - tail_reported_at >= TAIL_REPORT_INTERVAL_S:
                observer.log_tail("\n".join(record_tail))
                tail_reported_at = clock()
            sleep(JOB_POLL_INTERVAL_S)
    except BaseException as interruption:
        lost = isinstance(interruption, RayJobError) and interruption.status == "LOST"
        if not lost:
            _stop_quietly(client, job_id)
        if observer is not None:
            status_text = "LOST" if lost else "STOPPED"
            observer.finished(status_text, _stop_reason(interruption), "\n".join(record_tail))
        raise

    finished_at = clock()
    if status != JobStatus.SUCCEEDED:
        info = client.get_job_info(job_id)
        # Ray appends the job's last logs to its message; they were streamed already.
        reason = (info.message or "no message from Ray").split(", last available logs", 1)[0]
        if observer is not None:
            observer.finished(str(status.value), reason, "\n".join(record_tail))
        raise RayJobError(job_id, str(status.value), reason, "\n".join(tail))
    if observer is not None:
        observer.finished(str(status.value), "", "\n".join(record_tail))

    started = started_at if started_at is not None else finished_at
    return JobOutcome(job_id=job_id, queued_s=started - submitted_at, running_s=finished_at - started)


def _submit(
    client: JobSubmissionClient,
    *,
    entrypoint: str,
    submission_id: str,
    runtime_env: dict[str, Any] | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> str:
    """Submit the job, trying again for up to ``AGENT_WAIT_S`` while the head's job agent is missing.

    Ray returns that error before it creates the job, so a second try cannot start the job twice.
    """
    deadline = clock() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env)
        except RuntimeError as err:
            if NO_AGENT_MESSAGE not in str(err) or clock() >= deadline:
                raise
            logger.info("The head node's job agent is not available yet, so %s is submitted again", submission_id)
            sleep(AGENT_RETRY_INTERVAL_S)


def _stop_reason(interruption: BaseException) -> str:
    if isinstance(interruption, RayJobError):
        return interruption.reason
    if not isinstance(interruption, Exception):
        # KeyboardInterrupt from Ctrl-C, or Dagster's interruption when a run is terminated.
        return f"the submitter was interrupted ({type(interruption).__name__}), so the job was stopped"
    return f"the submitter stopped the job after an error: {interruption!r}"


def _stop_quietly(client: JobSubmissionClient, job_id: str) -> None:
    try:
        if not client.get_job_status(job_id).is_terminal():
            client.stop_job(job_id)
            logger.info("Stopped Ray job %s", job_id)
    except Exception as err:  # noqa: BLE001 - the cluster is torn down next anyway
        logger.warning("Could not stop Ray job %s before teardown: %s", job_id, err)
