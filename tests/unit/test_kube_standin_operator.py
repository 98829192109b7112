"""The stand-in KubeRay operator's pods, events and RayCluster status, with a fake in place of the local Ray cluster.

Each test adds one RayCluster and leaves the operator's context, which waits for its reconcile
to finish, so no test polls or sleeps.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest

from resources.kuberay.events import recent_events
from resources.local import LocalClusterInfo
from tests.kube_standin import EVENTS, PODS, RAYCLUSTERS, KubeStandin, WatchEvent
from tests.kube_standin.operator import (
    HEAD_CRASH_LOG,
    NODE_NAME,
    UNSCHEDULABLE_GPU_MESSAGE,
    KubeRayOperatorStandin,
    desired_resources,
)

NAMESPACE = "ml-training"
CLUSTER = "ray-run-1-0123456789"
HEAD = f"{CLUSTER}-head"
WORKERS = [f"{CLUSTER}-cpu-workers-worker-{index}" for index in range(2)]
IMAGE = "rayproject/ray:2.60.0-py311-cpu"
NOW = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)


class FakeRayCluster:
    """A fake LocalRayCluster whose start() records the pods as they are while Ray starts."""

    def __init__(self, store: Any, **settings: Any) -> None:
        self.store = store
        self.settings = settings
        self.pods_at_start: list[dict[str, Any]] = []
        self.info: LocalClusterInfo | None = None

    def start(self) -> LocalClusterInfo:
        self.pods_at_start = self.store.objects(PODS)
        self.info = LocalClusterInfo(
            name=self.settings["name"],
            dashboard_url="http://127.0.0.1:18265",
            gcs_address="127.0.0.2:6379",
            startup_s=0.0,
        )
        return self.info

    def stop(self) -> None:
        self.info = None


class Environment:
    def __init__(self, standin: KubeStandin) -> None:
        self.standin = standin
        self.store = standin.store
        self.started: list[FakeRayCluster] = []
        self.pod_history: list[dict[str, Any]] = []
        standin.store.subscribe(self._record_pod)

    def _record_pod(self, event: WatchEvent) -> None:
        if event.resource == PODS and event.type != "DELETED":
            self.pod_history.append(copy.deepcopy(event.object))

    def fake_cluster(self, **settings: Any) -> FakeRayCluster:
        cluster = FakeRayCluster(self.store, **settings)
        self.started.append(cluster)
        return cluster

    def reconcile(self, manifest: dict[str, Any], *, crash_head: bool = False) -> None:
        """Add the RayCluster and wait until the operator has reconciled it."""
        operator = KubeRayOperatorStandin(self.store, clock=lambda: NOW, cluster_factory=self.fake_cluster)
        if crash_head:
            operator.crash_head(manifest["metadata"]["name"])
        with operator:
            self.store.put(manifest)

    def pod(self, name: str) -> dict[str, Any]:
        return self.store.get(PODS, NAMESPACE, name)

    def events(self, name: str) -> list[tuple[str, str]]:
        """Return (type, reason) of the events about the object called ``name``, in the order written."""
        events = [event for event in self.store.objects(EVENTS) if event["involvedObject"]["name"] == name]
        events.sort(key=lambda event: event["metadata"]["name"])
        return [(event["type"], event["reason"]) for event in events]

    def events_by_reason(self, name: str, reason: str) -> list[dict[str, Any]]:
        return [
            event
            for event in self.store.objects(EVENTS)
            if event["involvedObject"]["name"] == name and event["reason"] == reason
        ]


@pytest.fixture
def env() -> Iterator[Environment]:
    with KubeStandin(clock=lambda: NOW) as standin:
        yield Environment(standin)


def container(name: str, image: str, **resources: str) -> dict[str, Any]:
    return {"name": name, "image": image, "resources": {"limits": dict(resources), "requests": dict(resources)}}


def raycluster(
    *, image: str = IMAGE, worker_resources: dict[str, str] | None = None, replicas: int = 2
) -> dict[str, Any]:
    workers = worker_resources or {"cpu": "1", "memory": "1Gi"}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": CLUSTER, "namespace": NAMESPACE},
        "spec": {
            "headGroupSpec": {
                "rayStartParams": {},
                "template": {"spec": {"containers": [container("ray-head", image, cpu="1", memory="2Gi")]}},
            },
            "workerGroupSpecs": [
                {
                    "groupName": "cpu-workers",
                    "replicas": replicas,
                    "rayStartParams": {},
                    "template": {"spec": {"containers": [container("ray-worker", image, **workers)]}},
                }
            ],
        },
    }


def conditions(pod: dict[str, Any]) -> dict[str, str]:
    return {condition["type"]: condition["status"] for condition in pod["status"].get("conditions") or []}


def container_state(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["status"]["containerStatuses"][0]["state"]


# ----- a cluster that starts -----


def test_pods_pass_through_start_stages(env: Environment) -> None:
    env.reconcile(raycluster())

    head_history = [pod for pod in env.pod_history if pod["metadata"]["name"] == HEAD]
    assert head_history[0]["status"] == {"phase": "Pending"}
    creating = [pod for pod in head_history if pod["status"].get("containerStatuses")][0]
    assert creating["status"]["phase"] == "Pending"
    assert creating["spec"]["nodeName"] == NODE_NAME
    assert conditions(creating)["PodScheduled"] == "True"
    assert conditions(creating)["Ready"] == "False"
    assert container_state(creating) == {"waiting": {"reason": "ContainerCreating"}}


def test_pods_run_unready_while_ray_starts(env: Environment) -> None:
    env.reconcile(raycluster())

    [ray] = env.started
    assert sorted(pod["metadata"]["name"] for pod in ray.pods_at_start) == sorted([HEAD, *WORKERS])
    for pod in ray.pods_at_start:
        assert pod["status"]["phase"] == "Running"
        assert conditions(pod)["Ready"] == "False"
        assert "running" in container_state(pod)
        assert pod["status"]["containerStatuses"][0]["ready"] is False


def test_pods_ready_once_ray_is_up(env: Environment) -> None:
    env.reconcile(raycluster())

    for name in (HEAD, *WORKERS):
        pod = env.pod(name)
        assert pod["status"]["phase"] == "Running"
        assert conditions(pod) == {
            "Initialized": "True",
            "Ready": "True",
            "ContainersReady": "True",
            "PodScheduled": "True",
        }
        assert pod["status"]["containerStatuses"][0]["ready"] is True
        assert pod["status"]["podIP"] == "127.0.0.2"


def test_ready_status_has_desired_resources(env: Environment) -> None:
    env.reconcile(raycluster())

    status = env.store.get(RAYCLUSTERS, NAMESPACE, CLUSTER)["status"]
    assert status["state"] == "ready"
    assert status["desiredCPU"] == "3"
    assert status["desiredMemory"] == "4Gi"
    assert status["desiredGPU"] == "0"
    assert status["desiredTPU"] == "0"
    assert status["desiredWorkerReplicas"] == 2
    assert status["readyWorkerReplicas"] == 2
    assert status["endpoints"]["dashboard"] == "18265"


def test_raycluster_events_of_start(env: Environment) -> None:
    env.reconcile(raycluster())

    assert env.events(CLUSTER) == [
        ("Normal", "CreatedService"),
        ("Normal", "CreatedHeadPod"),
        ("Normal", "CreatedWorkerPod"),
        ("Normal", "CreatedWorkerPod"),
    ]
    [head_created] = env.events_by_reason(CLUSTER, "CreatedHeadPod")
    cluster_uid = env.store.get(RAYCLUSTERS, NAMESPACE, CLUSTER)["metadata"]["uid"]
    assert head_created["message"] == f"Created head Pod {NAMESPACE}/{HEAD}"
    assert head_created["source"] == {"component": "raycluster-controller"}
    assert head_created["involvedObject"]["kind"] == "RayCluster"
    assert head_created["involvedObject"]["apiVersion"] == "ray.io/v1"
    assert head_created["involvedObject"]["namespace"] == NAMESPACE
    assert head_created["involvedObject"]["uid"] == cluster_uid
    worker_messages = [event["message"] for event in env.events_by_reason(CLUSTER, "CreatedWorkerPod")]
    assert sorted(worker_messages) == [f"Created worker Pod {NAMESPACE}/{name}" for name in WORKERS]


def test_pod_events_of_start(env: Environment) -> None:
    env.reconcile(raycluster())

    for name in (HEAD, *WORKERS):
        assert env.events(name) == [
            ("Normal", "Scheduled"),
            ("Normal", "Pulled"),
            ("Normal", "Created"),
            ("Normal", "Started"),
        ]
    [scheduled] = env.events_by_reason(HEAD, "Scheduled")
    [pulled] = env.events_by_reason(HEAD, "Pulled")
    [created] = env.events_by_reason(HEAD, "Created")
    assert scheduled["message"] == f"Successfully assigned {NAMESPACE}/{HEAD} to {NODE_NAME}"
    assert scheduled["source"] == {"component": "default-scheduler"}
    assert pulled["message"] == f'Container image "{IMAGE}" already present on machine'
    assert pulled["source"] == {"component": "kubelet", "host": NODE_NAME}
    assert pulled["involvedObject"]["fieldPath"] == "spec.containers{ray-head}"
    assert created["message"] == "Created container: ray-head"


def test_event_fields_as_kube_writes_them(env: Environment) -> None:
    env.reconcile(raycluster())

    [event] = env.events_by_reason(HEAD, "Scheduled")
    pod_uid = env.pod(HEAD)["metadata"]["uid"]
    name, _, suffix = event["metadata"]["name"].rpartition(".")
    assert name == HEAD
    assert int(suffix, 16) > 0
    assert event["metadata"]["namespace"] == NAMESPACE
    assert event["involvedObject"]["kind"] == "Pod"
    assert event["involvedObject"]["apiVersion"] == "v1"
    assert event["involvedObject"]["uid"] == pod_uid
    assert event["type"] == "Normal"
    assert event["count"] == 1
    assert event["firstTimestamp"] == "2026-03-04T05:06:07Z"
    assert event["lastTimestamp"] == "2026-03-04T05:06:07Z"


def test_event_names_are_unique(env: Environment) -> None:
    env.reconcile(raycluster())

    names = [event["metadata"]["name"] for event in env.store.objects(EVENTS)]
    assert len(names) == len(set(names))
    # Four about the RayCluster (its service, head pod and two worker pods), then four about each of its pods.
    assert len(names) == 4 + 3 * 4


# ----- faults -----


def test_unschedulable_gpu_workers(env: Environment) -> None:
    env.reconcile(raycluster(worker_resources={"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}))

    for name in WORKERS:
        pod = env.pod(name)
        assert pod["status"]["phase"] == "Pending"
        [condition] = pod["status"]["conditions"]
        assert condition["type"] == "PodScheduled"
        assert condition["status"] == "False"
        assert condition["reason"] == "Unschedulable"
        assert condition["message"] == UNSCHEDULABLE_GPU_MESSAGE
        assert "containerStatuses" not in pod["status"]
        assert env.events(name) == [("Warning", "FailedScheduling")]
        [failed] = env.events_by_reason(name, "FailedScheduling")
        assert failed["message"] == UNSCHEDULABLE_GPU_MESSAGE
        assert failed["source"] == {"component": "default-scheduler"}
    assert env.events(HEAD) == [
        ("Normal", "Scheduled"),
        ("Normal", "Pulled"),
        ("Normal", "Created"),
        ("Normal", "Started"),
    ]
    assert conditions(env.pod(HEAD))["Ready"] == "False"
    assert env.started == []


def test_missing_image_backs_off(env: Environment) -> None:
    image = "rayproject/ray:does-not-exist"
    env.reconcile(raycluster(image=image))

    for name in (HEAD, *WORKERS):
        pod = env.pod(name)
        assert pod["status"]["phase"] == "Pending"
        assert conditions(pod)["PodScheduled"] == "True"
        assert container_state(pod) == {
            "waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
        }
        assert env.events(name) == [
            ("Normal", "Scheduled"),
            ("Normal", "Pulling"),
            ("Warning", "Failed"),
            ("Warning", "Failed"),
            ("Normal", "BackOff"),
            ("Warning", "Failed"),
        ]
    failures = sorted(event["message"] for event in env.events_by_reason(HEAD, "Failed"))
    assert failures[0] == "Error: ErrImagePull"
    assert failures[1] == "Error: ImagePullBackOff"
    assert failures[2].startswith(f'Failed to pull image "{image}": rpc error: code = NotFound')
    assert env.started == []


def test_crash_looping_head(env: Environment) -> None:
    env.reconcile(raycluster(), crash_head=True)

    head = env.pod(HEAD)
    status = head["status"]["containerStatuses"][0]
    assert head["status"]["phase"] == "Running"
    assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert status["restartCount"] == 3
    assert env.store.pod_log(NAMESPACE, HEAD) == HEAD_CRASH_LOG
    assert env.events(HEAD)[-1] == ("Warning", "BackOff")
    [backoff] = env.events_by_reason(HEAD, "BackOff")
    uid = head["metadata"]["uid"]
    assert backoff["message"] == f"Back-off restarting failed container ray-head in pod {HEAD}_{NAMESPACE}({uid})"
    for name in WORKERS:
        assert "running" in container_state(env.pod(name))
        assert conditions(env.pod(name))["Ready"] == "False"
    assert env.started == []


def test_recent_events_show_image_pull_failure(env: Environment) -> None:
    image = "rayproject/ray:does-not-exist"
    env.reconcile(raycluster(image=image, replicas=0))
    core = kubernetes.client.CoreV1Api(env.standin.api_client())

    events = recent_events(core, NAMESPACE, CLUSTER)

    assert [(event["object"], event["reason"]) for event in events] == [
        (f"RayCluster/{CLUSTER}", "CreatedService"),
        (f"RayCluster/{CLUSTER}", "CreatedHeadPod"),
        (f"Pod/{HEAD}", "Scheduled"),
        (f"Pod/{HEAD}", "Pulling"),
        (f"Pod/{HEAD}", "Failed"),
        (f"Pod/{HEAD}", "Failed"),
        (f"Pod/{HEAD}", "BackOff"),
        (f"Pod/{HEAD}", "Failed"),
    ]
    assert events[-1]["type"] == "Warning"
    assert events[-1]["message"] == "Error: ImagePullBackOff"


# ----- desired resources -----


def test_desired_resources_request_wins_over_limit() -> None:
    manifest = raycluster(replicas=3)
    worker = manifest["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    worker["resources"] = {"limits": {"cpu": "2", "memory": "2Gi"}, "requests": {"cpu": "500m"}}

    desired = desired_resources(manifest)

    # Head: 1 CPU and 2Gi. Workers: 3 x (500m requested, 2Gi from the limit).
    assert desired["desiredCPU"] == "2500m"
    assert desired["desiredMemory"] == "8Gi"


def test_desired_resources_count_gpus_and_tpus() -> None:
    manifest = raycluster(worker_resources={"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"})
    manifest["spec"]["workerGroupSpecs"].append(
        {
            "groupName": "tpu-workers",
            "replicas": 1,
            "template": {"spec": {"containers": [container("ray-worker", IMAGE, **{"google.com/tpu": "4"})]}},
        }
    )

    desired = desired_resources(manifest)

    assert desired == {"desiredCPU": "9", "desiredMemory": "34Gi", "desiredGPU": "2", "desiredTPU": "4"}


def test_desired_resources_sum_pod_containers() -> None:
    manifest = raycluster(replicas=0)
    head = manifest["spec"]["headGroupSpec"]["template"]["spec"]
    head["containers"].append(container("autoscaler", IMAGE, cpu="500m", memory="512Mi"))

    desired = desired_resources(manifest)

    assert desired["desiredCPU"] == "1500m"
    assert desired["desiredMemory"] == "2560Mi"
