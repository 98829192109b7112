"""The kuberay backend end to end against the Kubernetes API stand-in and the stand-in operator."""

import socket
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from resources.kuberay.backend import KubeRayCluster
from resources.kuberay.lifecycle import probe_dashboard
from resources.kuberay.manifest import RUN_ID_KEY, RunContext
from resources.kuberay.naming import label_value
from resources.kuberay.policy import load_policy
from resources.kuberay.schema import validate_manifest
from tests.integration.conftest import materialize_history
from tests.integration.kuberay_fixtures import NAMESPACE, KubeEnvironment, kube, kuberay_cluster, kuberay_resources
from tests.kube_standin import RAYCLUSTERS
from training_pipelines.definitions import defs

pytestmark = pytest.mark.integration

__all__ = ["kube"]


def _raycluster_creates(kube: KubeEnvironment) -> list[dict]:
    return [
        request.body
        for request in kube.standin.requests
        if request.method == "POST" and request.path.endswith("/rayclusters")
    ]


def test_partition_trains_on_kuberay(
    storage_root: Path, kube: KubeEnvironment, instance: dg.DagsterInstance, no_leaked_ray_processes: None
) -> None:
    resources = kuberay_resources(storage_root, kube)
    materialize_history(resources, first="1997-09-20", last="1997-10-21")

    result = defs.resolve_job_def("daily_retrain_job").execute_in_process(
        partition_key="1997-10-20", instance=instance, resources=resources, raise_on_error=False
    )

    assert result.success
    creates = _raycluster_creates(kube)
    assert len(creates) == 1
    manifest = creates[0]
    assert validate_manifest(manifest) == []
    labels = manifest["metadata"]["labels"]
    assert labels[RUN_ID_KEY] == label_value(result.run_id)
    assert labels["dagster/partition"] == "1997-10-20"
    assert labels["dagster/asset"] == "ranking_model"
    assert kube.standin.store.objects(RAYCLUSTERS) == [], "the RayCluster was not deleted"
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("Epoch 2/2" in message for message in logs)
    assert any("HeadPodReady" in message for message in logs)


def test_missing_image_fails_fast(kube: KubeEnvironment, no_leaked_ray_processes: None) -> None:
    cluster = kuberay_cluster(kube, image="rayproject/ray:does-not-exist")

    @dg.asset
    def needs_ray(ray_cluster: dg.ResourceParam[object]) -> None:
        ray_cluster.ensure_started()  # type: ignore[attr-defined]

    result = dg.materialize([needs_ray], resources={"ray_cluster": cluster}, raise_on_error=False)

    assert not result.success
    message = result.failure_data_for_node("needs_ray").error.to_string()  # type: ignore[union-attr]
    assert "rayproject/ray:does-not-exist" in message
    assert "ImagePullBackOff" in message
    assert kube.standin.store.objects(RAYCLUSTERS) == []


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"image": "registry.example.com/ray:2.60.0"}, "image"),
        ({"template": "gpu", "gpu_type": "t4", "gpus_per_worker": 8, "workers": 4}, "gpu"),
        ({"template": "gpu", "gpus_per_worker": 1}, "gpu_type"),
    ],
)
def test_policy_violation_creates_nothing(kube: KubeEnvironment, overrides: dict[str, object], field: str) -> None:
    cluster = kuberay_cluster(kube, **overrides)

    @dg.asset
    def needs_ray(ray_cluster: dg.ResourceParam[object]) -> None:
        ray_cluster.ensure_started()  # type: ignore[attr-defined]

    result = dg.materialize([needs_ray], resources={"ray_cluster": cluster}, raise_on_error=False)

    assert not result.success
    failures = [event for event in result.all_events if event.is_failure]
    assert field in str(failures[0].event_specific_data).lower()
    assert _raycluster_creates(kube) == []


def test_port_forward_reaches_dashboard(kube: KubeEnvironment, no_leaked_ray_processes: None) -> None:
    def direct_connector(core_api: object, *, namespace: str, pod: str, port: int) -> Callable[[], socket.socket]:
        # The stand-in serves no portforward protocol; connect straight to the head's dashboard.
        status = kube.standin.store.objects(RAYCLUSTERS)[0]["status"]
        return lambda: socket.create_connection(("127.0.0.1", int(status["endpoints"]["dashboard"])))

    resource = kuberay_cluster(kube, port_forward=True)
    cluster = KubeRayCluster(
        api_client=kube.standin.api_client(),
        request=resource.cluster_request(),
        context=RunContext(
            run_id="port-forward-run",
            job_name="manual",
            namespace=NAMESPACE,
            code_location="training_pipelines",
            owner="tests",
            run_url="http://127.0.0.1:3000/runs/port-forward-run",
        ),
        policy=load_policy(),
        port_forward=True,
        connector_factory=direct_connector,
    )
    try:
        info = cluster.start()

        assert info.dashboard_url.startswith("http://127.0.0.1:")
        assert probe_dashboard(info.dashboard_url)
    finally:
        cluster.stop()
    assert kube.standin.store.objects(RAYCLUSTERS) == []
