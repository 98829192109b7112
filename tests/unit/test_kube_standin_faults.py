"""Injected faults and the request log of the Kubernetes API stand-in, seen through the official client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
import urllib3

from tests.kube_standin import KubeStandin

GROUP = "ray.io"
VERSION = "v1"
PLURAL = "rayclusters"
NAMESPACE = "team-a"


@pytest.fixture
def kube() -> Iterator[KubeStandin]:
    with KubeStandin() as standin:
        yield standin


@pytest.fixture
def api(kube: KubeStandin) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(kube.api_client())


def raycluster(name: str) -> dict[str, Any]:
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": name}, "spec": {}}


def create(api: kubernetes.client.CustomObjectsApi, name: str) -> dict[str, Any]:
    return api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, raycluster(name))


def test_injected_503_then_success(api: kubernetes.client.CustomObjectsApi, kube: KubeStandin) -> None:
    fault = kube.inject_fault(verb="create", plural=PLURAL, status=503)

    with pytest.raises(kubernetes.client.ApiException) as caught:
        create(api, "train-1")
    created = create(api, "train-1")

    assert caught.value.status == 503
    assert caught.value.reason == "Service Unavailable"
    assert created["metadata"]["name"] == "train-1"
    assert fault.hits == 1
    assert [call.status for call in kube.calls(verb="create", plural=PLURAL)] == [503, 201]


def test_fault_queue_answers_in_order(api: kubernetes.client.CustomObjectsApi, kube: KubeStandin) -> None:
    kube.inject_fault(verb="create", plural=PLURAL, status=503)
    kube.inject_fault(verb="create", plural=PLURAL, status=429, retry_after_s=2)
    kube.inject_fault(verb="create", plural=PLURAL, status=500, message="etcdserver: request timed out")
    failures = []

    for _ in range(3):
        with pytest.raises(kubernetes.client.ApiException) as caught:
            create(api, "train-1")
        failures.append(caught.value)
    create(api, "train-1")

    assert [failure.status for failure in failures] == [503, 429, 500]
    assert failures[1].headers["Retry-After"] == "2"
    assert '"reason": "TooManyRequests"' in failures[1].body
    assert "etcdserver: request timed out" in failures[2].body
    assert kube.faults.pending() == []


def test_fault_matches_only_its_filters(api: kubernetes.client.CustomObjectsApi, kube: KubeStandin) -> None:
    fault = kube.inject_fault(verb="delete", plural=PLURAL, name="train-2", status=500, times=2)

    create(api, "train-1")
    create(api, "train-2")
    api.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1")

    assert fault.hits == 0
    assert kube.faults.pending() == [fault]


def test_dropped_connection_raises_protocol_error(api: kubernetes.client.CustomObjectsApi, kube: KubeStandin) -> None:
    kube.inject_fault(verb="create", plural=PLURAL, drop_connection=True)

    # urllib3 retries a GET after a reset but not a POST, so the create surfaces the reset.
    with pytest.raises(urllib3.exceptions.ProtocolError):
        create(api, "train-1")

    assert kube.calls(verb="create")[0].status is None
    assert kube.store.objects(PLURAL) == []


def test_delay_fault_delays_response(api: kubernetes.client.CustomObjectsApi, kube: KubeStandin) -> None:
    create(api, "train-1")
    kube.inject_fault(verb="get", plural=PLURAL, delay_s=0.2)
    started = time.monotonic()

    fetched = api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1")

    assert time.monotonic() - started >= 0.2
    assert fetched["metadata"]["name"] == "train-1"


def test_request_log_records_create(api: kubernetes.client.CustomObjectsApi, kube: KubeStandin) -> None:
    create(api, "train-1")

    [request] = kube.calls(verb="create", plural=PLURAL)

    assert request.method == "POST"
    assert request.path == "/apis/ray.io/v1/namespaces/team-a/rayclusters"
    assert request.content_type == "application/json"
    assert request.status == 201
    assert request.kind == "RayCluster"
    assert request.namespace == NAMESPACE
    assert request.body["metadata"]["name"] == "train-1"
    assert kube.calls(verb="delete") == []


def test_request_log_records_query(api: kubernetes.client.CustomObjectsApi, kube: KubeStandin) -> None:
    api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, label_selector="ray.io/cluster=train-1")

    [request] = kube.calls(verb="list")

    assert request.query == {"labelSelector": ["ray.io/cluster=train-1"]}
    assert request.name is None


def test_unknown_path_is_not_found(kube: KubeStandin) -> None:
    api = kubernetes.client.CustomObjectsApi(kube.api_client())

    with pytest.raises(kubernetes.client.ApiException) as caught:
        api.list_namespaced_custom_object("example.com", "v1", NAMESPACE, "widgets")

    assert caught.value.status == 404
    assert kube.requests[0].verb is None
    assert kube.requests[0].status == 404


def test_dry_run_is_rejected(api: kubernetes.client.CustomObjectsApi) -> None:
    with pytest.raises(kubernetes.client.ApiException) as caught:
        api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, raycluster("a"), dry_run="All")

    assert caught.value.status == 400


def test_stop_leaves_no_thread() -> None:
    threads_before = set(threading.enumerate())

    with KubeStandin() as kube:
        api = kubernetes.client.CustomObjectsApi(kube.api_client())
        create(api, "train-1")
        api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)

    assert set(threading.enumerate()) - threads_before == set()


def test_concurrent_creates_get_unique_versions(kube: KubeStandin) -> None:
    api = kubernetes.client.CustomObjectsApi(kube.api_client())
    versions: list[str] = []
    lock = threading.Lock()

    def create_many(prefix: str) -> None:
        for index in range(10):
            created = create(api, f"{prefix}-{index}")
            with lock:
                versions.append(created["metadata"]["resourceVersion"])

    workers = [threading.Thread(target=create_many, args=(f"w{number}",)) for number in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert sorted(int(version) for version in versions) == list(range(1, 41))


def test_drop_after_serving_applies_create(api: kubernetes.client.CustomObjectsApi, kube: KubeStandin) -> None:
    fault = kube.inject_fault(verb="create", plural=PLURAL, drop_after_serving=True)

    with pytest.raises(urllib3.exceptions.ProtocolError):
        create(api, "train-1")

    assert fault.exhausted
    assert [call.status for call in kube.calls(verb="create")] == [None]
    assert [item["metadata"]["name"] for item in kube.store.objects(PLURAL)] == ["train-1"]


def test_drop_after_serving_applies_delete(api: kubernetes.client.CustomObjectsApi, kube: KubeStandin) -> None:
    create(api, "train-1")
    kube.inject_fault(verb="delete", plural=PLURAL, drop_after_serving=True)

    # urllib3 retries a DELETE after a reset, and the object is gone by then.
    with pytest.raises(kubernetes.client.ApiException) as caught:
        api.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1")

    assert caught.value.status == 404
    assert kube.store.objects(PLURAL) == []
    assert [call.status for call in kube.calls(verb="delete")] == [None, 404]


def test_drop_after_serving_keeps_connection_usable(api: kubernetes.client.CustomObjectsApi, kube: KubeStandin) -> None:
    kube.inject_fault(verb="create", plural=PLURAL, drop_after_serving=True)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        create(api, "train-1")

    fetched = api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1")

    assert fetched["metadata"]["name"] == "train-1"
    assert kube.calls(verb="get")[0].status == 200


def test_response_delay_past_timeout_applies_create(api: kubernetes.client.CustomObjectsApi, kube: KubeStandin) -> None:
    kube.inject_fault(verb="create", plural=PLURAL, response_delay_s=2.0)
    started = time.monotonic()

    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        api.create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, raycluster("train-1"), _request_timeout=0.2
        )

    # The client gave up at its timeout, and the object and the log entry exist already then.
    assert time.monotonic() - started < 1.0
    assert [item["metadata"]["name"] for item in kube.store.objects(PLURAL)] == ["train-1"]
    assert [call.status for call in kube.calls(verb="create")] == [201]


def test_response_delay_within_timeout_returns(api: kubernetes.client.CustomObjectsApi, kube: KubeStandin) -> None:
    create(api, "train-1")
    kube.inject_fault(verb="get", plural=PLURAL, response_delay_s=0.2)
    started = time.monotonic()

    fetched = api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1")

    assert time.monotonic() - started >= 0.2
    assert fetched["metadata"]["name"] == "train-1"


def test_stop_ends_delayed_response() -> None:
    with KubeStandin() as kube:
        api = kubernetes.client.CustomObjectsApi(kube.api_client())
        kube.inject_fault(verb="create", plural=PLURAL, response_delay_s=60.0)
        with pytest.raises(urllib3.exceptions.ReadTimeoutError):
            api.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, raycluster("train-1"), _request_timeout=0.1
            )
        started = time.monotonic()

    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize(
    "settings",
    [
        {"status": 503, "drop_after_serving": True},
        {"drop_connection": True, "response_delay_s": 1.0},
        {"drop_after_serving": True, "response_delay_s": 1.0},
        {"response_delay_s": -1.0},
    ],
    ids=["status and drop after serving", "drop and response delay", "both after serving", "negative delay"],
)
def test_fault_rejects_conflicting_settings(kube: KubeStandin, settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        kube.inject_fault(verb="create", **settings)


def test_before_serving_runs_before_request(api: kubernetes.client.CustomObjectsApi, kube: KubeStandin) -> None:
    create(api, "train-1")
    # Another client deletes the object just before this client's delete is served.
    kube.inject_fault(
        verb="delete",
        plural=PLURAL,
        name="train-1",
        before_serving=lambda: kube.store.delete(PLURAL, NAMESPACE, "train-1"),
    )

    with pytest.raises(kubernetes.client.ApiException) as caught:
        api.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1")

    assert caught.value.status == 404
    assert [call.status for call in kube.calls(verb="delete")] == [404]
