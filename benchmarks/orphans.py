"""One tick of the orphan sensor over many stale RayClusters in the Kubernetes API stand-in."""

from __future__ import annotations

import time
from typing import Any

import dagster as dg

from resources.cluster import RayClusterResource
from resources.kuberay.lifecycle import PLURAL
from resources.kuberay.manifest import ClusterRequest, RunContext, render_raycluster
from resources.kuberay.orphans import LIST_PAGE_SIZE
from resources.kuberay.policy import load_policy
from tests.kube_standin import KubeStandin
from training_pipelines.defs.clusters import orphaned_ray_clusters_sensor

NAMESPACE = "ml-training"


def _stale_cluster(index: int) -> dict[str, Any]:
    context = RunContext(
        run_id=f"gone-run-{index:04d}",
        job_name="daily_retrain_job",
        namespace=NAMESPACE,
        code_location="training_pipelines",
        owner="dagster",
        run_url="",
    )
    return render_raycluster(request=ClusterRequest(workers=1), context=context, policy=load_policy())


def run(*, clusters: int) -> dict[str, Any]:
    """Benchmark 7: time one sensor tick that finds ``clusters`` RayClusters of runs that no longer exist."""
    with KubeStandin() as standin:
        for index in range(clusters):
            standin.store.put(_stale_cluster(index))
        resource = RayClusterResource(backend="kuberay", kube_api_url=standin.url, namespace=NAMESPACE)
        before = len(standin.requests)
        with (
            dg.DagsterInstance.ephemeral() as instance,
            dg.build_sensor_context(instance=instance, resources={"ray_cluster": resource}) as context,
        ):
            started = time.perf_counter()
            orphaned_ray_clusters_sensor(context)
            tick_s = time.perf_counter() - started
        calls = [request for request in standin.requests[before:] if PLURAL in request.path]
        left = len(standin.store.objects("rayclusters"))
    if left:
        raise RuntimeError(f"{left} stale RayClusters survived the sensor tick")
    pages = -(-clusters // LIST_PAGE_SIZE)
    return {
        "orphan_clusters": clusters,
        "orphan_tick_s": round(tick_s, 3),
        "orphan_api_calls": len(calls),
        # The target: one list call per page plus one delete per orphan.
        "orphan_api_calls_budget": pages + clusters,
    }
