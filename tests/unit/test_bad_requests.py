"""Bad requests fail with an error that names the field and the fix, before anything is created or started.

The entry points are ``RayClusterResource`` on the kuberay backend against the Kubernetes
API stand-in, and the same resource on the local backend with process creation replaced by
a trip-wire. Then ``trainctl up`` and ``trainctl render`` through click's runner, on the same
stand-in and trip-wire. Data requests go through the ratings source and the assets.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from kubernetes.client.exceptions import ApiException

import resources.cli.backends
import resources.local
from resources.cli.main import EXIT_INVALID_REQUEST, EXIT_PLATFORM, cli
from resources.cluster import RayClusterResource
from resources.errors import InvalidRequestError
from resources.kuberay.podspec import GPU_TYPE_ANNOTATION
from resources.kuberay.policy import load_policy
from resources.storage import TrainingStorage
from tests.kube_standin import KubeStandin
from training_pipelines.data.source import RatingsSource, day_bounds
from training_pipelines.data.validation import SourceError
from training_pipelines.defs.partitions import LAST_DAY
from training_pipelines.defs.ranking import ranking_model_evaluation
from training_pipelines.defs.ratings import ratings_daily
from training_pipelines.defs.settings import RankingSettings

NAMESPACE = "ml-training"
WORKER_CONTAINERS = "spec.workerGroupSpecs[0].template.spec.containers[*]"
HEAD_CONTAINERS = "spec.headGroupSpec.template.spec.containers[*]"
HEAD_IMAGE = "spec.headGroupSpec.template.spec.containers[0].image"
WORKER_GPU_TYPE = f"spec.workerGroupSpecs[0].template.metadata.annotations.{GPU_TYPE_ANNOTATION}"

UNPARSED_MEMORY_FIX = "Use a number with a unit such as '512Mi', '2Gi' or '4G'."
MEMORY_MINIMUM_FIX = "Use at least '512Mi'. A number without a unit is bytes"
LABEL_FIX = "Use at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
NAME_FIX = "Use lowercase letters, digits and '-', a letter first, at most 53 characters."
NAMESPACE_FIX = "Use lowercase letters, digits and '-', at most 63 characters."
OBJECT_STORE_MINIMUM_FIX = "Use 75Mi or more, such as '128Mi'."
IMAGE_PREFIX_FIX = "Use an image starting with 'rayproject/ray:' or 'docker.io/rayproject/ray:'."
IMAGE_TAG_FIX = "Pin the image with a version tag"
GPU_TYPES_FIX = "Use one of a100, a10g, h100, h200, l4, t4."
CLUSTER_AGE_FIX = "Set it to more than 0 and at most 72 hours."


# ----- trip-wires and the stand-in -----


class SpawnAttemptedError(AssertionError):
    """A process was about to be started although the request is invalid."""


def _no_spawn_module(attempts: list[list[str]]) -> types.SimpleNamespace:
    """Return a copy of the ``subprocess`` module whose ``Popen`` records its command and raises."""

    def popen(args: list[str], *_: object, **__: object) -> None:
        attempts.append(list(args))
        raise SpawnAttemptedError(f"a process was started: {args}")

    return types.SimpleNamespace(**{**vars(subprocess), "Popen": popen})


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Replace process creation of the local backend and of trainctl's keeper; return the commands tried."""
    attempts: list[list[str]] = []
    module = _no_spawn_module(attempts)
    monkeypatch.setattr(resources.local, "subprocess", module)
    monkeypatch.setattr(resources.cli.backends, "subprocess", module)
    return attempts


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeStandin]:
    # Outside a pod the kuberay backend looks up no owner Job, so an invalid request sends no request at all.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with KubeStandin() as server:
        yield server


def kuberay_resource(standin: KubeStandin, **fields: Any) -> RayClusterResource:
    settings: dict[str, Any] = {"namespace": NAMESPACE, "start_timeout_s": 5.0, **fields}
    return RayClusterResource(backend="kuberay", kube_api_url=standin.url, **settings)


def assert_names_field(error: InvalidRequestError, field: str, fix: str) -> None:
    message = str(error)
    assert error.field == field, message
    assert message.startswith(f"{field}: "), message
    assert fix in message, message


# ----- the Dagster resource -----

# Requests both backends reject the same way: (resource fields, field named, fix wording).
SHARED_CASES = [
    pytest.param({"workers": 0}, "workers", "Ask for 1 or more workers.", id="workers-zero"),
    pytest.param({"workers": -3}, "workers", "Ask for 1 or more workers.", id="workers-negative"),
    pytest.param({"workers": 10_000}, "workers", "Ask for at most 256 workers.", id="workers-absurd"),
    pytest.param({"cpus_per_worker": 0}, "cpus_per_worker", "Ask for 1 or more CPUs per worker.", id="cpus-zero"),
    pytest.param({"cpus_per_worker": -2}, "cpus_per_worker", "Ask for 1 or more CPUs", id="cpus-negative"),
    pytest.param({"head_cpus": -1}, "head_cpus", "Use 1 so Ray Data has a CPU on the head.", id="head-cpus-negative"),
    pytest.param({"gpus_per_worker": -1}, "gpus_per_worker", "Use 0 for CPU training.", id="gpus-negative"),
    pytest.param({"memory_per_worker": "lots"}, "memory_per_worker", UNPARSED_MEMORY_FIX, id="memory-word"),
    pytest.param({"memory_per_worker": "2 gigs"}, "memory_per_worker", UNPARSED_MEMORY_FIX, id="memory-gigs"),
    pytest.param({"memory_per_worker": "4gi"}, "memory_per_worker", UNPARSED_MEMORY_FIX, id="memory-lowercase"),
    pytest.param({"memory_per_worker": "-1Gi"}, "memory_per_worker", UNPARSED_MEMORY_FIX, id="memory-negative"),
    pytest.param({"memory_per_worker": "0"}, "memory_per_worker", "Use a size such as '2Gi'.", id="memory-zero"),
    pytest.param({"memory_per_worker": "2"}, "memory_per_worker", MEMORY_MINIMUM_FIX, id="memory-2-bytes"),
    pytest.param({"memory_per_worker": "100Mi"}, "memory_per_worker", MEMORY_MINIMUM_FIX, id="memory-100Mi"),
    pytest.param({"object_store_memory": "lots"}, "object_store_memory", UNPARSED_MEMORY_FIX, id="store-word"),
    pytest.param({"object_store_memory": "64Mi"}, "object_store_memory", OBJECT_STORE_MINIMUM_FIX, id="store-small"),
    pytest.param({"team": "Ranking & Recs!"}, "team", LABEL_FIX, id="team-symbols"),
    pytest.param({"team": "ranking team"}, "team", LABEL_FIX, id="team-space"),
    pytest.param({"team": "-ranking"}, "team", LABEL_FIX, id="team-leading-dash"),
    pytest.param({"team": "x" * 64}, "team", LABEL_FIX, id="team-too-long"),
]

KUBERAY_CASES = [
    pytest.param(
        {"workers": 33},
        "spec.workerGroupSpecs[*].maxReplicas",
        "Ask for at most 32 workers (`workers`).",
        id="workers-policy",
    ),
    pytest.param(
        {"workers": 2, "max_workers": 100},
        "spec.workerGroupSpecs[*].maxReplicas",
        "Ask for at most 32 workers (`max_workers`).",
        id="max-workers-policy",
    ),
    pytest.param({"min_workers": -1}, "min_workers", "Use 0 or more, or leave it unset.", id="min-workers-negative"),
    pytest.param(
        {"cpus_per_worker": 65},
        f"{WORKER_CONTAINERS}.resources.limits.cpu",
        "Ask for at most 64 CPUs per worker",
        id="cpus-policy",
    ),
    pytest.param(
        {"cpus_per_worker": 1_000_000},
        f"{WORKER_CONTAINERS}.resources.limits.cpu",
        "Ask for at most 64 CPUs per worker",
        id="cpus-absurd",
    ),
    pytest.param(
        {"head_cpus": 65}, f"{HEAD_CONTAINERS}.resources.limits.cpu", "Ask for at most 64 head CPUs", id="head-cpus"
    ),
    pytest.param({"head_memory": "lots"}, "head_memory", UNPARSED_MEMORY_FIX, id="head-memory-word"),
    pytest.param({"head_memory": "256Mi"}, "head_memory", MEMORY_MINIMUM_FIX, id="head-memory-small"),
    pytest.param(
        {"memory_per_worker": "300Gi"},
        f"{WORKER_CONTAINERS}.resources.limits.memory",
        "Lower memory_per_worker",
        id="memory-policy",
    ),
    pytest.param(
        {"template": "gpu", "gpus_per_worker": 1}, "gpu_type", "Set gpu_type, such as 'l4'.", id="gpus-without-type"
    ),
    pytest.param(
        {"template": "gpu", "gpus_per_worker": 1, "gpu_type": "v100"},
        WORKER_GPU_TYPE,
        GPU_TYPES_FIX,
        id="gpu-type-unknown",
    ),
    pytest.param(
        {"gpus_per_worker": 1, "gpu_type": "l4"}, "template", "Use template 'gpu' to ask for GPUs.", id="gpus-on-cpu"
    ),
    pytest.param({"gpu_type": "l4"}, "gpu_type", "Set gpus_per_worker or remove gpu_type.", id="gpu-type-without-gpus"),
    pytest.param(
        {"template": "gpu"},
        "template",
        "Set gpus_per_worker and gpu_type, or use template 'cpu'.",
        id="gpu-template-without-gpus",
    ),
    pytest.param({"template": "tpu"}, "template", "Use one of ['cpu', 'gpu'].", id="template-unknown"),
    pytest.param({"image": "evil.example.com/ray:2.60.0"}, HEAD_IMAGE, IMAGE_PREFIX_FIX, id="image-registry"),
    pytest.param({"image": "rayproject/ray-evil:2.60.0"}, HEAD_IMAGE, IMAGE_PREFIX_FIX, id="image-lookalike"),
    pytest.param({"image": "rayproject/ray:latest"}, HEAD_IMAGE, IMAGE_TAG_FIX, id="image-latest"),
    pytest.param({"image": "rayproject/ray"}, HEAD_IMAGE, IMAGE_TAG_FIX, id="image-untagged"),
    pytest.param({"image": ""}, "image", "Leave it unset for the template's image.", id="image-empty"),
    pytest.param({"namespace": "ML Training"}, "namespace", NAMESPACE_FIX, id="namespace-symbols"),
    pytest.param({"namespace": "n" * 64}, "namespace", NAMESPACE_FIX, id="namespace-too-long"),
    pytest.param({"max_cluster_age_hours": -1.0}, "max_cluster_age_hours", CLUSTER_AGE_FIX, id="age-negative"),
    pytest.param({"max_cluster_age_hours": 0.0}, "max_cluster_age_hours", CLUSTER_AGE_FIX, id="age-zero"),
    pytest.param({"max_cluster_age_hours": 73.0}, "max_cluster_age_hours", CLUSTER_AGE_FIX, id="age-above-cap"),
    pytest.param({"max_cluster_age_hours": float("nan")}, "max_cluster_age_hours", CLUSTER_AGE_FIX, id="age-nan"),
    pytest.param({"max_cluster_age_hours": float("inf")}, "max_cluster_age_hours", CLUSTER_AGE_FIX, id="age-inf"),
]

LOCAL_CASES = [
    pytest.param({"cpus_per_worker": 1_000_000}, "cpus_per_worker", "Ask for at most", id="cpus-above-machine"),
    pytest.param({"head_cpus": 1_000_000}, "head_cpus", "Ask for at most", id="head-cpus-above-machine"),
    pytest.param({"gpus_per_worker": 64}, "gpus_per_worker", "Set gpus_per_worker to 0", id="gpus-above-machine"),
    pytest.param(
        {"memory_per_worker": "4096Ti"},
        "memory_per_worker",
        "Lower `workers`, `memory_per_worker` or `object_store_memory`.",
        id="memory-above-machine",
    ),
]


@pytest.mark.parametrize(("fields", "field", "fix"), SHARED_CASES + KUBERAY_CASES)
def test_kuberay_resource_rejects_before_api(
    standin: KubeStandin, fields: dict[str, Any], field: str, fix: str
) -> None:
    resource = kuberay_resource(standin, **fields)

    with pytest.raises(InvalidRequestError) as caught:
        resource.ensure_started()

    assert_names_field(caught.value, field, fix)
    assert standin.requests == []


@pytest.mark.parametrize(("fields", "field", "fix"), SHARED_CASES + LOCAL_CASES)
def test_local_resource_rejects_before_spawn(
    spawned: list[list[str]], fields: dict[str, Any], field: str, fix: str
) -> None:
    resource = RayClusterResource(backend="local", **fields)

    with pytest.raises(InvalidRequestError) as caught:
        resource.ensure_started()

    assert_names_field(caught.value, field, fix)
    assert spawned == []


def test_kuberay_resource_valid_request_reaches_standin(standin: KubeStandin) -> None:
    # The control case: a valid request does reach the stand-in, so an empty request log above means rejected early.
    standin.inject_fault(verb="create", plural="rayclusters", status=403)
    resource = kuberay_resource(standin, workers=1)

    with pytest.raises(ApiException):
        resource.ensure_started()

    assert [call.status for call in standin.calls(verb="create", plural="rayclusters")] == [403]


def test_local_resource_valid_request_spawns(spawned: list[list[str]]) -> None:
    resource = RayClusterResource(backend="local", workers=1, memory_per_worker="512Mi", object_store_memory="128Mi")

    with pytest.raises(SpawnAttemptedError):
        resource.ensure_started()

    assert len(spawned) == 1


def _run_needing_ray(resource: RayClusterResource) -> tuple[dg.ExecuteInProcessResult, list[str]]:
    steps_run: list[str] = []

    @dg.asset
    def needs_ray(ray_cluster: RayClusterResource) -> None:
        steps_run.append("needs_ray")
        ray_cluster.ensure_started()

    result = dg.materialize([needs_ray], resources={"ray_cluster": resource}, raise_on_error=False)
    return result, steps_run


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(str(event.event_specific_data) for event in result.all_events if event.is_failure)


@pytest.mark.parametrize(
    ("fields", "field", "fix"),
    [
        pytest.param({"memory_per_worker": "2"}, "memory_per_worker", MEMORY_MINIMUM_FIX, id="memory-2-bytes"),
        pytest.param({"team": "Ranking & Recs!"}, "team", LABEL_FIX, id="team-symbols"),
        pytest.param({"image": "evil.example.com/ray:2.60.0"}, HEAD_IMAGE, IMAGE_PREFIX_FIX, id="image-registry"),
        pytest.param({"cpus_per_worker": 65}, f"{WORKER_CONTAINERS}.resources.limits.cpu", "at most 64", id="cpus"),
        pytest.param({"max_cluster_age_hours": 100.0}, "max_cluster_age_hours", CLUSTER_AGE_FIX, id="age"),
    ],
)
def test_kuberay_run_fails_before_steps(standin: KubeStandin, fields: dict[str, Any], field: str, fix: str) -> None:
    result, steps_run = _run_needing_ray(kuberay_resource(standin, **fields))

    assert not result.success
    assert f"{field}: " in _failure_text(result)
    assert fix in _failure_text(result)
    assert steps_run == []
    assert standin.requests == []


@pytest.mark.parametrize(
    ("fields", "field", "fix"),
    [
        pytest.param({"workers": 0}, "workers", "Ask for 1 or more workers.", id="workers-zero"),
        pytest.param({"memory_per_worker": "2"}, "memory_per_worker", MEMORY_MINIMUM_FIX, id="memory-2-bytes"),
        pytest.param({"team": "x" * 64}, "team", LABEL_FIX, id="team-too-long"),
    ],
)
def test_local_run_fails_before_steps(spawned: list[list[str]], fields: dict[str, Any], field: str, fix: str) -> None:
    result, steps_run = _run_needing_ray(RayClusterResource(backend="local", **fields))

    assert not result.success
    assert f"{field}: " in _failure_text(result)
    assert fix in _failure_text(result)
    assert steps_run == []
    assert spawned == []


@pytest.mark.parametrize(
    ("variable", "value", "fix"),
    [
        ("RAY_MEMORY_PER_WORKER", "2", MEMORY_MINIMUM_FIX),
        ("RAY_HEAD_MEMORY", "100Mi", MEMORY_MINIMUM_FIX),
        ("KUBERAY_TEAM", "Ranking & Recs!", LABEL_FIX),
        ("RAY_MAX_CLUSTER_AGE_HOURS", "nan", CLUSTER_AGE_FIX),
        ("RAY_MAX_CLUSTER_AGE_HOURS", "-1", CLUSTER_AGE_FIX),
        ("KUBERAY_TEMPLATE", "gpu", "Set RAY_GPUS_PER_WORKER and KUBERAY_GPU_TYPE, or use template 'cpu'."),
    ],
)
def test_environment_names_variable(variable: str, value: str, fix: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        RayClusterResource.from_env({"RAY_BACKEND": "kuberay", variable: value})

    assert_names_field(caught.value, variable, fix)


# ----- trainctl -----


@pytest.fixture
def trainctl_env(tmp_path: Path, standin: KubeStandin) -> dict[str, str]:
    return {
        "TRAINCTL_HOME": str(tmp_path / "state"),
        "TRAINING_HISTORY_URL": f"sqlite:///{tmp_path / 'history.db'}",
        "RAY_BACKEND": "local",
        "KUBE_API_URL": standin.url,
        "KUBERAY_NAMESPACE": NAMESPACE,
    }


def trainctl(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def assert_invalid_request(code: int, stderr: str, option: str, fix: str) -> None:
    assert code == EXIT_INVALID_REQUEST, stderr
    assert f"Error: {option}: " in stderr, stderr
    assert fix in stderr, stderr
    assert "Nothing was created." in stderr, stderr


# Options both backends reject the same way: (arguments, option named, fix wording).
SHARED_OPTION_CASES = [
    pytest.param(("--workers", "0"), "--workers", "1 or more", id="workers-zero"),
    pytest.param(("--workers", "-3"), "--workers", "1 or more", id="workers-negative"),
    pytest.param(("--cpus", "0"), "--cpus", "1 or more", id="cpus-zero"),
    pytest.param(("--memory", "lots"), "--memory", UNPARSED_MEMORY_FIX, id="memory-word"),
    pytest.param(("--memory", "2 gigs"), "--memory", UNPARSED_MEMORY_FIX, id="memory-gigs"),
    pytest.param(("--memory", "2"), "--memory", MEMORY_MINIMUM_FIX, id="memory-2-bytes"),
    pytest.param(("--memory", "100Mi"), "--memory", MEMORY_MINIMUM_FIX, id="memory-100Mi"),
    pytest.param(("--gpus-per-worker", "-1"), "--gpus-per-worker", "Use 0 for CPU training.", id="gpus-negative"),
    pytest.param(("--team", "Ranking & Recs!"), "--team", LABEL_FIX, id="team-symbols"),
    pytest.param(("--team", "x" * 64), "--team", LABEL_FIX, id="team-too-long"),
    pytest.param(("--name", "UPPER"), "--name", NAME_FIX, id="name-uppercase"),
    pytest.param(("--name", "under_score"), "--name", NAME_FIX, id="name-underscore"),
    pytest.param(("--name", "a" * 54), "--name", NAME_FIX, id="name-too-long"),
    pytest.param(("--ttl", "-1h"), "--ttl", "Use days, hours and minutes such as '8h'", id="ttl-negative"),
    pytest.param(("--ttl", "0m"), "--ttl", "Use a lifetime such as '8h'.", id="ttl-zero"),
    pytest.param(("--ttl", "8"), "--ttl", "Use days, hours and minutes such as '8h'", id="ttl-no-unit"),
    pytest.param(("--ttl", "73h"), "--ttl", "Ask for at most 72h", id="ttl-above-cap"),
]

KUBERAY_OPTION_CASES = [
    pytest.param(("--workers", "100000"), "--workers", "Ask for at most 32 workers (--workers).", id="workers-absurd"),
    pytest.param(
        ("--template", "gpu", "--workers", "9", "--gpus-per-worker", "4", "--gpu-type", "l4"),
        "--gpus-per-worker",
        "Lower --gpus-per-worker or --workers.",
        id="gpus-policy",
    ),
    pytest.param(("--cpus", "65"), "--cpus", "Ask for at most 64 CPUs per worker", id="cpus-policy"),
    pytest.param(("--memory", "300Gi"), "--memory", "Lower --memory", id="memory-policy"),
    pytest.param(("--gpus-per-worker", "1"), "--gpu-type", "Set --gpu-type, such as 'l4'.", id="gpus-without-type"),
    pytest.param(("--gpus-per-worker", "1", "--gpu-type", "v100"), "--gpu-type", GPU_TYPES_FIX, id="gpu-type-unknown"),
    pytest.param(("--gpu-type", "l4"), "--gpu-type", "Set --gpus-per-worker", id="gpu-type-without-gpus"),
    pytest.param(
        ("--template", "gpu"),
        "--template",
        "Set --gpus-per-worker and --gpu-type, or use template 'cpu'.",
        id="gpu-template-without-gpus",
    ),
    pytest.param(
        ("--template", "cpu", "--gpus-per-worker", "1", "--gpu-type", "l4"),
        "--template",
        "Use template 'gpu'",
        id="gpus-on-cpu",
    ),
    pytest.param(("--image", "evil.example.com/ray:2.60.0"), "--image", IMAGE_PREFIX_FIX, id="image-registry"),
    pytest.param(("--image", "rayproject/ray:latest"), "--image", IMAGE_TAG_FIX, id="image-latest"),
    pytest.param(("--namespace", "ML Training"), "--namespace", NAMESPACE_FIX, id="namespace-symbols"),
]

LOCAL_OPTION_CASES = [
    pytest.param(("--workers", "100000"), "--workers", "Ask for at most 256 workers.", id="workers-absurd"),
    pytest.param(("--cpus", "1000000"), "--cpus", "Ask for at most", id="cpus-above-machine"),
    pytest.param(
        ("--memory", "4096Ti"),
        "--memory",
        "Lower --workers, --memory or RAY_OBJECT_STORE_MEMORY.",
        id="memory-above-machine",
    ),
    pytest.param(
        ("--gpus-per-worker", "64"), "--gpus-per-worker", "Set --gpus-per-worker to 0", id="gpus-above-machine"
    ),
    pytest.param(("--gpu-type", "l4"), "--gpu-type", "Leave it out, or use --backend kuberay.", id="gpu-type"),
    pytest.param(("--template", "gpu"), "--template", "the local backend has no templates", id="template"),
    pytest.param(
        ("--image", "rayproject/ray:2.60.0"), "--image", "Leave it out, or use --backend kuberay.", id="image"
    ),
]


@pytest.mark.parametrize(("args", "option", "fix"), SHARED_OPTION_CASES + KUBERAY_OPTION_CASES)
@pytest.mark.parametrize("command", [("up", "--backend", "kuberay"), ("render",)], ids=["up", "render"])
def test_trainctl_kuberay_rejects_before_api(
    trainctl_env: dict[str, str],
    standin: KubeStandin,
    command: tuple[str, ...],
    args: tuple[str, ...],
    option: str,
    fix: str,
) -> None:
    code, _, stderr = trainctl(trainctl_env, *command, *args)

    assert_invalid_request(code, stderr, option, fix)
    assert standin.requests == []


@pytest.mark.parametrize(("args", "option", "fix"), SHARED_OPTION_CASES + LOCAL_OPTION_CASES)
def test_trainctl_local_rejects_before_spawn(
    trainctl_env: dict[str, str], spawned: list[list[str]], args: tuple[str, ...], option: str, fix: str
) -> None:
    code, _, stderr = trainctl(trainctl_env, "up", "--backend", "local", *args)

    assert_invalid_request(code, stderr, option, fix)
    assert spawned == []


def test_trainctl_valid_request_reaches_standin(trainctl_env: dict[str, str], standin: KubeStandin) -> None:
    standin.inject_fault(verb="create", plural="rayclusters", status=403)

    code, _, stderr = trainctl(trainctl_env, "up", "--backend", "kuberay", "--workers", "1", "--name", "exp-valid")

    assert code == EXIT_PLATFORM, stderr
    assert [call.name for call in standin.calls(verb="create", plural="rayclusters")] == [None]
    assert standin.calls(verb="create", plural="rayclusters")[0].body["metadata"]["name"] == "exp-valid"


def test_trainctl_local_valid_request_spawns(trainctl_env: dict[str, str], spawned: list[list[str]]) -> None:
    with pytest.raises(SpawnAttemptedError):
        trainctl(trainctl_env, "up", "--backend", "local", "--workers", "1", "--memory", "512Mi", "--name", "exp-ok")

    assert len(spawned) == 1


def test_trainctl_local_object_store_from_environment(trainctl_env: dict[str, str], spawned: list[list[str]]) -> None:
    env = {**trainctl_env, "RAY_OBJECT_STORE_MEMORY": "300Mi"}

    with pytest.raises(SpawnAttemptedError):
        trainctl(env, "up", "--backend", "local", "--workers", "1", "--memory", "512Mi", "--name", "exp-store")

    [spec_argument] = [argument for argument in spawned[0] if argument.startswith("--spec=")]
    assert json.loads(spec_argument.removeprefix("--spec="))["object_store_memory"] == 300 * 1024**2


def test_trainctl_local_small_object_store_names_variable(
    trainctl_env: dict[str, str], spawned: list[list[str]]
) -> None:
    env = {**trainctl_env, "RAY_OBJECT_STORE_MEMORY": "64Mi"}

    code, _, stderr = trainctl(env, "up", "--backend", "local", "--workers", "1", "--name", "exp-store")

    assert_invalid_request(code, stderr, "RAY_OBJECT_STORE_MEMORY", OBJECT_STORE_MINIMUM_FIX)
    assert spawned == []


def test_trainctl_ignores_pipeline_cluster_variables(trainctl_env: dict[str, str]) -> None:
    # Values meant for the pipelines' clusters, one of them invalid on its own for trainctl's request.
    env = {**trainctl_env, "KUBERAY_TEMPLATE": "gpu", "RAY_WORKERS": "lots", "KUBERAY_TEAM": "Ranking & Recs!"}

    listed = trainctl(env, "list", "--backend", "kuberay")
    rendered = trainctl(env, "render", "--gpus-per-worker", "1", "--gpu-type", "l4")

    assert listed[0] == 0, listed[2]
    assert rendered[0] == 0, rendered[2]


def test_trainctl_ignores_pipeline_cluster_age(trainctl_env: dict[str, str], tmp_path: Path) -> None:
    # A policy whose lifetime cap is below the pipelines' default cluster age of 24 hours.
    policy_file = tmp_path / "short-lived.yaml"
    policy_file.write_text("default_ttl_hours: 8\nmax_ttl_hours: 12\n")
    env = {**trainctl_env, "KUBERAY_POLICY_FILE": str(policy_file)}

    listed = trainctl(env, "list", "--backend", "kuberay")
    rendered = trainctl(env, "render", "--ttl", "4h")

    assert listed[0] == 0, listed[2]
    assert rendered[0] == 0, rendered[2]
    assert "training-pipelines/ttl-minutes: '240'" in rendered[1]


def test_trainctl_error_keeps_typed_value(trainctl_env: dict[str, str]) -> None:
    # The namespace is spelled like a field that has an option; the message must show it as typed.
    code, _, stderr = trainctl(trainctl_env, "list", "--backend", "kuberay", "--namespace", "gpu_type")

    assert code == EXIT_INVALID_REQUEST
    assert "--namespace: 'gpu_type' is not a valid" in stderr
    assert "Nothing was created" not in stderr


def test_trainctl_local_unusable_state_folder(
    trainctl_env: dict[str, str], spawned: list[list[str]], tmp_path: Path
) -> None:
    not_a_folder = tmp_path / "state-file"
    not_a_folder.write_text("")
    env = {**trainctl_env, "TRAINCTL_HOME": str(not_a_folder)}

    code, _, stderr = trainctl(env, "up", "--backend", "local", "--workers", "1", "--name", "exp-home")

    assert code == EXIT_PLATFORM, stderr
    assert f"Check that TRAINCTL_HOME ({not_a_folder}) is a writable folder." in stderr
    assert spawned == []


def test_trainctl_head_memory_names_variable(trainctl_env: dict[str, str], standin: KubeStandin) -> None:
    code, _, stderr = trainctl({**trainctl_env, "RAY_HEAD_MEMORY": "300Gi"}, "render")

    assert_invalid_request(code, stderr, "RAY_HEAD_MEMORY", "Lower --memory or RAY_HEAD_MEMORY")
    assert "300Gi" in stderr
    assert standin.requests == []


# ----- the policy file -----


def write_policy(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("value", ["0", "-4", "lots", "true", "8.5"])
def test_policy_cpu_maximum_must_be_whole(tmp_path: Path, value: str) -> None:
    path = write_policy(tmp_path, f"max_cpus_per_pod: {value}\n")

    with pytest.raises(InvalidRequestError) as caught:
        load_policy(path)

    assert_names_field(caught.value, f"{path}: max_cpus_per_pod", "such as 64")


def test_policy_file_lowers_cpu_maximum(standin: KubeStandin, tmp_path: Path) -> None:
    resource = kuberay_resource(standin, cpus_per_worker=9, policy_file=write_policy(tmp_path, "max_cpus_per_pod: 8\n"))

    with pytest.raises(InvalidRequestError) as caught:
        resource.ensure_started()

    assert_names_field(caught.value, f"{WORKER_CONTAINERS}.resources.limits.cpu", "Ask for at most 8 CPUs per worker")
    assert "the pod needs 9 CPUs" in str(caught.value)
    assert standin.requests == []


def test_default_policy_cpu_maximum() -> None:
    assert load_policy().max_cpus_per_pod == 64


# ----- partitions -----


@pytest.fixture
def storage(tmp_path: Path) -> TrainingStorage:
    return TrainingStorage(root=str(tmp_path / "storage"))


@pytest.mark.parametrize(
    "partitions",
    [
        pytest.param(dg.PartitionKeyRange("1999-01-01", "1999-01-01"), id="after-data"),
        pytest.param(dg.PartitionKeyRange("1997-09-19", "1997-09-19"), id="before-data"),
        pytest.param(dg.PartitionKeyRange("1998-04-20", "1998-04-25"), id="range-past-end"),
    ],
)
def test_ratings_partition_outside_data(
    storage: TrainingStorage, tmp_path: Path, partitions: dg.PartitionKeyRange
) -> None:
    with dg.build_asset_context(partition_key_range=partitions) as context, pytest.raises(SourceError) as caught:
        ratings_daily(context, ratings_source=RatingsSource(), storage=storage)

    assert_names_field(caught.value, "partition", "Pick a partition inside the range")
    assert "1997-09-20..1998-04-22" in str(caught.value)
    assert not (tmp_path / "storage").exists()


def test_reversed_ratings_range_rejected(storage: TrainingStorage, tmp_path: Path) -> None:
    reversed_days = dg.PartitionKeyRange("1998-04-10", "1998-04-01")
    with dg.build_asset_context(partition_key_range=reversed_days) as context, pytest.raises(SourceError) as caught:
        ratings_daily(context, ratings_source=RatingsSource(), storage=storage)

    assert_names_field(caught.value, "partition", "Give the earlier day first: 1998-04-01...1998-04-10")
    assert not (tmp_path / "storage").exists()


def test_unknown_partition_rejected_by_dagster(storage: TrainingStorage, tmp_path: Path) -> None:
    with pytest.raises(dg.DagsterUnknownPartitionError, match="1999-01-01"):
        dg.materialize(
            [ratings_daily],
            partition_key="1999-01-01",
            resources={"ratings_source": RatingsSource(), "storage": storage},
        )

    assert not (tmp_path / "storage" / "ratings_daily").exists()


def test_evaluation_of_last_day_rejected(storage: TrainingStorage) -> None:
    with dg.build_asset_context(partition_key=LAST_DAY.isoformat()) as context:
        # The asset yields its result and checks, so its body runs only when iterated.
        outputs = ranking_model_evaluation(
            context, storage=storage, ratings_source=RatingsSource(), ranking_settings=RankingSettings()
        )
        with pytest.raises(SourceError) as caught:
            list(outputs)

    assert_names_field(caught.value, "partition", "Evaluate partitions up to 1998-04-21")


# ----- the ratings source -----

OCT_1 = dt.date(1997, 10, 1)


def make_events(**columns: object) -> pd.DataFrame:
    start = day_bounds(OCT_1)[0]
    frame: dict[str, object] = {
        "user_id": [1, 2, 3, 1],
        "item_id": [10, 20, 30, 20],
        "rating": [1, 3, 5, 4],
        "timestamp": [start, start + 3600, start + 86_400, start + 2 * 86_400],
    }
    frame.update(columns)
    return pd.DataFrame(frame)


def write_parquet(frame: pd.DataFrame, path: Path, **options: Any) -> str:
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, **options)
    return str(path)


def make_source(tmp_path: Path, **tables: pd.DataFrame) -> RatingsSource:
    frames = {
        "events": make_events(),
        "users": pd.DataFrame({"user_id": [1, 2, 3], "age": [20, 30, 40]}),
        "items": pd.DataFrame({"item_id": [10, 20, 30], "Drama": [1, 0, 1]}),
    }
    frames.update(tables)
    uris = {f"{name}_uri": write_parquet(frame, tmp_path / f"{name}.parquet") for name, frame in frames.items()}
    return RatingsSource(**uris, column_renames={})


def read(source: RatingsSource, table: str) -> pd.DataFrame:
    readers = {"events": source.read_events, "users": source.read_users, "items": source.read_items}
    return readers[table]()


def _corrupt_first_page(data: bytes, path: Path) -> bytes:
    offset = pq.read_metadata(path).row_group(0).column(0).data_page_offset
    return data[:offset] + b"\xff" * 64 + data[offset + 64 :]


CORRUPTIONS = {
    "empty": lambda data, path: b"",
    "magic-only": lambda data, path: b"PAR1",
    "truncated-last-byte": lambda data, path: data[:-1],
    "truncated-half": lambda data, path: data[: len(data) // 2],
    "header-missing": lambda data, path: data[4:],
    "page-overwritten": _corrupt_first_page,
    "csv": lambda data, path: b"user_id,item_id,rating,timestamp\n1,10,4,875664000\n",
}


@pytest.mark.parametrize("table", ["events", "users", "items"])
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_unreadable_parquet_names_uri(tmp_path: Path, table: str, corruption: str) -> None:
    source = make_source(tmp_path)
    path = Path(getattr(source, f"{table}_uri"))
    path.write_bytes(CORRUPTIONS[corruption](path.read_bytes(), path))

    with pytest.raises(SourceError) as caught:
        read(source, table)

    assert_names_field(caught.value, f"{table}_uri", f"Point {table}_uri at a valid Parquet table.")
    assert "is not a readable Parquet table" in str(caught.value)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("table", "frame", "field", "fix"),
    [
        pytest.param(
            "events",
            make_events(user_id=["1", "2", "3", "1"]),
            "events.user_id",
            "Store ids as integers",
            id="user-str",
        ),
        pytest.param(
            "events", make_events(item_id=[1.0, 2.0, 3.0, 2.0]), "events.item_id", "Store ids as integers", id="item-f"
        ),
        pytest.param(
            "events", make_events(rating=["1", "3", "5", "4"]), "events.rating", "Store ratings as numbers", id="rating"
        ),
        pytest.param(
            "events",
            make_events(timestamp=["1997-10-01"] * 4),
            "events.timestamp",
            "Store timestamps as integer seconds",
            id="timestamp-str",
        ),
        pytest.param(
            "events",
            make_events(timestamp=[8.75e8, 8.76e8, 8.77e8, 8.78e8]),
            "events.timestamp",
            "Store timestamps as integer seconds",
            id="timestamp-float",
        ),
        pytest.param(
            "events",
            make_events(timestamp=[value * 1000 for value in make_events()["timestamp"]]),
            "events.timestamp",
            "divide milliseconds by 1000",
            id="timestamp-milliseconds",
        ),
        pytest.param(
            "users",
            pd.DataFrame({"user_id": ["u1", "u2"], "age": [20, 30]}),
            "users.user_id",
            "Store ids as integers",
            id="users-id-str",
        ),
        pytest.param(
            "users", pd.DataFrame({"id": [1, 2], "age": [20, 30]}), "users_uri", "column_renames", id="users-no-id"
        ),
        pytest.param(
            "users",
            pd.DataFrame({"user_id": pd.array([1, None], dtype="Int64"), "age": [20, 30]}),
            "users.user_id",
            "Drop the rows without a user_id",
            id="users-null-id",
        ),
        pytest.param(
            "items",
            pd.DataFrame({"item_id": [10.0, 20.0], "Drama": [1, 0]}),
            "items.item_id",
            "Store ids as integers",
            id="items-id-float",
        ),
    ],
)
def test_wrong_column_type_names_column(tmp_path: Path, table: str, frame: pd.DataFrame, field: str, fix: str) -> None:
    source = make_source(tmp_path, **{table: frame})

    with pytest.raises(SourceError) as caught:
        read(source, table)

    assert_names_field(caught.value, field, fix)
    assert str(tmp_path / f"{table}.parquet") in str(caught.value)


@pytest.mark.parametrize("statistics", [True, False], ids=["with-statistics", "without-statistics"])
def test_millisecond_timestamps_rejected_for_one_day(tmp_path: Path, statistics: bool) -> None:
    # The day filters drop every row of a table in milliseconds, so the rows alone never show the mistake.
    events = make_events(timestamp=[value * 1000 for value in make_events()["timestamp"]])
    path = write_parquet(events, tmp_path / "events.parquet", write_statistics=statistics)
    source = RatingsSource(events_uri=path, column_renames={})

    with pytest.raises(SourceError) as caught:
        source.read_events(start=OCT_1, end=OCT_1)

    assert_names_field(caught.value, "events.timestamp", "divide milliseconds by 1000")
    assert "875664000000" in str(caught.value)
