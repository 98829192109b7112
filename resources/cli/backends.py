"""The cluster operations of ``trainctl`` on each backend, built on the same code the Dagster resource uses.

``KubeRayClusters`` renders with the templates and policy of ``resources.kuberay`` and
talks to the API server through the official client. ``LocalClusters`` starts a keeper
process (``resources.local_keeper``) that keeps a ``LocalRayCluster`` running after
``trainctl`` exits, and finds clusters through the records of ``resources.local_registry``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import psutil
from kubernetes import client

from resources.cluster import RayClusterResource, local_gpu_count
from resources.dashboard import DashboardError, alive_worker_count
from resources.errors import ClusterStartError, InvalidRequestError, PlatformError
from resources.history import state_dir
from resources.kuberay.backend import DASHBOARD_PORT, KubeRayCluster
from resources.kuberay.events import recent_events
from resources.kuberay.inventory import ClusterSummary, summarize
from resources.kuberay.lifecycle import CLUSTER_LABEL, RayClusterClient, dashboard_url
from resources.kuberay.manifest import ClusterRequest, RunContext, render_raycluster
from resources.kuberay.naming import MAX_CLUSTER_NAME_LENGTH, is_dns1035_label
from resources.kuberay.orphans import list_clusters
from resources.kuberay.port_forward import PortForward, kubernetes_connector
from resources.local_keeper import spec_arguments
from resources.local_registry import LocalClusterRecord, LocalRegistry
from resources.reaper import kill_process_groups
from resources.spec import LOCAL_HEAD_MEMORY_BYTES, ClusterSpec, parse_memory

logger = logging.getLogger(__name__)

# How long `down` waits for a keeper to stop its cluster before killing the processes itself.
KEEPER_STOP_TIMEOUT_S = 30.0
LIST_DASHBOARD_TIMEOUT_S = 2.0
EVENT_LINES = 20


class ClusterNotFoundError(PlatformError):
    """No cluster of that name exists on the backend."""

    def __init__(self, name: str, where: str, ended: str | None = None) -> None:
        super().__init__(name, where, ended)
        self.name = name
        self.where = where
        self.ended = ended

    def __str__(self) -> str:
        ended = f" {self.ended}" if self.ended else ""
        return f"No cluster named {self.name!r} {self.where}.{ended} Run `trainctl list` to see the running clusters."


def current_user() -> str:
    """Return the name of the user running ``trainctl``, who owns the clusters it makes."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def default_cluster_name(user: str) -> str:
    """``ray-<user>-<6 hex digits>``, cleaned into a valid RayCluster name."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", user.lower()).strip("-")[:30].strip("-")
    return "-".join(part for part in ("ray", cleaned, uuid.uuid4().hex[:6]) if part)


def check_cluster_name(name: str) -> None:
    """Check a name given with ``--name``.

    Raises:
        InvalidRequestError: the name is not a valid RayCluster name.
    """
    if not (is_dns1035_label(name) and len(name) <= MAX_CLUSTER_NAME_LENGTH):
        raise InvalidRequestError(
            "name",
            f"{name!r} is not a valid cluster name",
            f"Use lowercase letters, digits and '-', a letter first, at most {MAX_CLUSTER_NAME_LENGTH} characters.",
        )


@dataclass(frozen=True)
class UpRequest:
    """A cluster asked for on the command line. Memory values are bytes.

    ``template`` is None when ``--template`` was not given: KubeRay then takes ``gpu`` for
    a request with GPUs and ``cpu`` otherwise.
    """

    template: str | None
    workers: int
    cpus_per_worker: int
    memory_per_worker: int
    gpus_per_worker: int
    gpu_type: str | None
    image: str | None
    team: str | None
    ttl_minutes: int | None
    name: str
    owner: str
    head_cpus: int = 1


@dataclass(frozen=True)
class Started:
    """A cluster that ``up`` made ready."""

    name: str
    dashboard_url: str
    startup_s: float
    expires_at: dt.datetime | None


class Clusters(Protocol):
    """Cluster operations of ``trainctl``, the same on every backend."""

    backend: str

    def check(self, request: UpRequest) -> None: ...

    def up(self, request: UpRequest, on_progress: Callable[[str], None]) -> Started: ...

    def list(self) -> list[ClusterSummary]: ...

    def find(self, name: str) -> ClusterSummary: ...

    def dashboard(self, name: str) -> contextlib.AbstractContextManager[str]: ...

    def details(self, name: str) -> dict[str, Any]: ...

    def delete(self, name: str) -> None: ...

    def note_history(self, cluster: ClusterSummary, url: str) -> None: ...

    def noted_histories(self, cluster: ClusterSummary) -> list[str]: ...


class KubeRayClusters:
    """RayClusters in one namespace, through the API server."""

    backend = "kuberay"

    def __init__(self, settings: RayClusterResource) -> None:
        self.settings = settings
        self.namespace = settings.namespace
        self._api_client: client.ApiClient | None = None

    @property
    def api_client(self) -> client.ApiClient:
        """The Kubernetes API client, built on first use so that ``render`` never needs one."""
        if self._api_client is None:
            self._api_client = self.settings.kubernetes_api()
        return self._api_client

    def _lifecycle(self) -> RayClusterClient:
        return RayClusterClient(
            custom_api=client.CustomObjectsApi(self.api_client),
            core_api=client.CoreV1Api(self.api_client),
            namespace=self.namespace,
            dashboard_url_template=self.settings.dashboard_url_template,
        )

    def _request(self, request: UpRequest) -> tuple[ClusterRequest, RunContext]:
        cluster_request = ClusterRequest(
            template=request.template or ("gpu" if request.gpus_per_worker > 0 else "cpu"),
            workers=request.workers,
            cpus_per_worker=request.cpus_per_worker,
            memory_per_worker=request.memory_per_worker,
            gpus_per_worker=request.gpus_per_worker,
            gpu_type=request.gpu_type,
            head_cpus=request.head_cpus,
            head_memory=parse_memory(self.settings.head_memory, field="head_memory"),
            image=request.image,
            team=request.team,
            ttl_minutes=request.ttl_minutes,
        )
        context = RunContext(
            run_id=uuid.uuid4().hex,
            job_name="",
            namespace=self.namespace,
            code_location="",
            owner=request.owner,
            run_url="",
            origin="manual",
            name=request.name,
        )
        return cluster_request, context

    def render(self, request: UpRequest) -> dict[str, Any]:
        """Render the exact RayCluster that ``up`` would create, without any API call.

        Raises:
            InvalidRequestError: the request is invalid or breaks the policy.
        """
        cluster_request, context = self._request(request)
        return render_raycluster(request=cluster_request, context=context, policy=self.settings.policy())

    def check(self, request: UpRequest) -> None:
        """Validate the request against the policy; raises ``InvalidRequestError``."""
        self.render(request)

    def up(self, request: UpRequest, on_progress: Callable[[str], None]) -> Started:
        """Create the RayCluster and wait until it is ready; on any failure or Ctrl-C it is deleted again."""
        cluster_request, context = self._request(request)
        cluster = KubeRayCluster(
            api_client=self.api_client,
            request=cluster_request,
            context=context,
            policy=self.settings.policy(),
            dashboard_url_template=self.settings.dashboard_url_template,
            ready_timeout_s=self.settings.start_timeout_s,
            port_forward=self.settings.port_forward,
            on_progress=on_progress,
        )
        info = cluster.start()
        # From here on the cluster outlives this process: its TTL and `down` remove it.
        cluster.release()
        url = info.dashboard_url
        if self.settings.port_forward:
            url = dashboard_url(cluster.manifest, self.settings.dashboard_url_template)
        summary = self.find(info.name)
        return Started(name=info.name, dashboard_url=url, startup_s=info.startup_s, expires_at=summary.expires_at)

    def list(self) -> list[ClusterSummary]:
        """List every platform RayCluster of the namespace, oldest first."""
        items = list_clusters(client.CustomObjectsApi(self.api_client), namespace=self.namespace)
        summaries = [summarize(item) for item in items]
        return sorted(summaries, key=lambda summary: summary.created)

    def _get(self, name: str) -> dict[str, Any]:
        cluster = self._lifecycle().get(name)
        if cluster is None:
            raise ClusterNotFoundError(name, f"in namespace {self.namespace}")
        return cluster

    def find(self, name: str) -> ClusterSummary:
        """Summarize one RayCluster; raises ``ClusterNotFoundError``."""
        return summarize(self._get(name))

    @contextlib.contextmanager
    def dashboard(self, name: str) -> Iterator[str]:
        """Yield the URL of the cluster's dashboard, through a port-forward when the settings ask for one."""
        cluster = self._get(name)
        if not self.settings.port_forward:
            yield dashboard_url(cluster, self.settings.dashboard_url_template)
            return
        core_api = client.CoreV1Api(self.api_client)
        pods = core_api.list_namespaced_pod(
            self.namespace, label_selector=f"{CLUSTER_LABEL}={name},ray.io/node-type=head"
        ).items
        if not pods:
            raise ClusterNotFoundError(name, f"with a head pod in namespace {self.namespace}")
        head = pods[0].metadata.name
        connect = kubernetes_connector(core_api, namespace=self.namespace, pod=head, port=DASHBOARD_PORT)
        with PortForward(connect, description=f"pod {self.namespace}/{head}:{DASHBOARD_PORT}") as forward:
            yield forward.local_url

    def details(self, name: str) -> dict[str, Any]:
        """Conditions and recent events of the RayCluster and its pods."""
        cluster = self._get(name)
        status = cluster.get("status") or {}
        conditions = [
            {key: condition.get(key) for key in ("type", "status", "reason", "message", "lastTransitionTime")}
            for condition in status.get("conditions") or []
        ]
        events = recent_events(client.CoreV1Api(self.api_client), self.namespace, name)
        return {"conditions": conditions, "events": events}

    def delete(self, name: str) -> None:
        """Delete the RayCluster and the notes on it here; raises ``ClusterNotFoundError`` when it does not exist."""
        uid = str(self._get(name).get("metadata", {}).get("uid", ""))
        self._lifecycle().delete(name)
        if uid:
            shutil.rmtree(self._notes.histories_path(f"{name}.{uid}"), ignore_errors=True)

    @property
    def _notes(self) -> LocalRegistry:
        # Only `trainctl down` on this machine reads the notes. They are kept here, not on the
        # RayCluster, because a history URL may hold a password. The folder names the API server,
        # since two servers can each have a namespace of the same name.
        server = hashlib.sha256(self.api_client.configuration.host.encode()).hexdigest()[:12]
        return LocalRegistry(state_dir() / "kuberay" / server / self.namespace)

    def note_history(self, cluster: ClusterSummary, url: str) -> None:
        """Note on this machine that the cluster's jobs are recorded at ``url``, for ``trainctl down``.

        The notes are kept per RayCluster uid, so that a cluster made again with the same name
        does not take them over. Those of clusters that are gone (removed by their lifetime,
        the orphan sensor or ``down`` elsewhere) are removed at the same time.

        Raises:
            OSError: the note could not be written.
        """
        if not cluster.uid:
            return
        notes = self._notes
        key = f"{cluster.name}.{cluster.uid}"
        notes.add_history(key, url)
        for folder in notes.root.glob("*.histories"):
            name, _, uid = folder.name.removesuffix(".histories").partition(".")
            if name == cluster.name and uid == cluster.uid:
                continue
            try:
                current = self._lifecycle().get(name)
            except Exception as err:  # noqa: BLE001 - an old note costs only disk space, so it waits for the next submit
                logger.debug("Kept the note %s: the RayCluster could not be read: %s", folder, err)
                continue
            if current is None or str(current.get("metadata", {}).get("uid", "")) != uid:
                shutil.rmtree(folder, ignore_errors=True)

    def noted_histories(self, cluster: ClusterSummary) -> list[str]:
        """Return the job history URLs that ``trainctl submit`` on this machine noted for the cluster."""
        return self._notes.histories(f"{cluster.name}.{cluster.uid}") if cluster.uid else []


def _local_summary(record: LocalClusterRecord, *, ready_workers: int | None, stopping: bool) -> ClusterSummary:
    node_count = 1 + record.workers
    if stopping:
        state = "stopping"
    else:
        state = "ready" if ready_workers is not None else "unreachable"
    return ClusterSummary(
        name=record.name,
        namespace="",
        origin=record.origin,
        created=record.created,
        ttl=record.ttl,
        state=state,
        workers_ready=ready_workers or 0,
        workers_desired=record.workers,
        cpus=Decimal(record.head_cpus + record.workers * record.cpus_per_worker),
        gpus=record.workers * record.gpus_per_worker,
        # The head counts, as its CPUs do and as it does on KubeRay.
        memory=LOCAL_HEAD_MEMORY_BYTES + record.workers * record.memory_per_worker,
        team=record.team,
        owner=record.owner,
        run_id=record.run_id,
        partition=record.partition,
        asset=record.asset,
        backend="local",
        dashboard_url=record.dashboard_url,
        template=f"{node_count} local nodes",
    )


class LocalClusters:
    """Local Ray clusters on this machine, found through their records."""

    backend = "local"

    def __init__(self, settings: RayClusterResource, registry: LocalRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or LocalRegistry(state_dir() / "clusters")

    def _spec(self, request: UpRequest) -> ClusterSpec:
        return ClusterSpec(
            workers=request.workers,
            cpus_per_worker=request.cpus_per_worker,
            memory_per_worker=request.memory_per_worker,
            gpus_per_worker=request.gpus_per_worker,
            object_store_memory=parse_memory(self.settings.object_store_memory, field="object_store_memory"),
            head_cpus=request.head_cpus,
        )

    def check(self, request: UpRequest) -> None:
        """Validate the request against this machine and the policy's lifetime cap; raises ``InvalidRequestError``."""
        check_cluster_name(request.name)
        for field, value, problem in (
            ("template", request.template, "the local backend has no templates: its nodes are processes here"),
            ("image", request.image, "the local backend runs Ray from this Python environment, not from an image"),
            ("gpu_type", request.gpu_type, "the local backend uses this machine's own GPUs, whatever their type"),
        ):
            if value:
                raise InvalidRequestError(field, problem, "Leave it out, or use --backend kuberay.")
        self._spec(request).validate(
            available_memory=psutil.virtual_memory().total,
            available_gpus=local_gpu_count(),
            available_cpus=psutil.cpu_count(),
        )
        self.settings.policy().ttl_minutes(request.ttl_minutes)
        if self.registry.get(request.name) is not None or (self.registry.root / f"{request.name}.starting").exists():
            raise InvalidRequestError(
                "name",
                f"a local cluster named {request.name!r} is running",
                f"Choose another --name, or run `trainctl down {request.name}` first.",
            )

    def up(self, request: UpRequest, on_progress: Callable[[str], None]) -> Started:
        """Start a keeper that starts the cluster, follow its progress, and leave it running once ready.

        Raises:
            ClusterStartError: the cluster did not start; nothing is left running.
        """
        self.check(request)
        ttl_minutes = self.settings.policy().ttl_minutes(request.ttl_minutes)
        if not self.registry.claim(request.name):
            raise InvalidRequestError(
                "name",
                f"a local cluster named {request.name!r} is running or starting",
                f"Choose another --name, or run `trainctl down {request.name}` first.",
            )
        try:
            return self._start_keeper(request, ttl_minutes, on_progress)
        finally:
            self.registry.release_claim(request.name)

    def _start_keeper(self, request: UpRequest, ttl_minutes: int, on_progress: Callable[[str], None]) -> Started:
        log_path = self.registry.log_path(request.name)
        with open(log_path, "ab") as log_file:
            keeper = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "resources.local_keeper",
                    f"--name={request.name}",
                    f"--registry={self.registry.root}",
                    f"--ttl-s={ttl_minutes * 60}",
                    f"--spec={spec_arguments(self._spec(request))}",
                    f"--owner={request.owner}",
                    f"--team={request.team or ''}",
                    f"--node-ip={self.settings.local_node_ip}",
                    f"--start-timeout-s={self.settings.start_timeout_s}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
                start_new_session=True,
            )
        try:
            return self._follow(keeper, request.name, on_progress)
        except BaseException:
            _stop_keeper(keeper)
            raise

    def _follow(self, keeper: subprocess.Popen[str], name: str, on_progress: Callable[[str], None]) -> Started:
        assert keeper.stdout is not None
        for line in keeper.stdout:
            kind, _, text = line.rstrip("\n").partition(" ")
            if kind == "progress":
                on_progress(text)
            elif kind == "ready":
                keeper.stdout.close()
                ready = json.loads(text)
                record = self.registry.get(name)
                return Started(
                    name=name,
                    dashboard_url=str(ready["dashboard_url"]),
                    startup_s=float(ready["startup_s"]),
                    expires_at=None if record is None else record.expires_at,
                )
            elif kind == "failed":
                raise ClusterStartError(name, json.loads(text)["error"])
        code = keeper.wait()
        raise ClusterStartError(name, f"the keeper process exited with code {code} before the cluster was ready")

    def list(self) -> list[ClusterSummary]:
        """List every live local cluster, oldest first, with the workers its dashboard reports alive."""
        summaries = []
        for record in self.registry.list():
            try:
                ready: int | None = alive_worker_count(record.dashboard_url, timeout_s=LIST_DASHBOARD_TIMEOUT_S)
            except DashboardError:
                ready = None
            summaries.append(_local_summary(record, ready_workers=ready, stopping=self._stopping(record.name)))
        return summaries

    def _record(self, name: str) -> LocalClusterRecord:
        record = self.registry.get(name)
        if record is None:
            ending = self.registry.ending(name)
            ended = None
            if ending is not None:
                ended = f"It stopped at {ending.at:%Y-%m-%d %H:%M:%S} UTC because {ending.reason}."
            raise ClusterNotFoundError(name, "on this machine", ended)
        return record

    def find(self, name: str) -> ClusterSummary:
        """Summarize one local cluster; raises ``ClusterNotFoundError``."""
        record = self._record(name)
        try:
            ready: int | None = alive_worker_count(record.dashboard_url, timeout_s=LIST_DASHBOARD_TIMEOUT_S)
        except DashboardError:
            ready = None
        return _local_summary(record, ready_workers=ready, stopping=self._stopping(name))

    def _stopping(self, name: str) -> bool:
        # The keeper notes why it stops a cluster on its own before it starts stopping it, and a
        # new cluster of the name removes the note of the last one. So a live cluster with a note is stopping.
        return self.registry.ending(name) is not None

    @contextlib.contextmanager
    def dashboard(self, name: str) -> Iterator[str]:
        """Yield the URL of the cluster's dashboard."""
        yield self._record(name).dashboard_url

    def note_history(self, cluster: ClusterSummary, url: str) -> None:
        """Note that the cluster's jobs are recorded at ``url``, for its keeper and ``trainctl down``.

        Raises:
            OSError: the note could not be written.
        """
        self.registry.add_history(cluster.name, url)

    def noted_histories(self, cluster: ClusterSummary) -> list[str]:
        """Return the job history URLs noted for the cluster."""
        return self.registry.histories(cluster.name)

    def details(self, name: str) -> dict[str, Any]:
        """Describe the holder process, with the keeper's log lines as the local counterpart of events."""
        record = self._record(name)
        try:
            lines = self.registry.log_path(name).read_text(errors="replace").splitlines()[-EVENT_LINES:]
        except OSError:
            lines = []
        holder = "trainctl keeper" if record.origin == "manual" else "Dagster run process"
        condition = {"type": "Held", "status": "True", "reason": holder, "message": f"pid {record.holder.pid}"}
        return {"conditions": [condition], "events": [_keeper_event(line) for line in lines]}

    def delete(self, name: str) -> None:
        """Stop every process of the cluster and wait until they are gone; raises ``ClusterNotFoundError``."""
        record = self._record(name)
        if record.origin == "manual":
            try:
                holder = psutil.Process(record.holder.pid)
                holder.terminate()
                holder.wait(timeout=KEEPER_STOP_TIMEOUT_S)
            except psutil.NoSuchProcess:
                pass
            except psutil.TimeoutExpired:
                logger.warning("The keeper of %s did not stop within %.0f s; killing it", name, KEEPER_STOP_TIMEOUT_S)
                holder.kill()
        # Whatever is still alive (a killed keeper, or a Dagster run's cluster) is killed directly.
        kill_process_groups([node.pid for node in record.nodes if node.is_alive()])
        self.registry.remove(name)


def _keeper_event(line: str) -> dict[str, Any]:
    """Read one line of the keeper's log (``<date> <time>,<ms> <LEVEL> <message>``) as an event."""
    parts = line.split(" ", 3)
    if len(parts) == 4 and parts[2] in ("INFO", "WARNING", "ERROR"):
        time_text = f"{parts[0]}T{parts[1].split(',')[0]}"
        kind = "Normal" if parts[2] == "INFO" else "Warning"
        return {
            "time": time_text,
            "type": kind,
            "reason": "Keeper",
            "object": "keeper",
            "message": parts[3],
            "count": 1,
        }
    return {"time": "", "type": "Normal", "reason": "Keeper", "object": "keeper", "message": line, "count": 1}


def _stop_keeper(keeper: subprocess.Popen[str]) -> None:
    if keeper.poll() is None:
        keeper.terminate()
        try:
            keeper.wait(timeout=KEEPER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            keeper.kill()
            keeper.wait()
