"""Ray job of the throughput benchmark: the platform's training loop on one examples file, nothing else.

``python -m benchmarks.throughput_job EXAMPLES_URI RESULT_PATH --workers N --epochs E --batch-size B [--gpu]``
reads the examples as the pipeline's training job holds them (in memory, handed to Ray
Data as a few blocks), trains with ``TorchTrainer`` and the pipeline's
``train_loop_per_worker`` (DistributedDataParallel when N > 1; with ``--gpu``, one GPU
per worker and NCCL), and writes what the training loop reports after its last
epoch: the samples per second of that epoch, the samples of one epoch, and the time of
all epochs.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import pandas as pd
import ray.train
from ray.train.torch import TorchTrainer

from training_pipelines.ranking.model import ModelConfig
from training_pipelines.training.ray_job import WORKER_DATA_CONFIG, connect, worker_datasets
from training_pipelines.training.train_loop import train_loop_per_worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("examples_uri")
    parser.add_argument("result_path")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--gpu", action="store_true", help="train on one GPU per worker")
    args = parser.parse_args()

    examples = pd.read_parquet(args.examples_uri)
    connect()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "model_config": ModelConfig().to_dict(),
            "partitions": [{"partition": "", "dataset": "train", "epochs": args.epochs, "warm_start": None}],
            "batch_size": args.batch_size,
            "learning_rate": 5e-4,
            "seed": 0,
            "cpus_per_worker": 1,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=args.workers, use_gpu=args.gpu, resources_per_worker={"CPU": 1}
        ),
        datasets=worker_datasets(examples, name="train", workers=args.workers, seed=0),
        dataset_config=WORKER_DATA_CONFIG,
        run_config=ray.train.RunConfig(storage_path=tempfile.mkdtemp(prefix="bench-train-")),
    )
    metrics = trainer.fit().metrics or {}
    with open(args.result_path, "w", encoding="utf-8") as handle:
        json.dump(
            {
                "samples_per_s": metrics["samples_per_s"],
                "samples": metrics["samples"],
                "training_s": metrics["training_s"],
            },
            handle,
        )


if __name__ == "__main__":
    main()
