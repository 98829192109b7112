"""recent_events against the Kubernetes API stand-in, with events written by the stand-in operator's helper.

No operator runs and no Ray starts, because each test stores the pods and events it needs.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest

from resources.kuberay.events import recent_events
from tests.kube_standin import KubeStandin
from tests.kube_standin.operator import record_event

NAMESPACE = "ml-training"
CLUSTER = "ray-run-1-0123456789"
START = datetime.datetime(2026, 3, 4, 5, 6, 0, tzinfo=datetime.UTC)


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, delay_s: float) -> None:
        self.sleeps.append(delay_s)
        self.now += delay_s


@pytest.fixture
def standin() -> Iterator[KubeStandin]:
    with KubeStandin() as server:
        yield server


@pytest.fixture
def core(standin: KubeStandin) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(standin.api_client())


def put_cluster(standin: KubeStandin, name: str = CLUSTER) -> dict[str, Any]:
    return standin.store.put(
        {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": name, "namespace": NAMESPACE}}
    )


def put_pod(standin: KubeStandin, name: str, *, cluster: str = CLUSTER) -> dict[str, Any]:
    return standin.store.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"ray.io/cluster": cluster}},
            "spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.60.0-py311-cpu"}]},
        }
    )


def event_at(
    standin: KubeStandin,
    involved: dict[str, Any],
    second: int,
    reason: str,
    message: str,
    *,
    event_type: str = "Normal",
    component: str = "kubelet",
) -> None:
    record_event(
        standin.store,
        involved,
        reason=reason,
        message=message,
        component=component,
        event_type=event_type,
        moment=START + datetime.timedelta(seconds=second),
    )


def fetch(core: kubernetes.client.CoreV1Api, fake_time: FakeTime | None = None, **options: Any) -> list[dict]:
    fake_time = fake_time or FakeTime()
    return recent_events(core, NAMESPACE, CLUSTER, clock=fake_time.clock, sleep=fake_time.sleep, **options)


def test_recent_events_oldest_first(standin: KubeStandin, core: kubernetes.client.CoreV1Api) -> None:
    cluster = put_cluster(standin)
    head = put_pod(standin, f"{CLUSTER}-head")
    # Stored out of order, so only sorting by time puts them in order.
    event_at(standin, head, 3, "Scheduled", f"Successfully assigned {NAMESPACE}/{CLUSTER}-head to node-1")
    event_at(standin, cluster, 1, "CreatedHeadPod", f"Created head Pod {NAMESPACE}/{CLUSTER}-head")
    event_at(standin, head, 5, "BackOff", 'Back-off pulling image "rayproject/ray:nope"', event_type="Warning")

    events = fetch(core)

    assert events == [
        {
            "time": "2026-03-04T05:06:01Z",
            "type": "Normal",
            "reason": "CreatedHeadPod",
            "object": f"RayCluster/{CLUSTER}",
            "message": f"Created head Pod {NAMESPACE}/{CLUSTER}-head",
            "count": 1,
        },
        {
            "time": "2026-03-04T05:06:03Z",
            "type": "Normal",
            "reason": "Scheduled",
            "object": f"Pod/{CLUSTER}-head",
            "message": f"Successfully assigned {NAMESPACE}/{CLUSTER}-head to node-1",
            "count": 1,
        },
        {
            "time": "2026-03-04T05:06:05Z",
            "type": "Warning",
            "reason": "BackOff",
            "object": f"Pod/{CLUSTER}-head",
            "message": 'Back-off pulling image "rayproject/ray:nope"',
            "count": 1,
        },
    ]


def test_recent_events_leave_out_other_objects(standin: KubeStandin, core: kubernetes.client.CoreV1Api) -> None:
    cluster = put_cluster(standin)
    other_cluster = put_cluster(standin, "ray-run-2-9876543210")
    other_pod = put_pod(standin, "ray-run-2-9876543210-head", cluster="ray-run-2-9876543210")
    unlabelled = standin.store.put(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{CLUSTER}-debug", "namespace": NAMESPACE}}
    )
    # The kind in the field selector keeps out the events of a Service named like the cluster.
    service = standin.store.put(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": CLUSTER, "namespace": NAMESPACE}}
    )
    event_at(standin, cluster, 1, "CreatedService", f"Created service {NAMESPACE}/{CLUSTER}-head-svc")
    event_at(standin, other_cluster, 2, "CreatedService", "Created service of the other cluster")
    event_at(standin, other_pod, 3, "Scheduled", "other cluster's pod")
    event_at(standin, unlabelled, 4, "Scheduled", "pod without the cluster label")
    event_at(standin, service, 5, "Created", "service named like the cluster")

    events = fetch(core)

    assert [(event["object"], event["reason"]) for event in events] == [(f"RayCluster/{CLUSTER}", "CreatedService")]


def test_recent_events_keep_newest(standin: KubeStandin, core: kubernetes.client.CoreV1Api) -> None:
    cluster = put_cluster(standin)
    head = put_pod(standin, f"{CLUSTER}-head")
    for second in range(6):
        involved = cluster if second % 2 == 0 else head
        event_at(standin, involved, second, f"Reason{second}", f"event {second}")

    events = fetch(core, limit=3)

    assert [event["message"] for event in events] == ["event 3", "event 4", "event 5"]


def test_recent_events_filter_on_server(standin: KubeStandin, core: kubernetes.client.CoreV1Api) -> None:
    put_cluster(standin)
    put_pod(standin, f"{CLUSTER}-head")
    put_pod(standin, f"{CLUSTER}-workers-worker-0")

    fetch(core)

    pod_lists = standin.calls(verb="list", plural="pods")
    event_lists = standin.calls(verb="list", plural="events")
    assert [call.query["labelSelector"] for call in pod_lists] == [[f"ray.io/cluster={CLUSTER}"]]
    assert sorted(call.query["fieldSelector"][0] for call in event_lists) == [
        f"involvedObject.kind=Pod,involvedObject.name={CLUSTER}-head",
        f"involvedObject.kind=Pod,involvedObject.name={CLUSTER}-workers-worker-0",
        f"involvedObject.kind=RayCluster,involvedObject.name={CLUSTER}",
    ]
    assert all(call.namespace == NAMESPACE for call in event_lists)


def test_recent_events_retry_transient_error(standin: KubeStandin, core: kubernetes.client.CoreV1Api) -> None:
    cluster = put_cluster(standin)
    event_at(standin, cluster, 1, "CreatedService", "created")
    standin.inject_fault(verb="list", plural="events", status=503)
    fake_time = FakeTime()

    events = fetch(core, fake_time)

    assert [event["reason"] for event in events] == ["CreatedService"]
    assert fake_time.sleeps == [0.2]
    assert [call.status for call in standin.calls(verb="list", plural="events")] == [503, 200]


def test_recent_events_forbidden_raises(standin: KubeStandin, core: kubernetes.client.CoreV1Api) -> None:
    standin.inject_fault(verb="list", plural="events", status=403, reason="Forbidden", message="events is forbidden")

    with pytest.raises(kubernetes.client.ApiException) as caught:
        fetch(core)

    assert caught.value.status == 403
    assert json.loads(caught.value.body)["message"] == "events is forbidden"


def test_recent_events_without_any_is_empty(standin: KubeStandin, core: kubernetes.client.CoreV1Api) -> None:
    assert fetch(core) == []


def test_recent_events_repeated_event(standin: KubeStandin, core: kubernetes.client.CoreV1Api) -> None:
    head = put_pod(standin, f"{CLUSTER}-head")
    # An event the kubelet has seen four times keeps its first time and moves its last time.
    standin.store.put(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{CLUSTER}-head.17f00", "namespace": NAMESPACE},
            "involvedObject": {"kind": "Pod", "name": head["metadata"]["name"], "namespace": NAMESPACE},
            "reason": "BackOff",
            "message": "Back-off restarting failed container ray-head",
            "type": "Warning",
            "count": 4,
            "firstTimestamp": "2026-03-04T05:00:00Z",
            "lastTimestamp": "2026-03-04T05:09:00Z",
        }
    )

    events = fetch(core)

    assert events[0]["count"] == 4
    assert events[0]["time"] == "2026-03-04T05:09:00Z"


@pytest.mark.parametrize("limit", [0, -1])
def test_recent_events_limit_below_one_raises(core: kubernetes.client.CoreV1Api, limit: int) -> None:
    with pytest.raises(ValueError, match="limit must be at least 1"):
        fetch(core, limit=limit)
