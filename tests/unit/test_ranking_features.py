import datetime

import numpy as np
import pandas as pd
import pytest

from training_pipelines.ranking import features

DAY_1 = datetime.date(1998, 1, 1)
DAY_2 = datetime.date(1998, 1, 2)
DAY_3 = datetime.date(1998, 1, 3)


def timestamp(day: datetime.date, hour: int = 12) -> int:
    moment = datetime.datetime(day.year, day.month, day.day, hour, tzinfo=datetime.UTC)
    return int(moment.timestamp())


def make_events(rows: list[tuple[int, int, int, datetime.date]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [user for user, _, _, _ in rows],
            "item_id": [item for _, item, _, _ in rows],
            "rating": [rating for _, _, rating, _ in rows],
            "timestamp": [timestamp(day) for _, _, _, day in rows],
        }
    )


def make_users() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [1, 2, 3],
            "age": [17, 30, 60],
            "gender": ["M", "F", "M"],
            "occupation": ["student", "engineer", "astronaut"],
            "zip_code": ["00000", "11111", "22222"],
        }
    )


def make_items() -> pd.DataFrame:
    frame = pd.DataFrame({"item_id": [10, 20], "movie_title": ["A", "B"]})
    for genre in features.GENRE_COLUMNS:
        frame[genre] = 0
    frame.loc[frame["item_id"] == 10, "Action"] = 1
    frame.loc[frame["item_id"] == 20, "Comedy"] = 1
    frame.loc[frame["item_id"] == 20, "Sci-Fi"] = 1
    return frame


def expected_dtype(column: str) -> np.dtype:
    if column in features.ID_COLUMNS or column in features.CATEGORICAL_COLUMNS:
        return np.dtype(np.int64)
    return np.dtype(np.float32)


def test_columns_and_dtypes() -> None:
    events = make_events([(1, 10, 5, DAY_1), (2, 20, 2, DAY_2)])

    examples = features.build_examples(events, make_users(), make_items(), days=[DAY_1, DAY_2])

    assert tuple(examples.columns) == features.EXAMPLE_COLUMNS
    for column in examples.columns:
        assert examples[column].dtype == expected_dtype(column), column
    assert set(features.FEATURE_COLUMNS) <= set(examples.columns)
    assert examples["label"].tolist() == [1.0, 0.0]


def test_empty_day_keeps_columns_and_dtypes() -> None:
    events = make_events([(1, 10, 5, DAY_1)])

    examples = features.build_examples(events, make_users(), make_items(), days=[DAY_3])

    assert examples.empty
    assert tuple(examples.columns) == features.EXAMPLE_COLUMNS
    for column in examples.columns:
        assert examples[column].dtype == expected_dtype(column), column


def test_only_requested_days_become_rows() -> None:
    events = make_events([(1, 10, 5, DAY_1), (2, 10, 4, DAY_2), (3, 20, 1, DAY_3)])

    examples = features.build_examples(events, make_users(), make_items(), days=[DAY_2])

    assert examples["user_id"].tolist() == [2]


def test_row_does_not_see_its_own_day() -> None:
    # Item 10 has one negative on day 1, then several positives on day 2. The
    # day-2 rows may use day 1 only, so their features match a history without day 2.
    day_1_events = [(1, 10, 1, DAY_1)]
    day_2_events = [(user, 10, 5, DAY_2) for user in (1, 2, 3)]
    events = make_events(day_1_events + day_2_events)
    only_one_on_day_2 = make_events(day_1_events + day_2_events[:1])

    examples = features.build_examples(events, make_users(), make_items(), days=[DAY_2])
    reference = features.build_examples(only_one_on_day_2, make_users(), make_items(), days=[DAY_2])

    item_columns = [column for column in features.DENSE_COLUMNS if column.startswith("item_")]
    for column in [*item_columns, features.PRIOR_LOGIT_COLUMN]:
        assert examples[column].nunique() == 1, column
    for column in [*features.DENSE_COLUMNS, features.PRIOR_LOGIT_COLUMN]:
        assert examples[column].iloc[0] == pytest.approx(reference[column].iloc[0]), column
    assert examples["item_log_count"].iloc[0] == pytest.approx(np.log1p(1.0))
    assert examples["user_log_count"].tolist() == pytest.approx([np.log1p(1.0), 0.0, 0.0])


def test_prior_matches_popularity_of_earlier_days() -> None:
    events = make_events(
        [(1, 10, 5, DAY_1), (2, 10, 1, DAY_1), (3, 20, 4, DAY_1), (1, 20, 5, DAY_2), (2, 10, 3, DAY_3)]
    )

    examples = features.build_examples(events, make_users(), make_items(), days=[DAY_3])
    earlier = events.iloc[:4]
    expected = features.popularity_scores(earlier, examples["item_id"].to_numpy())

    probability = 1.0 / (1.0 + np.exp(-examples[features.PRIOR_LOGIT_COLUMN].to_numpy()))
    assert probability == pytest.approx(expected, abs=1e-6)


def test_popularity_scores_hand_computed() -> None:
    # Global rate 2/3. Item 10: 1 positive of 2 -> (1 + 2 * 2/3) / (2 + 2).
    events = make_events([(1, 10, 5, DAY_1), (2, 10, 1, DAY_1), (3, 20, 4, DAY_1)])

    scores = features.popularity_scores(events, np.array([10, 99]), alpha=2.0)

    assert scores[0] == pytest.approx((1 + 2 * 2 / 3) / 4)
    assert scores[1] == pytest.approx(2 / 3)


def test_unseen_user_and_item_use_unknown_bucket() -> None:
    events = make_events([(1, 10, 5, DAY_1), (999, 777, 4, DAY_2)])

    examples = features.build_examples(events, make_users(), make_items(), days=[DAY_2])

    row = examples.iloc[0]
    assert row["user_bucket"] == 0
    assert row["item_bucket"] == 0
    assert row["age_bucket"] == 0
    assert row["gender_index"] == 0
    assert row["occupation_index"] == 0
    assert examples[list(features.GENRE_FEATURE_COLUMNS)].to_numpy().sum() == 0
    assert row["item_log_count"] == 0.0
    assert row["user_residual"] == 0.0


def test_ids_with_history_get_hash_bucket() -> None:
    earlier = [(1, 10, 4, DAY_1)] * features.MIN_USER_HISTORY
    events = make_events(earlier + [(1, 10, 5, DAY_2)])

    examples = features.build_examples(events, make_users(), make_items(), days=[DAY_2])

    user_bucket = examples["user_bucket"].iloc[0]
    item_bucket = examples["item_bucket"].iloc[0]
    assert 1 <= user_bucket < features.USER_HASH_BUCKETS
    assert 1 <= item_bucket < features.ITEM_HASH_BUCKETS


def test_user_features_and_unknown_occupation() -> None:
    events = make_events([(1, 10, 5, DAY_1), (2, 20, 5, DAY_1), (3, 20, 5, DAY_1)])

    examples = features.build_examples(events, make_users(), make_items(), days=[DAY_1])

    assert examples["age_bucket"].tolist() == [1, 3, 7]
    assert examples["gender_index"].tolist() == [1, 2, 1]
    assert examples["occupation_index"].iloc[0] == features.OCCUPATIONS.index("student") + 1
    assert examples["occupation_index"].iloc[2] == 0
    assert examples["genre_action"].tolist() == [1.0, 0.0, 0.0]
    assert examples["genre_sci_fi"].tolist() == [0.0, 1.0, 1.0]


def test_hash_buckets_stay_in_range() -> None:
    ids = np.array([0, 1, 2**40, -5, 123_456_789])

    buckets = features.hash_ids(ids, 16)

    assert buckets.min() >= 1
    assert buckets.max() <= 15


def test_day_column_uses_utc() -> None:
    late_evening = pd.Series([timestamp(DAY_1, hour=23)])
    as_datetime = pd.to_datetime(late_evening, unit="s", utc=True)

    assert features.day_numbers(late_evening)[0] == features.date_to_day_number(DAY_1)
    assert features.day_numbers(as_datetime)[0] == features.date_to_day_number(DAY_1)


def test_heavy_users_weigh_less() -> None:
    events = make_events([(1, 10, 5, DAY_1)] * 4 + [(2, 20, 5, DAY_1)])

    examples = features.build_examples(events, make_users(), make_items(), days=[DAY_1])

    weights = examples["weight"].to_numpy()
    assert weights.mean() == pytest.approx(1.0)
    assert weights[0] == pytest.approx(weights[4] / 2)
