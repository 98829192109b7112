"""Failures of the kuberay backend against the stand-in API server and operator: pods that never start,
interrupted and killed runs, and the orphan sensor that deletes what a killed run left behind.

The stand-in and its operator run in the test process. A run that is signalled runs in a subprocess
(``run_partition`` given the stand-in's URL), so the Ray clusters the operator starts outlive that
subprocess as real pods would outlive a killed Dagster run.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from resources.cluster import RayClusterResource
from resources.errors import ClusterStartError
from resources.kuberay.manifest import render_raycluster
from resources.kuberay.naming import cluster_name
from resources.kuberay.policy import load_policy
from tests.integration.conftest import (
    materialize_history,
    ray_processes,
    small_resources,
    wait_for_no_new_ray_processes,
)
from tests.integration.kuberay_fixtures import NAMESPACE, KubeEnvironment, kube, kuberay_cluster
from tests.integration.test_teardown import _wait_for_output
from tests.kube_standin import RAYCLUSTERS
from tests.kube_standin.operator import HEAD_CRASH_LOG
from training_pipelines.defs.clusters import orphaned_ray_clusters_sensor

pytestmark = pytest.mark.integration

__all__ = ["kube"]

PARTITION = "1997-10-20"
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
EXIT_TIMEOUT_S = 60.0
# A RayCluster deleted while the operator starts its Ray processes is stopped only after the start
# finishes, which takes 10-20 s on a 2-core machine.
CLEANUP_TIMEOUT_S = 60.0
# The unschedulable and crash-looping cases start no Ray processes, so they fail as soon as the
# operator writes the pod status. The bound leaves room for Dagster's own start-up.
FAIL_FAST_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def stored_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storage root with ratings_daily stored for the days the partition's training reads."""
    root = tmp_path_factory.mktemp("history")
    materialize_history(small_resources(root), first="1997-09-20", last="1997-10-21")
    return root


@pytest.fixture
def history_root(stored_history: Path, storage_root: Path) -> Path:
    shutil.copytree(stored_history, storage_root, dirs_exist_ok=True)
    return storage_root


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def raycluster_names(kube: KubeEnvironment) -> list[str]:
    return [cluster["metadata"]["name"] for cluster in kube.standin.store.objects(RAYCLUSTERS)]


def raycluster_deletes(kube: KubeEnvironment) -> list[str | None]:
    return [call.name for call in kube.standin.calls(verb="delete", plural="rayclusters")]


def start_run(storage_root: Path, kube: KubeEnvironment) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.run_partition",
            str(storage_root),
            PARTITION,
            kube.standin.url,
        ],
        cwd=REPOSITORY_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@dg.asset
def needs_ray(ray_cluster: RayClusterResource) -> None:
    ray_cluster.ensure_started()


def test_default_policy_allows_t4_gpu_workers() -> None:
    resource = RayClusterResource(backend="kuberay", template="gpu", gpus_per_worker=1, gpu_type="t4", workers=1)
    with dg.build_init_resource_context() as context:
        resource.setup_for_execution(context)

    manifest = render_raycluster(
        request=resource.cluster_request(), context=resource.run_context(), policy=load_policy()
    )

    worker = manifest["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["nodeSelector"] == {"nvidia.com/gpu.product": "Tesla-T4"}


def test_unschedulable_gpu_fails_fast(kube: KubeEnvironment, no_leaked_ray_processes: None) -> None:
    cluster = kuberay_cluster(kube, template="gpu", gpus_per_worker=1, gpu_type="t4")

    started = time.monotonic()
    result = dg.materialize([needs_ray], resources={"ray_cluster": cluster}, raise_on_error=False)
    elapsed_s = time.monotonic() - started

    assert not result.success
    failure = result.failure_data_for_node("needs_ray")
    assert failure is not None and failure.error is not None
    message = failure.error.to_string()
    assert "0/3 nodes are available: 3 Insufficient nvidia.com/gpu" in message
    assert "unschedulable" in message
    assert elapsed_s < FAIL_FAST_TIMEOUT_S, f"the unschedulable cluster took {elapsed_s:.1f} s to fail"
    assert raycluster_names(kube) == []
    assert len(raycluster_deletes(kube)) == 1
    assert kube.operator.running_clusters() == []


def test_crash_looping_head_fails_with_log(kube: KubeEnvironment, no_leaked_ray_processes: None) -> None:
    run_id = str(uuid.uuid4())
    name = cluster_name(run_id=run_id)
    kube.operator.crash_head(name)
    job = dg.Definitions(
        assets=[needs_ray],
        jobs=[dg.define_asset_job("needs_ray_job", selection=[needs_ray])],
        resources={"ray_cluster": kuberay_cluster(kube)},
    ).resolve_job_def("needs_ray_job")

    started = time.monotonic()
    result = job.execute_in_process(run_id=run_id, raise_on_error=False)
    elapsed_s = time.monotonic() - started

    assert not result.success
    failure = result.failure_data_for_node("needs_ray")
    assert failure is not None and failure.error is not None
    message = failure.error.to_string()
    assert ClusterStartError.__name__ in message
    assert f"{NAMESPACE}/{name}" in message
    assert "crash-looping" in message
    for line in HEAD_CRASH_LOG.splitlines():
        assert line in message
    assert elapsed_s < FAIL_FAST_TIMEOUT_S, f"the crash-looping cluster took {elapsed_s:.1f} s to fail"
    assert raycluster_names(kube) == []
    assert raycluster_deletes(kube) == [name]


@pytest.mark.parametrize(
    ("marker", "phase"),
    [("Creating RayCluster", "while the cluster starts"), ("Epoch 1/", "during training")],
)
def test_interrupted_run_deletes_raycluster(
    kube: KubeEnvironment, history_root: Path, no_leaked_ray_processes: None, marker: str, phase: str
) -> None:
    before = ray_processes()
    process = start_run(history_root, kube)
    try:
        lines, reader = _wait_for_output(process, marker)
        # "Creating RayCluster" is logged just before the POST. Waiting for the object puts the signal
        # inside wait_until_ready rather than inside the create call.
        assert wait_until(lambda: raycluster_names(kube) != [], EXIT_TIMEOUT_S), "the RayCluster was never created"
        # Dagster terminates a run by sending SIGINT to the run worker process.
        process.send_signal(signal.SIGINT)
        process.wait(timeout=EXIT_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(timeout=EXIT_TIMEOUT_S)
    output = "".join(lines)

    assert process.returncode != 0, f"the run did not stop {phase}:\n{output[-4000:]}"
    created = kube.standin.calls(verb="create", plural="rayclusters", status=201)
    assert len(created) == 1
    assert wait_until(lambda: raycluster_names(kube) == [], CLEANUP_TIMEOUT_S), (
        f"RayClusters left after the run was interrupted {phase}: {raycluster_names(kube)}\n{output[-4000:]}"
    )
    # Only the run deletes a RayCluster in this test.
    assert raycluster_deletes(kube) == [created[0].body["metadata"]["name"]]
    leaked = wait_for_no_new_ray_processes(before, timeout_s=CLEANUP_TIMEOUT_S)
    assert leaked == {}, f"Ray processes left after the run was interrupted {phase}: {leaked}"


def test_orphan_sensor_deletes_killed_runs_cluster(
    kube: KubeEnvironment, history_root: Path, no_leaked_ray_processes: None
) -> None:
    before = ray_processes()
    process = start_run(history_root, kube)
    try:
        _wait_for_output(process, "Epoch 1/")
        # SIGKILL runs no cleanup in the run process, so its RayCluster outlives it.
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=EXIT_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL

    orphans = raycluster_names(kube)
    assert len(orphans) == 1
    assert kube.operator.running_clusters() == orphans
    assert raycluster_deletes(kube) == []

    # The subprocess ran on an ephemeral instance, so this instance has no run with the cluster's run id.
    with (
        dg.DagsterInstance.ephemeral() as instance,
        dg.build_sensor_context(instance=instance, resources={"ray_cluster": kuberay_cluster(kube)}) as context,
    ):
        first = orphaned_ray_clusters_sensor(context)
        deletes_after_first = raycluster_deletes(kube)
        second = orphaned_ray_clusters_sensor(context)

    assert isinstance(first, dg.SkipReason)
    assert first.skip_message is not None
    assert orphans[0] in first.skip_message
    assert "Deleted 1 orphaned RayCluster" in first.skip_message
    assert raycluster_names(kube) == []
    assert deletes_after_first == orphans
    assert isinstance(second, dg.SkipReason)
    assert second.skip_message == f"No orphaned RayCluster among 0 in {NAMESPACE}"
    assert raycluster_deletes(kube) == orphans
    leaked = wait_for_no_new_ray_processes(before, timeout_s=CLEANUP_TIMEOUT_S)
    assert leaked == {}, f"Ray processes left after the orphan sensor deleted the RayCluster: {leaked}"
