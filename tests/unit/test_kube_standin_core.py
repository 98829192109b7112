"""The Kubernetes API stand-in, driven through the official client's CoreV1Api and BatchV1Api."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest

from tests.kube_standin import KubeStandin

NAMESPACE = "team-a"
FIXED_TIME = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)


@pytest.fixture
def kube() -> Iterator[KubeStandin]:
    with KubeStandin(clock=lambda: FIXED_TIME) as standin:
        yield standin


@pytest.fixture
def core(kube: KubeStandin) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(kube.api_client())


def pod(name: str, *, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.60.0"}]},
    }


def test_pod_create_sets_pending_phase(core: kubernetes.client.CoreV1Api) -> None:
    created = core.create_namespaced_pod(NAMESPACE, pod("head-0"))

    assert created.status.phase == "Pending"
    assert created.metadata.namespace == NAMESPACE
    assert created.metadata.resource_version == "1"
    assert created.metadata.creation_timestamp == FIXED_TIME
    assert created.spec.containers[0].name == "ray-head"


def test_pod_patch_content_types(core: kubernetes.client.CoreV1Api, kube: KubeStandin) -> None:
    core.create_namespaced_pod(NAMESPACE, pod("head-0"))

    core.patch_namespaced_pod("head-0", NAMESPACE, {"metadata": {"labels": {"a": "1"}}})
    patched = core.patch_namespaced_pod(
        "head-0", NAMESPACE, [{"op": "add", "path": "/metadata/annotations", "value": {"b": "2"}}]
    )

    assert patched.metadata.labels == {"a": "1"}
    assert patched.metadata.annotations == {"b": "2"}
    assert [call.content_type for call in kube.calls(verb="patch", plural="pods")] == [
        "application/strategic-merge-patch+json",
        "application/json-patch+json",
    ]


def test_pod_status_replace(core: kubernetes.client.CoreV1Api) -> None:
    created = core.create_namespaced_pod(NAMESPACE, pod("head-0"))
    created.status.phase = "Running"
    created.spec.containers[0].image = "changed"

    replaced = core.replace_namespaced_pod_status("head-0", NAMESPACE, created)

    assert replaced.status.phase == "Running"
    assert replaced.spec.containers[0].image == "rayproject/ray:2.60.0"


def test_pod_field_selector_on_phase(core: kubernetes.client.CoreV1Api, kube: KubeStandin) -> None:
    core.create_namespaced_pod(NAMESPACE, pod("head-0"))
    core.create_namespaced_pod(NAMESPACE, pod("worker-0"))
    kube.store.update_status("pods", NAMESPACE, "worker-0", {"phase": "Running"})

    running = core.list_namespaced_pod(NAMESPACE, field_selector="status.phase=Running")
    not_running = core.list_namespaced_pod(NAMESPACE, field_selector="status.phase!=Running")

    assert [item.metadata.name for item in running.items] == ["worker-0"]
    assert [item.metadata.name for item in not_running.items] == ["head-0"]


def test_pod_label_selector_across_namespaces(core: kubernetes.client.CoreV1Api) -> None:
    core.create_namespaced_pod(NAMESPACE, pod("head-0", labels={"ray.io/cluster": "train-1"}))
    core.create_namespaced_pod("team-b", pod("head-0", labels={"ray.io/cluster": "train-2"}))

    listed = core.list_pod_for_all_namespaces(label_selector="ray.io/cluster in (train-1)")

    assert [(item.metadata.namespace, item.metadata.name) for item in listed.items] == [(NAMESPACE, "head-0")]


def test_core_list_items_omit_kind(core: kubernetes.client.CoreV1Api) -> None:
    core.create_namespaced_pod(NAMESPACE, pod("head-0"))

    raw = core.list_namespaced_pod(NAMESPACE, _preload_content=False)
    listed = json.loads(raw.data)

    assert listed["kind"] == "PodList"
    assert listed["apiVersion"] == "v1"
    assert "kind" not in listed["items"][0]


def test_event_field_selector_on_involved_object(core: kubernetes.client.CoreV1Api) -> None:
    for name, kind in (("e1", "RayCluster"), ("e2", "Pod"), ("e3", "RayCluster")):
        involved = {"kind": kind, "name": "train-1" if name != "e3" else "train-2", "namespace": NAMESPACE}
        core.create_namespaced_event(NAMESPACE, {"metadata": {"name": name}, "involvedObject": involved})

    listed = core.list_namespaced_event(
        NAMESPACE, field_selector="involvedObject.kind=RayCluster,involvedObject.name=train-1"
    )

    assert [item.metadata.name for item in listed.items] == ["e1"]


def test_service_gets_cluster_ip(core: kubernetes.client.CoreV1Api) -> None:
    body = {"metadata": {"name": "train-1-head-svc"}, "spec": {"ports": [{"port": 10001}]}}

    created = core.create_namespaced_service(NAMESPACE, body)

    assert created.spec.cluster_ip.startswith("10.96.")
    assert created.spec.cluster_ips == [created.spec.cluster_ip]


def test_pod_delete_then_not_found(core: kubernetes.client.CoreV1Api) -> None:
    core.create_namespaced_pod(NAMESPACE, pod("head-0"))

    deleted = core.delete_namespaced_pod("head-0", NAMESPACE)
    with pytest.raises(kubernetes.client.ApiException) as caught:
        core.read_namespaced_pod("head-0", NAMESPACE)

    assert deleted.metadata.name == "head-0"
    assert caught.value.status == 404
    assert json.loads(caught.value.body)["message"] == 'pods "head-0" not found'


def test_pod_log_honours_tail_lines(core: kubernetes.client.CoreV1Api, kube: KubeStandin) -> None:
    core.create_namespaced_pod(NAMESPACE, pod("head-0"))
    kube.store.set_pod_log(NAMESPACE, "head-0", "line 1\nline 2\nline 3\n")

    # kubernetes 36.0.x returns str(bytes) from read_namespaced_pod_log (kubernetes-client/python#2596),
    # so the test reads the raw response.
    tail = core.read_namespaced_pod_log("head-0", NAMESPACE, tail_lines=2, _preload_content=False)
    full = core.read_namespaced_pod_log("head-0", NAMESPACE, _preload_content=False)

    assert tail.data.decode() == "line 2\nline 3\n"
    assert full.data.decode() == "line 1\nline 2\nline 3\n"
    assert tail.headers["Content-Type"] == "text/plain"


def test_pod_log_per_container(core: kubernetes.client.CoreV1Api, kube: KubeStandin) -> None:
    core.create_namespaced_pod(NAMESPACE, pod("head-0"))
    kube.store.set_pod_log(NAMESPACE, "head-0", "any container\n")
    kube.store.set_pod_log(NAMESPACE, "head-0", "autoscaler\n", container="autoscaler")

    autoscaler = core.read_namespaced_pod_log("head-0", NAMESPACE, container="autoscaler", _preload_content=False)
    head = core.read_namespaced_pod_log("head-0", NAMESPACE, container="ray-head", _preload_content=False)

    assert autoscaler.data.decode() == "autoscaler\n"
    assert head.data.decode() == "any container\n"


def test_log_of_missing_pod_is_not_found(core: kubernetes.client.CoreV1Api) -> None:
    with pytest.raises(kubernetes.client.ApiException) as caught:
        core.read_namespaced_pod_log("absent", NAMESPACE, _preload_content=False)

    assert caught.value.status == 404


def test_job_seeded_then_read(kube: KubeStandin) -> None:
    batch = kubernetes.client.BatchV1Api(kube.api_client())
    kube.store.put(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "submit", "namespace": NAMESPACE},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
            "status": {"succeeded": 1},
        }
    )

    fetched = batch.read_namespaced_job("submit", NAMESPACE)
    listed = batch.list_namespaced_job(NAMESPACE)

    assert fetched.status.succeeded == 1
    assert fetched.metadata.creation_timestamp == FIXED_TIME
    assert [item.metadata.name for item in listed.items] == ["submit"]


def test_put_overwrite_bumps_generation(kube: KubeStandin) -> None:
    first = kube.store.put(pod("head-0") | {"metadata": {"name": "head-0", "namespace": NAMESPACE}})
    changed = pod("head-0") | {"metadata": {"name": "head-0", "namespace": NAMESPACE}}
    changed["spec"]["nodeName"] = "node-1"

    second = kube.store.put(changed)

    assert second["metadata"]["uid"] == first["metadata"]["uid"]
    assert second["metadata"]["generation"] == 2
    assert int(second["metadata"]["resourceVersion"]) == int(first["metadata"]["resourceVersion"]) + 1
