"""The training loop's in-memory shard cache, with a stand-in for Ray Data's shard iterator."""

import numpy as np
import pandas as pd
import pytest
import torch

import training_pipelines.training.train_loop as train_loop
from tests.unit.test_ranking_model import make_examples
from training_pipelines.ranking.features import LABEL_COLUMN, WEIGHT_COLUMN
from training_pipelines.ranking.model import batch_to_tensors
from training_pipelines.training.train_loop import COLUMNS, READ_ROWS, _ShardCache, read_rows


class FakeShard:
    """Yields an examples frame in numpy batches, as ``DataIterator.iter_batches`` does, and counts passes."""

    def __init__(self, examples: pd.DataFrame) -> None:
        self.examples = examples
        self.passes = 0
        self.batch_sizes: list[int] = []
        self.chunks_read = 0

    def iter_batches(self, *, batch_size: int, **_: object):  # type: ignore[no-untyped-def]
        self.passes += 1
        self.batch_sizes.append(batch_size)
        for start in range(0, len(self.examples), batch_size):
            part = self.examples.iloc[start : start + batch_size]
            self.chunks_read += 1
            yield {name: part[name].to_numpy() for name in self.examples.columns}


def examples(rows: int) -> pd.DataFrame:
    frame = make_examples(rows)
    frame[WEIGHT_COLUMN] = np.float32(1.0)
    return frame[COLUMNS]


def epoch(cache: _ShardCache, shard: FakeShard, seed: int) -> list[dict[str, torch.Tensor]]:
    return list(cache.batches(shard, batch_size=32, seed=seed, device=torch.device("cpu")))


def test_later_epochs_reuse_cached_rows() -> None:
    shard = FakeShard(examples(100))
    cache = _ShardCache(max_bytes=10**9)

    first = epoch(cache, shard, seed=0)
    second = epoch(cache, shard, seed=1)
    third = epoch(cache, shard, seed=2)

    assert shard.passes == 1
    assert [len(batch[LABEL_COLUMN]) for batch in second] == [32, 32, 32, 4]
    labels = [torch.cat([batch[LABEL_COLUMN] for batch in run]) for run in (first, second, third)]
    assert sorted(labels[0].tolist()) == sorted(labels[1].tolist())
    assert not torch.equal(torch.cat([b["prior_logit"] for b in second]), torch.cat([b["prior_logit"] for b in third]))


def test_first_epoch_shuffles_each_chunk() -> None:
    frame = examples(100)
    shard = FakeShard(frame)
    cache = _ShardCache(max_bytes=10**9)

    first = epoch(cache, shard, seed=0)

    assert shard.batch_sizes == [READ_ROWS]
    assert [len(batch[LABEL_COLUMN]) for batch in first] == [32, 32, 32, 4]
    trained = torch.cat([batch["prior_logit"] for batch in first])
    streamed = torch.tensor(frame["item_prior_logit"].to_numpy(), dtype=trained.dtype)
    assert not torch.equal(trained, streamed)
    assert torch.equal(trained.sort().values, streamed.sort().values)


def test_shard_above_limit_streams_every_epoch() -> None:
    shard = FakeShard(examples(100))
    cache = _ShardCache(max_bytes=1000)

    epoch(cache, shard, seed=0)
    rows = sum(len(batch[LABEL_COLUMN]) for batch in epoch(cache, shard, seed=1))

    assert shard.passes == 2
    assert rows == 100


def test_first_epoch_trains_while_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_loop, "READ_ROWS", 100)
    frame = examples(250)
    shard = FakeShard(frame)
    cache = _ShardCache(max_bytes=10**9)

    batches = cache.batches(shard, batch_size=32, seed=0, device=torch.device("cpu"))
    next(batches)
    chunks_at_first_batch = shard.chunks_read
    first = [*batches]
    second = epoch(cache, shard, seed=1)

    assert chunks_at_first_batch == 1
    # Chunks of 96 rows, three whole batches each: only the shard's last batch is short.
    assert shard.batch_sizes == [96]
    assert [len(batch[LABEL_COLUMN]) for batch in second] == [32] * 7 + [26]
    assert len(first) + 1 == len(second)
    assert shard.passes == 1


def test_read_rows_whole_batches() -> None:
    assert read_rows(256) == READ_ROWS
    assert read_rows(1000) == READ_ROWS // 1000 * 1000
    assert read_rows(READ_ROWS * 2) == READ_ROWS * 2


def chunk_tensors(frame: pd.DataFrame) -> list[torch.Tensor]:
    return list(batch_to_tensors({name: frame[name].to_numpy() for name in COLUMNS}).values())


def test_shard_above_limit_mid_epoch_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_loop, "READ_ROWS", 100)
    frame = examples(250)
    shard = FakeShard(frame)
    # Room for the first 96-row chunk but not the second.
    one_chunk_bytes = sum(tensor.element_size() * tensor.nelement() for tensor in chunk_tensors(frame.iloc[:96]))
    cache = _ShardCache(max_bytes=one_chunk_bytes + 1)

    runs = [epoch(cache, shard, seed=seed) for seed in range(3)]

    assert shard.passes == 3
    for run in runs:
        assert [len(batch[LABEL_COLUMN]) for batch in run] == [32] * 7 + [26]
        trained = torch.cat([batch["prior_logit"] for batch in run])
        streamed = torch.tensor(frame["item_prior_logit"].to_numpy(), dtype=trained.dtype)
        assert torch.equal(trained.sort().values, streamed.sort().values)
