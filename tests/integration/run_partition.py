"""Run daily_retrain_job for one partition in this process; the termination and fault tests signal it.

``python -m tests.integration.run_partition STORAGE_ROOT PARTITION [KUBE_API_URL] [--epochs N] [--max-failures N]``
expects the ratings history to be stored already and, by default, trains long enough to be
interrupted. With KUBE_API_URL it uses the kuberay backend against the stand-in that the
test process serves there; without it, the local backend.
"""

import argparse
import sys

import dagster as dg

from tests.integration.conftest import small_resources
from tests.integration.kuberay_fixtures import kuberay_cluster_at
from training_pipelines.definitions import defs
from training_pipelines.defs.settings import RankingSettings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("storage_root")
    parser.add_argument("partition")
    parser.add_argument("kube_api_url", nargs="?")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--max-failures", type=int, default=RankingSettings().max_failures)
    args = parser.parse_intermixed_args()
    resources = small_resources(args.storage_root, workers=1)
    if args.kube_api_url:
        resources["ray_cluster"] = kuberay_cluster_at(args.kube_api_url)
    resources["ranking_settings"] = RankingSettings(window_days=7, epochs=args.epochs, max_failures=args.max_failures)
    job = defs.resolve_job_def("daily_retrain_job")
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            partition_key=args.partition, instance=instance, resources=resources, raise_on_error=False
        )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
