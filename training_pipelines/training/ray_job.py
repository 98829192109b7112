"""Entry point of the training job that runs on the Ray cluster.

``python -m training_pipelines.training.ray_job REQUEST_URI`` reads the request,
builds the training examples from the stored daily partitions, trains with Ray
Train's ``TorchTrainer`` (DistributedDataParallel; gloo on CPU, NCCL on GPU) reading
its shards through Ray Data, and writes the model and a result file next to the
request. The Dagster asset that submitted the job reads that result.
"""

from __future__ import annotations

import argparse
import posixpath
import sys
import time

import pandas as pd
import pyarrow.parquet as pq
import ray
import ray.data
import ray.train
from ray.train.torch import TorchTrainer

from resources.storage import TrainingStorage
from training_pipelines.ranking.features import FEATURE_COLUMNS, LABEL_COLUMN, WEIGHT_COLUMN, build_examples
from training_pipelines.ranking.model import ModelConfig, RankingModel, model_to_bytes
from training_pipelines.training.request import EXAMPLES_FILE, MODEL_FILE, RESULT_FILE, TrainingRequest
from training_pipelines.training.train_loop import CHECKPOINT_FILE, train_loop_per_worker


def _read_table(uri: str, renames: dict[str, str]) -> pd.DataFrame:
    return pq.read_table(uri).to_pandas().rename(columns=renames)


def build_training_examples(request: TrainingRequest) -> pd.DataFrame:
    """Build the window's examples, with item-history features from every stored day before each row's day."""
    history = pd.concat([pq.read_table(path).to_pandas() for path in request.history_paths], ignore_index=True)
    users = _read_table(request.users_uri, request.column_renames)
    items = _read_table(request.items_uri, request.column_renames)
    return build_examples(history, users, items, days=request.window_days)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train one partition's ranking model on this Ray cluster.")
    parser.add_argument("request_uri", help="URI of the request.json written by the ranking_model asset")
    args = parser.parse_args(argv)
    request = TrainingRequest.load(args.request_uri)

    started = time.perf_counter()
    examples = build_training_examples(request)
    if examples.empty:
        print(f"No training events in {request.window_first_day}..{request.partition}", file=sys.stderr)
        return 2
    output = TrainingStorage(root=request.output_dir)
    examples_uri = output.write_parquet(examples[[*FEATURE_COLUMNS, LABEL_COLUMN, WEIGHT_COLUMN]], EXAMPLES_FILE)
    prepare_s = time.perf_counter() - started
    print(f"Built {len(examples)} training examples in {prepare_s:.1f} s", flush=True)

    ray.init()
    # Progress bars are terminal redraws; in the job log (and the Dagster run log) they are noise.
    ray.data.DataContext.get_current().enable_progress_bars = False
    # Materialized once, so each epoch splits blocks already in the object store
    # instead of starting new read tasks, which costs seconds per epoch on a small machine.
    dataset = ray.data.read_parquet(examples_uri).materialize()
    model_config = ModelConfig()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "model_config": model_config.to_dict(),
            "epochs": request.epochs,
            "batch_size": request.batch_size,
            "learning_rate": request.learning_rate,
            "seed": request.seed,
            "cpus_per_worker": request.cpus_per_worker,
            "warm_start_model": request.warm_start_model,
            "warm_start_shrink": request.warm_start_shrink,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=request.workers,
            use_gpu=request.use_gpu,
            resources_per_worker={"CPU": request.cpus_per_worker},
        ),
        datasets={"train": dataset},
        run_config=ray.train.RunConfig(
            name=f"ranking_model-{request.partition}",
            storage_path=request.train_dir,
            failure_config=ray.train.FailureConfig(max_failures=request.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    train_started = time.perf_counter()
    result = trainer.fit()
    training_s = time.perf_counter() - train_started
    if result.checkpoint is None:
        print("Training finished without a checkpoint", file=sys.stderr)
        return 1

    import torch

    with result.checkpoint.as_directory() as folder:
        state = torch.load(posixpath.join(folder, CHECKPOINT_FILE), weights_only=True)
    model = RankingModel(model_config)
    model.load_state_dict(state["model"])
    model_uri = output.write_bytes(model_to_bytes(model, model_config), MODEL_FILE)

    metrics = result.metrics or {}
    summary = {
        "partition": request.partition,
        "rows": len(examples),
        "positives": int(examples[LABEL_COLUMN].sum()),
        "epoch_losses": metrics.get("epoch_losses", []),
        "samples_per_s": metrics.get("samples_per_s"),
        "prepare_s": prepare_s,
        "training_s": training_s,
        "workers": request.workers,
        "checkpoint_uri": _with_scheme(result.checkpoint.path, request.train_dir),
        "model_uri": model_uri,
        "warm_started": bool(request.warm_start_model),
    }
    output.write_json(summary, RESULT_FILE)
    print(f"Wrote the model to {model_uri}", flush=True)
    return 0


def _with_scheme(path: str, like: str) -> str:
    """Give ``path`` the URI scheme of ``like``; Ray Train reports object-store paths without one."""
    if "://" in like and "://" not in path:
        return f"{like.split('://', 1)[0]}://{path}"
    return path


if __name__ == "__main__":
    sys.exit(main())
