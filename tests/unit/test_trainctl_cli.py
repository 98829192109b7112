"""trainctl's commands through click's runner: arguments, messages and exit codes, without any cluster."""

import contextlib
import datetime as dt
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psutil
import pytest
import requests
import yaml
from click.testing import CliRunner

from resources.cli import main as main_module
from resources.cli.backends import ClusterNotFoundError, current_user
from resources.cli.main import EXIT_CODES, EXIT_PLATFORM, cli, command_error, option_for
from resources.dashboard import DashboardError
from resources.history import HistoryError, JobHistory, JobRecord
from resources.kuberay.inventory import ClusterSummary
from resources.kuberay.schema import validate_manifest
from resources.local import LocalRayCluster
from resources.local_registry import LocalRegistry, record_of
from resources.spec import ClusterSpec, format_duration, format_size, parse_duration_minutes

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "TRAINCTL_HOME": str(tmp_path / "state"),
        "TRAINING_HISTORY_URL": f"sqlite:///{tmp_path / 'history.db'}",
        "RAY_BACKEND": "local",
        # Nothing listens here: a command that wrongly calls the API fails instead of reaching a server.
        "KUBE_API_URL": "http://127.0.0.1:9",
    }


def invoke(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_every_command_has_help_with_an_example(env: dict[str, str]) -> None:
    for command in ("up", "render", "list", "status", "submit", "logs", "down", "history"):
        code, out, _ = invoke(env, command, "--help")
        assert code == 0
        assert "Example:" in out, command
        assert f"trainctl {command}" in out, command


def test_exit_codes_are_listed(env: dict[str, str]) -> None:
    code, out, _ = invoke(env, "exit-codes")
    assert code == 0
    for number in EXIT_CODES:
        assert f"{number:>3}  " in out


def test_render_needs_no_api(env: dict[str, str]) -> None:
    code, out, err = invoke(env, "render", "--workers", "2", "--memory", "3Gi", "--namespace", "team-a")
    assert code == 0, err
    manifest = yaml.safe_load(out)
    assert validate_manifest(manifest) == []
    assert manifest["metadata"]["namespace"] == "team-a"
    assert manifest["metadata"]["name"].startswith("ray-")


def test_render_gpu_request_selects_gpu_nodes(env: dict[str, str]) -> None:
    code, out, err = invoke(env, "render", "--gpus-per-worker", "1", "--gpu-type", "l4", "--memory", "16Gi")
    assert code == 0, err
    manifest = yaml.safe_load(out)
    worker = manifest["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["nodeSelector"]
    assert any(toleration["key"] == "nvidia.com/gpu" for toleration in worker["tolerations"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--gpus-per-worker", "1"), "--gpu-type: GPUs are requested without a GPU type"),
        (("--gpus-per-worker", "2", "--gpu-type", "quantum"), "--gpu-type: unknown GPU type 'quantum'"),
        (("--image", "evil.example.com/ray:1"), "--image: image 'evil.example.com/ray:1' is not from an allowed"),
        (("--ttl", "0m"), "--ttl: must be at least 1 minute"),
        (("--ttl", "soon"), "--ttl: 'soon' is not a duration"),
        (("--ttl", "30s"), "--ttl: '30s' is in seconds, and the smallest unit is a minute"),
        (("--workers", "-3"), "--workers: must be a whole number of at least 1"),
        (("--cpus", "0"), "--cpus: must be a whole number of at least 1"),
    ],
)
def test_render_rejects_bad_requests(env: dict[str, str], args: tuple[str, ...], message: str) -> None:
    code, _, err = invoke(env, "render", *args)
    assert code == 3
    assert message in err, err
    assert "Nothing was created." in err


def test_down_needs_exactly_one_target(env: dict[str, str]) -> None:
    assert invoke(env, "down")[0] == 2
    assert invoke(env, "down", "a", "--expired")[0] == 2


def test_unknown_cluster_is_exit_4(env: dict[str, str]) -> None:
    code, _, err = invoke(env, "status", "no-such-cluster")
    assert code == 4
    assert "No cluster named 'no-such-cluster'" in err


def test_status_says_why_cluster_stopped(env: dict[str, str]) -> None:
    registry = LocalRegistry(Path(env["TRAINCTL_HOME"]) / "clusters")
    registry.write_ending("exp-gone", "its lifetime of 1h ended", dt.datetime(2026, 12, 5, 17, 0, tzinfo=dt.UTC))

    code, _, err = invoke(env, "status", "exp-gone")

    assert code == 4
    assert "It stopped at 2026-12-05 17:00:00 UTC because its lifetime of 1h ended." in err


def test_unreachable_api_is_exit_6(env: dict[str, str]) -> None:
    code, _, err = invoke(env, "list", "--backend", "kuberay")
    assert code == 6
    assert "Kubernetes API" in err


def test_list_without_clusters(env: dict[str, str]) -> None:
    assert invoke(env, "list") == (0, "No clusters.\n", "")
    assert json.loads(invoke(env, "list", "-o", "json")[1]) == []


def _record(job_id: str, *, status: str, minutes_ago: int, **fields: object) -> JobRecord:
    submitted = NOW - dt.timedelta(minutes=minutes_ago)
    values: dict[str, object] = {
        "job_id": job_id,
        "cluster": "ray-a",
        "backend": "local",
        "entrypoint": "python train.py",
        "submitter": "alice",
        "origin": "manual",
        "submitted_at": submitted,
        "status": status,
    }
    values.update(fields)
    return JobRecord(**values)  # type: ignore[arg-type]


def test_history_lists_and_shows_jobs(env: dict[str, str]) -> None:
    with JobHistory(env["TRAINING_HISTORY_URL"]) as history:
        history.record_submitted(_record("job-1", status="PENDING", minutes_ago=30))
        history.record_finished("job-1", status="FAILED", message="exit 1", at=NOW, log_tail="line 1\nboom")
        history.record_submitted(
            _record(
                "job-2", status="PENDING", minutes_ago=5, origin="dagster", submitter="dagster", partition="1998-03-15"
            )
        )
        history.record_submitted(
            _record("job-3", status="RUNNING", minutes_ago=1, entrypoint="python -c 'import time\ntime.sleep(9)'")
        )

    code, out, _ = invoke(env, "history")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 4
    assert lines[0].split()[:3] == ["JOB", "CLUSTER", "STATUS"]
    assert lines[1].startswith("job-3")
    assert lines[1].endswith("python -c 'import time time.sleep(9)'")
    assert lines[2].startswith("job-2")
    assert "1998-03-15" in lines[2]
    assert lines[3].startswith("job-1")
    assert "FAILED" in lines[3]
    assert "30m" in lines[3]

    failed = json.loads(invoke(env, "history", "--status", "failed", "-o", "json")[1])
    assert [record["job_id"] for record in failed] == ["job-1"]
    assert failed[0]["log_tail"].endswith("boom")

    code, out, _ = invoke(env, "history", "--job", "job-1")
    assert code == 0
    assert "exit 1" in out
    assert "boom" in out
    assert invoke(env, "history", "--job", "job-9")[0] == 4
    assert invoke(env, "history", "--status", "SLEEPING")[0] == 2


def test_history_of_missing_file_is_an_error(env: dict[str, str], tmp_path: Path) -> None:
    typo = tmp_path / "histroy.db"

    code, _, err = invoke(env, "history", "--history-url", f"sqlite:///{typo}")
    env_code, _, env_err = invoke({**env, "TRAINING_HISTORY_URL": f"sqlite:///{typo}"}, "history")

    assert code == 3
    assert f"Error: --history-url: the job history file {typo} does not exist" in err
    assert env_code == 3
    assert "Error: TRAINING_HISTORY_URL: the job history file" in env_err
    assert not typo.exists()


def test_closed_output_pipe_exits_quietly(env: dict[str, str]) -> None:
    # As `trainctl list | head` when head has exited: the pipe is closed before anything is written.
    process = subprocess.Popen(
        [sys.executable, "-c", "from resources.cli.main import main; main(['list'])"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdout.close()
    err = process.stderr.read()
    process.stderr.close()

    assert process.wait(timeout=60) == 141
    assert err == b""


def test_logs_names_unknown_job_of_gone_cluster(env: dict[str, str]) -> None:
    with JobHistory(env["TRAINING_HISTORY_URL"]) as history:
        history.record_submitted(_record("job-1", status="SUCCEEDED", minutes_ago=5, cluster="exp-gone"))

    code, _, err = invoke(env, "logs", "exp-gone", "--job", "job-9")

    assert code == 4
    assert "No job 'job-9' in the job history, and no cluster exp-gone is running." in err
    assert "trainctl history --cluster exp-gone" in err


@pytest.mark.parametrize(
    ("field", "option"),
    [
        ("memory_per_worker", "--memory"),
        ("spec.headGroupSpec.template.spec.containers[0].image", "--image"),
        ("spec.workerGroupSpecs[*].maxReplicas", "--workers"),
        ("spec.workerGroupSpecs[0].template.metadata.annotations.training-pipelines/gpu-type", "--gpu-type"),
        ("ttl", "--ttl"),
        ("something_else", "something_else"),
        ("/etc/training/policy.yaml: head_memory", "/etc/training/policy.yaml: head_memory"),
    ],
)
def test_option_for_names_the_flag(field: str, option: str) -> None:
    assert option_for(field) == option


def test_durations_and_sizes() -> None:
    assert parse_duration_minutes("1d2h30m", field="ttl") == (26 * 60) + 30
    assert parse_duration_minutes(" 8H ", field="ttl") == 480
    assert format_duration(59) == "59s"
    assert format_duration(3 * 3600 + 5 * 60) == "3h05m"
    assert format_duration(-120) == "-2m"
    assert format_size(1536 * 1024**2) == "1.5Gi"
    assert format_size(512) == "512"


def summary(name: str) -> ClusterSummary:
    return ClusterSummary(
        name=name, namespace="", origin="manual", created=NOW, ttl=None, state="ready", workers_ready=1,
        workers_desired=1, cpus=Decimal(2), gpus=0, memory=2**30, backend="local",
    )  # fmt: skip


class NotedClusters:
    """A stand-in for the local backend with one cluster whose dashboard is unreachable."""

    backend = "local"

    def __init__(self, noted: list[str]) -> None:
        self.noted = noted
        self.deleted: list[str] = []

    def noted_histories(self, cluster: ClusterSummary) -> list[str]:
        return self.noted

    @contextlib.contextmanager
    def dashboard(self, name: str) -> Iterator[str]:
        raise DashboardError("http://127.0.0.1:9", "no response")
        yield ""

    def delete(self, name: str) -> None:
        self.deleted.append(name)


class BrokenHistory:
    """A job history that opens but fails every read and write, as one on a full disk or locked too long."""

    def list(self, **_: object) -> list[JobRecord]:
        raise HistoryError("Could not list the jobs in the job history at sqlite:////broken.db: disk I/O error.")

    def mark_lost(self, *_: object, **__: object) -> int:
        raise HistoryError("Could not mark the jobs lost in the job history at sqlite:////broken.db: disk I/O error.")

    def close(self) -> None:
        pass


def test_down_survives_broken_noted_history(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TRAINING_HISTORY_URL", env["TRAINING_HISTORY_URL"])
    broken_url = f"sqlite:///{tmp_path / 'broken.db'}"
    (tmp_path / "broken.db").touch()
    monkeypatch.setattr(main_module, "open_history", lambda url, **_: BrokenHistory())
    clusters = NotedClusters([broken_url])
    with JobHistory(env["TRAINING_HISTORY_URL"]) as history:
        history.record_submitted(
            JobRecord(
                job_id="job-1", cluster="exp-a", backend="local", entrypoint="python x.py",
                submitter="alice", origin="manual", submitted_at=NOW, status="RUNNING",
            )
        )  # fmt: skip

        lost = main_module._delete(clusters, summary("exp-a"), history, None)  # type: ignore[arg-type]

        record = history.get("job-1")
    assert clusters.deleted == ["exp-a"]
    assert lost == 1
    assert record is not None
    assert record.status == "LOST"
    warnings = capsys.readouterr().err
    assert "were not updated in a history that submit used" in warnings
    assert "were not marked LOST in a history that submit used" in warnings


def test_down_survives_broken_own_history(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TRAINING_HISTORY_URL", env["TRAINING_HISTORY_URL"])
    clusters = NotedClusters([])

    lost = main_module._delete(clusters, summary("exp-a"), BrokenHistory(), None)  # type: ignore[arg-type]

    assert clusters.deleted == ["exp-a"]
    assert lost == 0
    warnings = capsys.readouterr().err
    assert "the jobs of exp-a were not updated in the job history: Could not list" in warnings
    assert "the jobs of exp-a were not marked LOST in the job history: Could not mark" in warnings


class MyClusters(NotedClusters):
    """Four clusters of the current user. Two cannot be deleted, and one is gone by the time of its delete."""

    def __init__(self) -> None:
        super().__init__([])
        self.summaries = [
            ClusterSummary(
                name=name, namespace="", origin="manual", created=NOW, ttl=dt.timedelta(hours=1), state="ready",
                workers_ready=1, workers_desired=1, cpus=Decimal(2), gpus=0, memory=2**30,
                team="", owner=current_user(), run_id="", partition="",
            )
            for name in ("exp-stuck", "exp-gone", "exp-ok", "exp-other-user")
        ]  # fmt: skip

    def list(self) -> list[object]:
        return self.summaries

    def delete(self, name: str) -> None:
        if name == "exp-stuck":
            raise DashboardError("http://127.0.0.1:9", "the keeper did not respond")
        if name == "exp-gone":
            raise ClusterNotFoundError(name, "on this machine")
        if name == "exp-other-user":
            raise psutil.AccessDenied(pid=4242)
        super().delete(name)


@pytest.mark.parametrize("selection", ["--mine", "--expired"])
def test_down_goes_on_after_a_cluster_fails(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, selection: str
) -> None:
    clusters = MyClusters()
    monkeypatch.setattr(main_module, "_clusters", lambda backend, namespace: clusters)
    # Every cluster of MyClusters expired an hour after NOW.
    monkeypatch.setattr(main_module, "_now", lambda: NOW + dt.timedelta(hours=2))

    code, out, err = invoke(env, "down", selection)

    assert clusters.deleted == ["exp-ok"]
    assert code == 6
    assert "exp-gone is already gone" in out
    assert "Deleted exp-ok" in out
    assert "Warning: exp-stuck was not deleted: " in err
    assert "Warning: exp-other-user was not deleted: a process of a local cluster could not be signalled" in err
    assert "2 of 4 cluster(s) were not deleted: exp-stuck, exp-other-user." in err


def test_down_by_name_reports_a_missing_cluster(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    clusters = MyClusters()
    monkeypatch.setattr(main_module, "_clusters", lambda backend, namespace: clusters)
    clusters.find = lambda name: clusters.summaries[1]  # type: ignore[attr-defined]

    code, _, err = invoke(env, "down", "exp-gone")

    assert code == 4
    assert "No cluster named 'exp-gone' on this machine." in err


@pytest.fixture
def silent_port() -> int:
    """Return a port on 127.0.0.1 where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_dashboard_error_gives_the_reason_only(silent_port: int) -> None:
    with pytest.raises(requests.exceptions.ConnectionError) as caught:
        requests.get(f"http://127.0.0.1:{silent_port}/api/jobs/", timeout=5)

    error = command_error(caught.value)

    assert error is not None
    assert error.message.startswith("the Ray dashboard did not respond: Connection refused. Check with")
    assert "HTTPConnectionPool" not in error.message


@pytest.mark.parametrize(
    "raised",
    [
        requests.exceptions.ConnectionError("connection refused"),
        # What Ray's job client raises when the dashboard does not respond.
        ConnectionError("Failed to connect to Ray at address: http://127.0.0.1:9."),
    ],
    ids=["requests", "ray-job-client"],
)
def test_dashboard_error_is_not_blamed_on_state_folder(raised: Exception) -> None:
    error = command_error(raised)

    assert error is not None
    assert error.exit_code == EXIT_PLATFORM
    assert f"the Ray dashboard did not respond: {raised}" in error.message
    assert "TRAINCTL_HOME" not in error.message


def test_stopping_cluster_takes_no_job(env: dict[str, str]) -> None:
    # A live record with a stop note: the keeper has begun to stop the cluster on its own.
    registry = LocalRegistry(Path(env["TRAINCTL_HOME"]) / "clusters")
    cluster = LocalRayCluster(
        name="exp-stopping", spec=ClusterSpec(workers=1, cpus_per_worker=1, memory_per_worker=2**30)
    )
    registry.write(record_of(cluster, dashboard_url="http://127.0.0.1:9", owner="alice", ttl=dt.timedelta(hours=1)))
    registry.write_ending("exp-stopping", "Ray worker-0 exited", NOW)

    submit_code, _, submit_err = invoke(env, "submit", "exp-stopping", "--", "python", "-c", "pass")
    list_code, listed, _ = invoke(env, "list")

    assert submit_code == 4
    assert "exp-stopping is stopping and accepts no new jobs." in submit_err
    assert list_code == 0
    assert listed.splitlines()[1].split()[0] == "exp-stopping"
    assert listed.splitlines()[1].split()[-1] == "stopping"
