"""One partition at a realistic size through Dagster against a plain single-process PyTorch script.

The window covers the whole history up to and including the partition day (about 100,000
ratings) and training uses the default epochs. The platform side runs ``ranking_model``
through Dagster on a local cluster it starts and stops (``benchmarks.e2e_run``). The
plain side (``benchmarks.plain_train``) reads the same stored days, builds the same
examples and trains the same model for the same epochs. The plain script trains with
torch's default number of threads (2 on 2 CPUs) and a batch of 256 rows. The platform's
2 workers take one thread and 256 rows each, so they take half as many optimizer steps.
Both are timed as whole processes. The platform run is also split into phases, each the
median time from the start of its process. ``e2e_cluster_ready_s`` ends when its log
reports every worker registered. ``e2e_first_step_s`` ends at the time the training loop
logs for its first step. ``e2e_model_written_s`` ends when its log reports the model
written. The Ray job's lines reach the run's log up to about a second late, because the
run reads the job's log about once a second. The peak resident memory of the run process and of each
Ray worker process is sampled during the platform run.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import dagster as dg
import psutil

from benchmarks.common import alternate, run_checked, scratch
from resources.storage import TrainingStorage
from training_pipelines.data.source import RatingsSource
from training_pipelines.defs.partitions import FIRST_DAY
from training_pipelines.defs.ratings import ratings_daily
from training_pipelines.defs.settings import RankingSettings

REPOSITORY = Path(__file__).resolve().parent.parent
SAMPLE_INTERVAL_S = 0.2
PHASES = ("e2e_cluster_ready_s", "e2e_first_step_s", "e2e_model_written_s")
# Lines of the run's log that end a phase, as the local backend and the Ray job print them.
PHASE_MARKERS = {
    "e2e_cluster_ready_s": re.compile(r"All \d+ workers registered in"),
    "e2e_model_written_s": re.compile(r"Wrote the model of "),
}
FIRST_STEP = re.compile(r"First training step done at ([0-9.]+) \(Unix time\)")


class PeakMemory:
    """Samples the resident memory of a process and of its Ray worker descendants until stopped."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.run_peak = 0
        self.worker_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            try:
                self.run_peak = max(self.run_peak, self.process.memory_info().rss)
                children = self.process.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for child in children:
                try:
                    name = " ".join(child.cmdline()[:1])
                    if "TrainWorker" in name or "TrainTrainable" in name:
                        self.worker_peak = max(self.worker_peak, child.memory_info().rss)
                except psutil.Error:
                    continue


def store_history(storage_root: Path, last_day: dt.date) -> None:
    """Store ratings_daily for every day up to ``last_day`` in one run, outside any measurement."""
    result = dg.materialize(
        [ratings_daily],
        resources={"storage": TrainingStorage(root=str(storage_root)), "ratings_source": RatingsSource()},
        tags={
            "dagster/asset_partition_range_start": FIRST_DAY.isoformat(),
            "dagster/asset_partition_range_end": last_day.isoformat(),
        },
    )
    if not result.success:
        raise RuntimeError("storing the ratings history failed")


def run(*, partition: dt.date, rounds: int) -> dict[str, Any]:
    """Benchmarks 5 and 9: the whole-history partition against plain PyTorch, and the peak memory on the way."""
    storage_root = scratch("be") / "storage"
    store_history(storage_root, partition)
    window_days = (partition - FIRST_DAY).days + 1
    peaks: list[PeakMemory] = []
    phases: dict[str, list[float]] = {name: [] for name in PHASES}

    def platform() -> float:
        started = time.perf_counter()
        started_wall = time.time()
        command = [
            sys.executable,
            "-m",
            "benchmarks.e2e_run",
            str(storage_root),
            partition.isoformat(),
            str(window_days),
        ]
        process = subprocess.Popen(
            command, cwd=REPOSITORY, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        tail: deque[str] = deque(maxlen=60)
        ended: dict[str, float] = {}
        with PeakMemory(process.pid) as peak:
            assert process.stderr is not None
            for line in process.stderr:
                tail.append(line)
                for name, marker in PHASE_MARKERS.items():
                    if name not in ended and marker.search(line):
                        ended[name] = time.perf_counter() - started
                first_step = FIRST_STEP.search(line)
                if first_step and "e2e_first_step_s" not in ended:
                    ended["e2e_first_step_s"] = float(first_step[1]) - started_wall
            process.wait()
        if process.returncode != 0:
            raise RuntimeError("the platform run failed:\n" + "".join(tail))
        missing = sorted(set(phases) - set(ended))
        if missing:
            raise RuntimeError(f"the run's log has no line for {', '.join(missing)}:\n" + "".join(tail))
        for name, seconds in ended.items():
            phases[name].append(seconds)
        peaks.append(peak)
        return time.perf_counter() - started

    def plain() -> float:
        started = time.perf_counter()
        run_checked(
            [
                sys.executable, "-m", "benchmarks.plain_train", str(storage_root), partition.isoformat(),
                str(scratch("bm") / "model.bin"), f"--window-days={window_days}",
                f"--epochs={RankingSettings().epochs}",
            ],
            cwd=REPOSITORY,
        )  # fmt: skip
        return time.perf_counter() - started

    pair = alternate(platform, plain, rounds=rounds)
    return {
        "e2e_partition": partition.isoformat(),
        "e2e_window_days": window_days,
        **{name: round(sorted(values)[len(values) // 2], 1) for name, values in phases.items()},
        "e2e_platform_s": round(sorted(pair.ours)[len(pair.ours) // 2], 1),
        "e2e_plain_s": round(sorted(pair.floor)[len(pair.floor) // 2], 1),
        "e2e_vs_plain_ratio": round(pair.median_ratio, 3),
        "run_process_peak_rss_mb": round(max(peak.run_peak for peak in peaks) / 1024**2),
        "worker_peak_rss_mb": round(max(peak.worker_peak for peak in peaks) / 1024**2),
    }
