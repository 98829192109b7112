"""Settling a cluster's unfinished jobs through the Jobs REST API, against a stand-in dashboard on 127.0.0.1."""

import datetime as dt
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from resources.dashboard import DashboardError, job_state
from resources.history import JobHistory, JobRecord
from resources.recorder import settle_jobs

TOKEN = "0123456789abcdef0123456789abcdef"
SUBMITTED = dt.datetime(2026, 12, 5, 17, 0, tzinfo=dt.UTC)
ENDED_MS = int(dt.datetime(2026, 12, 5, 17, 5, tzinfo=dt.UTC).timestamp() * 1000)
JOBS = {
    "job-done": {"status": "SUCCEEDED", "message": "Job finished successfully.", "end_time": ENDED_MS},
    "job-running": {"status": "RUNNING", "message": "", "end_time": None},
}


class JobsApi(http.server.BaseHTTPRequestHandler):
    """A stand-in of the Jobs REST API: ``/api/jobs/<id>`` and its ``/logs`` from ``JOBS``, and 404 for other jobs."""

    hang_s = 0.0
    truncate = False
    # With a token, a request without "Authorization: Bearer <token>" gets 401, as from Ray's token authentication.
    token = ""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        time.sleep(self.hang_s)
        if self.token and self.headers.get("Authorization") != f"Bearer {self.token}":
            self.send_error(401, "Unauthorized: Missing authentication token")
            return
        if self.truncate:
            # The promised body never arrives whole, as from a head that dies mid-response.
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b'{"status": ')
            return
        parts = self.path.strip("/").split("/")
        job = JOBS.get(parts[2]) if len(parts) >= 3 else None
        if job is None:
            self.send_error(404)
            return
        body = {"logs": "line 1\nline 2\n"} if parts[-1] == "logs" else {"submission_id": parts[2], **job}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        pass


def serve(hang_s: float = 0.0, *, truncate: bool = False, token: str = "") -> Iterator[str]:
    handler = type("Handler", (JobsApi,), {"hang_s": hang_s, "truncate": truncate, "token": token})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def dashboard() -> Iterator[str]:
    yield from serve(hang_s=0.0)


@pytest.fixture
def hung_dashboard() -> Iterator[str]:
    yield from serve(hang_s=30.0)


@pytest.fixture
def broken_dashboard() -> Iterator[str]:
    yield from serve(truncate=True)


@pytest.fixture
def token_dashboard() -> Iterator[str]:
    yield from serve(token=TOKEN)


@pytest.fixture
def history(tmp_path: Path) -> Iterator[JobHistory]:
    store = JobHistory(f"sqlite:///{tmp_path / 'history.db'}")
    for job_id in ("job-done", "job-running", "job-unknown"):
        store.record_submitted(
            JobRecord(
                job_id=job_id,
                cluster="exp-a",
                backend="local",
                entrypoint="python train.py",
                submitter="alice",
                origin="manual",
                submitted_at=SUBMITTED,
                status="RUNNING",
            )  # fmt: skip
        )
    yield store
    store.close()


def test_settle_records_real_end_and_tail(dashboard: str, history: JobHistory) -> None:
    settle_jobs(history, history.list(cluster="exp-a"), dashboard)

    done = history.get("job-done")
    assert done is not None
    assert done.status == "SUCCEEDED"
    assert done.ended_at == dt.datetime.fromtimestamp(ENDED_MS / 1000, dt.UTC)
    assert done.log_tail == "line 1\nline 2"
    running = history.get("job-running")
    assert running is not None
    assert running.status == "RUNNING"
    assert running.log_tail == "line 1\nline 2"


def test_settle_leaves_unknown_job(dashboard: str, history: JobHistory) -> None:
    settle_jobs(history, history.list(cluster="exp-a"), dashboard)

    unknown = history.get("job-unknown")
    assert unknown is not None
    assert unknown.status == "RUNNING"
    assert job_state(dashboard, "job-unknown") is None


def test_settle_hung_dashboard_times_out(hung_dashboard: str, history: JobHistory) -> None:
    started = time.monotonic()

    with pytest.raises(DashboardError, match="no response"):
        settle_jobs(history, history.list(cluster="exp-a"), hung_dashboard, timeout_s=0.5)

    assert time.monotonic() - started < 5


def test_settle_truncated_response_raises(broken_dashboard: str, history: JobHistory) -> None:
    with pytest.raises(DashboardError, match="an incomplete or malformed response"):
        settle_jobs(history, history.list(cluster="exp-a"), broken_dashboard, timeout_s=5)


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        pytest.param(TOKEN, "SUCCEEDED", id="right-token"),
        pytest.param("f" * 32, "The token in RAY_AUTH_TOKEN or ~/.ray/auth_token may not be the cluster's", id="wrong"),
        pytest.param("", "RAY_AUTH_MODE=token is set but no token was found", id="no-token"),
    ],
)
def test_job_state_with_ray_token(token_dashboard: str, tmp_path: Path, token: str, expected: str) -> None:
    # Ray reads the authentication mode and token once per process, so a new process gets them.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "HOME": str(tmp_path)}
    script = (
        "import sys\n"
        "from resources.dashboard import DashboardError, job_state\n"
        "try:\n"
        "    print(job_state(sys.argv[1], 'job-done').status)\n"
        "except DashboardError as err:\n"
        "    print(err)\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", script, token_dashboard], env=env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_job_state_without_token_fails(token_dashboard: str) -> None:
    with pytest.raises(DashboardError, match="HTTP 401 .* set RAY_AUTH_MODE=token"):
        job_state(token_dashboard, "job-done")
