"""The training request that the Dagster asset writes and the Ray job reads, as JSON in storage."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec


@dataclass(frozen=True)
class TrainingRequest:
    """Everything the Ray job needs to train one partition's model.

    Paths are local paths or fsspec URIs that every Ray node can read.
    """

    partition: str
    history_paths: list[str]
    window_first_day: str
    users_uri: str
    items_uri: str
    output_dir: str
    train_dir: str
    workers: int
    cpus_per_worker: int
    use_gpu: bool
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    max_failures: int
    warm_start_model: str | None = None
    warm_start_shrink: float = 1.0
    column_renames: dict[str, str] = field(default_factory=dict)

    @property
    def window_days(self) -> list[dt.date]:
        first = dt.date.fromisoformat(self.window_first_day)
        last = dt.date.fromisoformat(self.partition)
        return [first + dt.timedelta(days=offset) for offset in range((last - first).days + 1)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainingRequest:
        values: dict[str, Any] = json.loads(text)
        return cls(**values)

    @classmethod
    def load(cls, uri: str) -> TrainingRequest:
        with fsspec.open(uri, "r") as handle:
            return cls.from_json(handle.read())


REQUEST_FILE = "request.json"
RESULT_FILE = "result.json"
MODEL_FILE = "model.pt"
