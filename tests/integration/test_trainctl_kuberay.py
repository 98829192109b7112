"""trainctl against the Kubernetes API stand-in and the stand-in KubeRay operator, called as a user calls it."""

import datetime as dt
from pathlib import Path

import pytest
import yaml

from resources.history import JobHistory
from resources.kuberay.schema import validate_manifest
from tests.integration.kuberay_fixtures import NAMESPACE, KubeEnvironment, kube
from tests.integration.trainctl_helpers import run_trainctl, trainctl_env
from tests.jobs import record_running_job
from tests.kube_standin import RAYCLUSTERS, ApiError

pytestmark = pytest.mark.integration

__all__ = ["kube"]

SMALL = ("--workers", "1", "--memory", "1Gi")


@pytest.fixture
def env(tmp_path: Path, kube: KubeEnvironment) -> dict[str, str]:
    return trainctl_env(
        tmp_path,
        RAY_BACKEND="kuberay",
        KUBE_API_URL=kube.standin.url,
        KUBERAY_NAMESPACE=NAMESPACE,
        # The stand-in's clusters serve their dashboard on 127.0.0.1 at a port in the status.
        KUBERAY_DASHBOARD_URL_TEMPLATE="http://{service_ip}:{dashboard_port}",
        RAY_HEAD_MEMORY="2Gi",
    )


def exists(kube: KubeEnvironment, name: str) -> bool:
    try:
        kube.standin.store.get(RAYCLUSTERS, NAMESPACE, name)
    except ApiError:
        return False
    return True


def writes(kube: KubeEnvironment) -> list[str]:
    """Every request that could change the cluster's state, as 'METHOD path'."""
    return [f"{r.method} {r.path}" for r in kube.standin.requests if r.method not in ("GET", "HEAD")]


def test_render_calls_no_api(env: dict[str, str], kube: KubeEnvironment) -> None:
    result = run_trainctl(
        env, "render", "--workers", "3", "--memory", "4Gi", "--cpus", "2", "--team", "ranking", "--ttl", "4h",
        "--name", "exp-render",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = yaml.safe_load(result.stdout)
    assert validate_manifest(manifest) == []
    assert manifest["metadata"]["name"] == "exp-render"
    assert manifest["metadata"]["namespace"] == NAMESPACE
    assert manifest["metadata"]["labels"]["training-pipelines/origin"] == "manual"
    assert manifest["metadata"]["annotations"]["training-pipelines/ttl-minutes"] == "240"
    worker = manifest["spec"]["workerGroupSpecs"][0]
    assert worker["replicas"] == 3
    assert worker["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "4Gi"
    assert kube.standin.requests == []


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("--image", "docker.io/library/python:3.11"), "--image"),
        (("--gpus-per-worker", "1"), "--gpu-type"),
        (("--gpus-per-worker", "1", "--gpu-type", "v100"), "--gpu-type"),
        (("--workers", "500"), "--workers"),
        (("--ttl", "73h"), "--ttl"),
        (("--memory", "2 gigs"), "--memory"),
        (("--team", "x" * 300, "--name", "UPPER"), "--name"),
    ],
)
def test_policy_violations_create_nothing(
    env: dict[str, str], kube: KubeEnvironment, args: tuple[str, ...], option: str
) -> None:
    result = run_trainctl(env, "up", *args)
    assert result.returncode == 3, result.stderr
    assert f"Error: {option}:" in result.stderr, result.stderr
    assert "Nothing was created" in result.stderr
    assert writes(kube) == []


def test_up_status_submit_down_history(
    env: dict[str, str], kube: KubeEnvironment, tmp_path: Path, no_leaked_ray_processes: None
) -> None:
    up = run_trainctl(env, "up", *SMALL, "--name", "exp-kube", "--team", "ranking", "--ttl", "3h")
    assert up.returncode == 0, up.stderr
    assert "name:      exp-kube" in up.stdout
    for progress in ("pods scheduled", "images pulled", "head pod ready", "is ready"):
        assert progress in up.stderr, up.stderr
    assert [w for w in writes(kube) if "rayclusters" in w] == [
        f"POST /apis/ray.io/v1/namespaces/{NAMESPACE}/rayclusters"
    ]
    # The cluster outlives the command that made it.
    assert exists(kube, "exp-kube")

    try:
        [cluster] = run_trainctl(env, "list", "-o", "json").json()
        assert cluster["name"] == "exp-kube"
        assert cluster["origin"] == "manual"
        assert cluster["team"] == "ranking"
        assert cluster["state"] == "ready"
        assert (cluster["workers_ready"], cluster["workers_desired"]) == (1, 1)
        assert 3 * 3600 - 300 < cluster["time_left_s"] <= 3 * 3600
        assert cluster["memory_bytes"] == 3 * 1024**3  # a 2Gi head and a 1Gi worker

        status = run_trainctl(env, "status", "exp-kube", "-o", "json")
        assert status.returncode == 0, status.stderr
        details = status.json()
        ready = [c for c in details["conditions"] if c["type"] == "HeadPodReady"]
        assert [c["status"] for c in ready] == ["True"]
        reasons = {event["reason"] for event in details["events"]}
        assert {"CreatedHeadPod", "Scheduled", "Started"} <= reasons
        assert len(details["nodes"]) == 2
        text = run_trainctl(env, "status", "exp-kube").stdout
        assert "Recent events:" in text
        assert "CreatedHeadPod" in text

        submitted = run_trainctl(
            env, "submit", "exp-kube", "--job-id", "kube-job", "--", "python", "-c", "print('trained on kuberay')"
        )
        assert submitted.returncode == 0, submitted.stderr
        assert "trained on kuberay" in submitted.stdout

        # A job in another history, whose `submit` was killed before it saw the end.
        team_url = f"sqlite:///{tmp_path / 'team.db'}"
        noted = run_trainctl(env, "submit", "exp-kube", "--history-url", team_url, "--", "python", "-c", "pass")
        assert noted.returncode == 0, noted.stderr
        record_running_job(team_url, "killed-submit", "exp-kube", backend="kuberay")
        notes = f"kuberay/*/{NAMESPACE}/*.histories"
        assert [folder.name.split(".")[0] for folder in (tmp_path / "state").glob(notes)] == ["exp-kube"]
    finally:
        down = run_trainctl(env, "down", "exp-kube")
    assert down.returncode == 0, down.stderr
    assert "1 unfinished job(s) marked LOST" in down.stdout
    with JobHistory(team_url) as team:
        killed = team.get("killed-submit")
    assert killed is not None
    assert killed.status == "LOST"
    assert list((tmp_path / "state").glob(notes)) == []
    assert f"DELETE /apis/ray.io/v1/namespaces/{NAMESPACE}/rayclusters/exp-kube" in writes(kube)
    assert not exists(kube, "exp-kube")
    assert run_trainctl(env, "status", "exp-kube").returncode == 4

    [record] = run_trainctl(env, "history", "--cluster", "exp-kube", "-o", "json").json()
    assert record["job_id"] == "kube-job"
    assert record["status"] == "SUCCEEDED"
    assert record["backend"] == "kuberay"
    assert record["namespace"] == NAMESPACE
    assert "trained on kuberay" in record["log_tail"]
    assert "trained on kuberay" in run_trainctl(env, "logs", "exp-kube").stdout


def test_down_expired_and_mine(env: dict[str, str], kube: KubeEnvironment, no_leaked_ray_processes: None) -> None:
    for name in ("exp-old", "exp-new"):
        assert run_trainctl(env, "up", *SMALL, "--name", name, "--ttl", "1h").returncode == 0
    # Age one cluster past its lifetime, as the API server would show it two hours later.
    stored = kube.standin.store.get(RAYCLUSTERS, NAMESPACE, "exp-old")
    created = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    stored["metadata"]["creationTimestamp"] = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    kube.standin.store.put(stored)

    expired = run_trainctl(env, "down", "--expired")
    assert expired.returncode == 0, expired.stderr
    assert "Deleted exp-old" in expired.stdout
    assert "exp-new" not in expired.stdout
    assert [c["name"] for c in run_trainctl(env, "list", "-o", "json").json()] == ["exp-new"]

    mine = run_trainctl(env, "down", "--mine")
    assert mine.returncode == 0
    assert "Deleted exp-new" in mine.stdout
    assert run_trainctl(env, "list", "-o", "json").json() == []
