"""The Dagster code location: assets, job, schedule, sensor and resources, assembled."""

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
