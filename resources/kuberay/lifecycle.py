"""Create, wait for and delete one KubeRay RayCluster through the official Kubernetes client.

The client objects, clock and sleeper are handed in, so tests drive time and point the
client at a stand-in API server.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from resources.errors import ClusterStartError, PlatformError
from resources.kuberay.retry import call_with_retries, describe_error, is_transient

logger = logging.getLogger(__name__)

GROUP = "ray.io"
VERSION = "v1"
PLURAL = "rayclusters"
CLUSTER_LABEL = "ray.io/cluster"
NODE_TYPE_LABEL = "ray.io/node-type"

READY_TIMEOUT_S = 600.0
# Client-side limit of one API call, so that a hung connection cannot stall a wait.
API_TIMEOUT_S = 30.0
WATCH_WINDOW_S = 5
DASHBOARD_PROBE_TIMEOUT_S = 2.0
LOG_TAIL_LINES = 20

IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
# Waiting reasons of a container whose image may still be missing on its node.
IMAGE_PENDING_REASONS = IMAGE_PULL_REASONS | {"ContainerCreating", "PodInitializing"}
DEFAULT_DASHBOARD_URL_TEMPLATE = "http://{name}-head-svc.{namespace}.svc.cluster.local:8265"


class ClusterConflictError(PlatformError):
    """A RayCluster of the same name exists and belongs to someone else; it was not adopted."""

    def __init__(self, name: str, namespace: str, labels: Mapping[str, str]) -> None:
        super().__init__(name, namespace, dict(labels))
        self.name = name
        self.namespace = namespace
        self.labels = dict(labels)

    def __str__(self) -> str:
        return (
            f"RayCluster {self.namespace}/{self.name} already exists with labels {self.labels}, which do not "
            f"name this run, so it was not adopted. Delete it (kubectl delete raycluster -n {self.namespace} "
            f"{self.name}) if it is stale, or check which run created it."
        )


@dataclass(frozen=True)
class ReadyCluster:
    """A RayCluster whose head pod is ready and whose dashboard responds."""

    name: str
    namespace: str
    dashboard_url: str
    status: dict[str, Any]


def dashboard_url(cluster: Mapping[str, Any], template: str = DEFAULT_DASHBOARD_URL_TEMPLATE) -> str:
    """Fill ``template`` from a RayCluster object.

    Placeholders: ``{name}``, ``{namespace}``, ``{service_ip}`` (status.head.serviceIP)
    and ``{dashboard_port}`` (status.endpoints.dashboard, 8265 when absent).
    """
    metadata = cluster.get("metadata", {})
    status = cluster.get("status") or {}
    return template.format(
        name=metadata.get("name", ""),
        namespace=metadata.get("namespace", ""),
        service_ip=(status.get("head") or {}).get("serviceIP", ""),
        dashboard_port=(status.get("endpoints") or {}).get("dashboard", "8265"),
    )


def head_pod_ready(cluster: Mapping[str, Any]) -> bool:
    """Tell whether KubeRay reports the head pod ready.

    That is the ``HeadPodReady`` condition, or ``state: ready`` on operators that predate it.
    """
    status = cluster.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "HeadPodReady":
            return str(condition.get("status")) == "True"
    return status.get("state") == "ready"


def diagnose_pods(pods: list[client.V1Pod]) -> tuple[str, client.V1Pod] | None:
    """Find a reason why the cluster cannot become ready from its pods' statuses; ``None`` when there is none yet."""
    for pod in pods:
        name = pod.metadata.name
        status = pod.status
        if status is None:
            continue
        for condition in status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False" and condition.reason == "Unschedulable":
                return f"pod {name} is unschedulable: {condition.message}", pod
        for container in status.container_statuses or []:
            waiting = container.state.waiting if container.state else None
            if waiting is None:
                continue
            if waiting.reason in IMAGE_PULL_REASONS:
                return (
                    f"pod {name} cannot pull image {container.image}: {waiting.reason}"
                    + (f" ({waiting.message})" if waiting.message else ""),
                    pod,
                )
            if waiting.reason == "CrashLoopBackOff":
                return f"container {container.name} of pod {name} is crash-looping", pod
    return None


def image_pulled(container: client.V1ContainerStatus) -> bool:
    """Tell whether a container's image is on its node.

    It is when the container runs or has run, or waits for a reason other than creating the
    container or pulling its image (such as ``CrashLoopBackOff``).
    """
    state = container.state
    if state is None:
        return False
    if state.running is not None or state.terminated is not None:
        return True
    reason = state.waiting.reason if state.waiting is not None else None
    return bool(reason) and reason not in IMAGE_PENDING_REASONS


def pod_progress(pods: list[client.V1Pod], *, expected_pods: int = 0) -> list[str]:
    """Summarize how far a RayCluster's pods have started, one fact per stage, or nothing while no pod exists.

    ``expected_pods`` is the number of pods the cluster will have (head plus desired workers), so
    that pods KubeRay has not created yet count as not scheduled. When more pods are listed, the
    listed number is used. Image pulls are reported once at least one pod is scheduled.
    """
    if not pods:
        return []
    total = max(len(pods), expected_pods)
    scheduled = 0
    pulled = 0
    head_ready = False
    for pod in pods:
        status = pod.status
        if status is None:
            continue
        conditions = {condition.type: condition.status for condition in status.conditions or []}
        if conditions.get("PodScheduled") == "True":
            scheduled += 1
        containers = status.container_statuses or []
        if containers and all(image_pulled(container) for container in containers):
            pulled += 1
        labels = pod.metadata.labels or {}
        if labels.get(NODE_TYPE_LABEL) == "head" and conditions.get("Ready") == "True":
            head_ready = True

    facts = [f"{scheduled} of {total} pods scheduled"]
    if scheduled:
        facts.append(f"images pulled on {pulled} of {total} pods")
    if head_ready:
        facts.append("head pod ready")
    return facts


def _report_new(name: str, facts: list[str], reported: set[str], progress: Callable[[str], None]) -> None:
    for fact in facts:
        if fact not in reported:
            reported.add(fact)
            progress(f"RayCluster {name}: {fact}")


def probe_dashboard(url: str) -> bool:
    """Tell whether the Ray dashboard at ``url`` responds on its version endpoint."""
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=DASHBOARD_PROBE_TIMEOUT_S) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


class RayClusterClient:
    """Lifecycle of RayClusters in one namespace."""

    def __init__(
        self,
        *,
        custom_api: client.CustomObjectsApi,
        core_api: client.CoreV1Api,
        namespace: str,
        dashboard_url_template: str = DEFAULT_DASHBOARD_URL_TEMPLATE,
        probe_dashboard: Callable[[str], bool] = probe_dashboard,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._custom = custom_api
        self._core = core_api
        self.namespace = namespace
        self._dashboard_url_template = dashboard_url_template
        self._probe_dashboard = probe_dashboard
        self._clock = clock
        self._sleep = sleep

    def _retry(self, call: Callable[[], Any], description: str, deadline: float | None = None) -> Any:
        return call_with_retries(call, description=description, deadline=deadline, clock=self._clock, sleep=self._sleep)

    def get(self, name: str, *, deadline: float | None = None) -> dict[str, Any] | None:
        """Read a RayCluster; ``None`` when it does not exist.

        ``deadline``, a value of the client's clock, stops the retries of transient errors
        before a retry delay would pass it.
        """
        try:
            return dict(
                self._retry(
                    lambda: self._custom.get_namespaced_custom_object(
                        GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=API_TIMEOUT_S
                    ),
                    f"get raycluster {self.namespace}/{name}",
                    deadline,
                )
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def create(self, manifest: Mapping[str, Any], *, owner_labels: Mapping[str, str]) -> dict[str, Any]:
        """Create the RayCluster, or adopt an existing one that carries all of ``owner_labels``.

        A 409 after a retried create is the normal case for adoption: the first attempt
        reached the server although its response was lost.

        Raises:
            ClusterConflictError: a cluster of that name exists without this run's labels.
            ApiException: the API server rejected the manifest (the message is the server's).
        """
        name = manifest["metadata"]["name"]
        try:
            created = self._retry(
                lambda: self._custom.create_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, manifest, _request_timeout=API_TIMEOUT_S
                ),
                f"create raycluster {self.namespace}/{name}",
            )
            logger.info("Created RayCluster %s/%s", self.namespace, name)
            return dict(created)
        except ApiException as error:
            if error.status != 409:
                raise
        existing = self.get(name)
        labels = ((existing or {}).get("metadata") or {}).get("labels") or {}
        if existing is None or any(labels.get(key) != value for key, value in owner_labels.items()):
            raise ClusterConflictError(name, self.namespace, labels)
        logger.info("Adopted RayCluster %s/%s, which this run created earlier", self.namespace, name)
        return existing

    def delete(self, name: str) -> None:
        """Delete the RayCluster; a 404 means it is already gone."""
        try:
            self._retry(
                lambda: self._custom.delete_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=API_TIMEOUT_S
                ),
                f"delete raycluster {self.namespace}/{name}",
            )
            logger.info("Deleted RayCluster %s/%s", self.namespace, name)
        except ApiException as error:
            if error.status != 404:
                raise
            logger.info("RayCluster %s/%s was already gone", self.namespace, name)

    def wait_until_ready(
        self,
        name: str,
        *,
        timeout_s: float = READY_TIMEOUT_S,
        on_progress: Callable[[str], None] | None = None,
    ) -> ReadyCluster:
        """Wait until the head pod is ready and the dashboard responds, failing fast on a pod's real reason.

        The wait follows a watch on the RayCluster. Between watch events it reads the
        cluster's pods, so an image pull error, an unschedulable pod or a crash-looping
        head fails the wait with that reason instead of a timeout.

        ``on_progress`` gets each new fact once, as ``RayCluster <name>: <fact>``: the
        cluster's state, its true conditions and ready workers, and from the pods how many
        are scheduled, on how many the images are pulled, and whether the head pod is ready.

        Transient API errors are retried within the same ``timeout_s``.

        Raises:
            ClusterStartError: with the pod's reason (and the head's last log lines when
                it crashes), when the API kept failing until its retries or the timeout ran
                out, or a timeout as the last resort.
        """
        progress = on_progress or (lambda message: logger.info("%s", message))
        deadline = self._clock() + timeout_s
        reported: set[str] = set()
        resource_version: str | None = None

        while True:
            cluster, pods = self._read_cluster_and_pods(name, deadline=deadline, timeout_s=timeout_s)
            if cluster is None:
                raise ClusterStartError(f"{self.namespace}/{name}", "the RayCluster was deleted while starting")
            resource_version = (cluster.get("metadata") or {}).get("resourceVersion", resource_version)
            self._report_state(cluster, reported, progress)
            self._report_pods(cluster, pods, reported, progress)

            failure = self._diagnose(pods)
            if failure is not None:
                reason, log_tail = failure
                raise ClusterStartError(f"{self.namespace}/{name}", reason, log_tail)

            if head_pod_ready(cluster):
                url = dashboard_url(cluster, self._dashboard_url_template)
                if self._probe_dashboard(url):
                    progress(f"RayCluster {name} is ready; dashboard at {url}")
                    return ReadyCluster(
                        name=name, namespace=self.namespace, dashboard_url=url, status=cluster["status"]
                    )

            remaining = deadline - self._clock()
            if remaining <= 0:
                raise ClusterStartError(
                    f"{self.namespace}/{name}",
                    f"not ready within {timeout_s:.0f} s (state {((cluster.get('status') or {}).get('state'))!r}); "
                    f"run `kubectl describe raycluster -n {self.namespace} {name}` and check its pods' events",
                )
            self._wait_for_change(name, resource_version, min(remaining, WATCH_WINDOW_S))

    def _read_cluster_and_pods(
        self, name: str, *, deadline: float, timeout_s: float
    ) -> tuple[dict[str, Any] | None, list[client.V1Pod]]:
        """Read the RayCluster and, when it exists, its pods, retrying transient errors no later than ``deadline``.

        Raises:
            ClusterStartError: a transient error outlasted the retries or the wait's deadline.
        """
        try:
            cluster = self.get(name, deadline=deadline)
            pods = [] if cluster is None else self._list_pods(name, deadline=deadline)
        except Exception as error:
            if not is_transient(error):
                raise
            raise ClusterStartError(
                f"{self.namespace}/{name}",
                f"the Kubernetes API kept failing while waiting up to {timeout_s:.0f} s for the cluster "
                f"(last error: {describe_error(error)}). Check that the API server is reachable and not "
                "overloaded, then run again",
            ) from error
        return cluster, pods

    def _report_state(self, cluster: Mapping[str, Any], reported: set[str], progress: Callable[[str], None]) -> None:
        status = cluster.get("status") or {}
        facts = [f"state {status['state']}"] if status.get("state") else []
        for condition in status.get("conditions") or []:
            if str(condition.get("status")) == "True":
                facts.append(str(condition.get("type")))
        ready_workers = status.get("readyWorkerReplicas")
        if ready_workers is not None:
            facts.append(f"{ready_workers} of {status.get('desiredWorkerReplicas', '?')} workers ready")
        _report_new(cluster["metadata"]["name"], facts, reported, progress)

    def _report_pods(
        self,
        cluster: Mapping[str, Any],
        pods: list[client.V1Pod],
        reported: set[str],
        progress: Callable[[str], None],
    ) -> None:
        status = cluster.get("status") or {}
        desired_workers = status.get("desiredWorkerReplicas")
        expected = 1 + int(desired_workers) if isinstance(desired_workers, int) else 0
        _report_new(cluster["metadata"]["name"], pod_progress(pods, expected_pods=expected), reported, progress)

    def _list_pods(self, name: str, *, deadline: float | None = None) -> list[client.V1Pod]:
        return list(
            self._retry(
                lambda: self._core.list_namespaced_pod(
                    self.namespace, label_selector=f"{CLUSTER_LABEL}={name}", _request_timeout=API_TIMEOUT_S
                ),
                f"list pods of raycluster {self.namespace}/{name}",
                deadline,
            ).items
        )

    def _diagnose(self, pods: list[client.V1Pod]) -> tuple[str, str] | None:
        found = diagnose_pods(pods)
        if found is None:
            return None
        reason, pod = found
        log_tail = ""
        if "crash-looping" in reason:
            try:
                # kubernetes 36 returns the log as the text "b'...'" unless the body is read raw
                # (kubernetes-client/python#2596).
                response = self._core.read_namespaced_pod_log(
                    pod.metadata.name,
                    self.namespace,
                    tail_lines=LOG_TAIL_LINES,
                    _preload_content=False,
                    _request_timeout=API_TIMEOUT_S,
                )
                log_tail = response.data.decode(errors="replace")
            except ApiException as error:
                log_tail = f"(its log could not be read: HTTP {error.status})"
        return reason, log_tail

    def _wait_for_change(self, name: str, resource_version: str | None, window_s: float) -> None:
        """Block until the RayCluster changes or ``window_s`` passes."""
        stream = watch.Watch()
        try:
            for _event in stream.stream(
                self._custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                field_selector=f"metadata.name={name}",
                resource_version=resource_version,
                timeout_seconds=max(1, int(window_s)),
                # A watch the server never closes (a half-open connection) must not outlive the wait.
                _request_timeout=window_s + API_TIMEOUT_S,
            ):
                return
        except ApiException as error:
            # 410 Gone: the version is too old to resume from; the next get starts afresh.
            if error.status != 410 and not is_transient(error):
                raise
            self._sleep(min(window_s, 1.0))
        except Exception as error:  # noqa: BLE001 - a broken watch stream is retried by the caller's loop
            if not is_transient(error):
                raise
            self._sleep(min(window_s, 1.0))
        finally:
            stream.stop()
