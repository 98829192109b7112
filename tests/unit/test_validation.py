"""Unit tests of validate_events on small synthetic events frames."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from training_pipelines.data.validation import SourceError, validate_events

SOURCE = "synthetic.parquet"
# 1997-10-01 00:00:00 UTC as Unix seconds.
OCT_1_1997 = 875664000


def make_events(**columns: object) -> pd.DataFrame:
    frame: dict[str, object] = {
        "user_id": [1, 2, 3],
        "item_id": [10, 20, 30],
        "rating": [1, 3, 5],
        "timestamp": [OCT_1_1997, OCT_1_1997 + 3600, OCT_1_1997 + 86400],
    }
    frame.update(columns)
    return pd.DataFrame(frame)


def test_valid_events_get_int64_columns() -> None:
    validated = validate_events(make_events(), source=SOURCE)

    assert list(validated.columns) == ["user_id", "item_id", "rating", "timestamp", "day"]
    assert validated["user_id"].dtype == np.int64
    assert validated["item_id"].dtype == np.int64
    assert validated["timestamp"].dtype == np.int64
    assert validated["rating"].dtype == np.float64
    assert validated.attrs["duplicates_dropped"] == 0


def test_day_is_utc_date() -> None:
    late_evening = OCT_1_1997 + 23 * 3600 + 3599
    validated = validate_events(make_events(timestamp=[OCT_1_1997, late_evening, late_evening + 1]), source=SOURCE)

    assert validated["day"].tolist() == [dt.date(1997, 10, 1), dt.date(1997, 10, 1), dt.date(1997, 10, 2)]


def test_extra_columns_are_dropped() -> None:
    validated = validate_events(make_events(comment=["a", "b", "c"]), source=SOURCE)

    assert "comment" not in validated.columns


def test_input_frame_is_not_changed() -> None:
    events = make_events(timestamp=pd.to_datetime(["1997-10-01", "1997-10-02", "1997-10-03"]))
    before = events.copy()

    validate_events(events, source=SOURCE)

    pd.testing.assert_frame_equal(events, before)


@pytest.mark.parametrize("column", ["user_id", "item_id", "rating", "timestamp"])
def test_missing_column_is_named(column: str) -> None:
    events = make_events().drop(columns=[column])

    with pytest.raises(SourceError) as caught:
        validate_events(events, source=SOURCE)

    message = str(caught.value)
    assert caught.value.field == "events_uri"
    assert f"lacks the column(s) {column}" in message
    assert "column_renames" in message
    assert SOURCE in message


def test_missing_columns_are_all_named() -> None:
    events = make_events().rename(columns={"item_id": "movie_id", "timestamp": "unix_time"})

    with pytest.raises(SourceError) as caught:
        validate_events(events, source=SOURCE)

    assert "item_id, timestamp" in str(caught.value)
    assert "movie_id" in str(caught.value)


@pytest.mark.parametrize("column", ["user_id", "item_id"])
@pytest.mark.parametrize("values", [[1.0, 2.0, 3.0], ["1", "2", "3"]], ids=["float", "string"])
def test_non_integer_ids_are_rejected(column: str, values: list[object]) -> None:
    with pytest.raises(SourceError) as caught:
        validate_events(make_events(**{column: values}), source=SOURCE)

    assert caught.value.field == f"events.{column}"
    assert "expected integer ids" in str(caught.value)


@pytest.mark.parametrize(
    "values", [["1", "3", "5"], ["good", "bad", "ok"], [True, False, True]], ids=["digits", "words", "bool"]
)
def test_non_numeric_ratings_are_rejected(values: list[object]) -> None:
    with pytest.raises(SourceError) as caught:
        validate_events(make_events(rating=values), source=SOURCE)

    assert caught.value.field == "events.rating"
    assert "expected numeric ratings" in str(caught.value)


def test_float_ratings_are_accepted() -> None:
    validated = validate_events(make_events(rating=[1.0, 2.5, 5.0]), source=SOURCE)

    assert validated["rating"].tolist() == [1.0, 2.5, 5.0]


@pytest.mark.parametrize("bad_rating", [0, 6, -1, 5.5, 0.99])
def test_out_of_range_rating_is_rejected(bad_rating: float) -> None:
    with pytest.raises(SourceError) as caught:
        validate_events(make_events(rating=[3, bad_rating, 4]), source=SOURCE)

    message = str(caught.value)
    assert caught.value.field == "events.rating"
    assert "1 rating(s) outside [1, 5]" in message
    assert "user 2" in message
    assert "item 20" in message


def test_boundary_ratings_are_accepted() -> None:
    validated = validate_events(make_events(rating=[1, 5, 5]), source=SOURCE)

    assert len(validated) == 3


def test_null_rating_is_rejected() -> None:
    with pytest.raises(SourceError) as caught:
        validate_events(make_events(rating=[1.0, np.nan, 4.0]), source=SOURCE)

    assert caught.value.field == "events.rating"
    assert "1 null value(s)" in str(caught.value)


def test_null_nullable_id_is_rejected() -> None:
    events = make_events(user_id=pd.array([1, None, 3], dtype="Int64"))

    with pytest.raises(SourceError) as caught:
        validate_events(events, source=SOURCE)

    assert caught.value.field == "events.user_id"
    assert "null value(s)" in str(caught.value)


def test_null_datetime_is_rejected() -> None:
    events = make_events(timestamp=pd.to_datetime(["1997-10-01", None, "1997-10-02"]))

    with pytest.raises(SourceError) as caught:
        validate_events(events, source=SOURCE)

    assert caught.value.field == "events.timestamp"
    assert "null value(s)" in str(caught.value)


def test_float_timestamps_are_rejected() -> None:
    with pytest.raises(SourceError) as caught:
        validate_events(make_events(timestamp=[8.75e8, 8.76e8, 8.77e8]), source=SOURCE)

    assert caught.value.field == "events.timestamp"
    assert "Unix seconds" in str(caught.value)


def test_naive_datetimes_read_as_utc() -> None:
    events = make_events(
        timestamp=pd.to_datetime(["1997-10-01 00:00:00", "1997-10-01 01:00:00", "1997-10-02 00:00:01"])
    )

    validated = validate_events(events, source=SOURCE)

    assert validated["timestamp"].tolist() == [OCT_1_1997, OCT_1_1997 + 3600, OCT_1_1997 + 86401]
    assert validated["timestamp"].dtype == np.int64


def test_aware_datetimes_convert_to_utc() -> None:
    # 1997-10-01 01:00 in UTC+02:00 is 1997-09-30 23:00 UTC, so the UTC day differs from the local one.
    local = pd.to_datetime(["1997-10-01 01:00:00", "1997-10-01 03:00:00", "1997-10-02 02:00:00"]).tz_localize(
        "Etc/GMT-2"
    )
    validated = validate_events(make_events(timestamp=local), source=SOURCE)

    assert validated["timestamp"].tolist() == [OCT_1_1997 - 3600, OCT_1_1997 + 3600, OCT_1_1997 + 86400]
    assert validated["day"].tolist() == [dt.date(1997, 9, 30), dt.date(1997, 10, 1), dt.date(1997, 10, 2)]


def test_millisecond_datetimes_convert_to_seconds() -> None:
    stamps = pd.Series(
        pd.to_datetime(["1997-10-01 00:00:01.900", "1997-10-01 00:00:00.000", "1997-10-02 00:00:00.000"])
    ).astype("datetime64[ms]")

    validated = validate_events(make_events(timestamp=stamps), source=SOURCE)

    assert validated["timestamp"].tolist() == [OCT_1_1997 + 1, OCT_1_1997, OCT_1_1997 + 86400]


def test_exact_duplicates_are_dropped() -> None:
    events = make_events(
        user_id=[1, 1, 1, 2],
        item_id=[10, 10, 10, 10],
        rating=[4, 4, 4, 4],
        timestamp=[OCT_1_1997] * 4,
    )

    validated = validate_events(events, source=SOURCE)

    assert len(validated) == 2
    assert validated.attrs["duplicates_dropped"] == 2
    assert validated.index.tolist() == [0, 1]


def test_near_duplicates_are_kept() -> None:
    events = make_events(
        user_id=[1, 1, 1],
        item_id=[10, 10, 10],
        rating=[4, 5, 4],
        timestamp=[OCT_1_1997, OCT_1_1997, OCT_1_1997 + 1],
    )

    validated = validate_events(events, source=SOURCE)

    assert len(validated) == 3
    assert validated.attrs["duplicates_dropped"] == 0


def test_int_and_float_rating_duplicates_match() -> None:
    events = make_events(user_id=[1, 1, 2], item_id=[10, 10, 10], rating=[4.0, 4.0, 4.0], timestamp=[OCT_1_1997] * 3)

    validated = validate_events(events, source=SOURCE)

    assert validated.attrs["duplicates_dropped"] == 1


def test_empty_frame_is_valid() -> None:
    events = make_events().iloc[0:0]

    validated = validate_events(events, source=SOURCE)

    assert validated.empty
    assert "day" in validated.columns
    assert validated.attrs["duplicates_dropped"] == 0


def test_null_id_from_parquet_is_rejected() -> None:
    # Parquet integer columns with nulls reach pandas as float64, so the type check fires before the null check.
    events = make_events(user_id=[1.0, np.nan, 3.0])

    with pytest.raises(SourceError) as caught:
        validate_events(events, source=SOURCE)

    assert caught.value.field == "events.user_id"
