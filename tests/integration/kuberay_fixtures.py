"""The Kubernetes API stand-in with the stand-in KubeRay operator, and resources that use them."""

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from resources.cluster import RayClusterResource
from resources.kuberay.schema import validate_manifest
from tests.integration.conftest import small_resources
from tests.kube_standin import KubeStandin
from tests.kube_standin.operator import KubeRayOperatorStandin

NAMESPACE = "ml-training"


@dataclass
class KubeEnvironment:
    standin: KubeStandin
    operator: KubeRayOperatorStandin


SERVER_MANAGED_METADATA = ("uid", "creationTimestamp", "generation", "resourceVersion", "managedFields")


def validate_stored_raycluster(obj: dict[str, Any]) -> list[str]:
    """Validate a RayCluster as the API server stores it, without the fields the server itself sets."""
    manifest = copy.deepcopy(obj)
    manifest.pop("status", None)
    for field in SERVER_MANAGED_METADATA:
        manifest.get("metadata", {}).pop(field, None)
    return validate_manifest(manifest)


@pytest.fixture
def kube() -> Iterator[KubeEnvironment]:
    with KubeStandin(validators={("ray.io", "rayclusters"): validate_stored_raycluster}) as standin:
        with KubeRayOperatorStandin(standin.store) as operator:
            yield KubeEnvironment(standin=standin, operator=operator)


def kuberay_cluster(kube: KubeEnvironment, **overrides: object) -> RayClusterResource:
    return kuberay_cluster_at(kube.standin.url, **overrides)


def kuberay_cluster_at(kube_api_url: str, **overrides: object) -> RayClusterResource:
    """A kuberay resource sized for the stand-in served at ``kube_api_url``."""
    settings: dict[str, object] = {
        "backend": "kuberay",
        "kube_api_url": kube_api_url,
        "namespace": NAMESPACE,
        # The stand-in's clusters serve their dashboard on 127.0.0.1 at a port in the status.
        "dashboard_url_template": "http://{service_ip}:{dashboard_port}",
        "workers": 1,
        "memory_per_worker": "1Gi",
        "head_memory": "2Gi",
        "start_timeout_s": 120.0,
        "team": "ranking",
    }
    settings.update(overrides)
    return RayClusterResource(**settings)  # type: ignore[arg-type]


def kuberay_resources(storage_root: Path, kube: KubeEnvironment, **overrides: object) -> dict[str, object]:
    resources = small_resources(storage_root)
    resources["ray_cluster"] = kuberay_cluster(kube, **overrides)
    return resources
