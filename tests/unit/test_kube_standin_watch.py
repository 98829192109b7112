"""Watches on the Kubernetes API stand-in through `kubernetes.watch.Watch`, and the store's Python subscription."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest

from tests.kube_standin import KubeStandin, WatchEvent

GROUP = "ray.io"
VERSION = "v1"
PLURAL = "rayclusters"
NAMESPACE = "team-a"
# Watches ask for timeoutSeconds=1; the stand-in scales that to 0.2 s of real time.
WATCH_TIMEOUT_SCALE = 0.2


@pytest.fixture
def kube() -> Iterator[KubeStandin]:
    with KubeStandin(watch_timeout_scale=WATCH_TIMEOUT_SCALE) as standin:
        yield standin


@pytest.fixture
def api(kube: KubeStandin) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(kube.api_client())


def raycluster(name: str, *, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"workerGroupSpecs": [{"groupName": "workers", "replicas": 1}]},
    }


def watch_rayclusters(api: kubernetes.client.CustomObjectsApi, **kwargs: Any) -> list[tuple[str, str, str]]:
    """Return (type, name, resourceVersion) of each event of one watch that ends after `timeoutSeconds`."""
    stream = kubernetes.watch.Watch().stream(
        api.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL, timeout_seconds=1, **kwargs
    )
    return [
        (event["type"], event["object"]["metadata"]["name"], event["object"]["metadata"]["resourceVersion"])
        for event in stream
    ]


def test_watch_replays_changes_in_order(api: kubernetes.client.CustomObjectsApi) -> None:
    seed = api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, raycluster("seed"))
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, raycluster("train-1"))
    api.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1", {"spec": {"suspend": True}})
    api.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1")

    events = watch_rayclusters(api, resource_version=seed["metadata"]["resourceVersion"])

    assert events == [("ADDED", "train-1", "2"), ("MODIFIED", "train-1", "3"), ("DELETED", "train-1", "4")]


def test_watch_receives_live_changes(api: kubernetes.client.CustomObjectsApi) -> None:
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, raycluster("train-1"))
    seen: list[tuple[str, Any]] = []

    watch = kubernetes.watch.Watch()
    for event in watch.stream(api.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL, timeout_seconds=5):
        seen.append((event["type"], event["object"]["spec"].get("suspend")))
        if event["type"] == "ADDED":
            api.patch_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, "train-1", {"spec": {"suspend": True}}
            )
        elif event["type"] == "MODIFIED":
            api.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1")
        else:
            watch.stop()

    assert seen == [("ADDED", None), ("MODIFIED", True), ("DELETED", True)]


def test_watch_ends_after_timeout_seconds(api: kubernetes.client.CustomObjectsApi) -> None:
    started = time.monotonic()

    events = watch_rayclusters(api)

    elapsed = time.monotonic() - started
    assert events == []
    assert elapsed >= WATCH_TIMEOUT_SCALE
    assert elapsed < WATCH_TIMEOUT_SCALE + 1.0


def test_watch_resumes_from_resource_version(api: kubernetes.client.CustomObjectsApi) -> None:
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, raycluster("old"))
    listed = api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, raycluster("new"))

    events = watch_rayclusters(api, resource_version=listed["metadata"]["resourceVersion"])

    assert events == [("ADDED", "new", "2")]


def test_watch_without_version_lists_first(api: kubernetes.client.CustomObjectsApi) -> None:
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, raycluster("b"))
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, raycluster("a"))
    api.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "b", {"spec": {"suspend": True}})

    events = watch_rayclusters(api)

    assert events == [("ADDED", "a", "2"), ("ADDED", "b", "3")]


def test_expired_version_raises_gone(api: kubernetes.client.CustomObjectsApi, kube: KubeStandin) -> None:
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, raycluster("train-1"))
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, raycluster("train-2"))
    kube.store.compact()

    with pytest.raises(kubernetes.client.ApiException) as caught:
        watch_rayclusters(api, resource_version="1")

    assert caught.value.status == 410
    assert "too old resource version" in caught.value.reason


def test_label_selector_turns_modified_into_deleted(api: kubernetes.client.CustomObjectsApi) -> None:
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, raycluster("a", labels={"run": "1"}))
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, raycluster("b", labels={"run": "2"}))
    api.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "a", {"metadata": {"labels": {"run": "3"}}})
    api.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "b", {"metadata": {"labels": {"run": "1"}}})

    events = watch_rayclusters(api, resource_version="2", label_selector="run=1")

    assert events == [("DELETED", "a", "3"), ("ADDED", "b", "4")]


def test_field_selector_filters_watch(api: kubernetes.client.CustomObjectsApi) -> None:
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, raycluster("a"))
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, raycluster("b"))

    events = watch_rayclusters(api, field_selector="metadata.name=b")

    assert events == [("ADDED", "b", "2")]


def test_pod_watch_yields_models(kube: KubeStandin) -> None:
    core = kubernetes.client.CoreV1Api(kube.api_client())
    core.create_namespaced_pod(NAMESPACE, {"metadata": {"name": "head-0"}, "spec": {"containers": []}})
    kube.store.update_status("pods", NAMESPACE, "head-0", {"phase": "Running"})

    stream = kubernetes.watch.Watch().stream(
        core.list_namespaced_pod, NAMESPACE, resource_version="1", timeout_seconds=1
    )
    events = [(event["type"], event["object"]) for event in stream]

    assert [event_type for event_type, _ in events] == ["MODIFIED"]
    assert isinstance(events[0][1], kubernetes.client.V1Pod)
    assert events[0][1].status.phase == "Running"


def test_bookmark_sent_at_timeout(kube: KubeStandin, api: kubernetes.client.CustomObjectsApi) -> None:
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, raycluster("a"))
    watch = kubernetes.watch.Watch()

    events = list(
        watch.stream(
            api.list_namespaced_custom_object,
            GROUP,
            VERSION,
            NAMESPACE,
            PLURAL,
            resource_version="1",
            allow_watch_bookmarks=True,
            timeout_seconds=1,
        )
    )

    assert [event["type"] for event in events] == ["BOOKMARK"]
    assert watch.resource_version == "1"


def test_stop_closes_open_watch() -> None:
    threads_before = set(threading.enumerate())
    kube = KubeStandin().start()
    api = kubernetes.client.CustomObjectsApi(kube.api_client())
    events: list[str] = []
    opened = threading.Event()

    def consume() -> None:
        stream = kubernetes.watch.Watch().stream(
            api.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL, timeout_seconds=60
        )
        opened.set()
        events.extend(event["type"] for event in stream)

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert opened.wait(5)
    while not kube.calls(verb="watch"):
        time.sleep(0.01)
    kube.stop()
    consumer.join(5)

    assert not consumer.is_alive()
    assert events == []
    assert set(threading.enumerate()) - threads_before == set()


def test_subscriber_sees_changes_in_commit_order(kube: KubeStandin) -> None:
    seen: list[tuple[str, str, str]] = []

    def operator(event: WatchEvent) -> None:
        seen.append((event.type, event.resource.kind, event.object["metadata"]["name"]))
        if event.type == "ADDED" and event.resource.kind == "RayCluster":
            kube.store.put(
                {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "head", "namespace": event.namespace}}
            )
            kube.store.update_status(
                "rayclusters", event.namespace, event.object["metadata"]["name"], {"state": "ready"}
            )

    unsubscribe = kube.store.subscribe(operator)
    api = kubernetes.client.CustomObjectsApi(kube.api_client())
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, raycluster("train-1"))
    unsubscribe()
    api.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "train-1")

    assert seen == [("ADDED", "RayCluster", "train-1"), ("ADDED", "Pod", "head"), ("MODIFIED", "RayCluster", "train-1")]
    assert kube.store.subscriber_errors == []
