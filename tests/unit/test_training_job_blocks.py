"""How the training job deals a partition's examples to its workers and cuts them into blocks."""

import numpy as np
import pandas as pd
import pytest

from training_pipelines.training.ray_job import _blocks, deal_rows


@pytest.mark.parametrize(("rows", "count", "sizes"), [(10, 4, [2, 3, 2, 3]), (8, 8, [1] * 8), (3, 8, [1, 1, 1])])
def test_blocks_keep_rows_in_order(rows: int, count: int, sizes: list[int]) -> None:
    frame = pd.DataFrame({"row": range(rows)})

    blocks = _blocks(frame, count)

    assert [len(block) for block in blocks] == sizes
    assert pd.concat(blocks)["row"].tolist() == list(range(rows))


@pytest.mark.parametrize(("count", "workers", "size"), [(10, 2, 5), (11, 2, 5), (7, 3, 2), (2, 4, 0)])
def test_deal_rows_gives_equal_disjoint_parts(count: int, workers: int, size: int) -> None:
    parts = deal_rows(count, workers=workers, seed=0)

    assert [len(part) for part in parts] == [size] * workers
    dealt = np.concatenate(parts)
    assert len(np.unique(dealt)) == len(dealt)
    assert set(dealt.tolist()) <= set(range(count))


def test_deal_rows_shuffles_by_seed() -> None:
    first = deal_rows(1000, workers=2, seed=0)
    again = deal_rows(1000, workers=2, seed=0)
    other = deal_rows(1000, workers=2, seed=1)

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])
    # Not consecutive rows: a worker gets rows from the whole frame.
    assert first[0].min() < 100
    assert first[0].max() > 900
