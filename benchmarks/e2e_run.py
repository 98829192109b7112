"""The platform side of the end-to-end benchmark: ``ranking_model`` for one partition through Dagster.

``python -m benchmarks.e2e_run STORAGE_ROOT PARTITION WINDOW_DAYS`` runs the asset in this
process with the default resources (local backend, 2 workers), as ``make demo`` does,
except for the storage root and the training window.
"""

from __future__ import annotations

import sys

import dagster as dg

from resources.storage import TrainingStorage
from training_pipelines.defs.environment import build_resources
from training_pipelines.defs.ranking import ranking_model
from training_pipelines.defs.settings import RankingSettings


def main() -> int:
    storage_root, partition, window_days = sys.argv[1], sys.argv[2], int(sys.argv[3])
    resources = build_resources()
    resources["storage"] = TrainingStorage(root=storage_root)
    resources["ranking_settings"] = RankingSettings(window_days=window_days)
    result = dg.materialize(
        [ranking_model],
        partition_key=partition,
        instance=dg.DagsterInstance.ephemeral(),
        resources=resources,
        raise_on_error=False,
    )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
