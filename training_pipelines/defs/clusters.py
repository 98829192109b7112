"""The sensor that deletes RayClusters whose Dagster run is gone."""

import datetime as dt

import dagster as dg
from kubernetes import client

from resources.cluster import RayClusterResource
from resources.kuberay.lifecycle import RayClusterClient
from resources.kuberay.orphans import delete_orphans, find_orphans, list_clusters

ORPHAN_SENSOR_INTERVAL_S = 120


@dg.sensor(
    minimum_interval_seconds=ORPHAN_SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Deletes this code location's RayClusters whose run ended, failed, was cancelled or no longer "
    "exists, and every platform RayCluster in the namespace whose lifetime (TTL) has passed, including clusters "
    "made with trainctl.",
)
def orphaned_ray_clusters_sensor(context: dg.SensorEvaluationContext, ray_cluster: RayClusterResource) -> dg.SkipReason:
    """Delete orphaned and expired RayClusters; a second run deletes nothing more, because a 404 counts as deleted."""
    if ray_cluster.backend != "kuberay":
        return dg.SkipReason(
            "The Ray backend is local: a run's watchdog stops its cluster, so there is nothing to sweep"
        )

    api_client = ray_cluster.kubernetes_api()
    custom_api = client.CustomObjectsApi(api_client)
    clusters = list_clusters(custom_api, namespace=ray_cluster.namespace)

    def run_is_active(run_id: str) -> bool | None:
        run = context.instance.get_run_by_id(run_id)
        return None if run is None else not run.is_finished

    orphans = find_orphans(
        clusters,
        run_is_active=run_is_active,
        now=dt.datetime.now(dt.UTC),
        code_location=ray_cluster.code_location,
        max_age=dt.timedelta(hours=ray_cluster.max_cluster_age_hours),
    )
    if not orphans:
        return dg.SkipReason(f"No orphaned RayCluster among {len(clusters)} in {ray_cluster.namespace}")

    lifecycle = RayClusterClient(
        custom_api=custom_api, core_api=client.CoreV1Api(api_client), namespace=ray_cluster.namespace
    )
    deleted = delete_orphans(lifecycle, orphans)
    for orphan in orphans:
        context.log.info(f"Deleted RayCluster {orphan.namespace}/{orphan.name}: {orphan.reason}")
    return dg.SkipReason(f"Deleted {len(deleted)} orphaned RayCluster(s): {', '.join(deleted)}")
