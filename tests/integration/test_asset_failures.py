"""The asset raises before, during or after its Ray job: the step fails with that error and the cluster goes."""

import sys

import dagster as dg
import pytest

from resources.cluster import RayClusterResource
from tests.integration.kuberay_fixtures import KubeEnvironment, kube, kuberay_cluster
from tests.integration.test_kuberay_faults import raycluster_deletes, raycluster_names

pytestmark = pytest.mark.integration

__all__ = ["kube"]

JOB_ENTRYPOINT = f"{sys.executable} -c \"[print(f'training step {{i}}', flush=True) for i in range(5)]\""
ERRORS = {
    "before": "the feature table has no user_id column",
    "during": "the Dagster log rejected a line",
    "after": "the result file is unreadable",
}


def _raising_asset(phase: str) -> dg.AssetsDefinition:
    @dg.asset(name=f"raises_{phase}_training")
    def raising(ray_cluster: RayClusterResource) -> None:
        ray_cluster.ensure_started()
        if phase == "before":
            raise RuntimeError(ERRORS[phase])

        def on_log_line(line: str) -> None:
            if phase == "during" and "training step 2" in line:
                raise RuntimeError(ERRORS[phase])

        ray_cluster.submit_job(entrypoint=JOB_ENTRYPOINT, job_name=phase, on_log_line=on_log_line)
        raise RuntimeError(ERRORS[phase])

    return raising


def _failure_message(result: dg.ExecuteInProcessResult, phase: str) -> str:
    assert not result.success
    failure = result.failure_data_for_node(f"raises_{phase}_training")
    assert failure is not None and failure.error is not None
    return failure.error.to_string()


@pytest.mark.parametrize("phase", ["before", "during", "after"])
def test_local_cluster_goes_when_the_asset_raises(phase: str, no_leaked_ray_processes: None) -> None:
    cluster = RayClusterResource(workers=1, memory_per_worker="512Mi", object_store_memory="128Mi")

    result = dg.materialize([_raising_asset(phase)], resources={"ray_cluster": cluster}, raise_on_error=False)

    assert ERRORS[phase] in _failure_message(result, phase)


def test_raycluster_goes_when_the_asset_raises_after_training(
    kube: KubeEnvironment, no_leaked_ray_processes: None
) -> None:
    result = dg.materialize(
        [_raising_asset("after")], resources={"ray_cluster": kuberay_cluster(kube)}, raise_on_error=False
    )

    assert ERRORS["after"] in _failure_message(result, "after")
    assert raycluster_names(kube) == []
    assert len(raycluster_deletes(kube)) == 1
    assert kube.operator.running_clusters() == []
