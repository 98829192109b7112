"""Job records as the tests need them."""

import datetime as dt

from resources.history import JobHistory, JobRecord


def record_running_job(url: str, job_id: str, cluster: str, *, backend: str = "local") -> None:
    """Record a RUNNING job of ``cluster`` in the history at ``url``, as a ``trainctl submit`` that was killed."""
    with JobHistory(url) as history:
        history.record_submitted(
            JobRecord(
                job_id=job_id,
                cluster=cluster,
                backend=backend,
                entrypoint="python train.py",
                submitter="alice",
                origin="manual",
                submitted_at=dt.datetime.now(dt.UTC),
                status="RUNNING",
            )
        )
