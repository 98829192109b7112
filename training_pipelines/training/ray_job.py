"""Entry point of the training job that runs on the Ray cluster.

``python -m training_pipelines.training.ray_job REQUEST_URI...`` reads each request,
builds the training examples from the stored daily partitions, trains with Ray
Train's ``TorchTrainer`` (DistributedDataParallel; gloo on CPU, NCCL on GPU) reading
its shards through Ray Data, and writes the model and a result file next to the
request. Several requests train one after another in one ``TorchTrainer`` run. So a
Dagster run that covers several partitions starts the job and the worker group once,
and a partition that warm-starts from the one before it continues from that model in
memory. The Dagster asset that submitted the job reads the results.
"""

from __future__ import annotations

import argparse
import itertools
import os
import posixpath
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import ray
import ray.data
import ray.train
from ray.train.torch import TorchTrainer

from resources.storage import TrainingStorage
from training_pipelines.ranking.features import FEATURE_COLUMNS, LABEL_COLUMN, WEIGHT_COLUMN, build_examples
from training_pipelines.ranking.model import ModelConfig, RankingModel, model_to_bytes
from training_pipelines.training.request import MODEL_FILE, RESULT_FILE, TrainingRequest
from training_pipelines.training.train_loop import (
    CHECKPOINT_FILE,
    FROM_PREVIOUS,
    train_loop_per_worker,
    worker_dataset_name,
)

# Seconds between Ray Train's polls of its workers, unless the environment sets it.
HEALTH_CHECK_INTERVAL_S = 0.5

# Blocks per training dataset, so that no block is large.
DATASET_BLOCKS = 8
# Each worker reads a dataset of its own (worker_datasets), so Ray Train splits none of them.
# Splitting one dataset among the workers starts a split coordinator actor per dataset: its
# first batch came 2-3 s after the request on 2 CPUs, against under 0.3 s for an unsplit one.
WORKER_DATA_CONFIG = ray.train.DataConfig(datasets_to_split=[])


def _read_table(uri: str, renames: dict[str, str]) -> pd.DataFrame:
    return pq.read_table(uri).to_pandas().rename(columns=renames)


def build_training_examples(request: TrainingRequest) -> pd.DataFrame:
    """Build the window's examples, with item-history features from every stored day before each row's day."""
    history = pd.concat([pq.read_table(path).to_pandas() for path in request.history_paths], ignore_index=True)
    users = _read_table(request.users_uri, request.column_renames)
    items = _read_table(request.items_uri, request.column_renames)
    return build_examples(history, users, items, days=request.window_days)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Train the ranking models of one or more partitions on this Ray cluster, in the order given."
    )
    parser.add_argument(
        "request_uris",
        nargs="+",
        metavar="REQUEST_URI",
        help="URI of a request.json written by the ranking_model asset",
    )
    args = parser.parse_args(argv)
    # Every request is read and its examples built first, so that a bad one fails the job before training.
    requests = [TrainingRequest.load(uri) for uri in args.request_uris]
    prepared: list[_Prepared] = []
    for request in requests:
        started = time.perf_counter()
        examples = build_training_examples(request)
        if examples.empty:
            print(f"No training events in {request.window_first_day}..{request.partition}", file=sys.stderr)
            return 2
        prepare_s = time.perf_counter() - started
        print(f"Built {len(examples)} training examples of {request.partition} in {prepare_s:.1f} s", flush=True)
        prepared.append(
            _Prepared(
                request,
                TrainingStorage(root=request.output_dir),
                examples[[*FEATURE_COLUMNS, LABEL_COLUMN, WEIGHT_COLUMN]],
                int(examples[LABEL_COLUMN].sum()),
                prepare_s,
            )
        )

    connect()
    first = requests[0]
    model_config = ModelConfig()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "model_config": model_config.to_dict(),
            "partitions": [_partition_config(prepared, index) for index in range(len(prepared))],
            "batch_size": first.batch_size,
            "learning_rate": first.learning_rate,
            "seed": first.seed,
            "cpus_per_worker": first.cpus_per_worker,
            "warm_start_shrink": first.warm_start_shrink,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=first.workers,
            use_gpu=first.use_gpu,
            resources_per_worker={"CPU": first.cpus_per_worker},
        ),
        datasets={
            name: dataset
            for item in prepared
            for name, dataset in worker_datasets(
                item.examples, name=_dataset_name(item.request), workers=first.workers, seed=first.seed
            ).items()
        },
        dataset_config=WORKER_DATA_CONFIG,
        run_config=ray.train.RunConfig(
            name=f"ranking_model-{first.partition}" + ("" if len(requests) == 1 else f"-to-{requests[-1].partition}"),
            storage_path=first.train_dir,
            failure_config=ray.train.FailureConfig(max_failures=first.max_failures),
            # Every checkpoint is kept, because the last one of each partition contains that partition's model.
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=None),
        ),
    )
    train_started = time.perf_counter()
    result = trainer.fit()
    training_s = time.perf_counter() - train_started

    # The last checkpoint that each partition reported contains its model.
    last: dict[str, tuple[ray.train.Checkpoint, dict[str, Any]]] = {}
    for checkpoint, metrics in result.best_checkpoints or []:
        kept = last.get(metrics["partition"])
        if kept is None or metrics["epoch"] > kept[1]["epoch"]:
            last[metrics["partition"]] = (checkpoint, metrics)

    import torch

    for item in prepared:
        request = item.request
        if request.partition not in last:
            print(f"Training of {request.partition} finished without a checkpoint", file=sys.stderr)
            return 1
        checkpoint, metrics = last[request.partition]
        with checkpoint.as_directory() as folder:
            state = torch.load(posixpath.join(folder, CHECKPOINT_FILE), weights_only=True)
        model = RankingModel(model_config)
        model.load_state_dict(state["model"])
        model_uri = item.output.write_bytes(model_to_bytes(model, model_config), MODEL_FILE)
        summary = {
            "partition": request.partition,
            "rows": item.rows,
            "positives": item.positives,
            "epoch_losses": metrics["epoch_losses"],
            "samples_per_s": metrics["samples_per_s"],
            "prepare_s": item.prepare_s,
            "training_s": metrics["training_s"],
            "job_training_s": training_s,
            "workers": request.workers,
            "checkpoint_uri": _with_scheme(checkpoint.path, request.train_dir),
            "model_uri": model_uri,
            "warm_started": bool(request.warm_start_model),
        }
        item.output.write_json(summary, RESULT_FILE)
        print(f"Wrote the model of {request.partition} to {model_uri}", flush=True)
    return 0


@dataclass(frozen=True)
class _Prepared:
    """A request with its training examples, ready to train."""

    request: TrainingRequest
    output: TrainingStorage
    examples: pd.DataFrame
    positives: int
    prepare_s: float

    @property
    def rows(self) -> int:
        return len(self.examples)


def connect() -> None:
    """Connect this job's driver to its Ray cluster, with the settings that both training drivers share."""
    # Ray Train's controller polls its workers every 2 s by default, so a small job
    # waited seconds after its last epoch for the controller to notice that training ended.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(HEALTH_CHECK_INTERVAL_S))
    ray.init()
    # Progress bars are terminal redraws; in the job log (and the Dagster run log) they are noise.
    ray.data.DataContext.get_current().enable_progress_bars = False


def in_memory_dataset(frame: pd.DataFrame) -> ray.data.Dataset:
    """Put ``frame`` into the object store as a dataset of a few blocks of consecutive rows.

    The driver already has the examples in memory, so they go to the object store as they are.
    A Parquet round trip through storage, with its read tasks, took about 3 s on 2 CPUs.
    """
    return ray.data.from_pandas(_blocks(frame, DATASET_BLOCKS))


def worker_datasets(frame: pd.DataFrame, *, name: str, workers: int, seed: int) -> dict[str, ray.data.Dataset]:
    """Put the rows of ``frame`` into ``workers`` in-memory datasets, dealt by ``deal_rows``.

    The dataset of world rank ``r`` is named ``worker_dataset_name(name, r)``.
    """
    return {
        worker_dataset_name(name, rank): in_memory_dataset(frame.iloc[positions])
        for rank, positions in enumerate(deal_rows(len(frame), workers=workers, seed=seed))
    }


def deal_rows(count: int, *, workers: int, seed: int) -> list[np.ndarray]:
    """Deal the row positions ``0..count-1`` at random into ``workers`` parts of equal size.

    The rows left over after an equal division (fewer than ``workers``) are dropped, so
    that every worker takes the same number of steps, as DistributedDataParallel requires.
    """
    order = np.random.default_rng(seed).permutation(count)
    size = count // workers
    return [order[rank * size : (rank + 1) * size] for rank in range(workers)]


def _blocks(frame: pd.DataFrame, count: int) -> list[pd.DataFrame]:
    """Cut ``frame`` into ``count`` slices of consecutive rows, as blocks of one dataset."""
    bounds = [len(frame) * index // count for index in range(count + 1)]
    return [frame.iloc[start:end] for start, end in itertools.pairwise(bounds) if end > start]


def _dataset_name(request: TrainingRequest) -> str:
    return f"train-{request.partition}"


def _partition_config(prepared: list[_Prepared], index: int) -> dict[str, Any]:
    """Describe one partition for the training loop: its dataset, its epochs and where it warm-starts from."""
    request = prepared[index].request
    warm_start = request.warm_start_model
    if index > 0 and warm_start == prepared[index - 1].output.uri(MODEL_FILE):
        # The model of the partition before is not written until the whole job ends; the loop keeps it in memory.
        warm_start = FROM_PREVIOUS
    return {
        "partition": request.partition,
        "dataset": _dataset_name(request),
        "epochs": request.epochs,
        "warm_start": warm_start,
    }


def _with_scheme(path: str, like: str) -> str:
    """Give ``path`` the URI scheme of ``like``; Ray Train reports object-store paths without one."""
    if "://" in like and "://" not in path:
        return f"{like.split('://', 1)[0]}://{path}"
    return path


if __name__ == "__main__":
    sys.exit(main())
