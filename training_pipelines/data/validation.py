"""Validation of the ratings source: the events' schema, types, ranges and duplicates, and the feature tables' ids."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from resources.errors import InvalidRequestError

EVENT_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
MIN_RATING = 1
MAX_RATING = 5
# Unix seconds of the first and last second that a Python date, and so the ``day`` column,
# can hold. A timestamp outside is not in seconds: most often it is in milliseconds.
MIN_TIMESTAMP_S = int(dt.datetime(1, 1, 1, tzinfo=dt.UTC).timestamp())
MAX_TIMESTAMP_S = int(dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC).timestamp())


class SourceError(InvalidRequestError):
    """The ratings source is missing, unreadable or invalid."""


def validate_events(events: pd.DataFrame, *, source: str) -> pd.DataFrame:
    """Check and normalise an events frame; return it with int64 columns, a ``day`` column and no duplicates.

    Exact duplicate events (same user, item, rating and timestamp) are dropped; the
    returned frame's ``attrs["duplicates_dropped"]`` contains how many.

    Raises:
        SourceError: a column is missing, has the wrong type or holds values out of range.
    """
    missing = [column for column in EVENT_COLUMNS if column not in events.columns]
    if missing:
        raise SourceError(
            "events_uri",
            f"{source} lacks the column(s) {', '.join(missing)} (it has {', '.join(map(str, events.columns))})",
            "Add them, or map the source's names with column_renames, such as {'movie_id': 'item_id'}",
        )

    frame = events[list(EVENT_COLUMNS)].copy()
    for column in ("user_id", "item_id"):
        if not pd.api.types.is_integer_dtype(frame[column]):
            raise SourceError(
                f"events.{column}",
                f"expected integer ids in {source}, got {frame[column].dtype}",
                "Store ids as integers",
            )
    if not pd.api.types.is_numeric_dtype(frame["rating"]) or pd.api.types.is_bool_dtype(frame["rating"]):
        raise SourceError(
            "events.rating",
            f"expected numeric ratings in {source}, got {frame['rating'].dtype}",
            "Store ratings as numbers",
        )
    if pd.api.types.is_datetime64_any_dtype(frame["timestamp"]):
        timestamps = frame["timestamp"]
        if timestamps.dt.tz is None:
            timestamps = timestamps.dt.tz_localize("UTC")
        frame["timestamp"] = (timestamps.dt.tz_convert("UTC") - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    elif not pd.api.types.is_integer_dtype(frame["timestamp"]):
        raise SourceError(
            "events.timestamp",
            f"expected Unix seconds or datetimes in {source}, got {frame['timestamp'].dtype}",
            "Store timestamps as integer seconds since 1970-01-01 UTC or as a timestamp type",
        )

    nulls = frame.isna().sum()
    if nulls.any():
        column = str(nulls[nulls > 0].index[0])
        raise SourceError(
            f"events.{column}", f"{int(nulls[column])} null value(s) in {source}", "Drop or fill the incomplete events"
        )

    out_of_range = frame[(frame["rating"] < MIN_RATING) | (frame["rating"] > MAX_RATING)]
    if not out_of_range.empty:
        example = out_of_range.iloc[0]
        raise SourceError(
            "events.rating",
            f"{len(out_of_range)} rating(s) outside [{MIN_RATING}, {MAX_RATING}] in {source}, "
            f"such as {example['rating']} for user {example['user_id']} and item {example['item_id']}",
            f"Ratings must lie between {MIN_RATING} and {MAX_RATING}",
        )

    frame = frame.astype({"user_id": "int64", "item_id": "int64", "timestamp": "int64", "rating": "float64"})
    outside = frame["timestamp"][(frame["timestamp"] < MIN_TIMESTAMP_S) | (frame["timestamp"] > MAX_TIMESTAMP_S)]
    if not outside.empty:
        raise timestamp_error(int(outside.iloc[0]), count=len(outside), source=source)
    before = len(frame)
    frame = frame.drop_duplicates(ignore_index=True)
    frame["day"] = pd.to_datetime(frame["timestamp"], unit="s", utc=True).dt.date
    frame.attrs["duplicates_dropped"] = before - len(frame)
    return frame


def timestamp_error(example: int, *, count: int | None, source: str) -> SourceError:
    """Build the error for timestamps outside ``MIN_TIMESTAMP_S`` to ``MAX_TIMESTAMP_S``, ``count`` of them if known."""
    counted = "timestamp(s)" if count is None else f"{count} timestamp(s)"
    return SourceError(
        "events.timestamp",
        f"{counted} in {source}, such as {example}, are not Unix seconds of the years 1 to 9999",
        "Store seconds since 1970-01-01 UTC (divide milliseconds by 1000) or a timestamp type",
    )


def validate_ids(table: pd.DataFrame, *, name: str, key: str, source: str) -> pd.DataFrame:
    """Check that the feature table ``name`` has integer ids without nulls in column ``key``; return it unchanged.

    String ids never match the events' integer ids, so every user or item would silently
    get the features of an unknown one. Other types are rejected as they are in the events.

    Raises:
        SourceError: the column is missing, has the wrong type or contains nulls.
    """
    if key not in table.columns:
        raise SourceError(
            f"{name}_uri",
            f"{source} lacks the column {key} (it has {', '.join(map(str, table.columns))})",
            f"Add it, or map the source's name for it to {key} with column_renames",
        )
    if not pd.api.types.is_integer_dtype(table[key]):
        raise SourceError(
            f"{name}.{key}",
            f"expected integer ids in {source}, got {table[key].dtype}",
            "Store ids as integers, the same ids as in the events table",
        )
    nulls = int(table[key].isna().sum())
    if nulls:
        raise SourceError(f"{name}.{key}", f"{nulls} null value(s) in {source}", f"Drop the rows without a {key}")
    return table
