"""A stand-in KubeRay operator: turns RayClusters in the API stand-in into real local Ray clusters.

Like the real operator it creates the head service and one pod per Ray node, and writes
the RayCluster status the platform reads (conditions, state, head service IP and
endpoints). Each RayCluster gets a `LocalRayCluster`, so jobs run on real Ray; deleting
the RayCluster stops its processes. Faults are injected per cluster name or by image:
an image whose name contains ``does-not-exist`` cannot be pulled, a worker group that
requests GPUs is unschedulable (the stand-in has no GPU nodes), and
:meth:`KubeRayOperatorStandin.crash_head` makes a cluster's head crash-loop.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from resources.local import LocalRayCluster
from resources.spec import ClusterSpec, parse_memory
from tests.kube_standin.resources import PODS, RAYCLUSTERS, SERVICES
from tests.kube_standin.store import ObjectStore, WatchEvent

logger = logging.getLogger(__name__)

DASHBOARD_SERVICE_IP = "127.0.0.1"
MISSING_IMAGE_MARKER = "does-not-exist"
OBJECT_STORE_MEMORY = 128 * 1024**2
HEAD_CRASH_LOG = (
    'Traceback (most recent call last):\n  File "/home/ray/start.py", line 3\n'
    "RuntimeError: head crashed in the stand-in"
)


def _first_container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]


def _limits(container: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in ((container.get("resources") or {}).get("limits") or {}).items()}


class KubeRayOperatorStandin:
    """Reconciles RayClusters of an `ObjectStore`; use it as a context manager around a test."""

    def __init__(self, store: ObjectStore, *, start_timeout_s: float = 180.0) -> None:
        self.store = store
        self._start_timeout_s = start_timeout_s
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

    def _reconcile_added(self, key: tuple[str, str], cluster: dict[str, Any]) -> None:
        namespace, name = key
        with self._lock(key):
            try:
                self._create_children(namespace, name, cluster)
                head = cluster["spec"]["headGroupSpec"]
                workers = cluster["spec"].get("workerGroupSpecs") or []
                images = [_first_container(head)["image"], *(_first_container(group)["image"] for group in workers)]
                if any(MISSING_IMAGE_MARKER in image for image in images):
                    self._fail_image_pull(namespace, name, next(i for i in images if MISSING_IMAGE_MARKER in i))
                    return
                if any("nvidia.com/gpu" in _limits(_first_container(group)) for group in workers):
                    self._fail_unschedulable(namespace, name)
                    return
                if name in self._crash_heads:
                    self._fail_head_crash(namespace, name)
                    return
                self._start_ray(key, cluster)
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

    def _pod_names(self, name: str, cluster: dict[str, Any]) -> list[tuple[str, str]]:
        pods = [(f"{name}-head", "head")]
        for group in cluster["spec"].get("workerGroupSpecs") or []:
            for index in range(int(group.get("replicas", 1))):
                pods.append((f"{name}-{group['groupName']}-worker-{index}", "worker"))
        return pods

    def _create_children(self, namespace: str, name: str, cluster: dict[str, Any]) -> None:
        self.store.put(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"{name}-head-svc", "namespace": namespace, "labels": {"ray.io/cluster": name}},
                "spec": {"clusterIP": DASHBOARD_SERVICE_IP, "ports": [{"name": "dashboard", "port": 8265}]},
            }
        )
        head = _first_container(cluster["spec"]["headGroupSpec"])
        for pod_name, node_type in self._pod_names(name, cluster):
            self.store.put(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": pod_name,
                        "namespace": namespace,
                        "labels": {"ray.io/cluster": name, "ray.io/node-type": node_type},
                    },
                    "spec": {
                        "containers": [
                            {"name": "ray-head" if node_type == "head" else "ray-worker", "image": head["image"]}
                        ]
                    },
                    "status": {"phase": "Pending"},
                }
            )
        self.store.update_status(RAYCLUSTERS, namespace, name, {"state": "", "conditions": []})

    def _set_pod_status(
        self, namespace: str, name: str, status: dict[str, Any], *, node_type: str | None = None
    ) -> None:
        for pod in self.store.objects(PODS):
            labels = pod["metadata"].get("labels") or {}
            if pod["metadata"]["namespace"] != namespace or labels.get("ray.io/cluster") != name:
                continue
            if node_type is None or labels.get("ray.io/node-type") == node_type:
                self.store.update_status(PODS, namespace, pod["metadata"]["name"], status)

    def _fail_image_pull(self, namespace: str, name: str, image: str) -> None:
        waiting = {
            "reason": "ImagePullBackOff",
            "message": f'Back-off pulling image "{image}"',
        }
        self._set_pod_status(
            namespace,
            name,
            {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "name": "ray",
                        "image": image,
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"waiting": waiting},
                    }
                ],
            },
        )

    def _fail_unschedulable(self, namespace: str, name: str) -> None:
        message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available."
        self._set_pod_status(
            namespace,
            name,
            {
                "phase": "Pending",
                "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
                ],
            },
            node_type="worker",
        )

    def _fail_head_crash(self, namespace: str, name: str) -> None:
        self._set_pod_status(
            namespace,
            name,
            {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": "ray-head",
                        "image": "ray",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 3,
                        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting"}},
                    }
                ],
            },
            node_type="head",
        )
        self.store.set_pod_log(namespace, f"{name}-head", HEAD_CRASH_LOG)

    def _start_ray(self, key: tuple[str, str], cluster: dict[str, Any]) -> None:
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
        local = LocalRayCluster(name=f"standin-{name}"[:40], spec=spec, start_timeout_s=self._start_timeout_s)
        self._clusters[key] = local
        info = local.start()

        self._set_pod_status(
            namespace,
            name,
            {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}], "podIP": "127.0.0.2"},
        )
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
                "desiredWorkerReplicas": workers,
                "readyWorkerReplicas": workers,
                "availableWorkerReplicas": workers,
                "head": {"podIP": "127.0.0.2", "serviceIP": DASHBOARD_SERVICE_IP, "serviceName": f"{name}-head-svc"},
                "endpoints": {"dashboard": port, "gcs-server": info.gcs_address.rsplit(":", 1)[1]},
            },
        )
