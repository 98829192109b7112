"""The Dagster code location: assets, job, schedule, sensor and resources, assembled."""

import warnings

import dagster as dg

from training_pipelines.defs.automation import build_daily_retrain_schedule, daily_retrain_job, late_ratings_sensor
from training_pipelines.defs.clusters import orphaned_ray_clusters_sensor
from training_pipelines.defs.environment import build_resources, retrain_hour
from training_pipelines.defs.ranking import production_model, ranking_model, ranking_model_evaluation
from training_pipelines.defs.ratings import ratings_daily

defs = dg.Definitions(
    assets=[ratings_daily, ranking_model, ranking_model_evaluation, production_model],
    jobs=[daily_retrain_job],
    schedules=[build_daily_retrain_schedule(retrain_hour())],
    sensors=[late_ratings_sensor, orphaned_ray_clusters_sensor],
    resources=build_resources(),
    executor=dg.in_process_executor,
)

# daily_retrain_job's assets have different backfill policies, so Dagster warns when it resolves
# the job and runs it one day per run. That is intended, because each day's promotion compares
# with the champion. Resolving here, where the warning is expected, keeps it out of every load.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=f"Asset job {daily_retrain_job.name} materializes assets with varying")
    defs.resolve_job_def(daily_retrain_job.name)
