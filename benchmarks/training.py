"""Training throughput inside the platform against a plain PyTorch loop over the same rows in memory.

Both sides train ``RankingModel`` with the same batch size, learning rate and one torch
thread per worker. The platform side is the pipeline's own training loop under Ray
Train, submitted as a Ray job to a local cluster that is already running. Its first
epoch trains on the worker's shard in chunks as Ray Data delivers them and keeps them in
memory, and later epochs read that copy. ``throughput_vs_plain_ratio`` counts the
samples per second of all epochs, so the Ray Data ingest is in it;
``last_epoch_vs_plain_ratio`` counts the last epoch only. In a new worker process, Ray
Data's first chunk arrived 0.08 to 0.16 s after the request, against about 0.03 s once
Ray Data had run in that process (an estimate from a few profiled runs). The first epoch
took about 0.17 s longer than the later ones in the same runs. The time of an epoch ends
with its last step on both sides, so the platform's checkpoint and report after each
epoch are not in either figure. The pairs train on the whole history up to 1998-03-15,
so an epoch lasts about half a second. One more pair trains on the default 28-day
window, whose epochs last about 0.1 s, reported apart (``short_window_vs_plain_ratio``).
``scaling_2_vs_1_ratio`` is the throughput of the loop with 2 workers
(DistributedDataParallel over gloo) against 1 worker, on the same cluster and rows. On 2
CPUs it stays below 1. With one worker, Ray Train does not wrap the model in
DistributedDataParallel.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from ray.job_submission import JobSubmissionClient

from benchmarks.common import Pair, alternate, scratch
from resources.jobs import run_job
from resources.local import LocalRayCluster
from resources.spec import ClusterSpec
from training_pipelines.data.source import RatingsSource
from training_pipelines.ranking.features import FEATURE_COLUMNS, LABEL_COLUMN, WEIGHT_COLUMN, build_examples
from training_pipelines.ranking.model import ModelConfig, RankingModel, batch_to_tensors
from training_pipelines.ranking.train_plain import make_optimizer, train_step

BATCH_SIZE = 256
LEARNING_RATE = 5e-4
MIB = 1024**2
COLUMNS = [*FEATURE_COLUMNS, LABEL_COLUMN, WEIGHT_COLUMN]
REPOSITORY = Path(__file__).resolve().parent.parent
LAST_DAY = dt.date(1998, 3, 15)


def build_window(*, last_day: dt.date, days: int) -> pd.DataFrame:
    """Build the training examples of the ``days`` days ending at ``last_day`` from the MovieLens source."""
    source = RatingsSource()
    history = source.read_events(end=last_day + dt.timedelta(days=1))
    window = [last_day - dt.timedelta(days=offset) for offset in range(days)]
    examples = build_examples(history, source.read_users(), source.read_items(), days=window)
    return examples[COLUMNS]


@dataclass(frozen=True)
class Rates:
    """Samples per second of one training run."""

    all_epochs: float
    last_epoch: float


def plain_samples_per_s(examples: pd.DataFrame, *, epochs: int, device: str = "cpu") -> Rates:
    """Train in one process on tensors already on ``device``; return the samples per second."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = RankingModel(ModelConfig()).to(device)
    optimizer = make_optimizer(model, learning_rate=LEARNING_RATE)
    tensors = {
        name: tensor.to(device)
        for name, tensor in batch_to_tensors({name: examples[name].to_numpy() for name in COLUMNS}).items()
    }
    generator = torch.Generator().manual_seed(0)
    model.train()
    total_s = 0.0
    epoch_s = 0.0
    for _ in range(epochs):
        started = time.perf_counter()
        order = torch.randperm(len(examples), generator=generator).to(device)
        for start in range(0, len(examples), BATCH_SIZE):
            indices = order[start : start + BATCH_SIZE]
            train_step(model, optimizer, {name: tensor[indices] for name, tensor in tensors.items()})
        if device != "cpu":
            # GPU kernels run asynchronously: the epoch ends when the last one has finished.
            torch.cuda.synchronize()
        epoch_s = time.perf_counter() - started
        total_s += epoch_s
    return Rates(all_epochs=len(examples) * epochs / total_s, last_epoch=len(examples) / epoch_s)


def platform_samples_per_s(
    dashboard_url: str, examples_uri: str, *, workers: int, epochs: int, gpu: bool = False
) -> Rates:
    """Run the platform's training loop as a Ray job; return the samples per second that the loop reports."""
    result_path = scratch("bt") / "result.json"
    entrypoint = " ".join(
        [
            shlex.quote(sys.executable), "-m", "benchmarks.throughput_job", shlex.quote(examples_uri),
            shlex.quote(str(result_path)), f"--workers={workers}", f"--epochs={epochs}", f"--batch-size={BATCH_SIZE}",
            *(["--gpu"] if gpu else []),
        ]
    )  # fmt: skip
    run_job(
        JobSubmissionClient(dashboard_url),
        entrypoint=entrypoint,
        submission_id=f"throughput-{workers}-{time.time_ns()}",
        on_log_line=lambda line: None,
        # The benchmarks package is not installed; the job finds it through the repository root.
        env_vars={"PYTHONPATH": str(REPOSITORY)},
    )
    result = json.loads(result_path.read_text())
    # training_s adds up the epochs' times, each ending with the epoch's last step.
    return Rates(
        all_epochs=result["samples"] * epochs / result["training_s"], last_epoch=float(result["samples_per_s"])
    )


def stored_window(days: int) -> tuple[pd.DataFrame, str]:
    """Build the examples of the ``days`` days up to 1998-03-15 and store them for the Ray jobs to read."""
    examples = build_window(last_day=LAST_DAY, days=days)
    examples_uri = str(scratch("bx") / "examples.parquet")
    examples.to_parquet(examples_uri, index=False)
    return examples, examples_uri


def run(*, window_days: int, epochs: int, rounds: int, short_window_days: int | None = None) -> dict[str, Any]:
    """Benchmark 4: throughput against plain PyTorch with one worker, and two workers against one.

    With ``short_window_days``, also one worker against plain PyTorch on that shorter window.
    """
    examples, examples_uri = stored_window(window_days)

    spec = ClusterSpec(workers=2, cpus_per_worker=1, memory_per_worker=1024 * MIB, object_store_memory=256 * MIB)
    cluster = LocalRayCluster(
        name="bench-throughput", spec=spec, temp_root=str(scratch("bc")), on_progress=lambda m: None
    )
    info = cluster.start()
    last_epoch: dict[str, list[float]] = {"platform": [], "plain": []}

    def platform_one() -> float:
        rates = platform_samples_per_s(info.dashboard_url, examples_uri, workers=1, epochs=epochs)
        last_epoch["platform"].append(rates.last_epoch)
        return rates.all_epochs

    def plain_one() -> float:
        rates = plain_samples_per_s(examples, epochs=epochs)
        last_epoch["plain"].append(rates.last_epoch)
        return rates.all_epochs

    try:
        one_vs_plain = alternate(platform_one, plain_one, rounds=rounds)
        two_vs_one = alternate(
            lambda: platform_samples_per_s(info.dashboard_url, examples_uri, workers=2, epochs=epochs).all_epochs,
            lambda: platform_samples_per_s(info.dashboard_url, examples_uri, workers=1, epochs=epochs).all_epochs,
            rounds=rounds,
        )
        figures = {
            "throughput_rows": len(examples),
            "throughput_epochs": epochs,
            "throughput_rounds": rounds,
            "platform_samples_per_s": round(sorted(one_vs_plain.ours)[len(one_vs_plain.ours) // 2]),
            "plain_samples_per_s": round(sorted(one_vs_plain.floor)[len(one_vs_plain.floor) // 2]),
            "throughput_vs_plain_ratio": round(one_vs_plain.median_ratio, 3),
            "last_epoch_vs_plain_ratio": round(Pair(last_epoch["platform"], last_epoch["plain"]).median_ratio, 3),
            "scaling_2_vs_1_ratio": round(two_vs_one.median_ratio, 3),
        }
        if short_window_days is not None:
            short, short_uri = stored_window(short_window_days)
            short_vs_plain = alternate(
                lambda: platform_samples_per_s(info.dashboard_url, short_uri, workers=1, epochs=epochs).all_epochs,
                lambda: plain_samples_per_s(short, epochs=epochs).all_epochs,
                rounds=rounds,
            )
            figures["short_window_rows"] = len(short)
            figures["short_window_vs_plain_ratio"] = round(short_vs_plain.median_ratio, 3)
    finally:
        cluster.stop()
    return figures
