"""The ``ratings_daily`` asset: each UTC day's validated events, stored as Parquet."""

import dagster as dg

from resources.storage import TrainingStorage
from training_pipelines.data.source import RatingsSource, fingerprint_events
from training_pipelines.data.validation import SourceError
from training_pipelines.defs.partitions import (
    FIRST_DAY,
    LAST_DAY,
    asset_with_backfill_policy,
    daily_partitions,
    days_between,
    partition_day,
)

RATINGS_FOLDER = "ratings_daily"
FINGERPRINT_KEY = "ratings_fingerprint"


def ratings_file(day_key: str) -> str:
    return f"{day_key}.parquet"


@asset_with_backfill_policy(
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="ratings",
    kinds={"parquet"},
)
def ratings_daily(
    context: dg.AssetExecutionContext, ratings_source: RatingsSource, storage: TrainingStorage
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """Each UTC day's events, validated for schema, types, rating range and duplicates.

    A run over a range of partitions (a backfill) reads the source once and writes one
    Parquet file per day. An empty day is stored as an empty file with a warning.
    """
    first = partition_day(context.partition_key_range.start)
    last = partition_day(context.partition_key_range.end)
    if first > last:
        raise SourceError(
            "partition",
            f"the range {first}...{last} ends before it starts",
            f"Give the earlier day first: {last}...{first}",
        )
    if first < FIRST_DAY or last > LAST_DAY:
        raise SourceError(
            "partition",
            f"{first}..{last} is outside the data's range {FIRST_DAY}..{LAST_DAY}",
            "Pick a partition inside the range",
        )

    events = ratings_source.read_events(start=first, end=last)
    duplicates = int(events.attrs.get("duplicates_dropped", 0))
    if duplicates:
        context.log.warning(f"Dropped {duplicates} duplicate event(s) in {first}..{last}")

    by_day = {day: rows for day, rows in events.groupby("day", sort=True)}
    empty_days = []
    for day in days_between(first, last):
        day_events = by_day.get(day, events.iloc[0:0]).drop(columns=["day"])
        storage.write_parquet(
            day_events,
            RATINGS_FOLDER,
            ratings_file(day.isoformat()),
            file_metadata={FINGERPRINT_KEY: fingerprint_events(day_events)},
        )
        if day_events.empty:
            empty_days.append(day.isoformat())
            context.log.warning(f"No events on {day}: stored an empty partition")

    context.log.info(f"Stored {len(events)} events of {first}..{last} under {storage.uri(RATINGS_FOLDER)}")
    return dg.MaterializeResult(
        metadata={
            "rows": dg.MetadataValue.int(len(events)),
            "users": dg.MetadataValue.int(int(events["user_id"].nunique())),
            "items": dg.MetadataValue.int(int(events["item_id"].nunique())),
            "positive_share": dg.MetadataValue.float(float((events["rating"] >= 4).mean()) if len(events) else 0.0),
            "duplicates_dropped": dg.MetadataValue.int(duplicates),
            "empty_days": dg.MetadataValue.int(len(empty_days)),
            "empty_day_keys": dg.MetadataValue.text(", ".join(empty_days) or "none"),
            "path": dg.MetadataValue.path(storage.uri(RATINGS_FOLDER)),
        }
    )
