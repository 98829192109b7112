"""How the training job cuts a partition's examples into the blocks of its Ray dataset."""

import pandas as pd
import pytest

from training_pipelines.training.ray_job import _blocks


@pytest.mark.parametrize(("rows", "count", "sizes"), [(10, 4, [2, 3, 2, 3]), (8, 8, [1] * 8), (3, 8, [1, 1, 1])])
def test_blocks_keep_rows_in_order(rows: int, count: int, sizes: list[int]) -> None:
    frame = pd.DataFrame({"row": range(rows)})

    blocks = _blocks(frame, count)

    assert [len(block) for block in blocks] == sizes
    assert pd.concat(blocks)["row"].tolist() == list(range(rows))
