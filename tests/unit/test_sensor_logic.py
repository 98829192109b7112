"""Unit tests of the late-ratings sensor's helpers and of the sensor on an ephemeral Dagster instance."""

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from resources.storage import TrainingStorage
from training_pipelines.data.source import EMPTY_FINGERPRINT, RatingsSource, day_bounds
from training_pipelines.defs.automation import (
    CHANGED_DAYS_TAG,
    changed_days,
    contiguous_ranges,
    late_ratings_sensor,
)
from training_pipelines.defs.ratings import FINGERPRINT_KEY, RATINGS_FOLDER, ratings_daily, ratings_file

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
DAYS = ["1997-10-01", "1997-10-02", "1997-10-03"]


def at(day: str, hour: int = 12) -> int:
    return day_bounds(dt.date.fromisoformat(day))[0] + hour * 3600


def make_events(extra: list[tuple[int, int, int, int]] | None = None) -> pd.DataFrame:
    rows = [
        (1, 10, 4, at("1997-10-01")),
        (2, 20, 2, at("1997-10-01", 18)),
        (1, 30, 5, at("1997-10-02")),
        (3, 10, 3, at("1997-10-03")),
        (4, 20, 1, at("1997-10-04")),
    ]
    rows.extend(extra or [])
    return pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "timestamp"])


def write_events(events: pd.DataFrame, path: Path) -> None:
    pq.write_table(pa.Table.from_pandas(events, preserve_index=False), path)


def test_changed_days_ignores_unchanged() -> None:
    assert changed_days(source={"d1": "a"}, stored={"d1": "a"}, requested={}) == ([], [])


def test_changed_days_requests_change() -> None:
    to_request, already = changed_days(source={"d1": "a", "d2": "new"}, stored={"d1": "a", "d2": "old"}, requested={})

    assert to_request == ["d2"]
    assert already == []


def test_changed_days_skips_requested_change() -> None:
    to_request, already = changed_days(source={"d1": "new"}, stored={"d1": "old"}, requested={"d1": "new"})

    assert to_request == []
    assert already == ["d1"]


def test_changed_days_requests_newer_change() -> None:
    to_request, already = changed_days(source={"d1": "newer"}, stored={"d1": "old"}, requested={"d1": "new"})

    assert to_request == ["d1"]
    assert already == []


def test_changed_days_treats_vanished_day_as_empty() -> None:
    to_request, _ = changed_days(source={}, stored={"d1": "old", "d2": EMPTY_FINGERPRINT}, requested={})

    assert to_request == ["d1"]


def test_changed_days_ignores_unmaterialized_days() -> None:
    to_request, already = changed_days(source={"d1": "a", "d9": "b"}, stored={"d1": "a"}, requested={})

    assert to_request == []
    assert already == []


def test_changed_days_returns_sorted_days() -> None:
    stored = {"1997-10-03": "x", "1997-10-01": "x", "1997-10-02": "x"}

    to_request, _ = changed_days(source={}, stored=stored, requested={})

    assert to_request == ["1997-10-01", "1997-10-02", "1997-10-03"]


def test_changed_days_requests_missing_stored_fingerprint() -> None:
    to_request, _ = changed_days(source={"d1": "a"}, stored={"d1": ""}, requested={})

    assert to_request == ["d1"]


def test_contiguous_ranges_groups_runs() -> None:
    days = ["1997-10-01", "1997-10-02", "1997-10-03", "1997-10-05", "1997-10-07", "1997-10-08"]

    assert contiguous_ranges(days) == [
        ("1997-10-01", "1997-10-03"),
        ("1997-10-05", "1997-10-05"),
        ("1997-10-07", "1997-10-08"),
    ]


def test_contiguous_ranges_crosses_month_end() -> None:
    assert contiguous_ranges(["1997-10-31", "1997-11-01"]) == [("1997-10-31", "1997-11-01")]


def test_contiguous_ranges_of_nothing() -> None:
    assert contiguous_ranges([]) == []


def test_contiguous_ranges_single_day() -> None:
    assert contiguous_ranges(["1998-01-01"]) == [("1998-01-01", "1998-01-01")]


class SensorHarness:
    """An ephemeral instance with ratings_daily materialized for ``DAYS`` from a Parquet source in tmp_path."""

    def __init__(self, tmp_path: Path) -> None:
        self.events_path = tmp_path / "events.parquet"
        write_events(make_events(), self.events_path)
        self.source = RatingsSource(
            events_uri=str(self.events_path),
            users_uri=str(tmp_path / "users.parquet"),
            items_uri=str(tmp_path / "items.parquet"),
            column_renames={"movie_id": "item_id"},
        )
        self.storage = TrainingStorage(root=str(tmp_path / "storage"))
        self.instance = dg.DagsterInstance.ephemeral()

    def resources(self) -> dict[str, object]:
        return {"ratings_source": self.source, "storage": self.storage}

    def materialize(self, day: str) -> None:
        result = dg.materialize([ratings_daily], instance=self.instance, resources=self.resources(), partition_key=day)
        assert result.success

    def evaluate(self, cursor: str | None = None) -> dg.SensorResult | dg.SkipReason:
        context = dg.build_sensor_context(instance=self.instance, cursor=cursor, resources=self.resources())
        return late_ratings_sensor(context)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[SensorHarness]:
    built = SensorHarness(tmp_path)
    try:
        yield built
    finally:
        built.instance.dispose()


@pytest.fixture
def materialized(harness: SensorHarness) -> SensorHarness:
    for day in DAYS:
        harness.materialize(day)
    return harness


def test_sensor_skips_without_materializations(harness: SensorHarness) -> None:
    result = harness.evaluate()

    assert isinstance(result, dg.SkipReason)
    assert "No ratings_daily partition is materialized" in (result.skip_message or "")


def test_materialize_stores_fingerprint(materialized: SensorHarness) -> None:
    metadata = materialized.storage.read_parquet_file_metadata(RATINGS_FOLDER, ratings_file("1997-10-02"))

    assert metadata[FINGERPRINT_KEY] == materialized.source.day_fingerprints()["1997-10-02"]


def test_sensor_skips_unchanged_source(materialized: SensorHarness) -> None:
    result = materialized.evaluate()

    assert isinstance(result, dg.SkipReason)
    assert "No change in the 3 materialized day(s)" in (result.skip_message or "")


def test_sensor_requests_changed_day(materialized: SensorHarness) -> None:
    write_events(make_events(extra=[(5, 30, 4, at("1997-10-02", 20))]), materialized.events_path)

    result = materialized.evaluate()

    assert isinstance(result, dg.SensorResult)
    assert len(result.run_requests or []) == 1
    request = (result.run_requests or [])[0]
    assert request.tags[RANGE_START_TAG] == "1997-10-02"
    assert request.tags[RANGE_END_TAG] == "1997-10-02"
    assert request.asset_selection == [ratings_daily.key]
    assert json.loads(result.cursor or "{}") == {"1997-10-02": materialized.source.day_fingerprints()["1997-10-02"]}


def test_sensor_ignores_unmaterialized_day_change(materialized: SensorHarness) -> None:
    write_events(make_events(extra=[(5, 30, 4, at("1997-10-04", 20))]), materialized.events_path)

    result = materialized.evaluate()

    assert isinstance(result, dg.SkipReason)


def test_sensor_skips_already_requested_change(materialized: SensorHarness) -> None:
    write_events(make_events(extra=[(5, 30, 4, at("1997-10-02", 20))]), materialized.events_path)
    first = materialized.evaluate()
    assert isinstance(first, dg.SensorResult)

    second = materialized.evaluate(cursor=first.cursor)

    assert isinstance(second, dg.SkipReason)
    assert "1997-10-02" in (second.skip_message or "")
    assert "already requested" in (second.skip_message or "")


def test_sensor_requests_second_change(materialized: SensorHarness) -> None:
    write_events(make_events(extra=[(5, 30, 4, at("1997-10-02", 20))]), materialized.events_path)
    first = materialized.evaluate()
    assert isinstance(first, dg.SensorResult)
    write_events(make_events(extra=[(5, 30, 2, at("1997-10-02", 20))]), materialized.events_path)

    second = materialized.evaluate(cursor=first.cursor)

    assert isinstance(second, dg.SensorResult)
    assert (second.run_requests or [])[0].tags[RANGE_START_TAG] == "1997-10-02"
    assert (second.run_requests or [])[0].run_key != (first.run_requests or [])[0].run_key


def test_sensor_skips_after_rematerialization(materialized: SensorHarness) -> None:
    write_events(make_events(extra=[(5, 30, 4, at("1997-10-02", 20))]), materialized.events_path)
    first = materialized.evaluate()
    assert isinstance(first, dg.SensorResult)
    materialized.materialize("1997-10-02")

    second = materialized.evaluate(cursor=first.cursor)

    assert isinstance(second, dg.SkipReason)
    assert "No change" in (second.skip_message or "")


def test_sensor_groups_adjacent_days(materialized: SensorHarness) -> None:
    extra = [(5, 30, 4, at("1997-10-01", 20)), (5, 20, 4, at("1997-10-02", 20))]
    write_events(make_events(extra=extra), materialized.events_path)

    result = materialized.evaluate()

    assert isinstance(result, dg.SensorResult)
    assert len(result.run_requests or []) == 1
    request = (result.run_requests or [])[0]
    assert request.tags[RANGE_START_TAG] == "1997-10-01"
    assert request.tags[RANGE_END_TAG] == "1997-10-02"


def test_sensor_splits_separate_days(materialized: SensorHarness) -> None:
    extra = [(5, 30, 4, at("1997-10-01", 20)), (5, 20, 4, at("1997-10-03", 20))]
    write_events(make_events(extra=extra), materialized.events_path)

    result = materialized.evaluate()

    assert isinstance(result, dg.SensorResult)
    ranges = [(r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]) for r in result.run_requests or []]
    assert ranges == [("1997-10-01", "1997-10-01"), ("1997-10-03", "1997-10-03")]


def test_sensor_requests_day_with_removed_events(materialized: SensorHarness) -> None:
    events = make_events()
    write_events(events[events["timestamp"] != at("1997-10-03")], materialized.events_path)

    result = materialized.evaluate()

    assert isinstance(result, dg.SensorResult)
    assert (result.run_requests or [])[0].tags[RANGE_START_TAG] == "1997-10-03"
    assert json.loads(result.cursor or "{}") == {"1997-10-03": EMPTY_FINGERPRINT}


def test_sensor_requests_day_with_missing_file(materialized: SensorHarness) -> None:
    Path(materialized.storage.uri(RATINGS_FOLDER, ratings_file("1997-10-01"))).unlink()

    result = materialized.evaluate()

    assert isinstance(result, dg.SensorResult)
    assert (result.run_requests or [])[0].tags[RANGE_START_TAG] == "1997-10-01"


def _record_sensor_run(instance: dg.DagsterInstance, *, days: str, status: dg.DagsterRunStatus) -> str:
    run = dg.DagsterRun(
        job_name="__ASSET_JOB",
        run_id=str(uuid.uuid4()),
        status=status,
        tags={"dagster/sensor_name": "late_ratings_sensor", CHANGED_DAYS_TAG: days},
    )
    instance.add_run(run)
    return run.run_id


def test_sensor_retries_change_after_failed_run(materialized: SensorHarness) -> None:
    write_events(make_events(extra=[(5, 30, 4, at("1997-10-02", 20))]), materialized.events_path)
    first = materialized.evaluate()
    assert isinstance(first, dg.SensorResult)
    failed_run_id = _record_sensor_run(materialized.instance, days="1997-10-02", status=dg.DagsterRunStatus.FAILURE)

    second = materialized.evaluate(cursor=first.cursor)

    assert isinstance(second, dg.SensorResult)
    requests = second.run_requests or []
    assert len(requests) == 1
    assert requests[0].tags[RANGE_START_TAG] == "1997-10-02"
    assert failed_run_id[:8] in (requests[0].run_key or "")
    assert requests[0].run_key != (first.run_requests or [])[0].run_key


def test_sensor_waits_while_retry_runs(materialized: SensorHarness) -> None:
    write_events(make_events(extra=[(5, 30, 4, at("1997-10-02", 20))]), materialized.events_path)
    first = materialized.evaluate()
    assert isinstance(first, dg.SensorResult)
    _record_sensor_run(materialized.instance, days="1997-10-02", status=dg.DagsterRunStatus.FAILURE)
    _record_sensor_run(materialized.instance, days="1997-10-02", status=dg.DagsterRunStatus.STARTED)

    second = materialized.evaluate(cursor=first.cursor)

    assert isinstance(second, dg.SkipReason)
    assert "already requested" in (second.skip_message or "")
