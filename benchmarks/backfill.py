"""A backfill of consecutive days in one run that shares one cluster, against one run per day.

The shared side materializes ``ranking_model`` for every day in one run, as a backfill
run of up to 14 partitions does: one local cluster and one Ray job train the days in
order. The separate side runs the same days one after another, one run per day, each
starting and stopping its own cluster. Every run is its own process (``benchmarks.e2e_run``),
as the Dagster daemon launches each backfill run, with the default resources and
settings. Each measurement starts from the same stored ratings and no stored model,
so on both sides the first day trains from scratch and each next day warm-starts
from the day before.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import alternate, scratch
from benchmarks.end_to_end import REPOSITORY, store_history
from training_pipelines.defs.ratings import RATINGS_FOLDER


def _run(storage_root: Path, partitions: str) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "benchmarks.e2e_run", str(storage_root), partitions],
        cwd=REPOSITORY,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if process.returncode != 0:
        raise RuntimeError(f"the run of {partitions} failed:\n{process.stderr[-3000:]}")


def run(*, first: dt.date, days: int, rounds: int) -> dict[str, Any]:
    """Benchmark 6: ``days`` partitions in one shared run against one run per partition."""
    last = first + dt.timedelta(days=days - 1)
    ratings = scratch("bb") / "storage"
    store_history(ratings, last)
    keys = [(first + dt.timedelta(days=offset)).isoformat() for offset in range(days)]

    def fresh_storage() -> Path:
        root = scratch("bs") / "storage"
        shutil.copytree(ratings / RATINGS_FOLDER, root / RATINGS_FOLDER)
        return root

    def shared() -> float:
        root = fresh_storage()
        started = time.perf_counter()
        _run(root, f"{keys[0]}..{keys[-1]}")
        return time.perf_counter() - started

    def separate() -> float:
        root = fresh_storage()
        started = time.perf_counter()
        for key in keys:
            _run(root, key)
        return time.perf_counter() - started

    pair = alternate(shared, separate, rounds=rounds)
    return {
        "backfill_days": days,
        "backfill_shared_s": round(sorted(pair.ours)[len(pair.ours) // 2], 1),
        "backfill_separate_s": round(sorted(pair.floor)[len(pair.floor) // 2], 1),
        "backfill_shared_vs_separate_ratio": round(pair.median_ratio, 3),
        "backfill_rounds": rounds,
    }
