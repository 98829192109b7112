"""The ``kuberay`` backend: one RayCluster per run, created from a vetted template and deleted at the end."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config

from resources.errors import ClusterStartError
from resources.kuberay.lifecycle import (
    CLUSTER_LABEL,
    DEFAULT_DASHBOARD_URL_TEMPLATE,
    READY_TIMEOUT_S,
    ClusterConflictError,
    RayClusterClient,
    probe_dashboard,
)
from resources.kuberay.manifest import ClusterRequest, OwnerJob, RunContext, render_raycluster
from resources.kuberay.policy import Policy
from resources.kuberay.port_forward import PodConnector, PortForward, kubernetes_connector

logger = logging.getLogger(__name__)

DASHBOARD_PORT = 8265


def kubernetes_api_client(
    *, api_url: str | None = None, kubeconfig: str | None = None, context: str | None = None
) -> client.ApiClient:
    """Build an API client from ``api_url`` (an API proxy such as ``kubectl proxy``), a kubeconfig, or in-cluster.

    With none of them set, the in-cluster service account is used when the process runs
    in a pod, and the default kubeconfig otherwise. urllib3's own retries are off, so
    that ``resources.kuberay.retry`` alone decides which failures are retried and how long
    to wait.
    """
    configuration = client.Configuration()
    if api_url:
        configuration.host = api_url
    elif kubeconfig or context:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    configuration.retries = False
    return client.ApiClient(configuration)


SERVICE_ACCOUNT_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def find_owner_job(core_api: client.CoreV1Api, *, namespace: str) -> OwnerJob | None:
    """Find the Kubernetes Job this process runs in, so the RayCluster can name it as its owner.

    Returns ``None`` outside Kubernetes, when the pod has no Job owner (a code server
    or a local run), or when the pod runs in another namespace than the RayCluster,
    because an owner must be in the same namespace.
    """
    pod_name = os.environ.get("HOSTNAME")
    if not os.environ.get("KUBERNETES_SERVICE_HOST") or not pod_name:
        return None
    try:
        pod_namespace = SERVICE_ACCOUNT_NAMESPACE_FILE.read_text().strip()
    except OSError:
        return None
    if pod_namespace != namespace:
        logger.warning(
            "The run's pod is in namespace %s and the RayCluster in %s, so the cluster has no owner Job",
            pod_namespace,
            namespace,
        )
        return None
    try:
        pod = core_api.read_namespaced_pod(pod_name, pod_namespace)
    except client.ApiException as error:
        logger.warning("Could not read pod %s/%s to find its Job: HTTP %s", pod_namespace, pod_name, error.status)
        return None
    for reference in pod.metadata.owner_references or []:
        if reference.kind == "Job":
            return OwnerJob(name=reference.name, uid=reference.uid)
    return None


@dataclass(frozen=True)
class KubeRayClusterInfo:
    """Addresses of a ready RayCluster."""

    name: str
    namespace: str
    dashboard_url: str
    startup_s: float


class KubeRayCluster:
    """A RayCluster owned by the object that created it; :meth:`stop` deletes it."""

    def __init__(
        self,
        *,
        api_client: client.ApiClient,
        request: ClusterRequest,
        context: RunContext,
        policy: Policy,
        dashboard_url_template: str = DEFAULT_DASHBOARD_URL_TEMPLATE,
        ready_timeout_s: float = READY_TIMEOUT_S,
        port_forward: bool = False,
        connector_factory: Callable[..., PodConnector] = kubernetes_connector,
        on_progress: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if context.owner_job is None:
            owner_job = find_owner_job(client.CoreV1Api(api_client), namespace=context.namespace)
            if owner_job is not None:
                context = dataclasses.replace(context, owner_job=owner_job)
        # A request that breaks policy raises here, before any call that changes the cluster.
        self.manifest = render_raycluster(request=request, context=context, policy=policy)
        self.name: str = self.manifest["metadata"]["name"]
        self._owner_labels = context.owner_labels
        self._core_api = client.CoreV1Api(api_client)
        self._clusters = RayClusterClient(
            custom_api=client.CustomObjectsApi(api_client),
            core_api=self._core_api,
            namespace=context.namespace,
            dashboard_url_template=dashboard_url_template,
            # With a port-forward the dashboard is probed through it once the head pod is ready.
            **({"probe_dashboard": lambda url: True} if port_forward else {}),
            clock=clock,
            sleep=sleep,
        )
        self._port_forward = port_forward
        self._connector_factory = connector_factory
        self._forward: PortForward | None = None
        self._sleep = sleep
        self._ready_timeout_s = ready_timeout_s
        self._on_progress = on_progress or (lambda message: logger.info("%s", message))
        self._clock = clock
        self._created = False
        self.info: KubeRayClusterInfo | None = None

    def start(self) -> KubeRayClusterInfo:
        """Create the RayCluster and wait until it is ready; delete it again if that fails.

        Raises:
            ClusterConflictError: a cluster of this name belongs to another run.
            ClusterStartError: the cluster did not become ready, with the pods' reason.
        """
        started_at = self._clock()
        owner_labels = self._owner_labels
        self._on_progress(f"Creating RayCluster {self._clusters.namespace}/{self.name}")
        try:
            self._clusters.create(self.manifest, owner_labels=owner_labels)
        except ClusterConflictError:
            raise
        except BaseException:
            # Interrupted or failed while creating: the object may exist although no response arrived.
            existing = self._clusters.get(self.name)
            labels = ((existing or {}).get("metadata") or {}).get("labels") or {}
            if existing is not None and all(labels.get(key) == value for key, value in owner_labels.items()):
                self._clusters.delete(self.name)
            raise
        self._created = True

        try:
            ready = self._clusters.wait_until_ready(
                self.name, timeout_s=self._ready_timeout_s, on_progress=self._on_progress
            )
            url = self._open_port_forward(deadline=started_at + self._ready_timeout_s) if self._port_forward else None
        except BaseException:
            self.stop()
            raise
        self.info = KubeRayClusterInfo(
            name=self.name,
            namespace=self._clusters.namespace,
            dashboard_url=url or ready.dashboard_url,
            startup_s=self._clock() - started_at,
        )
        return self.info

    def _open_port_forward(self, *, deadline: float) -> str:
        namespace = self._clusters.namespace
        pods = self._core_api.list_namespaced_pod(
            namespace, label_selector=f"{CLUSTER_LABEL}={self.name},ray.io/node-type=head"
        ).items
        if not pods:
            raise ClusterStartError(
                f"{namespace}/{self.name}", "the cluster is ready but has no head pod to forward to"
            )
        head = pods[0].metadata.name
        connect = self._connector_factory(self._core_api, namespace=namespace, pod=head, port=DASHBOARD_PORT)
        self._forward = PortForward(connect, description=f"pod {namespace}/{head}:{DASHBOARD_PORT}").start()
        url = self._forward.local_url
        while not probe_dashboard(url):
            if self._clock() > deadline:
                raise ClusterStartError(f"{namespace}/{self.name}", f"the dashboard did not respond through {url}")
            self._sleep(0.5)
        self._on_progress(f"Forwarding {url} to the dashboard of pod {namespace}/{head}")
        return url

    def release(self) -> None:
        """Close the port-forward and stop owning the RayCluster, which then lives until deleted or expired."""
        if self._forward is not None:
            self._forward.stop()
            self._forward = None
        self._created = False

    def stop(self) -> None:
        """Delete the RayCluster if this object created it; safe to call twice."""
        if self._forward is not None:
            self._forward.stop()
            self._forward = None
        if self._created:
            self._clusters.delete(self.name)
            self._created = False
        self.info = None
