"""Cluster start and teardown of the local backend against bare ``ray start`` and killing the same processes.

The floor starts the head with ``ray start --head`` and then every worker with
``ray start --address`` at once, with the resources, object store and port settings of
the platform's nodes, and counts until every worker is registered. Teardown of the
floor is SIGKILL to every process of that cluster: those that name its temporary folder and
their descendants.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.common import (
    alternate,
    kill_mentioning,
    processes_mentioning,
    ray_environment,
    run_checked,
    scratch,
    wait_until_gone,
)
from resources.local import DASHBOARD_HOST, DEFAULT_NODE_IP, START_TIMEOUT_S, LocalRayCluster, _free_port
from resources.spec import LOCAL_HEAD_MEMORY_BYTES, ClusterSpec

RAY = str(Path(sys.executable).parent / "ray")
MIB = 1024**2


def _port() -> int:
    # The platform's own port probe, so the floor cannot get one port twice either.
    return _free_port()


def _node_ports() -> list[str]:
    return [
        f"--dashboard-agent-listen-port={_port()}",
        f"--dashboard-agent-grpc-port={_port()}",
        f"--metrics-export-port={_port()}",
        f"--runtime-env-agent-port={_port()}",
        f"--node-manager-port={_port()}",
        f"--object-manager-port={_port()}",
    ]


def _alive_nodes(dashboard_url: str) -> int:
    try:
        with urllib.request.urlopen(f"{dashboard_url}/nodes?view=summary", timeout=2) as response:
            summary = json.loads(response.read())["data"]["summary"]
    except (OSError, ValueError, KeyError):
        return 0
    return sum(1 for node in summary if (node.get("raylet") or {}).get("state") == "ALIVE")


def bare_start(spec: ClusterSpec, root: Path) -> float:
    """Start a cluster with plain ``ray start`` commands; return the seconds until every worker registered."""
    env = ray_environment(root)
    gcs_port, dashboard_port = _port(), _port()
    common = [
        "--disable-usage-stats",
        f"--node-ip-address={DEFAULT_NODE_IP}",
        f"--object-store-memory={spec.object_store_memory}",
    ]
    started = time.perf_counter()
    run_checked(
        [
            RAY, "start", "--head", *common, *_node_ports(), f"--port={gcs_port}", f"--temp-dir={root / 'head'}",
            "--include-dashboard=true", f"--dashboard-host={DASHBOARD_HOST}", f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={_port()}", f"--num-cpus={spec.head_cpus}", "--num-gpus=0",
            f"--memory={LOCAL_HEAD_MEMORY_BYTES}",
        ],
        env=env,
    )  # fmt: skip
    workers = [
        subprocess.Popen(
            [
                RAY,
                "start",
                *common,
                *_node_ports(),
                f"--address={DEFAULT_NODE_IP}:{gcs_port}",
                f"--temp-dir={root / f'w{index}'}",
                f"--num-cpus={spec.cpus_per_worker}",
                f"--num-gpus={spec.gpus_per_worker}",
                f"--memory={spec.memory_per_worker}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for index in range(spec.workers)
    ]
    for worker in workers:
        if worker.wait() != 0:
            raise RuntimeError("a bare `ray start --address` failed")
    dashboard_url = f"http://{DASHBOARD_HOST}:{dashboard_port}"
    while _alive_nodes(dashboard_url) < spec.workers + 1:
        if time.perf_counter() - started > START_TIMEOUT_S:
            raise RuntimeError(f"the bare cluster of {root} did not register {spec.workers} workers in time")
        time.sleep(0.05)
    return time.perf_counter() - started


def platform_start(spec: ClusterSpec, root: Path) -> tuple[float, LocalRayCluster]:
    """Start the same cluster through the local backend; return the seconds from request to all workers registered."""
    cluster = LocalRayCluster(name="bench", spec=spec, temp_root=str(root), on_progress=lambda message: None)
    started = time.perf_counter()
    cluster.start()
    return time.perf_counter() - started, cluster


def run(*, workers: int, rounds: int) -> dict[str, Any]:
    """Benchmarks 1 and 3: start and teardown, each against its floor, measured alternately."""
    spec = ClusterSpec(workers=workers, cpus_per_worker=1, memory_per_worker=512 * MIB, object_store_memory=128 * MIB)
    teardown_ours: list[float] = []
    teardown_floor: list[float] = []

    def ours() -> float:
        root = scratch("bp")
        elapsed, cluster = platform_start(spec, root)
        started = time.perf_counter()
        cluster.stop()
        wait_until_gone(str(root))
        teardown_ours.append(time.perf_counter() - started)
        return elapsed

    def floor() -> float:
        root = scratch("bb")
        try:
            elapsed = bare_start(spec, root)
        finally:
            teardown_floor.append(kill_mentioning(str(root)))
        if processes_mentioning(str(root)):
            raise RuntimeError(f"bare cluster processes of {root} outlived SIGKILL")
        return elapsed

    start = alternate(ours, floor, rounds=rounds)
    teardown_ratios = sorted(a / b for a, b in zip(teardown_ours, teardown_floor, strict=True) if b > 0)
    return {
        "local_ready_s": round(sorted(start.ours)[len(start.ours) // 2], 3),
        "bare_ready_s": round(sorted(start.floor)[len(start.floor) // 2], 3),
        "ready_vs_bare_ratio": round(start.median_ratio, 3),
        "teardown_s": round(sorted(teardown_ours)[len(teardown_ours) // 2], 3),
        "bare_teardown_s": round(sorted(teardown_floor)[len(teardown_floor) // 2], 3),
        "teardown_vs_bare_ratio": round(teardown_ratios[len(teardown_ratios) // 2], 3),
        "cluster_workers": workers,
        "cluster_rounds": rounds,
    }
