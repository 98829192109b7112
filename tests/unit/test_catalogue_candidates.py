"""Ranking candidates for NDCG@10 and HitRate@10: every item a next-day user had not rated before."""

import numpy as np
import pandas as pd

from training_pipelines.defs.ranking import catalogue_candidates

DAY_S = 86_400
NEXT_DAY_S = 100 * DAY_S


def _events(rows: list[tuple[int, int, float, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


def test_candidates_skip_items_rated_before() -> None:
    history = _events([(1, 10, 5.0, NEXT_DAY_S - DAY_S), (2, 20, 4.0, NEXT_DAY_S - DAY_S)])
    next_events = _events([(1, 30, 5.0, NEXT_DAY_S + 60)])

    candidates = catalogue_candidates(history, next_events, np.array([10, 20, 30, 40]))

    assert sorted(candidates["item_id"]) == [20, 30, 40]
    assert set(candidates["user_id"]) == {1}


def test_candidates_keep_next_day_ratings() -> None:
    next_events = _events([(1, 30, 5.0, NEXT_DAY_S + 60), (1, 40, 2.0, NEXT_DAY_S + 90)])

    candidates = catalogue_candidates(_events([]), next_events, np.array([30, 40, 50])).set_index("item_id")

    assert candidates.loc[30, "rating"] == 5.0
    assert candidates.loc[40, "rating"] == 2.0
    assert candidates.loc[50, "rating"] == 0.0
    assert candidates.loc[50, "timestamp"] == NEXT_DAY_S + 60


def test_no_next_day_events_no_candidates() -> None:
    candidates = catalogue_candidates(_events([(1, 10, 5.0, 0)]), _events([]), np.array([10, 20]))

    assert candidates.empty
