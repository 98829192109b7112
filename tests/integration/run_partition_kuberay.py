"""Run daily_retrain_job for one partition on the kuberay backend in this process; the fault tests signal it.

``python -m tests.integration.run_partition_kuberay STORAGE_ROOT PARTITION KUBE_API_URL`` expects the
ratings history to be stored already, and the Kubernetes API stand-in with its stand-in operator to be
serving at KUBE_API_URL in the test process. It trains long enough to be interrupted.
"""

import sys

import dagster as dg

from resources.cluster import RayClusterResource
from tests.integration.conftest import small_resources
from tests.integration.kuberay_fixtures import NAMESPACE
from training_pipelines.definitions import defs
from training_pipelines.defs.settings import RankingSettings


def main() -> int:
    storage_root, partition, kube_api_url = sys.argv[1], sys.argv[2], sys.argv[3]
    resources = small_resources(storage_root)  # type: ignore[arg-type]
    # The settings of kuberay_fixtures.kuberay_cluster, which needs the stand-in object rather than its URL.
    resources["ray_cluster"] = RayClusterResource(
        backend="kuberay",
        kube_api_url=kube_api_url,
        namespace=NAMESPACE,
        dashboard_url_template="http://{service_ip}:{dashboard_port}",
        workers=1,
        memory_per_worker="1Gi",
        head_memory="2Gi",
        start_timeout_s=120.0,
        team="ranking",
    )
    resources["ranking_settings"] = RankingSettings(window_days=7, epochs=200)
    job = defs.resolve_job_def("daily_retrain_job")
    result = job.execute_in_process(
        partition_key=partition, instance=dg.DagsterInstance.ephemeral(), resources=resources, raise_on_error=False
    )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
