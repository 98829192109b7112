"""trainctl against the local backend, as a user calls it: real Ray clusters held by a keeper process."""

import datetime as dt
import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from resources.cluster import RayClusterResource
from resources.history import JobHistory
from resources.local_registry import LocalRegistry
from tests.integration.conftest import is_running
from tests.integration.trainctl_helpers import TRAINCTL, run_trainctl, trainctl_env
from tests.jobs import record_running_job

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leaked_ray_processes")]

SMALL = ("--workers", "1", "--memory", "1Gi")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return trainctl_env(tmp_path, RAY_BACKEND="local")


def cluster_processes(record_path: Path) -> list[psutil.Process]:
    """The live processes a local cluster record names: its holder and the Ray nodes."""
    record = json.loads(record_path.read_text())
    alive = []
    for ref in [record["holder"], *record["nodes"]]:
        try:
            alive.append(psutil.Process(ref["pid"]))
        except psutil.NoSuchProcess:
            continue
    return alive


def test_up_submit_logs_history_down(env: dict[str, str], tmp_path: Path) -> None:
    up = run_trainctl(env, "up", *SMALL, "--name", "exp-local", "--team", "ranking", "--ttl", "2h")
    assert up.returncode == 0, up.stderr
    assert "name:      exp-local" in up.stdout
    assert "dashboard: http://127.0.0.1:" in up.stdout
    assert "1 of 1 workers registered" in up.stderr
    record_path = tmp_path / "state" / "clusters" / "exp-local.json"
    holder_pid = json.loads(record_path.read_text())["holder"]["pid"]
    submit_folder = tmp_path / "submit-folder"
    submit_folder.mkdir()

    try:
        listed = run_trainctl(env, "list", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        [cluster] = listed.json()
        assert cluster["name"] == "exp-local"
        assert cluster["origin"] == "manual"
        assert cluster["team"] == "ranking"
        assert (cluster["workers_ready"], cluster["workers_desired"]) == (1, 1)
        assert 2 * 3600 - 120 < cluster["time_left_s"] <= 2 * 3600
        assert cluster["state"] == "ready"
        # The head's 512Mi and the worker's 1Gi, as Ray reports them.
        assert cluster["memory_bytes"] == 1024**3 + 512 * 1024**2
        assert "exp-local" in run_trainctl(env, "list").stdout

        status = run_trainctl(env, "status", "exp-local", "-o", "json")
        assert status.returncode == 0, status.stderr
        details = status.json()
        assert sorted(node["is_head"] for node in details["nodes"]) == [False, True]
        assert all(node["state"] == "ALIVE" and node["memory_total_bytes"] for node in details["nodes"])
        assert any("workers registered" in event["message"] for event in details["events"])
        assert "Nodes:" in run_trainctl(env, "status", "exp-local").stdout

        script = (
            "import os, ray; ray.init(); total = ray.cluster_resources(); "
            "print(os.environ['GREETING'], int(total['CPU']), int(total['memory']))"
        )
        ok = run_trainctl(
            env, "submit", "exp-local", "--job-id", "job-ok", "--env", "GREETING=hello", "--", "python", "-c", script
        )
        assert ok.returncode == 0, ok.stderr
        # The worker's 1Gi and the head's 512Mi, not the machine's memory.
        assert f"hello 2 {1024**3 + 512 * 1024**2}" in ok.stdout

        failed = run_trainctl(
            env, "submit", "exp-local", "--job-id", "job-bad", "--", "python", "-c", "raise SystemExit('boom 42')"
        )
        assert failed.returncode == 1
        assert "boom 42" in failed.stdout
        assert "ended as FAILED: Job entrypoint command failed with exit code 1" in failed.stderr

        reused = run_trainctl(env, "submit", "exp-local", "--job-id", "job-ok", "--", "true")
        assert reused.returncode == 3
        assert "--job-id: job 'job-ok' is already in the history" in reused.stderr
        assert run_trainctl(env, "logs", "exp-local", "--job", "no-such-job").returncode == 4

        many = run_trainctl(
            env, "submit", "exp-local", "--job-id", "job-many", "--", "python", "-c", "[print(i) for i in range(300)]"
        )
        assert many.returncode == 0, many.stderr

        # A job whose submitter was killed still gets its real end recorded when the cluster goes,
        # in the history that its submitter named (relative to the submitter's folder), not only in the default one.
        orphaned = subprocess.Popen(
            [TRAINCTL, "submit", "exp-local", "--job-id", "job-unwatched", "--history-url", "sqlite:///history.db",
             "--", "python", "-c", "import time; time.sleep(4); print('finished alone')"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=submit_folder,
        )  # fmt: skip
        assert orphaned.stdout is not None
        for line in orphaned.stdout:
            if "Running entrypoint" in line:
                break
        orphaned.kill()
        orphaned.wait()
        time.sleep(8)

        logs = run_trainctl(env, "logs", "exp-local", "--job", "job-ok")
        assert logs.returncode == 0
        assert "hello 2" in logs.stdout
        assert run_trainctl(env, "logs", "exp-local", "--job", "job-bad", "--follow").returncode == 1
    finally:
        down = run_trainctl(env, "down", "exp-local")
    assert down.returncode == 0, down.stderr
    assert not record_path.exists()
    assert not is_running(holder_pid)
    assert run_trainctl(env, "list", "-o", "json").json() == []

    assert not (tmp_path / "state" / "clusters" / "exp-local.histories").exists()
    # `down` ran in another folder, where the relative URL would name a new, empty database.
    assert not Path("history.db").exists()

    # The history outlives the cluster.
    noted = run_trainctl(env, "history", "--history-url", f"sqlite:///{submit_folder / 'history.db'}", "-o", "json")
    other = noted.json()
    assert [record["job_id"] for record in other] == ["job-unwatched"]
    assert other[0]["status"] == "SUCCEEDED"
    assert "finished alone" in other[0]["log_tail"]
    history = run_trainctl(env, "history", "-o", "json")
    statuses = {record["job_id"]: record for record in history.json()}
    assert "job-unwatched" not in statuses
    assert len(statuses["job-many"]["log_tail"].splitlines()) == 200
    assert statuses["job-many"]["log_tail"].splitlines()[-1] == "299"
    assert statuses["job-ok"]["status"] == "SUCCEEDED"
    assert statuses["job-bad"]["status"] == "FAILED"
    assert "boom 42" in statuses["job-bad"]["log_tail"]
    assert statuses["job-ok"]["origin"] == "manual"
    assert statuses["job-ok"]["cluster"] == "exp-local"
    after_down = run_trainctl(env, "logs", "exp-local", "--job", "job-ok")
    assert after_down.returncode == 0
    assert "hello 2" in after_down.stdout
    assert "is gone" in after_down.stderr


def test_invalid_requests_start_nothing(env: dict[str, str], tmp_path: Path) -> None:
    cases = [
        (("--memory", "lots"), "--memory"),
        (("--workers", "0"), "--workers"),
        (("--ttl", "100h"), "--ttl"),
        (("--ttl", "-1h"), "--ttl"),
        (("--name", "Bad_Name"), "--name"),
        (("--memory", "4000Gi"), "--memory"),
    ]
    for args, option in cases:
        result = run_trainctl(env, "up", *args)
        assert result.returncode == 3, (args, result.stderr)
        assert f"Error: {option}:" in result.stderr, result.stderr
        assert "Nothing was created" in result.stderr, result.stderr
    assert not list((tmp_path / "state").glob("clusters/*.json"))


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_while_starting_leaves_nothing(env: dict[str, str], tmp_path: Path) -> None:
    process = subprocess.Popen(
        [TRAINCTL, "up", *SMALL, "--name", "exp-interrupted"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # Ctrl-C in a terminal reaches a program whose SIGINT is at its default, while a test
        # run started in the background by a shell inherits SIGINT ignored.
        preexec_fn=_default_sigint,
    )
    assert process.stderr is not None
    # Interrupt once the head is starting.
    for line in process.stderr:
        if "Starting" in line:
            break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert not (tmp_path / "state" / "clusters" / "exp-interrupted.json").exists()


def test_down_expired_and_keeper_expiry(env: dict[str, str], tmp_path: Path) -> None:
    assert run_trainctl(env, "up", *SMALL, "--name", "exp-old", "--ttl", "1h").returncode == 0
    record_path = tmp_path / "state" / "clusters" / "exp-old.json"
    processes = cluster_processes(record_path)

    # Nothing has expired yet.
    assert "No cluster to delete" in run_trainctl(env, "down", "--expired").stdout
    # Move the cluster's creation two hours back, as if it had outlived its lifetime.
    record = json.loads(record_path.read_text())
    record["created"] = (dt.datetime.fromisoformat(record["created"]) - dt.timedelta(hours=2)).isoformat()
    record_path.write_text(json.dumps(record))
    listed = run_trainctl(env, "list", "-o", "json").json()
    assert listed[0]["time_left_s"] < 0

    result = run_trainctl(env, "down", "--expired")
    assert result.returncode == 0
    assert "Deleted exp-old" in result.stdout
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive


def unwatched_jobs(env: dict[str, str], tmp_path: Path, cluster: str) -> tuple[JobHistory, JobHistory]:
    """Record a RUNNING job of ``cluster`` in the default history and in one noted for it; return both histories.

    They stand for jobs that no submitter watches, such as those whose `trainctl submit` was killed:
    one in the default history, one in a history that its submitter named with --history-url.
    """
    other_url = f"sqlite:///{tmp_path / 'other-history.db'}"
    LocalRegistry(tmp_path / "state" / "clusters").add_history(cluster, other_url)
    record_running_job(env["TRAINING_HISTORY_URL"], "job-unwatched", cluster)
    record_running_job(other_url, "job-elsewhere", cluster)
    return JobHistory(env["TRAINING_HISTORY_URL"]), JobHistory(other_url)


def start_keeper(env: dict[str, str], tmp_path: Path, cluster: str, ttl_s: int) -> subprocess.Popen[str]:
    """Start a keeper of a one-worker cluster as `trainctl up` does, and wait until it reports ready."""
    keeper = subprocess.Popen(
        [
            str(Path(TRAINCTL).parent / "python"), "-m", "resources.local_keeper", f"--name={cluster}",
            f"--registry={tmp_path / 'state' / 'clusters'}", f"--ttl-s={ttl_s}",
            '--spec={"workers": 1, "cpus_per_worker": 1, "memory_per_worker": 1073741824, '
            '"object_store_memory": 134217728}',
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    assert keeper.stdout is not None
    for line in keeper.stdout:
        if line.startswith("ready "):
            return keeper
    keeper.wait(timeout=30)
    pytest.fail(f"the keeper never reported ready (exit code {keeper.returncode})")


def test_keeper_stops_cluster_when_lifetime_ends(env: dict[str, str], tmp_path: Path) -> None:
    registry = tmp_path / "state" / "clusters"
    history, other_history = unwatched_jobs(env, tmp_path, "exp-short")
    keeper = start_keeper(env, tmp_path, "exp-short", ttl_s=3)
    started = time.monotonic()
    assert keeper.wait(timeout=60) == 0
    assert time.monotonic() - started < 30
    assert not (registry / "exp-short.json").exists()
    lost = history.get("job-unwatched")
    assert lost is not None
    assert lost.status == "LOST"
    assert lost.message == "its cluster stopped because its lifetime of 3s ended"
    elsewhere = other_history.get("job-elsewhere")
    assert elsewhere is not None
    assert elsewhere.status == "LOST"
    assert not (registry / "exp-short.histories").exists()
    history.close()
    other_history.close()
    status = run_trainctl(env, "status", "exp-short")
    assert status.returncode == 4
    assert "because its lifetime of 3s ended." in status.stderr


def test_killed_keeper_leaves_jobs_lost(env: dict[str, str], tmp_path: Path) -> None:
    registry = tmp_path / "state" / "clusters"
    history, other_history = unwatched_jobs(env, tmp_path, "exp-orphan")
    keeper = start_keeper(env, tmp_path, "exp-orphan", ttl_s=600)
    processes = cluster_processes(registry / "exp-orphan.json")

    # SIGKILL runs no cleanup in the keeper, so only its watchdog is left to stop the nodes and end the jobs.
    keeper.kill()
    keeper.wait(timeout=10)
    _, alive = psutil.wait_procs(processes, timeout=20)
    assert not alive
    # The watchdog removes the stale record once it has marked the jobs.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (registry / "exp-orphan.json").exists():
        time.sleep(0.5)
    for store, job_id in ((history, "job-unwatched"), (other_history, "job-elsewhere")):
        record = store.get(job_id)
        assert record is not None
        assert record.status == "LOST"
        assert record.message == "its cluster stopped because its keeper process exited"
        store.close()
    assert not (registry / "exp-orphan.json").exists()
    assert not (registry / "exp-orphan.histories").exists()
    status = run_trainctl(env, "status", "exp-orphan")
    assert status.returncode == 4
    assert "because its keeper process exited." in status.stderr


def test_lists_a_run_cluster_and_protects_it(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINCTL_HOME", env["TRAINCTL_HOME"])
    resource = RayClusterResource(workers=1, memory_per_worker="1Gi", object_store_memory="128Mi")
    resource.ensure_started()
    try:
        [cluster] = run_trainctl(env, "list", "-o", "json").json()
        assert cluster["origin"] == "dagster"
        assert cluster["time_left_s"] is None
        rejected = run_trainctl(env, "down", cluster["name"])
        assert rejected.returncode == 3
        assert "add --force" in rejected.stderr
        assert run_trainctl(env, "list", "-o", "json").json() != []
    finally:
        resource.stop()
    assert run_trainctl(env, "list", "-o", "json").json() == []
