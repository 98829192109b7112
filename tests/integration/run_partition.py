"""Run daily_retrain_job for one partition in this process; the termination tests signal it.

``python -m tests.integration.run_partition STORAGE_ROOT PARTITION [KUBE_API_URL]`` expects the
ratings history to be stored already and trains long enough to be interrupted. With
KUBE_API_URL it uses the kuberay backend against the stand-in that the test process serves
there; without it, the local backend.
"""

import sys

import dagster as dg

from tests.integration.conftest import small_resources
from tests.integration.kuberay_fixtures import kuberay_cluster_at
from training_pipelines.definitions import defs
from training_pipelines.defs.settings import RankingSettings


def main() -> int:
    storage_root, partition = sys.argv[1], sys.argv[2]
    resources = small_resources(storage_root, workers=1)  # type: ignore[arg-type]
    if len(sys.argv) > 3:
        resources["ray_cluster"] = kuberay_cluster_at(sys.argv[3])
    resources["ranking_settings"] = RankingSettings(window_days=7, epochs=200)
    job = defs.resolve_job_def("daily_retrain_job")
    result = job.execute_in_process(
        partition_key=partition, instance=dg.DagsterInstance.ephemeral(), resources=resources, raise_on_error=False
    )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
