"""The Dagster resource for "a Ray cluster for this run"."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable
from typing import Literal

import psutil
from dagster import ConfigurableResource, InitResourceContext
from kubernetes.client import ApiClient
from pydantic import Field, PrivateAttr

from resources.errors import InvalidRequestError
from resources.jobs import JOB_TIMEOUT_S, JobOutcome, run_job
from resources.kuberay.backend import KubeRayCluster, KubeRayClusterInfo, kubernetes_api_client
from resources.kuberay.manifest import ClusterRequest, RunContext, render_raycluster
from resources.kuberay.policy import Policy, load_policy
from resources.local import DEFAULT_NODE_IP, START_TIMEOUT_S, LocalClusterInfo, LocalRayCluster
from resources.spec import ClusterSpec, parse_memory

logger = logging.getLogger(__name__)


def _local_gpu_count() -> int:
    """Count the NVIDIA GPUs that ``nvidia-smi`` lists; 0 when it is not installed or fails."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return 0
    try:
        output = subprocess.run([executable, "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in output.splitlines() if line.startswith("GPU "))


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
        default=24.0, description="The orphan sensor deletes this code location's RayClusters older than this."
    )

    _cluster: LocalRayCluster | KubeRayCluster | None = PrivateAttr(default=None)
    _name: str = PrivateAttr(default="")
    _run_id: str = PrivateAttr(default="")
    _job_name: str = PrivateAttr(default="")
    _partition: str | None = PrivateAttr(default=None)
    _owner: str = PrivateAttr(default="")

    def cluster_spec(self, *, check_machine: bool = True) -> ClusterSpec:
        """Build and validate the spec, against this machine's memory and GPUs when ``check_machine``.

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
            spec.validate(available_memory=psutil.virtual_memory().total, available_gpus=_local_gpu_count())
        else:
            spec.validate()
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
        )
        request.validate()
        return request

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
            render_raycluster(request=self.cluster_request(), context=self.run_context(), policy=self._policy())
        else:
            self.cluster_spec()

    def kubernetes_api(self) -> ApiClient:
        """Build an API client from ``kube_api_url``, ``kubeconfig`` and ``kube_context``, or in-cluster."""
        return kubernetes_api_client(api_url=self.kube_api_url, kubeconfig=self.kubeconfig, context=self.kube_context)

    def _policy(self) -> Policy:
        return load_policy(self.policy_file)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        self.stop()

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
                policy=self._policy(),
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
        return info.startup_s

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
    ) -> JobOutcome:
        """Run ``entrypoint`` as a Ray job on the started cluster and stream its log lines.

        Raises:
            RayJobError: the job did not succeed; carries its last log lines.
        """
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(self.info.dashboard_url)
        submission_id = f"{self._name}-{job_name}-{uuid.uuid4().hex[:6]}"
        return run_job(
            client,
            entrypoint=entrypoint,
            submission_id=submission_id,
            on_log_line=on_log_line,
            env_vars=env_vars,
            timeout_s=self.job_timeout_s,
        )

    def stop(self) -> None:
        """Stop the cluster if it runs; safe to call at any time."""
        if self._cluster is not None:
            self._cluster.stop()
            self._cluster = None


__all__ = ["InvalidRequestError", "RayClusterResource"]
