"""Materialize the daily retrain for one real partition on the local backend and print a summary.

``python -m training_pipelines.demo --partition 1998-03-15`` first stores every
``ratings_daily`` partition the model needs (the history up to the partition day and
the next day for evaluation) in one run, then runs ``daily_retrain_job`` for the
partition. Runs go to the Dagster instance in ``$DAGSTER_HOME``, so ``make ui``
shows them afterwards. A model that fails the AUC check is an outcome, not an error: it
is written and not promoted, and the demo exits with 0.
"""

import argparse
import datetime as dt
import os
import sys
from collections.abc import Mapping

import dagster as dg

from resources.cluster import naming_variables
from resources.errors import InvalidRequestError, rename_fields
from training_pipelines.defs.partitions import FIRST_DAY, LAST_DAY

DEFAULT_PARTITION = "1998-03-15"
# The name of the blocking check of ranking_model_evaluation (training_pipelines.defs.ranking.AUC_CHECK),
# repeated so that the definitions load only after the settings are checked.
AUC_CHECK = "auc_not_below_baseline"
# INFO keeps the training progress and drops Dagster's per-event DEBUG lines; the
# history run, which stores about 180 days, only reports warnings.
TRAINING_LOGGING = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
HISTORY_LOGGING = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _partition(value: str) -> dt.date:
    try:
        day = dt.date.fromisoformat(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a day; use YYYY-MM-DD, such as {DEFAULT_PARTITION}"
        ) from err
    if not FIRST_DAY <= day < LAST_DAY:
        raise argparse.ArgumentTypeError(
            f"{day} is outside {FIRST_DAY}..{LAST_DAY - dt.timedelta(days=1)}, the days that have a next day"
        )
    return day


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> Mapping[str, dg.MetadataValue]:
    materializations = result.asset_materializations_for_node(asset)
    return materializations[-1].metadata if materializations else {}


def _value(metadata: Mapping[str, dg.MetadataValue], key: str) -> object:
    entry = metadata.get(key)
    return None if entry is None else entry.value


def _fmt(value: object, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"


def _failure(result: dg.ExecuteInProcessResult) -> str:
    """Name the first failed step and its error message."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error is not None:
            error = event.step_failure_data.error
            cause = error.cause if error.cause is not None and "dagster" in error.cls_name.lower() else error
            return f"step {event.step_key} failed: {cause.message.strip()}"
    return "the run failed before any step; see the log above"


def _failed_gate(result: dg.ExecuteInProcessResult) -> str | None:
    """Return the description of the failed AUC check when that check alone failed the run, else ``None``.

    The check blocks promotion on purpose, so Dagster fails the evaluation step and skips
    ``production_model``: an expected outcome of a retrain, not an error of the demo.
    """
    failures = [event for event in result.all_events if event.is_step_failure]
    failed_steps = {event.step_key for event in failures}
    errors = {event.step_failure_data.error.cls_name for event in failures if event.step_failure_data.error}
    if errors != {"DagsterAssetCheckFailedError"}:
        return None
    failed_checks = [evaluation for evaluation in result.get_asset_check_evaluations() if not evaluation.passed]
    if failed_steps != {"ranking_model_evaluation"} or [check.check_name for check in failed_checks] != [AUC_CHECK]:
        return None
    return failed_checks[0].description or AUC_CHECK


def _print_summary(result: dg.ExecuteInProcessResult, *, day: dt.date, next_day: str, history_rows: object) -> None:
    model = _metadata(result, "ranking_model")
    evaluation = _metadata(result, "ranking_model_evaluation")
    production = _metadata(result, "production_model")
    gate = None if result.success else _failed_gate(result)

    print()
    if gate is not None:
        print(f"Daily retrain of {day}: trained, not promoted (run {result.run_id})")
        print(f"  the blocking check {AUC_CHECK} failed, as the Dagster errors above say: {gate}")
    else:
        print(f"Daily retrain of {day}: {'succeeded' if result.success else 'FAILED'} (run {result.run_id})")
    if not result.success and gate is None:
        print(f"  {_failure(result)}")
    print(f"  events stored for {FIRST_DAY}..{next_day}: {history_rows}")
    if model:
        print(f"  training rows (window ending {day}): {_value(model, 'rows')}")
        print(
            f"  workers: {_value(model, 'workers')}, cluster start-up: {_fmt(_value(model, 'cluster_startup_s'))} s, "
            f"training: {_fmt(_value(model, 'training_s'))} s, warm start: {_value(model, 'warm_started')}"
        )
    if evaluation:
        print(f"  next-day metrics on {next_day} ({_value(evaluation, 'holdout_rows')} events):")
        scored = [name for name in ("model", "baseline", "champion") if _value(evaluation, f"{name}_auc") is not None]
        if scored:
            print(f"    {'':10} {'AUC':>7} {'log loss':>9} {'NDCG@10':>8} {'HR@10':>7}")
        else:
            print("    none: the next day needs events with both labels to score a model")
        for name in scored:
            print(
                f"    {name:10} {_fmt(_value(evaluation, f'{name}_auc'), 4):>7} "
                f"{_fmt(_value(evaluation, f'{name}_log_loss'), 4):>9} "
                f"{_fmt(_value(evaluation, f'{name}_ndcg_at_10'), 4):>8} "
                f"{_fmt(_value(evaluation, f'{name}_hit_rate_at_10'), 4):>7}"
            )
    if model:
        print(f"  model written to: {_value(model, 'model_uri')}")
    if production:
        promoted = _value(production, "promoted")
        reason = _value(production, "reason")
        print(
            f"  production model: {'promoted' if promoted else 'kept'} ({_value(production, 'champion_partition')})"
            + (f": {reason}" if reason else "")
        )
    elif evaluation:
        print("  production model: not promoted (the AUC check failed)")
    print("  open the Dagster UI with `make ui` to see the run, its logs and metadata")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partition", type=_partition, default=DEFAULT_PARTITION, help="UTC day to retrain")
    args = parser.parse_args(argv)
    if "DAGSTER_HOME" not in os.environ:
        parser.error("DAGSTER_HOME is not set; run `make demo`, or export DAGSTER_HOME=$PWD/.dagster")

    try:
        # Loading the definitions reads the environment; bad settings fail here, before any run.
        from training_pipelines.definitions import defs

        defs.resources["ray_cluster"].cluster_spec()
    except InvalidRequestError as err:
        print(f"demo: invalid setting {naming_variables(err)}", file=sys.stderr)
        return 2
    try:
        defs.resources["ratings_source"].check_tables()
    except InvalidRequestError as err:
        variables = {f"{table}_uri": f"RATINGS_{table.upper()}_URI" for table in ("events", "users", "items")}
        print(f"demo: invalid setting {rename_fields(str(err), variables)}", file=sys.stderr)
        return 2

    from training_pipelines.defs.ratings import ratings_daily

    day: dt.date = args.partition
    instance = dg.DagsterInstance.get()
    job = defs.resolve_job_def("daily_retrain_job")
    next_day = (day + dt.timedelta(days=1)).isoformat()

    print(f"Storing ratings_daily for {FIRST_DAY}..{next_day} in one run", flush=True)
    history = job.execute_in_process(
        run_config=HISTORY_LOGGING,
        instance=instance,
        asset_selection=[ratings_daily.key],
        tags={
            "dagster/asset_partition_range_start": FIRST_DAY.isoformat(),
            "dagster/asset_partition_range_end": next_day,
        },
        raise_on_error=False,
    )
    if not history.success:
        print(f"demo: storing the ratings history failed: {_failure(history)}", file=sys.stderr)
        return 1
    history_rows = _value(_metadata(history, "ratings_daily"), "rows")

    print(f"Running daily_retrain_job for {day} on a local Ray cluster", flush=True)
    result = job.execute_in_process(
        run_config=TRAINING_LOGGING, instance=instance, partition_key=day.isoformat(), raise_on_error=False
    )
    _print_summary(result, day=day, next_day=next_day, history_rows=history_rows)
    return 0 if result.success or _failed_gate(result) is not None else 1


if __name__ == "__main__":
    sys.exit(main())
