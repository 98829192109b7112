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
from pydantic import Field, PrivateAttr

from resources.errors import InvalidRequestError
from resources.jobs import JOB_TIMEOUT_S, JobOutcome, run_job
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

    backend: Literal["local"] = Field(
        default="local",
        description="Where the cluster runs. 'local' starts Ray processes on the run's own machine.",
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

    _cluster: LocalRayCluster | None = PrivateAttr(default=None)
    _name: str = PrivateAttr(default="")

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
        if check_machine:
            spec.validate(available_memory=psutil.virtual_memory().total, available_gpus=_local_gpu_count())
        else:
            spec.validate()
        return spec

    @property
    def use_gpu(self) -> bool:
        """Whether training on this cluster runs on GPUs."""
        return self.gpus_per_worker > 0

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self.cluster_spec()
        run_id = context.run_id or uuid.uuid4().hex
        self._name = "run-" + re.sub(r"[^a-z0-9]", "", run_id.lower())[:12]

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        self.stop()

    def ensure_started(self, *, on_progress: Callable[[str], None] | None = None) -> float:
        """Start the cluster unless it is running; return the seconds spent starting it, 0.0 if it was up.

        Raises:
            InvalidRequestError: the request is invalid; nothing was started.
            ClusterStartError: the cluster did not become ready; nothing is left running.
        """
        if self._cluster is not None and self._cluster.info is not None:
            return 0.0

        spec = self.cluster_spec()
        if not self._name:
            self._name = f"ray-{uuid.uuid4().hex[:12]}"
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
    def info(self) -> LocalClusterInfo:
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
