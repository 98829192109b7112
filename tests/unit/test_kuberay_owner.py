"""The RayCluster names the Kubernetes Job that the Dagster run runs in as its owner."""

from pathlib import Path

import pytest
from kubernetes import client

from resources.kuberay import backend
from resources.kuberay.backend import find_owner_job
from tests.kube_standin import KubeStandin

NAMESPACE = "ml-training"


def _seed_run_pod(standin: KubeStandin, *, owner_kind: str = "Job") -> None:
    standin.store.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "dagster-run-1234-abcde",
                "namespace": NAMESPACE,
                "ownerReferences": [
                    {"apiVersion": "batch/v1", "kind": owner_kind, "name": "dagster-run-1234", "uid": "uid-of-job"}
                ],
            },
            "spec": {"containers": [{"name": "dagster", "image": "training-pipelines:1"}]},
        }
    )


@pytest.fixture
def in_run_pod(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text(NAMESPACE)
    monkeypatch.setattr(backend, "SERVICE_ACCOUNT_NAMESPACE_FILE", namespace_file)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("HOSTNAME", "dagster-run-1234-abcde")


def test_owner_job_found_from_pod(in_run_pod: None) -> None:
    with KubeStandin() as standin:
        _seed_run_pod(standin)

        owner = find_owner_job(client.CoreV1Api(standin.api_client()), namespace=NAMESPACE)

    assert owner is not None
    assert owner.name == "dagster-run-1234"
    assert owner.uid == "uid-of-job"


def test_no_owner_in_other_namespace(in_run_pod: None) -> None:
    with KubeStandin() as standin:
        _seed_run_pod(standin)

        owner = find_owner_job(client.CoreV1Api(standin.api_client()), namespace="other")

    assert owner is None


def test_no_owner_without_job(in_run_pod: None) -> None:
    with KubeStandin() as standin:
        _seed_run_pod(standin, owner_kind="ReplicaSet")

        owner = find_owner_job(client.CoreV1Api(standin.api_client()), namespace=NAMESPACE)

    assert owner is None


def test_no_owner_outside_kubernetes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    assert find_owner_job(client.CoreV1Api(client.ApiClient()), namespace=NAMESPACE) is None
