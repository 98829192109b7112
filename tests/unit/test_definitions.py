"""The code location loads and its schedule targets the right partition."""

import datetime as dt
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from training_pipelines.definitions import defs
from training_pipelines.defs.automation import build_daily_retrain_schedule, daily_retrain_job

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(defs)


def test_definitions_name_every_part() -> None:
    asset_keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}

    assert asset_keys == {"ratings_daily", "ranking_model", "ranking_model_evaluation", "production_model"}
    assert defs.resolve_job_def("daily_retrain_job") is not None
    assert defs.resolve_schedule_def("daily_retrain_schedule") is not None
    assert defs.resolve_sensor_def("late_ratings_sensor") is not None


@pytest.mark.filterwarnings("ignore:Asset job daily_retrain_job materializes assets with varying")
def test_schedule_runs_previous_day() -> None:
    # The job takes its partitions from its assets, so the schedule is resolved within Definitions.
    schedule = dg.Definitions(
        assets=defs.assets,
        jobs=[daily_retrain_job],
        schedules=[build_daily_retrain_schedule(hour_utc=5)],
        resources=defs.resources,
    ).resolve_schedule_def("daily_retrain_schedule")
    with dg.build_schedule_context(scheduled_execution_time=dt.datetime(1998, 3, 16, 5, tzinfo=dt.UTC)) as context:
        requests = list(schedule.evaluate_tick(context).run_requests or [])

    assert schedule.cron_schedule == "0 5 * * *"
    assert len(requests) == 1
    assert requests[0].partition_key == "1998-03-15"


def test_schedule_rejects_invalid_hour() -> None:
    with pytest.raises(ValueError, match="0..23"):
        build_daily_retrain_schedule(hour_utc=24)


def test_code_location_loads_without_warnings() -> None:
    # A new interpreter, because Dagster warns only when it first loads the code location.
    script = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from training_pipelines.definitions import defs\n"
        "    job = defs.resolve_job_def('daily_retrain_job')\n"
        "print(job.backfill_policy.max_partitions_per_run)\n"
        "for warning in caught:\n"
        "    print(warning.category.__name__, str(warning.message).splitlines()[0])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True, cwd=REPO_ROOT
    )

    max_partitions, *warning_lines = result.stdout.splitlines()
    assert max_partitions == "1"
    assert warning_lines == []
