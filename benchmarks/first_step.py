"""Submission to the first training step: the platform against bare ``ray job submit``, KubeRay against local.

Every side runs the same driver (``benchmarks.throughput_job``: Ray Data ingest and
``TorchTrainer`` with the pipeline's training loop, 2 workers) and reads the time of
the first step from the line the training loop logs. The platform side submits through
``RayClusterResource.submit_job`` (Jobs API, log streaming, job history) to a running
local cluster. The floor submits with the ``ray job submit`` command to the same
cluster. Its time includes the start of the ``ray`` command, about 1 s on 2 CPUs
(``ray job submit --help``), which the platform side, called in a process that has
already imported Ray, does not pay. The KubeRay pair measures the whole path from
request to first step, cluster start included, through the ``kuberay`` backend on the
Kubernetes API stand-in and through the ``local`` backend, with the same object store
size. Each round starts after the processes of the round before have exited. The
stand-in's own start is reported apart.
"""

from __future__ import annotations

import re
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import alternate, run_checked, scratch
from benchmarks.training import LAST_DAY, build_window
from resources.cluster import RayClusterResource
from resources.spec import format_memory
from tests.integration.kuberay_fixtures import validate_stored_raycluster
from tests.kube_standin import KubeStandin
from tests.kube_standin.operator import OBJECT_STORE_MEMORY, KubeRayOperatorStandin

REPOSITORY = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
FIRST_STEP = re.compile(r"First training step done at ([0-9.]+)")
WORKERS = 2


def _driver(examples_uri: str) -> list[str]:
    result = scratch("bf") / "result.json"
    return [
        sys.executable, "-m", "benchmarks.throughput_job", examples_uri, str(result),
        f"--workers={WORKERS}", "--epochs=1", "--batch-size=256",
    ]  # fmt: skip


def _first_step(lines: list[str]) -> float:
    for line in lines:
        match = FIRST_STEP.search(line)
        if match:
            return float(match.group(1))
    raise RuntimeError("the job never logged its first training step:\n" + "\n".join(lines[-20:]))


def through_platform(resource: RayClusterResource, examples_uri: str, *, since: float | None = None) -> float:
    """Seconds from ``since`` (default: the call to ``submit_job``) to the first step, on the resource's cluster."""
    lines: list[str] = []
    submitted = time.time() if since is None else since
    resource.submit_job(
        entrypoint=shlex.join(_driver(examples_uri)),
        job_name="first-step",
        on_log_line=lines.append,
        env_vars={"PYTHONPATH": str(REPOSITORY)},
    )
    return _first_step(lines) - submitted


def through_bare_cli(dashboard_url: str, examples_uri: str) -> float:
    """Seconds from ``ray job submit`` to the first step, on the same cluster."""
    submitted = time.time()
    completed = run_checked(
        [
            RAY, "job", "submit", f"--address={dashboard_url}", f"--submission-id=bare-{uuid.uuid4().hex[:8]}",
            f'--runtime-env-json={{"env_vars": {{"PYTHONPATH": "{REPOSITORY}"}}}}', "--", *_driver(examples_uri),
        ],
    )  # fmt: skip
    return _first_step(completed.stdout.splitlines()) - submitted


def _small_cluster(**settings: Any) -> RayClusterResource:
    return RayClusterResource(**{"workers": WORKERS, "memory_per_worker": "1Gi", "history_url": None, **settings})


def _wait_for_nodes_to_exit(timeout_s: float = 60.0) -> None:
    """Wait until no ``ray start`` process of this process runs, so that the next round starts on an idle machine.

    Deleting a RayCluster returns before the stand-in operator has stopped its processes.
    """
    deadline = time.perf_counter() + timeout_s
    while _ray_start_children():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"Ray nodes still run {timeout_s:.0f} s after their cluster was removed")
        time.sleep(0.05)


def _ray_start_children() -> int:
    """Count the ``ray start`` processes among this process's descendants."""
    count = 0
    for child in psutil.Process().children(recursive=True):
        try:
            command = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if any(part.endswith("/ray") for part in command[:2]) and "start" in command[1:3]:
            count += 1
    return count


def run(*, window_days: int, rounds: int) -> dict[str, Any]:
    """Benchmarks 2 and 8, on the examples of the ``window_days`` days up to ``LAST_DAY``."""
    examples_uri = str(scratch("bx") / "examples.parquet")
    build_window(last_day=LAST_DAY, days=window_days).to_parquet(examples_uri, index=False)
    resource = _small_cluster(object_store_memory="256Mi")
    resource.ensure_started(on_progress=lambda message: None)
    try:
        dashboard_url = resource.info.dashboard_url
        submit = alternate(
            lambda: through_platform(resource, examples_uri),
            lambda: through_bare_cli(dashboard_url, examples_uri),
            rounds=rounds,
        )
    finally:
        resource.stop()

    standin_started = time.perf_counter()
    with KubeStandin(validators={("ray.io", "rayclusters"): validate_stored_raycluster}) as standin:
        with KubeRayOperatorStandin(standin.store):
            standin_start_s = time.perf_counter() - standin_started

            def whole_path(**settings: Any) -> float:
                cluster = _small_cluster(**settings)
                requested = time.time()
                try:
                    cluster.ensure_started(on_progress=lambda message: None)
                    return through_platform(cluster, examples_uri, since=requested)
                finally:
                    cluster.stop()
                    _wait_for_nodes_to_exit()

            kuberay = alternate(
                lambda: whole_path(
                    backend="kuberay",
                    kube_api_url=standin.url,
                    namespace="bench",
                    dashboard_url_template="http://{service_ip}:{dashboard_port}",
                    head_memory="2Gi",
                ),
                # The object store of the stand-in operator's nodes.
                lambda: whole_path(object_store_memory=format_memory(OBJECT_STORE_MEMORY)),
                rounds=rounds,
            )
    return {
        "first_step_platform_s": round(sorted(submit.ours)[len(submit.ours) // 2], 2),
        "first_step_bare_s": round(sorted(submit.floor)[len(submit.floor) // 2], 2),
        "first_step_vs_bare_ratio": round(submit.median_ratio, 3),
        "kuberay_request_to_first_step_s": round(sorted(kuberay.ours)[len(kuberay.ours) // 2], 2),
        "local_request_to_first_step_s": round(sorted(kuberay.floor)[len(kuberay.floor) // 2], 2),
        "kuberay_vs_local_ratio": round(kuberay.median_ratio, 3),
        "standin_start_s": round(standin_start_s, 3),
    }
