"""The Dagster resource for "a Ray cluster for this run"."""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Mapping
from typing import Literal

import psutil
from dagster import ConfigurableResource, InitResourceContext
from kubernetes.client import ApiClient
from pydantic import Field, PrivateAttr

from resources.errors import InvalidRequestError, rename_fields
from resources.history import (
    HistoryError,
    JobHistory,
    JobRecord,
    default_history_url,
    portable_history_url,
    state_dir,
)
from resources.jobs import JOB_TIMEOUT_S, JobOutcome, run_job
from resources.kuberay.backend import KubeRayCluster, KubeRayClusterInfo, kubernetes_api_client
from resources.kuberay.manifest import ClusterRequest, RunContext, render_raycluster
from resources.kuberay.naming import check_api_url, check_label_value, check_namespace
from resources.kuberay.policy import Policy, load_policy
from resources.local import DEFAULT_NODE_IP, START_TIMEOUT_S, LocalClusterInfo, LocalRayCluster, visible_gpus
from resources.local_registry import LocalRegistry, record_of
from resources.recorder import HistoryRecorder, mark_lost_within, open_history, other_histories
from resources.spec import ClusterSpec, parse_memory

logger = logging.getLogger(__name__)

# How long a run's teardown waits for the histories that `trainctl submit` noted for its local cluster.
NOTED_HISTORIES_WAIT_S = 30.0

BACKENDS = ("local", "kuberay")
CLUSTER_VARIABLES = {
    "RAY_WORKERS": ("workers", int),
    "RAY_CPUS_PER_WORKER": ("cpus_per_worker", int),
    "RAY_GPUS_PER_WORKER": ("gpus_per_worker", int),
    "RAY_MEMORY_PER_WORKER": ("memory_per_worker", str),
    "RAY_OBJECT_STORE_MEMORY": ("object_store_memory", str),
    "RAY_HEAD_MEMORY": ("head_memory", str),
    "KUBERAY_NAMESPACE": ("namespace", str),
    "KUBERAY_TEMPLATE": ("template", str),
    "KUBERAY_IMAGE": ("image", str),
    "KUBERAY_GPU_TYPE": ("gpu_type", str),
    "KUBERAY_TEAM": ("team", str),
    "KUBERAY_POLICY_FILE": ("policy_file", str),
    "KUBERAY_DASHBOARD_URL_TEMPLATE": ("dashboard_url_template", str),
    "KUBE_API_URL": ("kube_api_url", str),
    "KUBE_CONTEXT": ("kube_context", str),
    "DAGSTER_UI_URL": ("dagster_url", str),
    "RAY_MAX_CLUSTER_AGE_HOURS": ("max_cluster_age_hours", float),
    "KUBERAY_PORT_FORWARD": ("port_forward", bool),
    # TRAINING_HISTORY_URL is read when the history opens, not copied into the resource's
    # config: the config shows in the Dagster UI, and the URL may hold a password.
}


def naming_variables(err: InvalidRequestError) -> InvalidRequestError:
    """Return ``err`` with the variables of ``CLUSTER_VARIABLES`` in place of the fields it names.

    For a caller whose settings come only from the environment, such as ``make demo``.
    """
    variable_of_field = {field: variable for variable, (field, _) in CLUSTER_VARIABLES.items()}
    return InvalidRequestError(
        variable_of_field.get(err.field, err.field),
        rename_fields(err.problem, variable_of_field),
        rename_fields(err.fix, variable_of_field),
    )


def local_gpu_count(environ: Mapping[str, str] | None = None) -> int:
    """Count the NVIDIA GPUs that ``nvidia-smi`` lists and ``CUDA_VISIBLE_DEVICES`` leaves visible.

    Like CUDA, the count stops at the first entry of ``CUDA_VISIBLE_DEVICES`` that is
    neither an index below the number of GPUs nor a prefix of a listed GPU or MIG UUID.
    Returns 0 when ``nvidia-smi`` is not installed or fails.
    """
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return 0
    try:
        output = subprocess.run([executable, "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    listed = sum(1 for line in output.splitlines() if line.startswith("GPU "))
    uuids = re.findall(r"UUID: ((?:GPU|MIG)-[0-9A-Za-z-]+)", output)
    count = 0
    for entry in visible_gpus(os.environ if environ is None else environ, needed=listed):
        is_index = entry.isdigit() and int(entry) < listed
        is_uuid = entry.startswith(("GPU-", "MIG-")) and any(uuid.startswith(entry) for uuid in uuids)
        if not (is_index or is_uuid):
            break
        count += 1
    return count


class RayClusterResource(ConfigurableResource):  # type: ignore[type-arg]
    """A Ray cluster for one Dagster run, started on first use and stopped when the run ends.

    All steps of a run share the cluster when the job uses the in-process executor;
    a run whose steps never call :meth:`submit_job` starts no cluster. The request is
    validated when the run starts, before any step executes.
    """

    backend: Literal["local", "kuberay"] = Field(
        default="local",
        description="Where the cluster runs: 'local' starts Ray processes on the run's own machine, "
        "'kuberay' creates a RayCluster through the KubeRay operator.",
    )
    workers: int = Field(default=2, description="Number of Ray worker nodes, one training worker each.")
    cpus_per_worker: int = Field(default=1, description="CPUs of each worker node and training worker.")
    memory_per_worker: str = Field(default="2Gi", description="Memory of each worker node, such as '2Gi'.")
    gpus_per_worker: int = Field(default=0, description="GPUs of each worker; above 0 trains with NCCL.")
    object_store_memory: str = Field(default="256Mi", description="Ray object store size of each node.")
    head_cpus: int = Field(default=1, description="CPUs of the head node, used by the job driver and Ray Data reads.")
    local_node_ip: str = Field(
        default=DEFAULT_NODE_IP, description="Loopback address the local backend binds Ray nodes to."
    )
    start_timeout_s: float = Field(default=START_TIMEOUT_S, description="Seconds allowed for the cluster to start.")
    job_timeout_s: float = Field(default=JOB_TIMEOUT_S, description="Seconds allowed for one Ray job.")

    # Settings of the kuberay backend.
    template: str = Field(default="cpu", description="Vetted RayCluster template: 'cpu' or 'gpu'.")
    gpu_type: str | None = Field(default=None, description="GPU type the policy knows, such as 'a100' or 'l4'.")
    image: str | None = Field(default=None, description="Ray image; the template's when empty. Must pass the policy.")
    head_memory: str = Field(default="4Gi", description="Memory of the head pod.")
    team: str = Field(default="", description="Team label of the RayCluster.")
    namespace: str = Field(default="default", description="Namespace of the RayCluster.")
    policy_file: str | None = Field(default=None, description="YAML file overriding the packaged default policy.")
    kube_api_url: str | None = Field(
        default=None, description="URL of the Kubernetes API (an API proxy); empty uses in-cluster or kubeconfig."
    )
    kubeconfig: str | None = Field(default=None, description="Kubeconfig file for development from a laptop.")
    kube_context: str | None = Field(default=None, description="Kubeconfig context for development from a laptop.")
    dashboard_url_template: str = Field(
        default="http://{name}-head-svc.{namespace}.svc.cluster.local:8265",
        description="URL of a cluster's dashboard; placeholders {name}, {namespace}, {service_ip}, {dashboard_port}.",
    )
    port_forward: bool = Field(
        default=False,
        description="Reach the dashboard through a port-forward opened with the Kubernetes client, for laptops.",
    )
    min_workers: int | None = Field(default=None, description="Lower bound of an autoscaling worker group.")
    max_workers: int | None = Field(default=None, description="Upper bound of an autoscaling worker group.")
    dagster_url: str = Field(default="http://127.0.0.1:3000", description="Base URL of the Dagster UI, for run links.")
    code_location: str = Field(default="training_pipelines", description="Code location label of the RayCluster.")
    max_cluster_age_hours: float = Field(
        default=24.0,
        description="Lifetime of a run's RayCluster: the orphan sensor deletes it after this even if the run goes on.",
    )

    history_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the job history; empty uses TRAINING_HISTORY_URL or a SQLite file in "
        "the platform's state folder.",
    )

    _cluster: LocalRayCluster | KubeRayCluster | None = PrivateAttr(default=None)
    _name: str = PrivateAttr(default="")
    _run_id: str = PrivateAttr(default="")
    _job_name: str = PrivateAttr(default="")
    _partition: str | None = PrivateAttr(default=None)
    _owner: str = PrivateAttr(default="")
    _history: JobHistory | None = PrivateAttr(default=None)
    _registry: LocalRegistry | None = PrivateAttr(default=None)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, check_request: bool = True) -> RayClusterResource:
        """Build the resource from RAY_BACKEND and the variables of ``CLUSTER_VARIABLES``.

        With ``check_request`` false, only the settings that reach the backend are checked
        (namespace, API URL), not the run's cluster request: for ``trainctl``, whose options
        make the request.

        Raises:
            InvalidRequestError: naming the variable whose value is invalid.
        """
        env = os.environ if environ is None else environ
        backend = env.get("RAY_BACKEND", "local")
        if backend not in BACKENDS:
            raise InvalidRequestError(
                "RAY_BACKEND", f"{backend!r} is not a backend", f"Use one of {', '.join(BACKENDS)}."
            )

        settings: dict[str, object] = {"backend": backend}
        for variable, (field, kind) in CLUSTER_VARIABLES.items():
            if variable not in env:
                continue
            if kind is bool:
                if env[variable].lower() not in ("true", "false", "1", "0"):
                    raise InvalidRequestError(
                        variable, f"{env[variable]!r} is not a boolean", "Set it to true or false."
                    )
                settings[field] = env[variable].lower() in ("true", "1")
            elif kind in (int, float):
                try:
                    settings[field] = kind(env[variable])
                except ValueError as err:
                    expected = "a whole number" if kind is int else "a number"
                    raise InvalidRequestError(
                        variable, f"{env[variable]!r} is not {expected}", f"Set it to {expected} such as 2."
                    ) from err
            else:
                settings[field] = env[variable]

        resource = cls(**settings)  # type: ignore[arg-type]
        try:
            # The machine's memory is checked when a run starts, on the machine that runs it.
            if not check_request:
                resource.check_backend_settings()
            else:
                resource.cluster_spec(check_machine=False)
                if backend == "kuberay":
                    resource.cluster_request()
        except InvalidRequestError as err:
            raise naming_variables(err) from err
        return resource

    def cluster_spec(self, *, check_machine: bool = True) -> ClusterSpec:
        """Build and validate the spec and the team, against this machine's resources when ``check_machine``.

        The machine's resources are its memory, CPUs and GPUs, and count only on the local backend.

        Raises:
            InvalidRequestError: naming the invalid field and how to fix it.
        """
        spec = ClusterSpec(
            workers=self.workers,
            cpus_per_worker=self.cpus_per_worker,
            memory_per_worker=parse_memory(self.memory_per_worker, field="memory_per_worker"),
            gpus_per_worker=self.gpus_per_worker,
            object_store_memory=parse_memory(self.object_store_memory, field="object_store_memory"),
            head_cpus=self.head_cpus,
        )
        if check_machine and self.backend == "local":
            spec.validate(
                available_memory=psutil.virtual_memory().total,
                available_gpus=local_gpu_count(),
                available_cpus=psutil.cpu_count(),
            )
        else:
            spec.validate()
        # A person types the team, so a value that is no valid label is an error rather than
        # being rewritten with a hash the way label values from Dagster are.
        check_label_value(self.team, field="team")
        return spec

    def cluster_request(self) -> ClusterRequest:
        """Build and validate the kuberay backend's request in high-level terms.

        Raises:
            InvalidRequestError: naming the invalid field and how to fix it.
        """
        spec = self.cluster_spec(check_machine=False)
        request = ClusterRequest(
            template=self.template,
            workers=spec.workers,
            min_workers=self.min_workers,
            max_workers=self.max_workers,
            cpus_per_worker=spec.cpus_per_worker,
            memory_per_worker=spec.memory_per_worker,
            gpus_per_worker=spec.gpus_per_worker,
            gpu_type=self.gpu_type,
            head_cpus=max(spec.head_cpus, 1),
            head_memory=parse_memory(self.head_memory, field="head_memory"),
            image=self.image,
            team=self.team or None,
            ttl_minutes=self._ttl_minutes(),
        )
        request.validate()
        self.check_backend_settings()
        return request

    def check_backend_settings(self) -> None:
        """Check the namespace and the Kubernetes API URL; raises ``InvalidRequestError``."""
        check_namespace(self.namespace, field="namespace")
        if self.kube_api_url is not None:
            check_api_url(self.kube_api_url, field="kube_api_url")

    def _ttl_minutes(self) -> int:
        # A run's cluster lives as long as its run, and at most max_cluster_age_hours: past
        # that the orphan sensor deletes it even while the run goes on.
        hours = self.max_cluster_age_hours
        policy = self.policy()
        minutes = round(hours * 60) if math.isfinite(hours * 60) else 0
        if not 1 <= minutes <= policy.max_ttl_hours * 60:
            raise InvalidRequestError(
                "max_cluster_age_hours",
                f"{hours!r} hours is outside 1 minute to the policy's maximum of {policy.max_ttl_hours} hours",
                f"Set it to more than 0 and at most {policy.max_ttl_hours} hours.",
            )
        return policy.ttl_minutes(minutes)

    def run_context(self, *, asset: str | None = None) -> RunContext:
        """Describe where a RayCluster of this run comes from, for its labels, annotations and owner."""
        run_id = self._run_id or self._name
        return RunContext(
            run_id=run_id,
            job_name=self._job_name or "manual",
            namespace=self.namespace,
            code_location=self.code_location,
            owner=self._owner or "dagster",
            run_url=f"{self.dagster_url.rstrip('/')}/runs/{run_id}",
            partition=self._partition,
            asset=asset,
        )

    @property
    def use_gpu(self) -> bool:
        """Whether training on this cluster runs on GPUs."""
        return self.gpus_per_worker > 0

    def setup_for_execution(self, context: InitResourceContext) -> None:
        run_id = context.run_id or uuid.uuid4().hex
        self._run_id = run_id
        self._name = "run-" + re.sub(r"[^a-z0-9]", "", run_id.lower())[:12]
        run = context.dagster_run
        if run is not None:
            self._job_name = run.job_name
            self._partition = run.tags.get("dagster/partition")
            self._owner = run.tags.get("user") or run.tags.get("dagster/user") or ""

        # Invalid requests and policy violations fail the run here, before any step.
        if self.backend == "kuberay":
            render_raycluster(request=self.cluster_request(), context=self.run_context(), policy=self.policy())
        else:
            self.cluster_spec()

    def kubernetes_api(self) -> ApiClient:
        """Build an API client from ``kube_api_url``, ``kubeconfig`` and ``kube_context``, or in-cluster."""
        return kubernetes_api_client(api_url=self.kube_api_url, kubeconfig=self.kubeconfig, context=self.kube_context)

    def policy(self) -> Policy:
        """Load the policy of ``policy_file``, or the packaged default."""
        return load_policy(self.policy_file)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        # Only a cluster that became ready is reported, because a failed start has already reported what it left.
        name = None if self._cluster is None or self._cluster.info is None else self._cluster.name
        self.stop()
        if name is not None and context.log is not None:
            context.log.info(f"Stopped the Ray cluster {name}")

    def ensure_started(self, *, on_progress: Callable[[str], None] | None = None, asset: str | None = None) -> float:
        """Start the cluster unless it is running; return the seconds spent starting it, 0.0 if it was up.

        Raises:
            InvalidRequestError: the request is invalid; nothing was started.
            ClusterStartError: the cluster did not become ready; nothing is left running.
        """
        if self._cluster is not None and self._cluster.info is not None:
            return 0.0

        if not self._name:
            self._name = f"ray-{uuid.uuid4().hex[:12]}"
        if self.backend == "kuberay":
            kube_cluster = KubeRayCluster(
                api_client=self.kubernetes_api(),
                request=self.cluster_request(),
                context=self.run_context(asset=asset),
                policy=self.policy(),
                dashboard_url_template=self.dashboard_url_template,
                ready_timeout_s=self.start_timeout_s,
                port_forward=self.port_forward,
                on_progress=on_progress,
            )
            self._cluster = kube_cluster
            return kube_cluster.start().startup_s

        spec = self.cluster_spec()
        cluster = LocalRayCluster(
            name=self._name,
            spec=spec,
            node_ip=self.local_node_ip,
            start_timeout_s=self.start_timeout_s,
            on_progress=on_progress,
        )
        self._cluster = cluster
        info = cluster.start()
        self._register(cluster, info, asset=asset)
        return info.startup_s

    def _register(self, cluster: LocalRayCluster, info: LocalClusterInfo, *, asset: str | None) -> None:
        """Make the run's local cluster visible to ``trainctl list``; a failure here costs only a warning."""
        registry = LocalRegistry(state_dir() / "clusters")
        try:
            registry.write(
                record_of(
                    cluster,
                    dashboard_url=info.dashboard_url,
                    origin="dagster",
                    owner=self._owner or "dagster",
                    team=self.team,
                    run_id=self._run_id,
                    partition=self._partition or "",
                    asset=asset or "",
                )
            )
        except (OSError, psutil.Error) as err:
            logger.warning("The local cluster %s is not listed by trainctl: %s", cluster.name, err)
            return
        self._registry = registry
        try:
            history_url: str | None = portable_history_url(self.history_url or default_history_url())
        except HistoryError:
            history_url = None
        cluster.watch_jobs(registry=registry.root, history_url=history_url, holder="the Dagster run's process")

    @property
    def info(self) -> LocalClusterInfo | KubeRayClusterInfo:
        """Addresses of the running cluster.

        Raises:
            RuntimeError: the cluster has not been started.
        """
        if self._cluster is None or self._cluster.info is None:
            raise RuntimeError("The Ray cluster is not running; call ensure_started() first.")
        return self._cluster.info

    def submit_job(
        self,
        *,
        entrypoint: str,
        job_name: str,
        on_log_line: Callable[[str], None],
        env_vars: dict[str, str] | None = None,
        asset: str | None = None,
    ) -> JobOutcome:
        """Run ``entrypoint`` as a Ray job on the started cluster, stream its log lines and record it in the history.

        Raises:
            RayJobError: the job did not succeed; carries its last log lines.
        """
        from ray.job_submission import JobSubmissionClient

        info = self.info
        client = JobSubmissionClient(info.dashboard_url)
        submission_id = f"{self._name}-{job_name}-{uuid.uuid4().hex[:6]}"
        record = JobRecord(
            job_id=submission_id,
            cluster=info.name,
            backend=self.backend,
            namespace=self.namespace if self.backend == "kuberay" else None,
            template=self.template if self.backend == "kuberay" else None,
            request=self.request_summary(),
            entrypoint=entrypoint,
            submitter=self._owner or "dagster",
            origin="dagster",
            run_id=self._run_id or None,
            partition=self._partition,
            asset=asset,
            dashboard_url=info.dashboard_url,
            submitted_at=dt.datetime.now(dt.UTC),
        )
        return run_job(
            client,
            entrypoint=entrypoint,
            submission_id=submission_id,
            on_log_line=on_log_line,
            env_vars=env_vars,
            timeout_s=self.job_timeout_s,
            observer=HistoryRecorder(self._job_history(), record),
        )

    def request_summary(self) -> dict[str, object]:
        """Summarize the cluster request for the job history."""
        summary: dict[str, object] = {
            "workers": self.workers,
            "cpus_per_worker": self.cpus_per_worker,
            "memory_per_worker": self.memory_per_worker,
            "gpus_per_worker": self.gpus_per_worker,
        }
        if self.backend == "kuberay":
            summary.update({"gpu_type": self.gpu_type, "image": self.image, "head_memory": self.head_memory})
        return summary

    def _job_history(self) -> JobHistory | None:
        if self._history is None:
            self._history = open_history(self.history_url)
        return self._history

    def stop(self) -> None:
        """Stop the cluster if it runs; safe to call at any time."""
        if self._cluster is not None:
            name = self._cluster.name
            self._cluster.stop()
            self._cluster = None
            if self._registry is not None:
                # Jobs that `trainctl submit` sent to this run's cluster, recorded in other histories.
                try:
                    noted = other_histories(self.history_url, self._registry.histories(name))
                except Exception:  # noqa: BLE001 - the rest of the teardown still runs
                    logger.exception("Failed to read the job histories noted for %s", name)
                    noted = []
                message = "its cluster was removed before the job ended"
                if not mark_lost_within(noted, name, message=message, timeout_s=NOTED_HISTORIES_WAIT_S):
                    logger.warning(
                        "Stopped waiting for the job histories noted for %s after %g s: jobs that `trainctl submit` "
                        "sent to it may still show RUNNING there",
                        name,
                        NOTED_HISTORIES_WAIT_S,
                    )
                self._registry.remove(name)
            if self._history is not None:
                # A job still marked running when its cluster goes never reports its end.
                try:
                    self._history.mark_lost(
                        name, message="its cluster was removed before the job ended", at=dt.datetime.now(dt.UTC)
                    )
                except HistoryError as err:
                    logger.warning("The job history was not updated: %s", err)
                self._history.close()
                self._history = None


__all__ = ["InvalidRequestError", "RayClusterResource"]
