"""Unit tests of RatingsSource and fingerprint_events on small Parquet files in a temporary folder."""

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training_pipelines.data.source import EMPTY_FINGERPRINT, RatingsSource, day_bounds, fingerprint_events
from training_pipelines.data.validation import SourceError

OCT_1 = dt.date(1997, 10, 1)
OCT_2 = dt.date(1997, 10, 2)
OCT_3 = dt.date(1997, 10, 3)


def at(day: dt.date, hour: int = 12) -> int:
    return day_bounds(day)[0] + hour * 3600


def make_events() -> pd.DataFrame:
    """Return events in MovieLens naming: two on 1997-10-01, one on each of the next two days."""
    return pd.DataFrame(
        {
            "user_id": [1, 2, 1, 3],
            "movie_id": [10, 20, 30, 10],
            "rating": [4, 2, 5, 3],
            "timestamp": [at(OCT_1, 0), at(OCT_1, 23), at(OCT_2), at(OCT_3)],
        }
    )


def write_table(frame: pd.DataFrame, path: Path) -> str:
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return str(path)


def make_source(tmp_path: Path, events: pd.DataFrame | None = None, **overrides: object) -> RatingsSource:
    fields: dict[str, object] = {
        "events_uri": write_table(make_events() if events is None else events, tmp_path / "events.parquet"),
        "users_uri": write_table(pd.DataFrame({"user_id": [1, 2, 3], "age": [20, 30, 40]}), tmp_path / "users.parquet"),
        "items_uri": write_table(
            pd.DataFrame({"movie_id": [10, 20, 30], "drama": [1, 0, 1]}), tmp_path / "items.parquet"
        ),
        "column_renames": {"movie_id": "item_id"},
    }
    fields.update(overrides)
    return RatingsSource(**fields)  # type: ignore[arg-type]


def test_read_events_renames_columns(tmp_path: Path) -> None:
    events = make_source(tmp_path).read_events()

    assert list(events.columns) == ["user_id", "item_id", "rating", "timestamp", "day"]
    assert events["item_id"].tolist() == [10, 20, 30, 10]


def test_read_items_renames_columns(tmp_path: Path) -> None:
    items = make_source(tmp_path).read_items()

    assert list(items.columns) == ["item_id", "drama"]


def test_read_users_returns_table(tmp_path: Path) -> None:
    users = make_source(tmp_path).read_users()

    assert users["age"].tolist() == [20, 30, 40]


def test_missing_events_file_names_field(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere" / "events.parquet")
    source = make_source(tmp_path, events_uri=missing)

    with pytest.raises(SourceError) as caught:
        source.read_events()

    assert caught.value.field == "events_uri"
    assert missing in str(caught.value)
    assert "does not exist" in str(caught.value)


def test_missing_users_file_names_field(tmp_path: Path) -> None:
    source = make_source(tmp_path, users_uri=str(tmp_path / "no-users.parquet"))

    with pytest.raises(SourceError) as caught:
        source.read_users()

    assert caught.value.field == "users_uri"
    assert "Point users_uri" in str(caught.value)


def test_truncated_events_file_is_rejected(tmp_path: Path) -> None:
    source = make_source(tmp_path)
    path = Path(source.events_uri)
    path.write_bytes(path.read_bytes()[:-20])

    with pytest.raises(SourceError) as caught:
        source.read_events()

    assert caught.value.field == "events_uri"
    assert "not a readable Parquet table" in str(caught.value)


def test_non_parquet_items_file_is_rejected(tmp_path: Path) -> None:
    text_file = tmp_path / "items.csv"
    text_file.write_text("item_id,drama\n10,1\n")
    source = make_source(tmp_path, items_uri=str(text_file))

    with pytest.raises(SourceError) as caught:
        source.read_items()

    assert caught.value.field == "items_uri"


def test_invalid_events_raise_source_error(tmp_path: Path) -> None:
    events = make_events().assign(rating=[4, 2, 9, 3])

    with pytest.raises(SourceError) as caught:
        make_source(tmp_path, events).read_events()

    assert caught.value.field == "events.rating"
    assert str(tmp_path / "events.parquet") in str(caught.value)


def test_read_events_filters_days(tmp_path: Path) -> None:
    events = make_source(tmp_path).read_events(start=OCT_2, end=OCT_2)

    assert events["day"].tolist() == [OCT_2]
    assert events.index.tolist() == [0]


def test_read_events_range_is_inclusive(tmp_path: Path) -> None:
    events = make_source(tmp_path).read_events(start=OCT_1, end=OCT_2)

    assert events["day"].tolist() == [OCT_1, OCT_1, OCT_2]


def test_read_events_open_start(tmp_path: Path) -> None:
    events = make_source(tmp_path).read_events(end=OCT_1)

    assert events["day"].tolist() == [OCT_1, OCT_1]


def test_read_events_open_end(tmp_path: Path) -> None:
    events = make_source(tmp_path).read_events(start=OCT_3)

    assert events["day"].tolist() == [OCT_3]


def test_read_events_empty_range(tmp_path: Path) -> None:
    events = make_source(tmp_path).read_events(start=dt.date(1997, 11, 1), end=dt.date(1997, 11, 5))

    assert events.empty
    assert "day" in events.columns


def test_datetime_timestamps_filter_days(tmp_path: Path) -> None:
    events = make_events()
    events["timestamp"] = pd.to_datetime(events["timestamp"], unit="s", utc=True)

    read = make_source(tmp_path, events).read_events(start=OCT_2, end=OCT_3)

    assert read["day"].tolist() == [OCT_2, OCT_3]
    assert read["timestamp"].tolist() == [at(OCT_2), at(OCT_3)]


def test_renamed_timestamp_column_filters_days(tmp_path: Path) -> None:
    events = make_events().rename(columns={"timestamp": "unix_time"})
    source = make_source(tmp_path, events, column_renames={"movie_id": "item_id", "unix_time": "timestamp"})

    read = source.read_events(start=OCT_1, end=OCT_1)

    assert read["day"].tolist() == [OCT_1, OCT_1]


def test_read_events_counts_duplicates(tmp_path: Path) -> None:
    events = pd.concat([make_events(), make_events().iloc[[2]]], ignore_index=True)

    read = make_source(tmp_path, events).read_events(start=OCT_2, end=OCT_2)

    assert len(read) == 1
    assert read.attrs["duplicates_dropped"] == 1


def test_fingerprint_ignores_row_order(tmp_path: Path) -> None:
    events = make_source(tmp_path).read_events()
    shuffled = events.iloc[[3, 1, 0, 2]].reset_index(drop=True)

    assert fingerprint_events(shuffled) == fingerprint_events(events)


def test_fingerprint_ignores_extra_columns(tmp_path: Path) -> None:
    events = make_source(tmp_path).read_events()

    assert fingerprint_events(events.drop(columns=["day"])) == fingerprint_events(events)


@pytest.mark.parametrize(
    ("column", "value"), [("rating", 1.0), ("user_id", 99), ("item_id", 99), ("timestamp", at(OCT_1, 1))]
)
def test_fingerprint_changes_with_event(tmp_path: Path, column: str, value: object) -> None:
    events = make_source(tmp_path).read_events()
    changed = events.copy()
    changed.loc[0, column] = value

    assert fingerprint_events(changed) != fingerprint_events(events)


def test_fingerprint_changes_with_added_event(tmp_path: Path) -> None:
    events = make_source(tmp_path).read_events()
    extra = pd.DataFrame({"user_id": [5], "item_id": [10], "rating": [3.0], "timestamp": [at(OCT_1, 5)]})

    assert fingerprint_events(pd.concat([events, extra], ignore_index=True)) != fingerprint_events(events)


def test_fingerprint_changes_with_removed_event(tmp_path: Path) -> None:
    events = make_source(tmp_path).read_events()

    assert fingerprint_events(events.iloc[1:]) != fingerprint_events(events)


def test_fingerprint_ignores_integer_rating_type(tmp_path: Path) -> None:
    events = make_source(tmp_path).read_events()

    assert fingerprint_events(events.astype({"rating": "int64"})) == fingerprint_events(events)


def test_fingerprint_of_empty_frame() -> None:
    empty = pd.DataFrame({"user_id": [], "item_id": [], "rating": [], "timestamp": []})

    assert fingerprint_events(empty) == EMPTY_FINGERPRINT


def test_day_fingerprints_keys_are_days(tmp_path: Path) -> None:
    source = make_source(tmp_path)

    fingerprints = source.day_fingerprints()

    assert list(fingerprints) == ["1997-10-01", "1997-10-02", "1997-10-03"]


def test_day_fingerprints_match_day_events(tmp_path: Path) -> None:
    source = make_source(tmp_path)

    fingerprints = source.day_fingerprints()

    assert fingerprints["1997-10-02"] == fingerprint_events(source.read_events(start=OCT_2, end=OCT_2))
    assert len(set(fingerprints.values())) == 3


def test_day_fingerprints_of_empty_source(tmp_path: Path) -> None:
    source = make_source(tmp_path, make_events().iloc[0:0])

    assert source.day_fingerprints() == {}


def test_day_bounds_span_utc_day() -> None:
    start, end = day_bounds(OCT_1)

    assert start == 875664000
    assert end - start == 86400
