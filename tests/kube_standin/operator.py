"""A stand-in KubeRay operator: turns RayClusters in the API stand-in into real local Ray clusters.

Like the real operator it creates the head service and one pod per Ray node, and writes
the RayCluster status the platform reads (conditions, state, desired resources, head
service IP and endpoints). It also plays the scheduler and the kubelet: each pod goes
from Pending (scheduled, containers being created) to Running with its containers
started but not ready, and to Ready once the local Ray cluster is up. Each step writes
the core/v1 Events that KubeRay, the default scheduler and the kubelet write.

Each RayCluster gets a `LocalRayCluster`, so jobs run on real Ray; deleting the
RayCluster stops its processes. Faults are injected per cluster name or by image: an
image whose name contains ``does-not-exist`` cannot be pulled, a pod that requests GPUs
is unschedulable (the stand-in has no GPU nodes), and
:meth:`KubeRayOperatorStandin.crash_head` makes a cluster's head crash-loop.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from resources.kuberay.quantity import format_bytes, format_cpu, parse_quantity
from resources.local import LocalRayCluster
from resources.spec import ClusterSpec, parse_memory
from tests.kube_standin.resources import PODS, RAYCLUSTERS, SERVICES
from tests.kube_standin.store import ObjectStore, WatchEvent, format_timestamp, utc_now

logger = logging.getLogger(__name__)

DASHBOARD_SERVICE_IP = "127.0.0.1"
NODE_NAME = "standin-node"
NODE_IP = "127.0.0.1"
POD_IP = "127.0.0.2"
MISSING_IMAGE_MARKER = "does-not-exist"
OBJECT_STORE_MEMORY = 128 * 1024**2
HEAD_CRASH_LOG = (
    'Traceback (most recent call last):\n  File "/home/ray/start.py", line 3\n'
    "RuntimeError: head crashed in the stand-in"
)
# The scheduler's message for a pod that requests GPUs, as kube-scheduler writes it on a cluster
# of three nodes without them.
UNSCHEDULABLE_GPU_MESSAGE = (
    "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available."
)

# Source components of the events, as `kubectl get events` shows them.
KUBERAY_COMPONENT = "raycluster-controller"
SCHEDULER_COMPONENT = "default-scheduler"
KUBELET_COMPONENT = "kubelet"

_event_name_lock = threading.Lock()
_last_event_name_ns = 0


def _first_container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]


def _limits(container: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in ((container.get("resources") or {}).get("limits") or {}).items()}


def _event_name(object_name: str) -> str:
    """Name an event as client-go's recorder does: the object's name, a dot and the time in hex nanoseconds."""
    global _last_event_name_ns
    with _event_name_lock:
        # Two events written within one clock tick still get distinct names.
        _last_event_name_ns = max(time.time_ns(), _last_event_name_ns + 1)
        return f"{object_name}.{_last_event_name_ns:x}"


def record_event(
    store: ObjectStore,
    involved: Mapping[str, Any],
    *,
    reason: str,
    message: str,
    component: str,
    event_type: str = "Normal",
    field_path: str | None = None,
    host: str | None = None,
    moment: datetime.datetime | None = None,
) -> dict[str, Any]:
    """Write a core/v1 Event about the stored object ``involved``, shaped as client-go's event recorder writes it.

    ``field_path`` names a container (``spec.containers{ray-head}``), as the kubelet sets it for
    container events, and ``host`` is the node of a kubelet event. ``moment`` defaults to now.
    Returns the stored Event.
    """
    metadata = involved["metadata"]
    involved_object = {
        "kind": involved["kind"],
        "name": metadata["name"],
        "namespace": metadata["namespace"],
        "apiVersion": involved["apiVersion"],
    }
    for field in ("uid", "resourceVersion"):
        if metadata.get(field):
            involved_object[field] = metadata[field]
    if field_path is not None:
        involved_object["fieldPath"] = field_path
    timestamp = format_timestamp(moment or utc_now())
    source = {"component": component} | ({"host": host} if host is not None else {})
    return store.put(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": _event_name(metadata["name"]), "namespace": metadata["namespace"]},
            "involvedObject": involved_object,
            "reason": reason,
            "message": message,
            "type": event_type,
            "count": 1,
            "firstTimestamp": timestamp,
            "lastTimestamp": timestamp,
            "source": source,
        }
    )


def _pod_resources(pod_spec: Mapping[str, Any]) -> dict[str, Decimal]:
    """Sum the resources of a pod's containers. As in KubeRay, a request wins over the limit of the same resource."""
    total: dict[str, Decimal] = {}
    for container in pod_spec.get("containers") or []:
        resources = container.get("resources") or {}
        merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for resource, quantity in merged.items():
            total[resource] = total.get(resource, Decimal(0)) + parse_quantity(quantity)
    return total


def desired_resources(cluster: Mapping[str, Any]) -> dict[str, str]:
    """Compute the `desiredCPU`, `desiredMemory`, `desiredGPU` and `desiredTPU` status fields of a RayCluster.

    The sum, as KubeRay v1.7 computes it, is the head pod's resources plus each worker group's pod
    resources times its replicas. GPUs are the resources whose name ends in ``gpu``, TPUs are ``google.com/tpu``.
    """
    spec = cluster["spec"]
    total = _pod_resources(spec["headGroupSpec"]["template"]["spec"])
    for group in spec.get("workerGroupSpecs") or []:
        replicas = int(group.get("replicas", 1))
        for resource, amount in _pod_resources(group["template"]["spec"]).items():
            total[resource] = total.get(resource, Decimal(0)) + amount * replicas

    memory = int(total.get("memory", 0))
    gpus = sum((amount for resource, amount in total.items() if resource.endswith("gpu")), Decimal(0))
    return {
        "desiredCPU": format_cpu(total.get("cpu", Decimal(0))),
        "desiredMemory": format_bytes(memory) if memory else "0",
        "desiredGPU": format_cpu(gpus),
        "desiredTPU": format_cpu(total.get("google.com/tpu", Decimal(0))),
    }


def _condition(
    kind: str, status: bool, moment: str, reason: str | None = None, message: str | None = None
) -> dict[str, Any]:
    condition: dict[str, Any] = {"type": kind, "status": "True" if status else "False", "lastTransitionTime": moment}
    if reason is not None:
        condition["reason"] = reason
    if message is not None:
        condition["message"] = message
    return condition


def _kubelet_conditions(container: str, moment: str, *, ready: bool) -> list[dict[str, Any]]:
    """Return the conditions of a scheduled pod whose only container is ``container``."""
    unready: dict[str, str] = {}
    if not ready:
        unready = {"reason": "ContainersNotReady", "message": f"containers with unready status: [{container}]"}
    return [
        _condition("Initialized", True, moment),
        _condition("Ready", ready, moment, **unready),
        _condition("ContainersReady", ready, moment, **unready),
        _condition("PodScheduled", True, moment),
    ]


def _image_id(image: str) -> str:
    # A digest that stays the same for an image, so a pod's status does not change between reads.
    return f"docker.io/{image}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


class KubeRayOperatorStandin:
    """Reconciles RayClusters of an `ObjectStore`; use it as a context manager around a test.

    ``clock`` sets the time written to events and pod conditions. ``cluster_factory`` builds the
    Ray cluster of a RayCluster from the keyword arguments of `LocalRayCluster`, and a test may pass
    a fake that starts nothing.
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        start_timeout_s: float = 180.0,
        clock: Callable[[], datetime.datetime] = utc_now,
        cluster_factory: Callable[..., LocalRayCluster] = LocalRayCluster,
    ) -> None:
        self.store = store
        self._start_timeout_s = start_timeout_s
        self._clock = clock
        self._cluster_factory = cluster_factory
        self._events: queue.Queue[WatchEvent | None] = queue.Queue()
        self._clusters: dict[tuple[str, str], LocalRayCluster] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._crash_heads: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._unsubscribe = None
        self._loop: threading.Thread | None = None

    def __enter__(self) -> KubeRayOperatorStandin:
        self._unsubscribe = self.store.subscribe(self._on_change)
        self._loop = threading.Thread(target=self._run, name="kuberay-operator-standin", daemon=True)
        self._loop.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._events.put(None)
        if self._loop is not None:
            self._loop.join(timeout=30)
        for thread in self._threads:
            thread.join(timeout=self._start_timeout_s)
        for cluster in list(self._clusters.values()):
            cluster.stop()
        self._clusters.clear()

    def crash_head(self, name: str) -> None:
        """Make the head of the RayCluster called ``name`` crash-loop instead of starting."""
        self._crash_heads.add(name)

    def running_clusters(self) -> list[str]:
        """Names of the RayClusters that have Ray processes running."""
        return [name for (_, name), cluster in self._clusters.items() if cluster.info is not None]

    def _on_change(self, event: WatchEvent) -> None:
        # Runs under the store's lock: only hand the event to the operator's own thread.
        if event.resource == RAYCLUSTERS and event.type in ("ADDED", "DELETED"):
            self._events.put(event)

    def _run(self) -> None:
        while True:
            event = self._events.get()
            if event is None:
                return
            key = (event.object["metadata"]["namespace"], event.object["metadata"]["name"])
            target = self._reconcile_added if event.type == "ADDED" else self._reconcile_deleted
            thread = threading.Thread(target=target, args=(key, event.object), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _lock(self, key: tuple[str, str]) -> threading.Lock:
        return self._locks.setdefault(key, threading.Lock())

    def _now(self) -> str:
        return format_timestamp(self._clock())

    def _event(self, involved: Mapping[str, Any], reason: str, message: str, **details: Any) -> None:
        record_event(self.store, involved, reason=reason, message=message, moment=self._clock(), **details)

    def _kubelet_event(self, pod: Mapping[str, Any], reason: str, message: str, *, event_type: str = "Normal") -> None:
        container = pod["spec"]["containers"][0]["name"]
        self._event(
            pod,
            reason,
            message,
            component=KUBELET_COMPONENT,
            event_type=event_type,
            field_path=f"spec.containers{{{container}}}",
            host=NODE_NAME,
        )

    # ----- reconciling -----

    def _reconcile_added(self, key: tuple[str, str], cluster: dict[str, Any]) -> None:
        namespace, name = key
        with self._lock(key):
            try:
                pods = self._create_children(namespace, name, cluster)

                scheduled = []
                for pod in pods:
                    if "nvidia.com/gpu" in _limits(pod["spec"]["containers"][0]):
                        self._fail_scheduling(pod)
                    else:
                        scheduled.append(self._schedule(pod))

                running = []
                for pod in scheduled:
                    if MISSING_IMAGE_MARKER in pod["spec"]["containers"][0]["image"]:
                        self._fail_image_pull(pod)
                    else:
                        running.append(self._start_containers(pod))
                if len(running) < len(pods):
                    return

                if name in self._crash_heads:
                    self._fail_head_crash(next(pod for pod in running if _node_type(pod) == "head"))
                    return
                self._start_ray(key, cluster, running)
            except Exception:
                logger.exception("The stand-in operator failed to reconcile RayCluster %s/%s", namespace, name)

    def _reconcile_deleted(self, key: tuple[str, str], cluster: dict[str, Any]) -> None:
        namespace, name = key
        # Waits for a start in progress, so that its processes are stopped too.
        with self._lock(key):
            local = self._clusters.pop(key, None)
            if local is not None:
                local.stop()
            for resource in (PODS, SERVICES):
                for child in self.store.objects(resource):
                    labels = child["metadata"].get("labels") or {}
                    if child["metadata"]["namespace"] == namespace and labels.get("ray.io/cluster") == name:
                        self.store.delete(resource, namespace, child["metadata"]["name"])

    def _pod_groups(self, name: str, cluster: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
        """Return (pod name, node type, group spec) for the head and each worker replica."""
        pods = [(f"{name}-head", "head", cluster["spec"]["headGroupSpec"])]
        for group in cluster["spec"].get("workerGroupSpecs") or []:
            for index in range(int(group.get("replicas", 1))):
                pods.append((f"{name}-{group['groupName']}-worker-{index}", "worker", group))
        return pods

    def _create_children(self, namespace: str, name: str, cluster: dict[str, Any]) -> list[dict[str, Any]]:
        """Create the head service and the pods, as KubeRay does, and return the stored pods."""
        service = self.store.put(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"{name}-head-svc", "namespace": namespace, "labels": {"ray.io/cluster": name}},
                "spec": {"clusterIP": DASHBOARD_SERVICE_IP, "ports": [{"name": "dashboard", "port": 8265}]},
            }
        )
        self._event(
            cluster,
            "CreatedService",
            f"Created service {namespace}/{service['metadata']['name']}",
            component=KUBERAY_COMPONENT,
        )

        pods = []
        for pod_name, node_type, group in self._pod_groups(name, cluster):
            template = _first_container(group)
            container = {"name": template["name"], "image": template["image"]}
            if template.get("resources"):
                container["resources"] = copy.deepcopy(template["resources"])
            pod = self.store.put(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": pod_name,
                        "namespace": namespace,
                        "labels": {"ray.io/cluster": name, "ray.io/node-type": node_type},
                    },
                    "spec": {"containers": [container]},
                    "status": {"phase": "Pending"},
                }
            )
            reason = "CreatedHeadPod" if node_type == "head" else "CreatedWorkerPod"
            self._event(
                cluster,
                reason,
                f"Created {node_type} Pod {namespace}/{pod_name}",
                component=KUBERAY_COMPONENT,
            )
            pods.append(pod)

        self.store.update_status(
            RAYCLUSTERS, namespace, name, {"state": "", "conditions": [], **self._replica_status(cluster, ready=0)}
        )
        return pods

    def _replica_status(self, cluster: dict[str, Any], *, ready: int) -> dict[str, Any]:
        workers = sum(int(group.get("replicas", 1)) for group in cluster["spec"].get("workerGroupSpecs") or [])
        return {
            "desiredWorkerReplicas": workers,
            "readyWorkerReplicas": ready,
            "availableWorkerReplicas": ready,
            **desired_resources(cluster),
        }

    def _update_pod(self, pod: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        metadata = pod["metadata"]
        return self.store.update_status(PODS, metadata["namespace"], metadata["name"], status)

    # ----- the scheduler and the kubelet -----

    def _schedule(self, pod: dict[str, Any]) -> dict[str, Any]:
        """Bind the pod to the stand-in's node. The kubelet then starts creating its container."""
        scheduled = copy.deepcopy(pod)
        scheduled["spec"]["nodeName"] = NODE_NAME
        scheduled = self.store.put(scheduled)
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        self._event(
            scheduled,
            "Scheduled",
            f"Successfully assigned {namespace}/{name} to {NODE_NAME}",
            component=SCHEDULER_COMPONENT,
        )

        container = pod["spec"]["containers"][0]
        now = self._now()
        return self._update_pod(
            scheduled,
            {
                "phase": "Pending",
                "conditions": _kubelet_conditions(container["name"], now, ready=False),
                "hostIP": NODE_IP,
                "startTime": now,
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "started": False,
                        "state": {"waiting": {"reason": "ContainerCreating"}},
                        "lastState": {},
                    }
                ],
            },
        )

    def _fail_scheduling(self, pod: dict[str, Any]) -> None:
        self._update_pod(
            pod,
            {
                "phase": "Pending",
                "conditions": [
                    _condition("PodScheduled", False, self._now(), "Unschedulable", UNSCHEDULABLE_GPU_MESSAGE)
                ],
            },
        )
        self._event(
            pod, "FailedScheduling", UNSCHEDULABLE_GPU_MESSAGE, component=SCHEDULER_COMPONENT, event_type="Warning"
        )

    def _fail_image_pull(self, pod: dict[str, Any]) -> None:
        container = pod["spec"]["containers"][0]
        image = container["image"]
        status = copy.deepcopy(pod["status"])
        status["containerStatuses"][0]["state"] = {
            "waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
        }
        self._update_pod(pod, status)

        pull_error = (
            f"rpc error: code = NotFound desc = failed to pull and unpack image "
            f'"docker.io/{image}": failed to resolve reference "docker.io/{image}": docker.io/{image}: not found'
        )
        self._kubelet_event(pod, "Pulling", f'Pulling image "{image}"')
        self._kubelet_event(pod, "Failed", f'Failed to pull image "{image}": {pull_error}', event_type="Warning")
        self._kubelet_event(pod, "Failed", "Error: ErrImagePull", event_type="Warning")
        # The kubelet writes the back-off itself as a Normal event and the error that follows as a Warning.
        self._kubelet_event(pod, "BackOff", f'Back-off pulling image "{image}"')
        self._kubelet_event(pod, "Failed", "Error: ImagePullBackOff", event_type="Warning")

    def _start_containers(self, pod: dict[str, Any]) -> dict[str, Any]:
        """Start the pod's container from an image already on the node, so it runs but is not ready yet."""
        container = pod["spec"]["containers"][0]
        now = self._now()
        started = self._update_pod(pod, self._running_status(pod, now, ready=False))
        self._kubelet_event(pod, "Pulled", f'Container image "{container["image"]}" already present on machine')
        self._kubelet_event(pod, "Created", f"Created container: {container['name']}")
        self._kubelet_event(pod, "Started", f"Started container {container['name']}")
        return started

    def _running_status(self, pod: dict[str, Any], moment: str, *, ready: bool) -> dict[str, Any]:
        container = pod["spec"]["containers"][0]
        # A container that already runs keeps its start time when it becomes ready.
        previous = (pod["status"].get("containerStatuses") or [{}])[0].get("state") or {}
        started_at = (previous.get("running") or {}).get("startedAt", moment)
        return {
            "phase": "Running",
            "conditions": _kubelet_conditions(container["name"], moment, ready=ready),
            "hostIP": NODE_IP,
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "startTime": pod["status"].get("startTime", moment),
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": _image_id(container["image"]),
                    "containerID": f"containerd://{pod['metadata']['uid'].replace('-', '')}",
                    "ready": ready,
                    "restartCount": 0,
                    "started": True,
                    "state": {"running": {"startedAt": started_at}},
                    "lastState": {},
                }
            ],
        }

    def _fail_head_crash(self, head: dict[str, Any]) -> None:
        container = head["spec"]["containers"][0]
        status = copy.deepcopy(head["status"])
        status["containerStatuses"][0].update(
            {
                "ready": False,
                "started": False,
                "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": self._now()}},
            }
        )
        self._update_pod(head, status)
        self.store.set_pod_log(head["metadata"]["namespace"], head["metadata"]["name"], HEAD_CRASH_LOG)

        metadata = head["metadata"]
        # The kubelet names the pod as name_namespace(uid) in this message.
        pod_ref = f"{metadata['name']}_{metadata['namespace']}({metadata['uid']})"
        self._kubelet_event(
            head,
            "BackOff",
            f"Back-off restarting failed container {container['name']} in pod {pod_ref}",
            event_type="Warning",
        )

    def _start_ray(self, key: tuple[str, str], cluster: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        namespace, name = key
        groups = cluster["spec"].get("workerGroupSpecs") or []
        workers = sum(int(group.get("replicas", 1)) for group in groups)
        limits = _limits(_first_container(groups[0])) if groups else {}
        spec = ClusterSpec(
            workers=max(workers, 1),
            cpus_per_worker=max(1, int(float(limits.get("cpu", "1")))),
            memory_per_worker=parse_memory(limits.get("memory", "1Gi"), field="memory"),
            object_store_memory=OBJECT_STORE_MEMORY,
        )
        local = self._cluster_factory(name=f"standin-{name}"[:40], spec=spec, start_timeout_s=self._start_timeout_s)
        self._clusters[key] = local
        info = local.start()

        now = self._now()
        for pod in pods:
            self._update_pod(pod, self._running_status(pod, now, ready=True))
        port = info.dashboard_url.rsplit(":", 1)[1]
        self.store.update_status(
            RAYCLUSTERS,
            namespace,
            name,
            {
                "state": "ready",
                "conditions": [
                    {"type": "RayClusterProvisioned", "status": "True", "reason": "AllPodRunningAndReadyFirstTime"},
                    {"type": "HeadPodReady", "status": "True", "reason": "HeadPodRunningAndReady"},
                ],
                **self._replica_status(cluster, ready=workers),
                "head": {"podIP": POD_IP, "serviceIP": DASHBOARD_SERVICE_IP, "serviceName": f"{name}-head-svc"},
                "endpoints": {"dashboard": port, "gcs-server": info.gcs_address.rsplit(":", 1)[1]},
            },
        )


def _node_type(pod: Mapping[str, Any]) -> str:
    return str((pod["metadata"].get("labels") or {}).get("ray.io/node-type", ""))
