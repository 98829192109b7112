"""The Kubernetes API stand-in, driven through the official client's CustomObjectsApi."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest

from tests.kube_standin import KubeStandin

GROUP = "ray.io"
VERSION = "v1"
PLURAL = "rayclusters"
NAMESPACE = "team-a"
FIXED_TIME = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)


def reject_zero_workers(obj: dict[str, Any]) -> list[str]:
    replicas = obj.get("spec", {}).get("workerGroupSpecs", [{}])[0].get("replicas", 1)
    return ["spec.workerGroupSpecs[0].replicas: Invalid value: 0: must be at least 1"] if replicas == 0 else []


@pytest.fixture
def kube() -> Iterator[KubeStandin]:
    with KubeStandin(validators={(GROUP, PLURAL): reject_zero_workers}, clock=lambda: FIXED_TIME) as standin:
        yield standin


@pytest.fixture
def api(kube: KubeStandin) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(kube.api_client())


def raycluster(name: str, *, labels: dict[str, str] | None = None, replicas: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"workerGroupSpecs": [{"groupName": "workers", "replicas": replicas}]},
    }


def create(api: kubernetes.client.CustomObjectsApi, body: dict[str, Any], namespace: str = NAMESPACE) -> dict[str, Any]:
    return api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def status_body(err: kubernetes.client.ApiException) -> dict[str, Any]:
    return json.loads(err.body)


def test_create_fills_server_metadata(api: kubernetes.client.CustomObjectsApi) -> None:
    body = raycluster("train-1")
    body["status"] = {"state": "ready"}

    created = create(api, body)

    metadata = created["metadata"]
    assert metadata["namespace"] == NAMESPACE
    assert len(metadata["uid"]) == 36
    assert metadata["resourceVersion"] == "1"
    assert metadata["generation"] == 1
    assert metadata["creationTimestamp"] == "2026-03-04T05:06:07Z"
    assert "status" not in created


def test_resource_version_increases_globally(api: kubernetes.client.CustomObjectsApi) -> None:
    first = create(api, raycluster("train-1"))
    second = create(api, raycluster("train-2"), namespace="team-b")

    assert int(second["metadata"]["resourceVersion"]) == int(first["metadata"]["resourceVersion"]) + 1


def test_get_returns_created_object(api: kubernetes.client.CustomObjectsApi) -> None:
    created = create(api, raycluster("train-1"))

    fetched = api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1")

    assert fetched == created


def test_list_has_kind_and_version(api: kubernetes.client.CustomObjectsApi) -> None:
    create(api, raycluster("train-b"))
    create(api, raycluster("train-a"))
    create(api, raycluster("elsewhere"), namespace="team-b")

    listed = api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)

    assert listed["kind"] == "RayClusterList"
    assert listed["apiVersion"] == "ray.io/v1"
    assert listed["metadata"]["resourceVersion"] == "3"
    assert [item["metadata"]["name"] for item in listed["items"]] == ["train-a", "train-b"]
    assert listed["items"][0]["kind"] == "RayCluster"


def test_cluster_wide_list_spans_namespaces(api: kubernetes.client.CustomObjectsApi) -> None:
    create(api, raycluster("train-1"))
    create(api, raycluster("train-2"), namespace="team-b")

    listed = api.list_cluster_custom_object(GROUP, VERSION, PLURAL)

    assert [(item["metadata"]["namespace"], item["metadata"]["name"]) for item in listed["items"]] == [
        ("team-a", "train-1"),
        ("team-b", "train-2"),
    ]


def test_list_pages_with_limit_and_continue(api: kubernetes.client.CustomObjectsApi) -> None:
    for name in ("c", "a", "b"):
        create(api, raycluster(name))

    first = api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, limit=2)
    second = api.list_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, limit=2, _continue=first["metadata"]["continue"]
    )

    assert [item["metadata"]["name"] for item in first["items"]] == ["a", "b"]
    assert first["metadata"]["remainingItemCount"] == 1
    assert [item["metadata"]["name"] for item in second["items"]] == ["c"]
    assert "continue" not in second["metadata"]


def test_replace_bumps_generation_on_spec_change(api: kubernetes.client.CustomObjectsApi) -> None:
    created = create(api, raycluster("train-1"))
    created["spec"]["workerGroupSpecs"][0]["replicas"] = 4

    replaced = api.replace_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1", created)

    assert replaced["metadata"]["generation"] == 2
    assert replaced["metadata"]["resourceVersion"] == "2"
    assert replaced["metadata"]["uid"] == created["metadata"]["uid"]
    assert replaced["spec"]["workerGroupSpecs"][0]["replicas"] == 4


def test_label_change_keeps_generation(api: kubernetes.client.CustomObjectsApi) -> None:
    create(api, raycluster("train-1"))

    patched = api.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, "train-1", {"metadata": {"labels": {"team": "a"}}}
    )

    assert patched["metadata"]["generation"] == 1
    assert patched["metadata"]["labels"] == {"team": "a"}


def test_replace_with_stale_version_conflicts(api: kubernetes.client.CustomObjectsApi) -> None:
    stale = create(api, raycluster("train-1"))
    api.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1", {"spec": {"suspend": True}})

    with pytest.raises(kubernetes.client.ApiException) as caught:
        api.replace_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1", stale)

    assert caught.value.status == 409
    assert caught.value.reason == "Conflict"
    assert status_body(caught.value)["reason"] == "Conflict"
    assert "the object has been modified" in status_body(caught.value)["message"]


def test_replace_without_version_is_invalid(api: kubernetes.client.CustomObjectsApi) -> None:
    create(api, raycluster("train-1"))

    with pytest.raises(kubernetes.client.ApiException) as caught:
        api.replace_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1", raycluster("train-1"))

    assert caught.value.status == 422
    assert status_body(caught.value)["reason"] == "Invalid"


def test_merge_patch_changes_spec_only(api: kubernetes.client.CustomObjectsApi, kube: KubeStandin) -> None:
    create(api, raycluster("train-1"))
    kube.store.update_status(PLURAL, NAMESPACE, "train-1", {"state": "ready"})

    patched = api.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NAMESPACE,
        PLURAL,
        "train-1",
        {"spec": {"suspend": True}, "status": {"state": "failed"}},
    )

    assert patched["spec"]["suspend"] is True
    assert patched["spec"]["workerGroupSpecs"][0]["replicas"] == 2
    assert patched["status"] == {"state": "ready"}
    assert patched["metadata"]["generation"] == 2
    assert kube.calls(verb="patch")[0].content_type == "application/merge-patch+json"


def test_merge_patch_with_stale_version_conflicts(api: kubernetes.client.CustomObjectsApi) -> None:
    create(api, raycluster("train-1"))
    api.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1", {"spec": {"suspend": True}})

    with pytest.raises(kubernetes.client.ApiException) as caught:
        api.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, "train-1", {"metadata": {"resourceVersion": "1"}, "spec": {}}
        )

    assert caught.value.status == 409


def test_json_patch_needs_forced_content_type(api: kubernetes.client.CustomObjectsApi, kube: KubeStandin) -> None:
    create(api, raycluster("train-1"))
    operations = [
        {"op": "test", "path": "/spec/workerGroupSpecs/0/replicas", "value": 2},
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 5},
    ]

    # CustomObjectsApi sends application/merge-patch+json even for a list body, which no server accepts.
    with pytest.raises(kubernetes.client.ApiException) as caught:
        api.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1", operations)
    patched = api.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, "train-1", operations, _content_type="application/json-patch+json"
    )

    assert caught.value.status == 400
    assert patched["spec"]["workerGroupSpecs"][0]["replicas"] == 5
    assert [call.content_type for call in kube.calls(verb="patch")] == [
        "application/merge-patch+json",
        "application/json-patch+json",
    ]


def test_failed_json_patch_test_is_invalid(api: kubernetes.client.CustomObjectsApi) -> None:
    create(api, raycluster("train-1"))
    operations = [{"op": "test", "path": "/spec/workerGroupSpecs/0/replicas", "value": 9}]

    with pytest.raises(kubernetes.client.ApiException) as caught:
        api.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, "train-1", operations, _content_type="application/json-patch+json"
        )

    assert caught.value.status == 422


def test_status_patch_keeps_generation(api: kubernetes.client.CustomObjectsApi) -> None:
    create(api, raycluster("train-1"))

    patched = api.patch_namespaced_custom_object_status(
        GROUP, VERSION, NAMESPACE, PLURAL, "train-1", {"status": {"state": "ready"}, "spec": {"suspend": True}}
    )

    assert patched["status"] == {"state": "ready"}
    assert "suspend" not in patched["spec"]
    assert patched["metadata"]["generation"] == 1
    assert patched["metadata"]["resourceVersion"] == "2"


def test_status_replace_changes_only_status(api: kubernetes.client.CustomObjectsApi) -> None:
    created = create(api, raycluster("train-1"))
    created["status"] = {"state": "suspended"}
    created["spec"]["workerGroupSpecs"][0]["replicas"] = 7

    replaced = api.replace_namespaced_custom_object_status(GROUP, VERSION, NAMESPACE, PLURAL, "train-1", created)
    fetched = api.get_namespaced_custom_object_status(GROUP, VERSION, NAMESPACE, PLURAL, "train-1")

    assert replaced["status"] == {"state": "suspended"}
    assert replaced["spec"]["workerGroupSpecs"][0]["replicas"] == 2
    assert replaced["metadata"]["generation"] == 1
    assert fetched == replaced


def test_unchanged_patch_keeps_resource_version(api: kubernetes.client.CustomObjectsApi) -> None:
    created = create(api, raycluster("train-1"))

    patched = api.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1", {"spec": {}})

    assert patched["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_delete_returns_object_then_not_found(api: kubernetes.client.CustomObjectsApi) -> None:
    create(api, raycluster("train-1"))

    deleted = api.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1")
    with pytest.raises(kubernetes.client.ApiException) as caught:
        api.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1")

    assert deleted["metadata"]["name"] == "train-1"
    assert deleted["metadata"]["resourceVersion"] == "2"
    assert caught.value.status == 404


def test_finalizer_delays_deletion(api: kubernetes.client.CustomObjectsApi) -> None:
    body = raycluster("train-1")
    body["metadata"]["finalizers"] = ["ray.io/cleanup"]
    create(api, body)

    marked = api.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1")
    api.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1", {"metadata": {"finalizers": None}})
    with pytest.raises(kubernetes.client.ApiException) as caught:
        api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1")

    assert marked["metadata"]["deletionTimestamp"] == "2026-03-04T05:06:07Z"
    assert caught.value.status == 404


def test_get_missing_object_is_not_found(api: kubernetes.client.CustomObjectsApi) -> None:
    with pytest.raises(kubernetes.client.ApiException) as caught:
        api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "absent")

    body = status_body(caught.value)
    assert caught.value.status == 404
    assert caught.value.reason == "Not Found"
    assert body["kind"] == "Status"
    assert body["status"] == "Failure"
    assert body["reason"] == "NotFound"
    assert body["message"] == 'rayclusters.ray.io "absent" not found'
    assert body["details"] == {"name": "absent", "group": "ray.io", "kind": "rayclusters"}


def test_duplicate_create_already_exists(api: kubernetes.client.CustomObjectsApi) -> None:
    create(api, raycluster("train-1"))

    with pytest.raises(kubernetes.client.ApiException) as caught:
        create(api, raycluster("train-1"))

    assert caught.value.status == 409
    assert status_body(caught.value)["reason"] == "AlreadyExists"


def test_validator_rejection_is_invalid(api: kubernetes.client.CustomObjectsApi, kube: KubeStandin) -> None:
    with pytest.raises(kubernetes.client.ApiException) as caught:
        create(api, raycluster("train-1", replicas=0))

    body = status_body(caught.value)
    assert caught.value.status == 422
    assert caught.value.reason == "Unprocessable Entity"
    assert body["reason"] == "Invalid"
    assert body["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": "spec.workerGroupSpecs[0].replicas: Invalid value: 0: must be at least 1",
        }
    ]
    assert kube.store.objects(PLURAL) == []


def test_validator_also_checks_patches(api: kubernetes.client.CustomObjectsApi) -> None:
    create(api, raycluster("train-1"))
    operations = [{"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 0}]

    with pytest.raises(kubernetes.client.ApiException) as caught:
        api.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, "train-1", operations, _content_type="application/json-patch+json"
        )

    assert caught.value.status == 422


def test_generate_name_appends_suffix(api: kubernetes.client.CustomObjectsApi) -> None:
    body = raycluster("")
    body["metadata"] = {"generateName": "train-"}

    created = create(api, body)

    assert created["metadata"]["name"].startswith("train-")
    assert len(created["metadata"]["name"]) == len("train-") + 5


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("tier=gpu", ["b"]),
        ("tier==gpu", ["b"]),
        ("tier!=gpu", ["a", "c"]),
        ("tier in (cpu,gpu)", ["a", "b"]),
        ("tier notin (cpu)", ["b", "c"]),
        ("tier", ["a", "b"]),
        ("!tier", ["c"]),
        ("tier,team=x", ["a"]),
    ],
)
def test_label_selector_operators(api: kubernetes.client.CustomObjectsApi, selector: str, expected: list[str]) -> None:
    create(api, raycluster("a", labels={"tier": "cpu", "team": "x"}))
    create(api, raycluster("b", labels={"tier": "gpu"}))
    create(api, raycluster("c", labels={"team": "x"}))

    listed = api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, label_selector=selector)

    assert [item["metadata"]["name"] for item in listed["items"]] == expected


def test_invalid_label_selector_is_bad_request(api: kubernetes.client.CustomObjectsApi) -> None:
    with pytest.raises(kubernetes.client.ApiException) as caught:
        api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, label_selector="tier in cpu")

    assert caught.value.status == 400


def test_field_selector_by_name(api: kubernetes.client.CustomObjectsApi) -> None:
    create(api, raycluster("a"))
    create(api, raycluster("b"))

    equal = api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, field_selector="metadata.name=b")
    not_equal = api.list_cluster_custom_object(GROUP, VERSION, PLURAL, field_selector="metadata.name!=b")

    assert [item["metadata"]["name"] for item in equal["items"]] == ["b"]
    assert [item["metadata"]["name"] for item in not_equal["items"]] == ["a"]


def test_unsupported_field_selector_is_bad_request(api: kubernetes.client.CustomObjectsApi) -> None:
    with pytest.raises(kubernetes.client.ApiException) as caught:
        api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, field_selector="spec.suspend=true")

    assert caught.value.status == 400
    assert status_body(caught.value)["message"] == "field label not supported: spec.suspend"


def test_delete_collection_by_label(api: kubernetes.client.CustomObjectsApi, kube: KubeStandin) -> None:
    create(api, raycluster("a", labels={"run": "1"}))
    create(api, raycluster("b", labels={"run": "2"}))

    api.delete_collection_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, label_selector="run=1")

    assert [obj["metadata"]["name"] for obj in kube.store.objects(PLURAL)] == ["b"]


def test_rayjobs_are_served(api: kubernetes.client.CustomObjectsApi) -> None:
    body = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "job-1"}, "spec": {"entrypoint": "x"}}

    created = api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "rayjobs", body)

    assert created["kind"] == "RayJob"
    assert created["metadata"]["generation"] == 1
