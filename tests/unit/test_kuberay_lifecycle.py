"""RayClusterClient and find_orphans against the Kubernetes API stand-in, with objects seeded into its store.

No operator runs and no Ray starts: each test writes the RayCluster and pod states it needs
directly, and a fake clock and sleeper stand in for time.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from resources.errors import ClusterStartError
from resources.kuberay.backend import kubernetes_api_client
from resources.kuberay.lifecycle import (
    LOG_TAIL_LINES,
    ClusterConflictError,
    RayClusterClient,
    head_pod_ready,
    image_pulled,
    pod_progress,
)
from resources.kuberay.manifest import ORIGIN_KEY, RUN_ID_KEY
from resources.kuberay.orphans import find_orphans
from resources.kuberay.retry import MAX_ATTEMPTS, MAX_DELAY_S
from tests.kube_standin import PODS, RAYCLUSTERS, KubeStandin

NAMESPACE = "ml-training"
CLUSTER = "ray-run-1-0123456789"
RUN_ID = "run-1"
OWNER_LABELS = {RUN_ID_KEY: RUN_ID}
# A watch requested for 1-5 s ends after 1% of that, so a wait loop turns over in milliseconds.
WATCH_TIMEOUT_SCALE = 0.01
DASHBOARD_TEMPLATE = "http://{service_ip}:{dashboard_port}"


class FakeTime:
    """A fake clock and sleeper. sleep() records its delay and moves the clock, and each clock read adds `tick_s`."""

    def __init__(self, *, tick_s: float = 0.0) -> None:
        self.now = 1000.0
        self.tick_s = tick_s
        self.sleeps: list[float] = []

    def clock(self) -> float:
        self.now += self.tick_s
        return self.now

    def sleep(self, delay_s: float) -> None:
        self.sleeps.append(delay_s)
        self.now += delay_s


class RecordingProbe:
    """A dashboard probe that returns the queued results in order, then repeats the last one."""

    def __init__(self, *results: bool) -> None:
        self.results = list(results)
        self.urls: list[str] = []

    def __call__(self, url: str) -> bool:
        self.urls.append(url)
        return self.results.pop(0) if len(self.results) > 1 else self.results[0]


@pytest.fixture
def standin() -> Iterator[KubeStandin]:
    with KubeStandin(watch_timeout_scale=WATCH_TIMEOUT_SCALE) as server:
        yield server


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def make_client(standin: KubeStandin, fake_time: FakeTime, probe: RecordingProbe | None = None) -> RayClusterClient:
    # The API client the kuberay backend builds: urllib3's own retries are off, so every retry and
    # every wait goes through the client's retry loop and the fake sleeper.
    api_client = kubernetes_api_client(api_url=standin.url)
    return RayClusterClient(
        custom_api=kubernetes.client.CustomObjectsApi(api_client),
        core_api=kubernetes.client.CoreV1Api(api_client),
        namespace=NAMESPACE,
        dashboard_url_template=DASHBOARD_TEMPLATE,
        probe_dashboard=probe or RecordingProbe(True),
        clock=fake_time.clock,
        sleep=fake_time.sleep,
    )


def manifest(name: str = CLUSTER, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": dict(OWNER_LABELS if labels is None else labels)},
        "spec": {"headGroupSpec": {"rayStartParams": {}}},
    }


def seed_cluster(standin: KubeStandin, *, labels: dict[str, str] | None = None, status: dict[str, Any] | None = None):
    stored = standin.store.put(manifest(labels=labels))
    if status is not None:
        stored = standin.store.update_status(RAYCLUSTERS, NAMESPACE, CLUSTER, status)
    return stored


def seed_pod(
    standin: KubeStandin, name: str, *, node_type: str, status: dict[str, Any], cluster: str = CLUSTER
) -> None:
    standin.store.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "labels": {"ray.io/cluster": cluster, "ray.io/node-type": node_type},
            },
            "spec": {"containers": [{"name": f"ray-{node_type}", "image": "rayproject/ray:2.60.0-py311-cpu"}]},
            "status": status,
        }
    )


def waiting_container(name: str, image: str, reason: str, message: str, restarts: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imageID": "",
        "ready": False,
        "restartCount": restarts,
        "state": {"waiting": {"reason": reason, "message": message}},
    }


READY_STATUS = {
    "state": "ready",
    "conditions": [{"type": "HeadPodReady", "status": "True", "reason": "HeadPodRunningAndReady"}],
    "head": {"serviceIP": "127.0.0.1"},
    "endpoints": {"dashboard": "18265"},
}


def statuses(standin: KubeStandin, verb: str) -> list[int | None]:
    return [call.status for call in standin.calls(verb=verb, plural="rayclusters")]


# ----- create -----


def test_create_returns_created_cluster(standin: KubeStandin, fake_time: FakeTime) -> None:
    clusters = make_client(standin, fake_time)

    created = clusters.create(manifest(), owner_labels=OWNER_LABELS)

    assert created["metadata"]["name"] == CLUSTER
    assert created["metadata"]["uid"]
    assert statuses(standin, "create") == [201]
    assert len(standin.store.objects(RAYCLUSTERS)) == 1
    assert fake_time.sleeps == []


def test_create_conflict_with_own_labels_adopts(standin: KubeStandin, fake_time: FakeTime) -> None:
    existing = seed_cluster(standin, labels={**OWNER_LABELS, "extra": "kept"})
    clusters = make_client(standin, fake_time)

    adopted = clusters.create(manifest(), owner_labels=OWNER_LABELS)

    assert adopted["metadata"]["uid"] == existing["metadata"]["uid"]
    assert statuses(standin, "create") == [409]
    assert statuses(standin, "delete") == []
    assert len(standin.store.objects(RAYCLUSTERS)) == 1


def test_create_conflict_with_other_labels_raises(standin: KubeStandin, fake_time: FakeTime) -> None:
    seed_cluster(standin, labels={RUN_ID_KEY: "someone-elses-run"})
    clusters = make_client(standin, fake_time)

    with pytest.raises(ClusterConflictError) as caught:
        clusters.create(manifest(), owner_labels=OWNER_LABELS)

    assert caught.value.name == CLUSTER
    assert caught.value.labels == {RUN_ID_KEY: "someone-elses-run"}
    assert "someone-elses-run" in str(caught.value)
    assert f"{NAMESPACE}/{CLUSTER}" in str(caught.value)
    assert statuses(standin, "delete") == []
    assert standin.store.get(RAYCLUSTERS, NAMESPACE, CLUSTER)["metadata"]["labels"] == {RUN_ID_KEY: "someone-elses-run"}


def test_retried_create_answered_409_adopts(standin: KubeStandin, fake_time: FakeTime) -> None:
    # The state a lost response leaves behind: this run's cluster exists, so the retried POST gets 409.
    seed_cluster(standin)
    standin.inject_fault(verb="create", plural="rayclusters", status=503)
    clusters = make_client(standin, fake_time)

    adopted = clusters.create(manifest(), owner_labels=OWNER_LABELS)

    assert adopted["metadata"]["name"] == CLUSTER
    assert statuses(standin, "create") == [503, 409]
    assert statuses(standin, "delete") == []


# ----- transient errors -----

TRANSIENT_FAULTS = {
    "503": ({"status": 503}, [0.2]),
    "429 with Retry-After": ({"status": 429, "retry_after_s": 3}, [3.0]),
    "429 with Retry-After above the cap": ({"status": 429, "retry_after_s": 30}, [MAX_DELAY_S]),
    "500 burst": ({"status": 500, "message": "etcdserver: leader changed", "times": 4}, [0.2, 0.4, 0.8, 1.6]),
    "dropped connection": ({"drop_connection": True, "times": 2}, [0.2, 0.4]),
}


@pytest.mark.parametrize("fault", list(TRANSIENT_FAULTS), ids=list(TRANSIENT_FAULTS))
def test_create_retries_transient_error(standin: KubeStandin, fake_time: FakeTime, fault: str) -> None:
    fault_settings, expected_sleeps = TRANSIENT_FAULTS[fault]
    injected = standin.inject_fault(verb="create", plural="rayclusters", **fault_settings)
    clusters = make_client(standin, fake_time)

    created = clusters.create(manifest(), owner_labels=OWNER_LABELS)

    assert created["metadata"]["name"] == CLUSTER
    assert fake_time.sleeps == expected_sleeps
    assert injected.exhausted
    assert statuses(standin, "create")[-1] == 201
    assert statuses(standin, "create").count(201) == 1
    assert len(standin.store.objects(RAYCLUSTERS)) == 1


@pytest.mark.parametrize("fault", list(TRANSIENT_FAULTS), ids=list(TRANSIENT_FAULTS))
def test_get_retries_transient_error(standin: KubeStandin, fake_time: FakeTime, fault: str) -> None:
    fault_settings, expected_sleeps = TRANSIENT_FAULTS[fault]
    seed_cluster(standin)
    injected = standin.inject_fault(verb="get", plural="rayclusters", **fault_settings)
    clusters = make_client(standin, fake_time)

    found = clusters.get(CLUSTER)

    assert found is not None
    assert found["metadata"]["name"] == CLUSTER
    assert fake_time.sleeps == expected_sleeps
    assert injected.exhausted
    assert statuses(standin, "get")[-1] == 200


@pytest.mark.parametrize("fault", list(TRANSIENT_FAULTS), ids=list(TRANSIENT_FAULTS))
def test_delete_retries_transient_error(standin: KubeStandin, fake_time: FakeTime, fault: str) -> None:
    fault_settings, expected_sleeps = TRANSIENT_FAULTS[fault]
    seed_cluster(standin)
    injected = standin.inject_fault(verb="delete", plural="rayclusters", **fault_settings)
    clusters = make_client(standin, fake_time)

    clusters.delete(CLUSTER)

    assert standin.store.objects(RAYCLUSTERS) == []
    assert fake_time.sleeps == expected_sleeps
    assert injected.exhausted
    assert statuses(standin, "delete")[-1] == 200


def test_retries_stop_after_max_attempts(standin: KubeStandin, fake_time: FakeTime) -> None:
    standin.inject_fault(verb="create", plural="rayclusters", status=503, times=MAX_ATTEMPTS + 1)
    clusters = make_client(standin, fake_time)

    with pytest.raises(ApiException) as caught:
        clusters.create(manifest(), owner_labels=OWNER_LABELS)

    assert caught.value.status == 503
    assert len(statuses(standin, "create")) == MAX_ATTEMPTS
    assert len(fake_time.sleeps) == MAX_ATTEMPTS - 1
    assert all(delay <= MAX_DELAY_S for delay in fake_time.sleeps)
    assert standin.store.objects(RAYCLUSTERS) == []


def test_create_forbidden_fails_at_once(standin: KubeStandin, fake_time: FakeTime) -> None:
    message = (
        'rayclusters.ray.io is forbidden: User "system:serviceaccount:ml-training:dagster" '
        'cannot create resource "rayclusters" in API group "ray.io" in the namespace "ml-training"'
    )
    standin.inject_fault(verb="create", plural="rayclusters", status=403, reason="Forbidden", message=message)
    clusters = make_client(standin, fake_time)

    with pytest.raises(ApiException) as caught:
        clusters.create(manifest(), owner_labels=OWNER_LABELS)

    assert caught.value.status == 403
    assert json.loads(caught.value.body)["message"] == message
    assert statuses(standin, "create") == [403]
    assert fake_time.sleeps == []


def test_delete_missing_cluster_succeeds(standin: KubeStandin, fake_time: FakeTime) -> None:
    clusters = make_client(standin, fake_time)

    clusters.delete(CLUSTER)

    assert statuses(standin, "delete") == [404]
    assert fake_time.sleeps == []


def test_get_missing_cluster_returns_none(standin: KubeStandin, fake_time: FakeTime) -> None:
    clusters = make_client(standin, fake_time)

    assert clusters.get(CLUSTER) is None
    assert statuses(standin, "get") == [404]


# ----- wait_until_ready -----


def test_wait_ready_when_head_ready_and_probe_answers(standin: KubeStandin, fake_time: FakeTime) -> None:
    seed_cluster(standin, status=READY_STATUS)
    seed_pod(standin, f"{CLUSTER}-head", node_type="head", status={"phase": "Running"})
    # The first probe fails, as it does while the dashboard starts, so the wait must go on to the second.
    probe = RecordingProbe(False, True)
    clusters = make_client(standin, fake_time, probe)
    progress: list[str] = []

    ready = clusters.wait_until_ready(CLUSTER, timeout_s=60, on_progress=progress.append)

    assert ready.name == CLUSTER
    assert ready.namespace == NAMESPACE
    assert ready.dashboard_url == "http://127.0.0.1:18265"
    assert probe.urls == ["http://127.0.0.1:18265", "http://127.0.0.1:18265"]
    assert f"RayCluster {CLUSTER}: HeadPodReady" in progress
    assert progress[-1] == f"RayCluster {CLUSTER} is ready; dashboard at http://127.0.0.1:18265"


def test_wait_not_ready_while_probe_fails(standin: KubeStandin) -> None:
    seed_cluster(standin, status=READY_STATUS)
    fake_time = FakeTime(tick_s=1.0)
    clusters = make_client(standin, fake_time, RecordingProbe(False))

    with pytest.raises(ClusterStartError) as caught:
        clusters.wait_until_ready(CLUSTER, timeout_s=5)

    assert "not ready within 5 s" in caught.value.reason


def test_wait_image_pull_failure_names_image(standin: KubeStandin, fake_time: FakeTime) -> None:
    image = "rayproject/ray:does-not-exist"
    seed_cluster(standin, status={"state": ""})
    seed_pod(
        standin,
        f"{CLUSTER}-head",
        node_type="head",
        status={
            "phase": "Pending",
            "containerStatuses": [
                waiting_container("ray-head", image, "ImagePullBackOff", f'Back-off pulling image "{image}"')
            ],
        },
    )
    clusters = make_client(standin, fake_time)

    with pytest.raises(ClusterStartError) as caught:
        clusters.wait_until_ready(CLUSTER, timeout_s=60)

    message = str(caught.value)
    assert image in message
    assert "ImagePullBackOff" in message
    assert f"{CLUSTER}-head" in message
    assert caught.value.cluster == f"{NAMESPACE}/{CLUSTER}"


def test_wait_unschedulable_carries_scheduler_message(standin: KubeStandin, fake_time: FakeTime) -> None:
    scheduler_message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available."
    seed_cluster(standin, status={"state": ""})
    seed_pod(standin, f"{CLUSTER}-head", node_type="head", status={"phase": "Running"})
    seed_pod(
        standin,
        f"{CLUSTER}-gpu-workers-worker-0",
        node_type="worker",
        status={
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": scheduler_message}
            ],
        },
    )
    clusters = make_client(standin, fake_time)

    with pytest.raises(ClusterStartError) as caught:
        clusters.wait_until_ready(CLUSTER, timeout_s=60)

    assert scheduler_message in caught.value.reason
    assert f"{CLUSTER}-gpu-workers-worker-0 is unschedulable" in caught.value.reason


def test_wait_crash_looping_head_includes_log(standin: KubeStandin, fake_time: FakeTime) -> None:
    seed_cluster(standin, status={"state": ""})
    seed_pod(
        standin,
        f"{CLUSTER}-head",
        node_type="head",
        status={
            "phase": "Running",
            "containerStatuses": [
                waiting_container("ray-head", "rayproject/ray", "CrashLoopBackOff", "back-off restarting", 3)
            ],
        },
    )
    log_lines = [f"head start line {index}" for index in range(LOG_TAIL_LINES + 10)]
    log_lines.append("RuntimeError: head crashed")
    standin.store.set_pod_log(NAMESPACE, f"{CLUSTER}-head", "\n".join(log_lines) + "\n")
    clusters = make_client(standin, fake_time)

    with pytest.raises(ClusterStartError) as caught:
        clusters.wait_until_ready(CLUSTER, timeout_s=60)

    assert "container ray-head" in caught.value.reason
    assert "crash-looping" in caught.value.reason
    assert "RuntimeError: head crashed" in caught.value.log_tail
    assert "RuntimeError: head crashed" in str(caught.value)
    assert caught.value.log_tail.splitlines() == log_lines[-LOG_TAIL_LINES:]
    assert "head start line 0\n" not in caught.value.log_tail


def test_wait_times_out_without_ready_state(standin: KubeStandin) -> None:
    seed_cluster(standin, status={"state": "", "conditions": []})
    seed_pod(standin, f"{CLUSTER}-head", node_type="head", status={"phase": "Pending"})
    fake_time = FakeTime(tick_s=1.0)
    probe = RecordingProbe(True)
    clusters = make_client(standin, fake_time, probe)

    with pytest.raises(ClusterStartError) as caught:
        clusters.wait_until_ready(CLUSTER, timeout_s=10)

    assert "not ready within 10 s" in caught.value.reason
    assert f"kubectl describe raycluster -n {NAMESPACE} {CLUSTER}" in caught.value.reason
    assert probe.urls == []


def test_wait_fails_when_cluster_deleted(standin: KubeStandin, fake_time: FakeTime) -> None:
    clusters = make_client(standin, fake_time)

    with pytest.raises(ClusterStartError) as caught:
        clusters.wait_until_ready(CLUSTER, timeout_s=60)

    assert "deleted while starting" in caught.value.reason


def test_wait_retries_transient_error_on_get(standin: KubeStandin, fake_time: FakeTime) -> None:
    seed_cluster(standin, status=READY_STATUS)
    standin.inject_fault(verb="get", plural="rayclusters", status=503)
    standin.inject_fault(verb="list", plural="pods", status=500)
    clusters = make_client(standin, fake_time)

    ready = clusters.wait_until_ready(CLUSTER, timeout_s=60)

    assert ready.name == CLUSTER
    assert fake_time.sleeps == [0.2, 0.2]


# ----- pod progress -----

CREATING = {"waiting": {"reason": "ContainerCreating"}}
RUNNING = {"running": {"startedAt": "2026-03-04T05:06:07Z"}}


def pod_status(*, scheduled: bool = True, state: dict[str, Any] | None = None, ready: bool = False) -> dict[str, Any]:
    """A pod status as the scheduler and kubelet write it, where ``state`` is the state of its one container."""
    conditions = [{"type": "PodScheduled", "status": "True" if scheduled else "False"}]
    if state is None:
        return {"phase": "Pending", "conditions": conditions}

    conditions.append({"type": "Ready", "status": "True" if ready else "False"})
    container = {
        "name": "ray",
        "image": "rayproject/ray:2.60.0-py311-cpu",
        "imageID": "",
        "ready": ready,
        "restartCount": 0,
        "state": state,
    }
    phase = "Running" if "running" in state else "Pending"
    return {"phase": phase, "conditions": conditions, "containerStatuses": [container]}


def make_pod(name: str, node_type: str, status: dict[str, Any]) -> kubernetes.client.V1Pod:
    """Deserialize a pod as the client does, so the pure helpers see the same types as in a wait."""
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"ray.io/cluster": CLUSTER, "ray.io/node-type": node_type}},
        "status": status,
    }
    response = type("Response", (), {"data": json.dumps(body)})()
    return kubernetes.client.ApiClient().deserialize(response, "V1Pod")


def progress_cluster_status(ready_workers: int) -> dict[str, Any]:
    return {"state": "", "conditions": [], "desiredWorkerReplicas": 2, "readyWorkerReplicas": ready_workers}


def test_wait_reports_pod_progress_once_per_fact(standin: KubeStandin, fake_time: FakeTime) -> None:
    seed_cluster(standin, status=READY_STATUS | {"desiredWorkerReplicas": 2, "readyWorkerReplicas": 2})
    seed_pod(standin, f"{CLUSTER}-head", node_type="head", status=pod_status(state=RUNNING, ready=True))
    for index in range(2):
        seed_pod(standin, f"{CLUSTER}-workers-worker-{index}", node_type="worker", status=pod_status(state=RUNNING))
    # The first probe fails, so the wait loop turns twice and reads every fact twice.
    clusters = make_client(standin, fake_time, RecordingProbe(False, True))
    progress: list[str] = []

    clusters.wait_until_ready(CLUSTER, timeout_s=60, on_progress=progress.append)

    assert progress == [
        f"RayCluster {CLUSTER}: state ready",
        f"RayCluster {CLUSTER}: HeadPodReady",
        f"RayCluster {CLUSTER}: 2 of 2 workers ready",
        f"RayCluster {CLUSTER}: 3 of 3 pods scheduled",
        f"RayCluster {CLUSTER}: images pulled on 3 of 3 pods",
        f"RayCluster {CLUSTER}: head pod ready",
        f"RayCluster {CLUSTER} is ready; dashboard at http://127.0.0.1:18265",
    ]


def test_wait_reports_pods_as_they_start(standin: KubeStandin) -> None:
    head, workers = f"{CLUSTER}-head", [f"{CLUSTER}-workers-worker-{index}" for index in range(2)]
    seed_cluster(standin, status=progress_cluster_status(0))
    seed_pod(standin, head, node_type="head", status={"phase": "Pending"})
    seed_pod(standin, workers[0], node_type="worker", status={"phase": "Pending"})

    # Each step runs when the wait reports the fact before it, so the pods change between turns of its loop.
    def schedule_all() -> None:
        seed_pod(standin, workers[1], node_type="worker", status={"phase": "Pending"})
        for name in (head, *workers):
            standin.store.update_status(PODS, NAMESPACE, name, pod_status(state=CREATING))

    def pull_some() -> None:
        standin.store.update_status(PODS, NAMESPACE, head, pod_status(state=RUNNING))
        standin.store.update_status(PODS, NAMESPACE, workers[0], pod_status(state=RUNNING))
        initializing = {"waiting": {"reason": "PodInitializing"}}
        standin.store.update_status(PODS, NAMESPACE, workers[1], pod_status(state=initializing))

    def become_ready() -> None:
        standin.store.update_status(PODS, NAMESPACE, head, pod_status(state=RUNNING, ready=True))
        for name in workers:
            standin.store.update_status(PODS, NAMESPACE, name, pod_status(state=RUNNING, ready=True))
        standin.store.update_status(RAYCLUSTERS, NAMESPACE, CLUSTER, progress_cluster_status(2) | READY_STATUS)

    steps = {
        f"RayCluster {CLUSTER}: 0 of 3 pods scheduled": schedule_all,
        f"RayCluster {CLUSTER}: images pulled on 0 of 3 pods": pull_some,
        f"RayCluster {CLUSTER}: images pulled on 2 of 3 pods": become_ready,
    }
    progress: list[str] = []

    def on_progress(message: str) -> None:
        progress.append(message)
        if message in steps:
            steps[message]()

    # The clock moves, so that a step that never comes ends the wait with a timeout.
    clusters = make_client(standin, FakeTime(tick_s=1.0))
    clusters.wait_until_ready(CLUSTER, timeout_s=60, on_progress=on_progress)

    assert progress == [
        f"RayCluster {CLUSTER}: 0 of 2 workers ready",
        f"RayCluster {CLUSTER}: 0 of 3 pods scheduled",
        f"RayCluster {CLUSTER}: 3 of 3 pods scheduled",
        f"RayCluster {CLUSTER}: images pulled on 0 of 3 pods",
        f"RayCluster {CLUSTER}: images pulled on 2 of 3 pods",
        f"RayCluster {CLUSTER}: state ready",
        f"RayCluster {CLUSTER}: HeadPodReady",
        f"RayCluster {CLUSTER}: 2 of 2 workers ready",
        f"RayCluster {CLUSTER}: images pulled on 3 of 3 pods",
        f"RayCluster {CLUSTER}: head pod ready",
        f"RayCluster {CLUSTER} is ready; dashboard at http://127.0.0.1:18265",
    ]


def test_wait_lists_pods_once_per_turn(standin: KubeStandin, fake_time: FakeTime) -> None:
    seed_cluster(standin, status=READY_STATUS)
    seed_pod(standin, f"{CLUSTER}-head", node_type="head", status=pod_status(state=RUNNING, ready=True))
    clusters = make_client(standin, fake_time, RecordingProbe(False, False, True))

    clusters.wait_until_ready(CLUSTER, timeout_s=60)

    assert len(statuses(standin, "get")) == 3
    assert len(standin.calls(verb="list", plural="pods")) == 3


def test_pod_progress_without_pods_is_empty() -> None:
    assert pod_progress([], expected_pods=3) == []


def test_pod_progress_counts_pods_not_created_yet() -> None:
    pods = [make_pod("head", "head", pod_status(scheduled=False))]

    assert pod_progress(pods, expected_pods=3) == ["0 of 3 pods scheduled"]


def test_pod_progress_counts_extra_listed_pods() -> None:
    pods = [make_pod(f"worker-{index}", "worker", pod_status(state=RUNNING)) for index in range(3)]

    assert pod_progress(pods, expected_pods=2) == ["3 of 3 pods scheduled", "images pulled on 3 of 3 pods"]


def test_pod_progress_head_needs_label() -> None:
    pods = [make_pod("worker-0", "worker", pod_status(state=RUNNING, ready=True))]

    assert "head pod ready" not in pod_progress(pods)


CONTAINER_STATES = {
    "running": (RUNNING, True),
    "terminated": ({"terminated": {"exitCode": 1, "reason": "Error"}}, True),
    "crash loop": ({"waiting": {"reason": "CrashLoopBackOff"}}, True),
    "config error": ({"waiting": {"reason": "CreateContainerConfigError"}}, True),
    "container creating": (CREATING, False),
    "pod initializing": ({"waiting": {"reason": "PodInitializing"}}, False),
    "image pull error": ({"waiting": {"reason": "ErrImagePull"}}, False),
    "image pull back-off": ({"waiting": {"reason": "ImagePullBackOff"}}, False),
    "waiting without reason": ({"waiting": {}}, False),
    "no state": (None, False),
}


@pytest.mark.parametrize("case", list(CONTAINER_STATES), ids=list(CONTAINER_STATES))
def test_image_pulled_by_container_state(case: str) -> None:
    state, expected = CONTAINER_STATES[case]
    pod = make_pod("head", "head", pod_status(state=state or {}))
    container = pod.status.container_statuses[0]
    if state is None:
        container.state = None

    assert image_pulled(container) is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"conditions": [{"type": "HeadPodReady", "status": "True"}]}, True),
        ({"conditions": [{"type": "HeadPodReady", "status": "False"}]}, False),
        ({"state": "ready"}, True),
        ({"state": "ready", "conditions": []}, True),
        ({"state": "ready", "conditions": [{"type": "HeadPodReady", "status": "False"}]}, False),
        ({"state": "", "conditions": [{"type": "RayClusterProvisioned", "status": "True"}]}, False),
        ({}, False),
        (None, False),
    ],
    ids=[
        "condition true",
        "condition false",
        "older state ready",
        "older state ready, empty conditions",
        "condition false overrides state",
        "other condition",
        "empty status",
        "no status",
    ],
)
def test_head_pod_ready(status: dict[str, Any] | None, expected: bool) -> None:
    assert head_pod_ready({"metadata": {"name": CLUSTER}, "status": status}) is expected


# ----- find_orphans -----

NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
MAX_AGE = dt.timedelta(hours=24)


def listed_cluster(name: str, *, run_id: str | None, age: dt.timedelta) -> dict[str, Any]:
    created = (NOW - age).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = {ORIGIN_KEY: "dagster"} if run_id is None else {ORIGIN_KEY: "dagster", RUN_ID_KEY: run_id}
    return {"metadata": {"name": name, "namespace": NAMESPACE, "labels": labels, "creationTimestamp": created}}


def test_find_orphans_picks_ended_missing_and_old() -> None:
    runs = {"run-ended": False, "run-active": True, "run-active-old": True}
    clusters = [
        listed_cluster("ray-ended", run_id="run-ended", age=dt.timedelta(minutes=5)),
        listed_cluster("ray-missing", run_id="run-missing", age=dt.timedelta(minutes=5)),
        listed_cluster("ray-unlabelled", run_id=None, age=dt.timedelta(minutes=5)),
        listed_cluster("ray-old", run_id="run-active-old", age=dt.timedelta(hours=30)),
        listed_cluster("ray-young", run_id="run-active", age=dt.timedelta(hours=2)),
    ]

    orphans = find_orphans(clusters, run_is_active=runs.get, now=NOW, max_age=MAX_AGE)

    by_name = {orphan.name: orphan for orphan in orphans}
    assert sorted(by_name) == ["ray-ended", "ray-missing", "ray-old", "ray-unlabelled"]
    assert by_name["ray-ended"].reason == "its Dagster run run-ended has ended"
    assert by_name["ray-missing"].reason == "its Dagster run run-missing does not exist"
    assert by_name["ray-unlabelled"].reason == "its Dagster run (unlabelled) does not exist"
    # Created without a TTL annotation, so max_age is its lifetime.
    assert "lifetime of 24 h ended" in by_name["ray-old"].reason
    assert by_name["ray-old"].run_id == "run-active-old"
    assert all(orphan.namespace == NAMESPACE for orphan in orphans)


def test_find_orphans_keeps_active_young_cluster() -> None:
    clusters = [listed_cluster("ray-young", run_id="run-active", age=MAX_AGE - dt.timedelta(minutes=1))]

    orphans = find_orphans(clusters, run_is_active={"run-active": True}.get, now=NOW, max_age=MAX_AGE)

    assert orphans == []


def test_find_orphans_ended_run_young_cluster_is_orphan() -> None:
    clusters = [listed_cluster("ray-just-ended", run_id="run-ended", age=dt.timedelta(seconds=30))]

    orphans = find_orphans(clusters, run_is_active={"run-ended": False}.get, now=NOW, max_age=MAX_AGE)

    assert [orphan.name for orphan in orphans] == ["ray-just-ended"]
