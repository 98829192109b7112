"""The daily retraining job, its schedule, and the sensor that re-materializes days whose events changed."""

import datetime as dt
import json

import dagster as dg

from resources.storage import TrainingStorage
from training_pipelines.data.source import EMPTY_FINGERPRINT, RatingsSource
from training_pipelines.defs.partitions import partition_day
from training_pipelines.defs.ranking import production_model, ranking_model, ranking_model_evaluation
from training_pipelines.defs.ratings import FINGERPRINT_KEY, RATINGS_FOLDER, ratings_daily, ratings_file

LATE_RATINGS_INTERVAL_S = 300

# The in-process executor runs every step of a run in one process, so the steps
# share one Ray cluster that the resource starts once and stops when the run ends.
daily_retrain_job = dg.define_asset_job(
    "daily_retrain_job",
    selection=dg.AssetSelection.assets(ratings_daily, ranking_model, ranking_model_evaluation, production_model),
    executor_def=dg.in_process_executor,
    description="Validate a day's ratings, retrain the ranking model on Ray, evaluate it and promote it "
    "if it is better.",
)


def build_daily_retrain_schedule(hour_utc: int) -> dg.ScheduleDefinition:
    """Build the schedule that runs ``daily_retrain_job`` every day at ``hour_utc`` for the day before."""
    if not 0 <= hour_utc <= 23:
        raise ValueError(f"retrain hour {hour_utc} is not an hour of the day; use 0..23 (UTC)")
    return dg.build_schedule_from_partitioned_job(
        daily_retrain_job, name="daily_retrain_schedule", hour_of_day=hour_utc, minute_of_hour=0
    )


def changed_days(
    *, source: dict[str, str], stored: dict[str, str], requested: dict[str, str]
) -> tuple[list[str], list[str]]:
    """Compare source and stored fingerprints of materialized days.

    ``stored`` maps each materialized day to the fingerprint of what was stored;
    ``requested`` maps days to the source fingerprint already requested. Returns the
    days to re-materialize and the changed days skipped because that exact change was
    already requested.
    """
    to_request: list[str] = []
    already: list[str] = []
    for day, stored_fingerprint in sorted(stored.items()):
        current = source.get(day, EMPTY_FINGERPRINT)
        if current == stored_fingerprint:
            continue
        if requested.get(day) == current:
            already.append(day)
        else:
            to_request.append(day)
    return to_request, already


def contiguous_ranges(days: list[str]) -> list[tuple[str, str]]:
    """Group sorted ISO days into (first, last) runs of consecutive days."""
    ranges: list[tuple[str, str]] = []
    for key in days:
        day = partition_day(key)
        if ranges and partition_day(ranges[-1][1]) + dt.timedelta(days=1) == day:
            ranges[-1] = (ranges[-1][0], key)
        else:
            ranges.append((key, key))
    return ranges


CHANGED_DAYS_TAG = "late_ratings_sensor/changed_days"
RECENT_RUNS_CHECKED = 200


def _days_whose_latest_run_failed(instance: dg.DagsterInstance, days: list[str]) -> dict[str, str]:
    """Map each of ``days`` whose most recent late-ratings run failed or was cancelled to that run's id."""
    if not days:
        return {}
    latest: dict[str, dg.DagsterRun] = {}
    runs = instance.get_runs(
        filters=dg.RunsFilter(tags={"dagster/sensor_name": "late_ratings_sensor"}), limit=RECENT_RUNS_CHECKED
    )
    for run in runs:  # newest first
        for day in run.tags.get(CHANGED_DAYS_TAG, "").split(","):
            latest.setdefault(day, run)
    ended_badly = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
    return {day: latest[day].run_id for day in days if day in latest and latest[day].status in ended_badly}


@dg.sensor(
    asset_selection=dg.AssetSelection.assets(ratings_daily),
    minimum_interval_seconds=LATE_RATINGS_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Re-materializes ratings_daily for days whose events arrived late or changed after materialization.",
)
def late_ratings_sensor(
    context: dg.SensorEvaluationContext, ratings_source: RatingsSource, storage: TrainingStorage
) -> dg.SensorResult | dg.SkipReason:
    """Request a backfill of exactly the materialized days whose source fingerprint changed.

    The cursor maps each requested day to the source fingerprint it was requested
    for, so one change is requested once even while its run is still going.
    """
    materialized = context.instance.get_materialized_partitions(ratings_daily.key)
    stored: dict[str, str] = {}
    for day in materialized:
        try:
            stored[day] = storage.read_parquet_file_metadata(RATINGS_FOLDER, ratings_file(day)).get(FINGERPRINT_KEY, "")
        except FileNotFoundError:
            stored[day] = ""
    if not stored:
        return dg.SkipReason("No ratings_daily partition is materialized yet, so no day can have late events")

    requested: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    source = ratings_source.day_fingerprints()
    to_request, already = changed_days(source=source, stored=stored, requested=requested)

    # A change whose latest run failed or was cancelled is requested again, under a new run key.
    retried = _days_whose_latest_run_failed(context.instance, already)
    if retried:
        context.log.warning(f"Requesting again the changed days whose run failed: {', '.join(sorted(retried))}")
        to_request = sorted({*to_request, *retried})
        already = [day for day in already if day not in retried]
    if not to_request:
        if already:
            return dg.SkipReason(f"Changes on {', '.join(already)} were already requested; waiting for those runs")
        return dg.SkipReason(f"No change in the {len(stored)} materialized day(s)")

    for day in to_request:
        requested[day] = source.get(day, EMPTY_FINGERPRINT)
    run_requests = []
    for first, last in contiguous_ranges(to_request):
        run_key = f"late-ratings-{first}-{last}-" + "-".join(
            requested[day][:8] for day in to_request if first <= day <= last
        )
        failed_run_ids = sorted(retried[day] for day in retried if first <= day <= last)
        if failed_run_ids:
            run_key += "-after-" + "-".join(run_id[:8] for run_id in failed_run_ids)
        run_requests.append(
            dg.RunRequest(
                run_key=run_key[:200],
                asset_selection=[ratings_daily.key],
                tags={
                    "dagster/asset_partition_range_start": first,
                    "dagster/asset_partition_range_end": last,
                    CHANGED_DAYS_TAG: ",".join(d for d in to_request if first <= d <= last)[:1000],
                },
            )
        )
    context.log.info(f"Requesting ratings_daily for changed days {', '.join(to_request)}")
    return dg.SensorResult(run_requests=run_requests, cursor=json.dumps(requested, sort_keys=True))
