"""The plain-PyTorch counterpart of one ``ranking_model`` partition: the same rows, model and epochs in one process.

``python -m benchmarks.plain_train STORAGE_ROOT PARTITION --window-days N --epochs E OUTPUT`` reads
the stored ``ratings_daily`` days up to the partition, builds the same training
examples as the Ray job, trains ``RankingModel`` with ``train_epochs`` and writes the
model bytes to OUTPUT. It runs without Ray and outside Dagster, but it reads storage and
settings through the pipeline's classes, which import Dagster as the Ray job does.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import pandas as pd

from resources.storage import TrainingStorage
from training_pipelines.data.source import RatingsSource
from training_pipelines.defs.partitions import FIRST_DAY, days_between
from training_pipelines.defs.ratings import RATINGS_FOLDER, ratings_file
from training_pipelines.defs.settings import RankingSettings
from training_pipelines.ranking.features import build_examples
from training_pipelines.ranking.model import ModelConfig, RankingModel, model_to_bytes
from training_pipelines.ranking.train_plain import train_epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("storage_root")
    parser.add_argument("partition", type=dt.date.fromisoformat)
    parser.add_argument("output", type=Path)
    parser.add_argument("--window-days", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    args = parser.parse_args()

    storage = TrainingStorage(root=args.storage_root)
    day: dt.date = args.partition
    history = pd.concat(
        [storage.read_parquet(RATINGS_FOLDER, ratings_file(d.isoformat())) for d in days_between(FIRST_DAY, day)],
        ignore_index=True,
    )
    source = RatingsSource()
    window = days_between(max(FIRST_DAY, day - dt.timedelta(days=args.window_days - 1)), day)
    examples = build_examples(history, source.read_users(), source.read_items(), days=window)

    settings = RankingSettings()
    model_config = ModelConfig()
    model = RankingModel(model_config)
    train_epochs(
        model,
        examples,
        epochs=args.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
    )
    args.output.write_bytes(model_to_bytes(model, model_config))
    print(f"Trained on {len(examples)} rows for {args.epochs} epochs", flush=True)


if __name__ == "__main__":
    main()
