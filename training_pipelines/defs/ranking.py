"""Assets of the ranking model: training on Ray, temporal hold-out evaluation and promotion."""

import datetime as dt
import math
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from resources.cluster import RayClusterResource
from resources.errors import RayJobError
from resources.storage import TrainingStorage
from training_pipelines.data.source import RatingsSource
from training_pipelines.data.validation import SourceError
from training_pipelines.defs.partitions import (
    FIRST_DAY,
    LAST_DAY,
    asset_with_backfill_policy,
    daily_partitions,
    days_between,
    partition_day,
)
from training_pipelines.defs.ratings import RATINGS_FOLDER, ratings_daily, ratings_file
from training_pipelines.defs.settings import RankingSettings
from training_pipelines.ranking.features import LABEL_COLUMN, build_examples, popularity_scores
from training_pipelines.ranking.metrics import evaluate, hit_rate_at_k, ndcg_at_k
from training_pipelines.ranking.model import model_from_bytes, predict_proba
from training_pipelines.training.request import MODEL_FILE, REQUEST_FILE, RESULT_FILE, TrainingRequest

MODEL_FOLDER = "ranking_model"
EVALUATION_FOLDER = "ranking_model_evaluation"
CHAMPION_FILE = "production/champion.json"
AUC_CHECK = "auc_not_below_baseline"


def _stored_days(storage: TrainingStorage, days: list[dt.date]) -> list[str]:
    stored = set(storage.list(RATINGS_FOLDER))
    missing = [day.isoformat() for day in days if ratings_file(day.isoformat()) not in stored]
    if missing:
        listed = missing if len(missing) <= 6 else [*missing[:3], "...", *missing[-3:]]
        raise SourceError(
            "ratings_daily",
            f"{len(missing)} partition(s) are not materialized: {', '.join(listed)}",
            f"Materialize ratings_daily for {missing[0]}...{missing[-1]} first (one backfill run covers the range)",
        )
    return [storage.uri(RATINGS_FOLDER, ratings_file(day.isoformat())) for day in days]


def _read_days(storage: TrainingStorage, days: list[dt.date]) -> pd.DataFrame:
    frames = [storage.read_parquet(RATINGS_FOLDER, ratings_file(day.isoformat())) for day in days]
    return pd.concat(frames, ignore_index=True)


# A backfill trains up to this many consecutive days in one run, on one cluster and in one Ray job.
MAX_DAYS_PER_RUN = 14


def _training_request(
    storage: TrainingStorage,
    ratings_source: RatingsSource,
    ranking_settings: RankingSettings,
    ray_cluster: RayClusterResource,
    day: dt.date,
    *,
    warm_start: str | None,
    run_id: str,
) -> TrainingRequest:
    spec = ray_cluster.cluster_spec()
    window_first = max(FIRST_DAY, day - dt.timedelta(days=ranking_settings.window_days - 1))
    return TrainingRequest(
        partition=day.isoformat(),
        history_paths=_stored_days(storage, days_between(FIRST_DAY, day)),
        window_first_day=window_first.isoformat(),
        users_uri=ratings_source.resolved_uri("users"),
        items_uri=ratings_source.resolved_uri("items"),
        output_dir=storage.uri(MODEL_FOLDER, day.isoformat()),
        # Ray Train resumes from any checkpoint it finds under its run's folder. One folder per
        # Dagster run lets a retried step resume, and keeps a new run of the day from taking
        # an earlier run's last checkpoint for its own finished training.
        train_dir=storage.uri("ray_train", run_id),
        workers=spec.workers,
        cpus_per_worker=spec.cpus_per_worker,
        use_gpu=ray_cluster.use_gpu,
        epochs=ranking_settings.warm_start_epochs if warm_start else ranking_settings.epochs,
        batch_size=ranking_settings.batch_size,
        learning_rate=ranking_settings.learning_rate,
        seed=ranking_settings.seed,
        max_failures=ranking_settings.max_failures,
        warm_start_model=warm_start,
        warm_start_shrink=ranking_settings.warm_start_shrink,
        column_renames=dict(ratings_source.column_renames),
    )


@dataclass(frozen=True)
class _TrainedDay:
    """The figures of one day's training result that the run's metadata shows."""

    rows: int
    epoch_losses: list[float]
    samples_per_s: float
    training_s: float
    warm_started: bool
    model_uri: str
    checkpoint_uri: str

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> "_TrainedDay":
        return cls(
            rows=int(result["rows"]),
            epoch_losses=[float(loss) for loss in result["epoch_losses"]],
            samples_per_s=float(result["samples_per_s"]),
            training_s=float(result["training_s"]),
            warm_started=bool(result["warm_started"]),
            model_uri=str(result["model_uri"]),
            checkpoint_uri=str(result["checkpoint_uri"]),
        )


@asset_with_backfill_policy(
    partitions_def=daily_partitions,
    deps=[
        dg.AssetDep(
            ratings_daily,
            partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-27, end_offset=0),
        )
    ],
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=MAX_DAYS_PER_RUN),
    group_name="ranking",
    kinds={"pytorch", "ray"},
)
def ranking_model(
    context: dg.AssetExecutionContext,
    ray_cluster: RayClusterResource,
    storage: TrainingStorage,
    ratings_source: RatingsSource,
    ranking_settings: RankingSettings,
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """A neural ranking model per day, trained with Ray Train on the trailing window ending at that day.

    Item-history features use every stored day up to the partition day, so all
    ratings_daily partitions from the first day on must be materialized. Each day
    warm-starts from the previous day's model when one exists. A run of several
    days (a backfill, up to MAX_DAYS_PER_RUN per run) trains them in order in one
    Ray job on one cluster, each day warm-starting from the one before.
    """
    ranking_settings.validate_settings()
    days = sorted(partition_day(key) for key in context.partition_keys)

    requests: list[TrainingRequest] = []
    request_uris: list[str] = []
    for day in days:
        previous = (day - dt.timedelta(days=1)).isoformat()
        trained_before = requests and requests[-1].partition == previous
        warm_start = (
            storage.uri(MODEL_FOLDER, previous, MODEL_FILE)
            if trained_before or storage.exists(MODEL_FOLDER, previous, MODEL_FILE)
            else None
        )
        request = _training_request(
            storage, ratings_source, ranking_settings, ray_cluster, day, warm_start=warm_start, run_id=context.run_id
        )
        requests.append(request)
        request_uris.append(
            storage.write_bytes(request.to_json().encode(), MODEL_FOLDER, day.isoformat(), REQUEST_FILE)
        )
        if warm_start is None:
            context.log.warning(
                f"Training {day} on {request.window_first_day}..{day} from scratch: "
                f"there is no model of {previous} to warm-start from"
            )
    first, last = requests[0], requests[-1]
    context.log.info(
        f"Training {len(days)} day(s), {first.partition}..{last.partition}, with {first.workers} workers"
        + ("" if first.warm_start_model is None else f", warm-starting from {first.warm_start_model}")
    )

    asset = context.asset_key.to_user_string()
    startup_s = ray_cluster.ensure_started(on_progress=context.log.info, asset=asset)
    try:
        outcome = ray_cluster.submit_job(
            # The job runs the cluster's own `python`: the image's on KubeRay, this environment's locally.
            entrypoint="python -m training_pipelines.training.ray_job "
            + " ".join(shlex.quote(uri) for uri in request_uris),
            job_name=f"train-{first.partition}" + ("" if len(days) == 1 else f"-to-{last.partition}"),
            on_log_line=context.log.info,
            asset=asset,
        )
    except RayJobError as err:
        if err.status != "LOST":
            raise
        # The cluster died under the job. What is left of it goes now, so a retry starts a new one,
        # and Ray Train resumes there from this run's last checkpoint in storage.
        ray_cluster.stop()
        if context.retry_number >= ranking_settings.cluster_loss_retries:
            raise
        context.log.warning(
            f"The Ray cluster was lost while training ({err.reason}); retrying on a new cluster "
            f"from the last checkpoint (retry {context.retry_number + 1} of {ranking_settings.cluster_loss_retries})"
        )
        raise dg.RetryRequested(max_retries=ranking_settings.cluster_loss_retries) from err
    trained = {
        day.isoformat(): _TrainedDay.from_result(storage.read_json(MODEL_FOLDER, day.isoformat(), RESULT_FILE))
        for day in days
    }

    metadata: dict[str, dg.RawMetadataValue] = {
        "cluster_startup_s": dg.MetadataValue.float(startup_s),
        "queueing_s": dg.MetadataValue.float(outcome.queued_s),
        "job_s": dg.MetadataValue.float(outcome.running_s),
        "workers": dg.MetadataValue.int(first.workers),
        "ray_job_id": dg.MetadataValue.text(outcome.job_id),
        # The Ray dashboard goes with the cluster; the platform's job history keeps the record.
        "job_history": dg.MetadataValue.md(f"`trainctl history --job {outcome.job_id}`"),
        "rows": dg.MetadataValue.int(sum(result.rows for result in trained.values())),
    }
    if len(days) == 1:
        # One partition: its figures, flat, so the UI can plot them across partitions.
        only = trained[last.partition]
        metadata.update(
            {
                "final_loss": dg.MetadataValue.float(only.epoch_losses[-1]),
                "epoch_losses": dg.MetadataValue.json({"loss": only.epoch_losses}),
                "samples_per_s": dg.MetadataValue.float(only.samples_per_s),
                "training_s": dg.MetadataValue.float(only.training_s),
                "warm_started": dg.MetadataValue.bool(only.warm_started),
                "model_uri": dg.MetadataValue.path(only.model_uri),
                "checkpoint_uri": dg.MetadataValue.path(only.checkpoint_uri),
            }
        )
        for epoch, loss in enumerate(only.epoch_losses, start=1):
            metadata[f"loss_epoch_{epoch}"] = dg.MetadataValue.float(loss)
    else:
        # Dagster records one materialization per partition with this same metadata,
        # so the figures of each day sit under the day's key.
        metadata["partitions"] = dg.MetadataValue.text(f"{first.partition}..{last.partition}")
        metadata["per_partition"] = dg.MetadataValue.json(
            {day: {**asdict(result), "final_loss": result.epoch_losses[-1]} for day, result in trained.items()}
        )
    return dg.MaterializeResult(metadata=metadata)


def _score_model(storage: TrainingStorage, model_uri_parts: tuple[str, ...], examples: pd.DataFrame) -> np.ndarray:
    model, _ = model_from_bytes(storage.read_bytes(*model_uri_parts))
    model.eval()
    return predict_proba(model, examples)


def catalogue_candidates(history: pd.DataFrame, next_events: pd.DataFrame, item_ids: np.ndarray) -> pd.DataFrame:
    """Pair each user of the next day with every item they had not rated before, as events of that day.

    Pairs the user rated on the next day keep their rating; the others get rating 0, so
    their label is negative. Timestamps are those of the next day's first event.
    """
    if next_events.empty:
        return next_events.copy()
    users = next_events["user_id"].unique()
    grid = pd.DataFrame({"user_id": np.repeat(users, len(item_ids)), "item_id": np.tile(item_ids, len(users))}).astype(
        "int64"
    )
    seen = history[["user_id", "item_id"]].drop_duplicates().assign(seen=True)
    grid = grid.merge(seen, on=["user_id", "item_id"], how="left")
    grid = grid[grid["seen"].isna()].drop(columns="seen")
    rated = next_events[["user_id", "item_id", "rating", "timestamp"]].drop_duplicates(["user_id", "item_id"])
    grid = grid.merge(rated, on=["user_id", "item_id"], how="left")
    grid["rating"] = grid["rating"].fillna(0.0)
    grid["timestamp"] = grid["timestamp"].fillna(next_events["timestamp"].min()).astype("int64")
    return grid.reset_index(drop=True)


def _holdout_metrics(
    score: Callable[[pd.DataFrame], np.ndarray], examples: pd.DataFrame, candidates: pd.DataFrame
) -> dict[str, float]:
    if examples.empty:
        return evaluate(np.array([]), np.array([]), np.array([]))
    metrics = evaluate(examples[LABEL_COLUMN].to_numpy(), score(examples), examples["user_id"].to_numpy())
    candidate_scores = score(candidates)
    candidate_labels = candidates[LABEL_COLUMN].to_numpy()
    candidate_users = candidates["user_id"].to_numpy()
    metrics["ndcg_at_10"] = ndcg_at_k(candidate_users, candidate_labels, candidate_scores, k=10)
    metrics["hit_rate_at_10"] = hit_rate_at_k(candidate_users, candidate_labels, candidate_scores, k=10)
    return metrics


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


@dg.asset(
    partitions_def=daily_partitions,
    deps=[
        ranking_model,
        dg.AssetDep(ratings_daily, partition_mapping=dg.TimeWindowPartitionMapping(start_offset=1, end_offset=1)),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            AUC_CHECK,
            asset="ranking_model_evaluation",
            blocking=True,
            description="The model's next-day AUC is not more than the margin below the popularity baseline's.",
        )
    ],
    group_name="ranking",
)
def ranking_model_evaluation(
    context: dg.AssetExecutionContext,
    storage: TrainingStorage,
    ratings_source: RatingsSource,
    ranking_settings: RankingSettings,
):  # type: ignore[no-untyped-def]
    """Next-day (temporal hold-out) metrics of the model, the popularity baseline and the current champion."""
    day = partition_day(context.partition_key)
    next_day = day + dt.timedelta(days=1)
    if next_day > LAST_DAY:
        raise SourceError(
            "partition",
            f"{day} is the last day of the data, so there is no next day to evaluate on",
            f"Evaluate partitions up to {LAST_DAY - dt.timedelta(days=1)}",
        )
    _stored_days(storage, days_between(FIRST_DAY, next_day))
    history = _read_days(storage, days_between(FIRST_DAY, day))
    next_events = _read_days(storage, [next_day])
    users_table, items_table = ratings_source.read_users(), ratings_source.read_items()
    # AUC and log loss score the events of the next day; NDCG@10 and HitRate@10 rank, for
    # each user of that day, every item of the catalogue the user had not rated before.
    examples = build_examples(pd.concat([history, next_events]), users_table, items_table, days=[next_day])
    candidates = build_examples(
        pd.concat([history, catalogue_candidates(history, next_events, items_table["item_id"].to_numpy())]),
        users_table,
        items_table,
        days=[next_day],
    )

    scorers = {
        "model": lambda frame: _score_model(storage, (MODEL_FOLDER, day.isoformat(), MODEL_FILE), frame),
        "baseline": lambda frame: popularity_scores(history, frame["item_id"].to_numpy()),
    }
    champion = storage.read_json(CHAMPION_FILE) if storage.exists(CHAMPION_FILE) else None
    if champion is not None and champion["partition"] > day.isoformat():
        # Its training data included the hold-out day, so its score there would be too high.
        context.log.info(
            f"Skipped scoring the champion of {champion['partition']}: its training data, up to that day, "
            f"includes the hold-out day {next_day}"
        )
        champion = None
    if champion is not None:
        scorers["champion"] = lambda frame: _score_model(storage, tuple(champion["model_path"]), frame)
    metrics = {name: _holdout_metrics(score, examples, candidates) for name, score in scorers.items()}
    model_metrics, baseline_metrics = metrics["model"], metrics["baseline"]
    champion_metrics = metrics.get("champion")

    report = {
        "partition": day.isoformat(),
        "holdout_day": next_day.isoformat(),
        "model": {key: _json_number(value) for key, value in model_metrics.items()},
        "baseline": {key: _json_number(value) for key, value in baseline_metrics.items()},
        "champion": None
        if champion_metrics is None
        else {
            "partition": champion["partition"],
            **{key: _json_number(value) for key, value in champion_metrics.items()},
        },
    }
    storage.write_json(report, EVALUATION_FOLDER, f"{day.isoformat()}.json")

    metadata: dict[str, dg.RawMetadataValue] = {"holdout_rows": dg.MetadataValue.int(len(examples))}
    for prefix, values in (
        ("model", model_metrics),
        ("baseline", baseline_metrics),
        ("champion", champion_metrics or {}),
    ):
        for key in ("auc", "log_loss", "ndcg_at_10", "hit_rate_at_10"):
            if key in values and not math.isnan(values[key]):
                metadata[f"{prefix}_{key}"] = dg.MetadataValue.float(float(values[key]))
    context.log.info(
        f"Next-day AUC on {next_day}: model {model_metrics['auc']:.4f}, baseline {baseline_metrics['auc']:.4f}"
        + (f", champion {champion_metrics['auc']:.4f}" if champion_metrics else "")
    )
    yield dg.MaterializeResult(metadata=metadata)

    gap = baseline_metrics["auc"] - model_metrics["auc"]
    passed = not math.isnan(gap) and gap <= ranking_settings.auc_margin
    if math.isnan(gap):
        description = f"No AUC on {next_day}: the hold-out has {len(examples)} event(s) and needs both labels"
    else:
        description = (
            f"Model AUC {model_metrics['auc']:.4f} vs baseline {baseline_metrics['auc']:.4f} "
            f"(allowed gap {ranking_settings.auc_margin})"
        )
    yield dg.AssetCheckResult(
        check_name=AUC_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={"auc_gap": dg.MetadataValue.float(float(gap) if not math.isnan(gap) else 0.0)},
    )


@dg.asset(partitions_def=daily_partitions, deps=[ranking_model_evaluation], group_name="ranking")
def production_model(context: dg.AssetExecutionContext, storage: TrainingStorage) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """The champion model that serving reads; replaced only by a model that passed its checks and is not worse.

    A model of an earlier day than the champion's (a backfill) never replaces it.

    Runs only after the blocking AUC check passed. The pointer is one small JSON file
    written atomically, so readers see either the old champion or the new one.
    """
    day = context.partition_key
    report = storage.read_json(EVALUATION_FOLDER, f"{day}.json")
    candidate_auc = report["model"]["auc"]
    champion = report["champion"]
    current = storage.read_json(CHAMPION_FILE) if storage.exists(CHAMPION_FILE) else None

    reason = None
    if candidate_auc is None:
        reason = f"the model of {day} has no AUC on {report['holdout_day']}"
    elif current is not None and current["partition"] > day:
        reason = (
            f"the champion from {current['partition']} was trained on later data, so a model of {day} never replaces it"
        )
    elif (current and current["partition"]) != (champion and champion["partition"]):
        reason = (
            f"the champion changed to {current and current['partition']} after this evaluation; "
            "re-materialize ranking_model_evaluation to compare against it"
        )
    elif champion is not None and champion["partition"] != day and champion["auc"] is not None:
        if candidate_auc < champion["auc"]:
            reason = (
                f"the champion from {champion['partition']} scores AUC {champion['auc']:.4f} on "
                f"{report['holdout_day']}, the candidate {candidate_auc:.4f}"
            )
    if reason is not None:
        context.log.warning(f"Kept the current champion: {reason}")
        metadata: dict[str, dg.RawMetadataValue] = {
            "promoted": dg.MetadataValue.bool(False),
            "reason": dg.MetadataValue.text(reason),
        }
        if current is not None:
            metadata["champion_partition"] = dg.MetadataValue.text(str(current["partition"]))
        if candidate_auc is not None:
            metadata["candidate_auc"] = dg.MetadataValue.float(float(candidate_auc))
        if champion is not None and champion["auc"] is not None:
            metadata["champion_auc"] = dg.MetadataValue.float(float(champion["auc"]))
        return dg.MaterializeResult(metadata=metadata)

    pointer = {
        "partition": day,
        "model_path": [MODEL_FOLDER, day, MODEL_FILE],
        "model_uri": storage.uri(MODEL_FOLDER, day, MODEL_FILE),
        "auc": candidate_auc,
        "holdout_day": report["holdout_day"],
        "run_id": context.run_id,
    }
    storage.write_json(pointer, CHAMPION_FILE)
    context.log.info(f"Promoted the model of {day} (next-day AUC {candidate_auc:.4f}) to production")
    return dg.MaterializeResult(
        metadata={
            "promoted": dg.MetadataValue.bool(True),
            "champion_partition": dg.MetadataValue.text(day),
            "candidate_auc": dg.MetadataValue.float(float(candidate_auc)),
            "model_uri": dg.MetadataValue.path(pointer["model_uri"]),
        }
    )
