"""The platform side of the end-to-end and backfill benchmarks: ``ranking_model`` through Dagster.

``python -m benchmarks.e2e_run STORAGE_ROOT FIRST_DAY[..LAST_DAY] [WINDOW_DAYS]`` runs the
asset in this process for one partition, or for a range in one run as a backfill run does,
with the default resources (local backend, 2 workers) as ``make demo`` does, except for
the storage root and, when given, the training window.
"""

from __future__ import annotations

import sys

import dagster as dg

from resources.storage import TrainingStorage
from training_pipelines.defs.environment import build_resources
from training_pipelines.defs.ranking import ranking_model
from training_pipelines.defs.settings import RankingSettings


def main() -> int:
    storage_root, partitions = sys.argv[1], sys.argv[2]
    resources = build_resources()
    resources["storage"] = TrainingStorage(root=storage_root)
    if len(sys.argv) > 3:
        resources["ranking_settings"] = RankingSettings(window_days=int(sys.argv[3]))
    first, _, last = partitions.partition("..")
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [ranking_model],
            instance=instance,
            resources=resources,
            raise_on_error=False,
            tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last or first},
        )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
