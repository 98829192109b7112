"""Render a complete RayCluster manifest from a vetted template, a cluster request and the Dagster run's context.

``render_raycluster`` makes no API call. It fills the template, applies the policy and
validates the result against the KubeRay CRD schema, so that a manifest that reaches
the API server is one Kubernetes accepts unchanged.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

import yaml

from resources.errors import InvalidRequestError
from resources.kuberay.naming import (
    MAX_CLUSTER_NAME_LENGTH,
    check_namespace,
    cluster_name,
    is_dns1035_label,
    label_value,
)
from resources.kuberay.policy import Policy, apply_policy
from resources.kuberay.quantity import format_bytes
from resources.kuberay.schema import validate_manifest
from resources.spec import check_node_memory

logger = logging.getLogger(__name__)

RAY_VERSION = "2.60.0"
DEFAULT_IMAGES = {
    "cpu": f"rayproject/ray:{RAY_VERSION}-py311-cpu",
    "gpu": f"rayproject/ray:{RAY_VERSION}-py311-gpu",
}
TEMPLATES = tuple(DEFAULT_IMAGES)
MANAGED_BY = "training-pipelines"
# Label keys follow dagster-k8s (dagster/run-id, dagster/job, dagster/code-location), so one
# selector finds the run's Kubernetes Job, its pods and its RayCluster.
RUN_ID_KEY = "dagster/run-id"
JOB_KEY = "dagster/job"
PARTITION_KEY = "dagster/partition"
ASSET_KEY = "dagster/asset"
CODE_LOCATION_KEY = "dagster/code-location"
TEAM_KEY = "training-pipelines/team"
OWNER_ANNOTATION = "training-pipelines/owner"
RUN_URL_ANNOTATION = "training-pipelines/run-url"
ORIGIN_KEY = "training-pipelines/origin"
REQUEST_ID_KEY = "training-pipelines/request-id"
ORIGINS = ("dagster", "manual")
TTL_ANNOTATION = "training-pipelines/ttl-minutes"
TEMPLATE_ANNOTATION = "training-pipelines/template"
# Seconds an autoscaled worker may sit idle before the autoscaler removes it.
AUTOSCALER_IDLE_TIMEOUT_S = 60
GIB = 1024**3


class OwnerJob(NamedTuple):
    """The Kubernetes Job the Dagster run runs in; the RayCluster names it as an owner."""

    name: str
    uid: str


@dataclass(frozen=True)
class RunContext:
    """Origin of a RayCluster: the Dagster run, its job and asset, and the owner to contact.

    A cluster made by hand (``origin="manual"``) has no Dagster run: ``run_id`` is then
    the id of the request, which only serves to recognise the cluster as its own, and
    ``name`` may set the cluster's name.
    """

    run_id: str
    job_name: str
    namespace: str
    code_location: str
    owner: str
    run_url: str
    partition: str | None = None
    asset: str | None = None
    owner_job: OwnerJob | None = None
    origin: str = "dagster"
    name: str | None = None

    @property
    def cluster_name(self) -> str:
        """The RayCluster's name: ``name`` when given, else derived from the run id."""
        return self.name or cluster_name(run_id=self.run_id)

    @property
    def owner_labels(self) -> dict[str, str]:
        """Labels that mark a RayCluster as this run's or this request's own, for adoption after a retried create."""
        key = RUN_ID_KEY if self.origin == "dagster" else REQUEST_ID_KEY
        return {key: label_value(self.run_id)}

    def validate(self) -> None:
        """Check the fields the manifest needs in a fixed form.

        Raises:
            InvalidRequestError: naming the first invalid field and how to fix it.
        """
        if not self.run_id:
            raise InvalidRequestError("run_id", "is empty", "Pass the Dagster run id.")
        if self.origin not in ORIGINS:
            raise InvalidRequestError("origin", f"unknown origin {self.origin!r}", f"Use one of {list(ORIGINS)}.")
        if self.name is not None and not (
            isinstance(self.name, str) and is_dns1035_label(self.name) and len(self.name) <= MAX_CLUSTER_NAME_LENGTH
        ):
            raise InvalidRequestError(
                "name",
                f"{self.name!r} is not a valid RayCluster name",
                f"Use lowercase letters, digits and '-', a letter first, at most {MAX_CLUSTER_NAME_LENGTH} characters.",
            )
        check_namespace(self.namespace, field="namespace")
        if self.owner_job is not None and not (self.owner_job.name and self.owner_job.uid):
            raise InvalidRequestError(
                "owner_job", f"needs a name and a uid, got {self.owner_job!r}", "Pass both or None."
            )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ClusterRequest:
    """A Ray cluster in high-level terms. Memory values are bytes.

    ``workers`` is the initial number of worker pods. With ``min_workers`` or
    ``max_workers`` set to another number the worker group autoscales between them;
    unset, each defaults to ``workers``.
    """

    template: str = "cpu"
    workers: int = 2
    min_workers: int | None = None
    max_workers: int | None = None
    cpus_per_worker: int = 1
    memory_per_worker: int = 2 * GIB
    gpus_per_worker: int = 0
    gpu_type: str | None = None
    head_cpus: int = 1
    head_memory: int = 4 * GIB
    image: str | None = None
    team: str | None = None
    ttl_minutes: int | None = None

    @property
    def worker_bounds(self) -> tuple[int, int]:
        """The minimum and maximum number of worker pods."""
        low = self.workers if self.min_workers is None else self.min_workers
        high = self.workers if self.max_workers is None else self.max_workers
        return low, high

    @property
    def autoscaling(self) -> bool:
        """Whether the worker group autoscales, which is when its minimum and maximum differ."""
        low, high = self.worker_bounds
        return low != high

    def validate(self) -> None:
        """Check every field on its own; the policy's limits are checked when the manifest is rendered.

        Raises:
            InvalidRequestError: naming the first invalid field and how to fix it.
        """
        if self.template not in TEMPLATES:
            raise InvalidRequestError(
                "template", f"unknown template {self.template!r}", f"Use one of {list(TEMPLATES)}."
            )
        for name in ("workers", "cpus_per_worker"):
            if not _is_count(getattr(self, name)) or getattr(self, name) < 1:
                raise InvalidRequestError(
                    name, f"must be a whole number of at least 1, got {getattr(self, name)!r}", "Use 1 or more."
                )
        for name in ("min_workers", "max_workers"):
            value = getattr(self, name)
            if value is not None and (not _is_count(value) or value < 0):
                raise InvalidRequestError(
                    name, f"must be a whole number of 0 or more, got {value!r}", "Use 0 or more, or leave it unset."
                )
        low, high = self.worker_bounds
        if not low <= self.workers <= high:
            raise InvalidRequestError(
                "workers",
                f"{self.workers} is outside min_workers {low} to max_workers {high}",
                "Set min_workers <= workers <= max_workers.",
            )
        for name in ("memory_per_worker", "head_memory"):
            if not _is_count(getattr(self, name)) or getattr(self, name) <= 0:
                raise InvalidRequestError(
                    name,
                    f"must be a positive number of bytes, got {getattr(self, name)!r}",
                    "Use a size such as 4 * 1024**3.",
                )
            check_node_memory(getattr(self, name), field=name)
        if not _is_count(self.head_cpus) or self.head_cpus < 0:
            raise InvalidRequestError(
                "head_cpus", f"must be 0 or more, got {self.head_cpus!r}", "Use 1 so Ray Data has a CPU on the head."
            )
        self._validate_gpus()
        if self.image is not None and (not isinstance(self.image, str) or not self.image):
            raise InvalidRequestError(
                "image", f"must be an image reference, got {self.image!r}", "Leave it unset for the template's image."
            )
        if self.team is not None and not isinstance(self.team, str):
            raise InvalidRequestError("team", f"must be a string, got {self.team!r}", "Use the team's name.")
        if self.ttl_minutes is not None and (not _is_count(self.ttl_minutes) or self.ttl_minutes < 1):
            raise InvalidRequestError(
                "ttl",
                f"must be at least 1 minute, got {self.ttl_minutes!r} minutes",
                "Ask for a lifetime such as '8h', or leave it unset for the policy's default.",
            )

    def _validate_gpus(self) -> None:
        if not _is_count(self.gpus_per_worker) or self.gpus_per_worker < 0:
            raise InvalidRequestError(
                "gpus_per_worker", f"must be 0 or more, got {self.gpus_per_worker!r}", "Use 0 for CPU training."
            )
        if self.gpus_per_worker > 0 and self.template != "gpu":
            raise InvalidRequestError(
                "template", f"template {self.template!r} has no GPUs", "Use template 'gpu' to ask for GPUs."
            )
        if self.gpus_per_worker == 0 and self.template == "gpu":
            # Otherwise the GPU image would run on CPU nodes, and training would fall back to the CPU unnoticed.
            raise InvalidRequestError(
                "template",
                "template 'gpu' is used with 0 GPUs per worker",
                "Set gpus_per_worker and gpu_type, or use template 'cpu'.",
            )
        if self.gpus_per_worker > 0 and not self.gpu_type:
            raise InvalidRequestError(
                "gpu_type", "GPUs are requested without a GPU type", "Set gpu_type, such as 'l4'."
            )
        if self.gpus_per_worker == 0 and self.gpu_type:
            raise InvalidRequestError(
                "gpu_type",
                f"the GPU type is {self.gpu_type!r} but gpus_per_worker is 0",
                "Set gpus_per_worker or remove gpu_type.",
            )


class _Omit:
    """Placeholder value that removes the key holding the placeholder."""


OMIT = _Omit()


@functools.cache
def _load_template(name: str) -> dict[str, Any]:
    resource = importlib.resources.files("resources.kuberay") / "templates" / f"{name}.yaml"
    return yaml.safe_load(resource.read_text(encoding="utf-8"))


def fill_placeholders(node: Any, values: dict[str, Any], *, path: str = "") -> Any:
    """Return a copy of ``node`` with every string ``"${NAME}"`` replaced by ``values[NAME]``.

    A value of ``OMIT`` removes the key (or list item) that contains the placeholder.

    Raises:
        KeyError: a placeholder has no value; the message names its path.
    """
    if isinstance(node, dict):
        filled = {
            key: fill_placeholders(child, values, path=f"{path}.{key}".lstrip(".")) for key, child in node.items()
        }
        return {key: child for key, child in filled.items() if child is not OMIT}
    if isinstance(node, list):
        filled_items = [fill_placeholders(child, values, path=f"{path}[{index}]") for index, child in enumerate(node)]
        return [child for child in filled_items if child is not OMIT]
    if isinstance(node, str) and node.startswith("${") and node.endswith("}"):
        name = node[2:-1]
        if name not in values:
            raise KeyError(f"{path}: the template placeholder {node} has no value")
        value = values[name]
        return value if value is OMIT else copy.deepcopy(value)
    return node


def _run_labels(request: ClusterRequest, context: RunContext) -> dict[str, str]:
    raw: dict[str, str | None] = {"app.kubernetes.io/managed-by": MANAGED_BY, ORIGIN_KEY: context.origin}
    if context.origin == "dagster":
        raw.update(
            {
                RUN_ID_KEY: context.run_id,
                JOB_KEY: context.job_name,
                PARTITION_KEY: context.partition,
                ASSET_KEY: context.asset,
                CODE_LOCATION_KEY: context.code_location,
            }
        )
    else:
        raw[REQUEST_ID_KEY] = context.run_id
    raw[TEAM_KEY] = request.team
    return {key: label_value(value) for key, value in raw.items() if value}


def _annotations(request: ClusterRequest, context: RunContext, *, ttl_minutes: int) -> dict[str, str]:
    # Label values are cut to 63 characters; the annotations keep the full values.
    dagster = context.origin == "dagster"
    raw = {
        OWNER_ANNOTATION: context.owner,
        RUN_URL_ANNOTATION: context.run_url if dagster else None,
        RUN_ID_KEY: context.run_id if dagster else None,
        PARTITION_KEY: context.partition,
        ASSET_KEY: context.asset,
        TTL_ANNOTATION: str(ttl_minutes),
        TEMPLATE_ANNOTATION: request.template,
    }
    return {key: value for key, value in raw.items() if value}


def _owner_references(context: RunContext) -> list[dict[str, Any]] | _Omit:
    if context.owner_job is None:
        return OMIT
    # Not the controller, and no blocking: deleting the Job removes the RayCluster through
    # garbage collection, but the cluster never holds up the Job's deletion.
    return [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": context.owner_job.name,
            "uid": context.owner_job.uid,
            "controller": False,
            "blockOwnerDeletion": False,
        }
    ]


def _template_values(request: ClusterRequest, context: RunContext, *, ttl_minutes: int) -> dict[str, Any]:
    low, high = request.worker_bounds
    gpus = request.gpus_per_worker
    labels = _run_labels(request, context)
    return {
        "NAME": context.cluster_name,
        "NAMESPACE": context.namespace,
        "LABELS": labels,
        "ANNOTATIONS": _annotations(request, context, ttl_minutes=ttl_minutes),
        "OWNER_REFERENCES": _owner_references(context),
        "RAY_VERSION": RAY_VERSION,
        "AUTOSCALING": request.autoscaling,
        "AUTOSCALER_OPTIONS": {"idleTimeoutSeconds": AUTOSCALER_IDLE_TIMEOUT_S} if request.autoscaling else OMIT,
        "IMAGE": request.image or DEFAULT_IMAGES[request.template],
        # Ray may get no CPU on the head (head_cpus 0) but the container still needs one
        # for the GCS, the dashboard and the job driver.
        "HEAD_RAY_CPUS": str(request.head_cpus),
        "HEAD_CPUS": str(max(request.head_cpus, 1)),
        "HEAD_MEMORY": format_bytes(request.head_memory),
        "WORKERS": request.workers,
        "MIN_WORKERS": low,
        "MAX_WORKERS": high,
        "WORKER_CPUS": str(request.cpus_per_worker),
        "WORKER_MEMORY": format_bytes(request.memory_per_worker),
        "WORKER_GPUS": str(gpus) if gpus else OMIT,
        "GPU_TYPE": request.gpu_type if gpus else OMIT,
    }


def render_raycluster(*, request: ClusterRequest, context: RunContext, policy: Policy) -> dict[str, Any]:
    """Build the complete RayCluster manifest for a run, with the policy applied and the schema checked.

    Raises:
        InvalidRequestError: the request is invalid or breaks the policy, naming the field.
            It is also raised when the rendered manifest fails the CRD schema, which
            means a template or the renderer has a bug.
    """
    request.validate()
    context.validate()
    ttl_minutes = policy.ttl_minutes(request.ttl_minutes)

    try:
        manifest = fill_placeholders(
            _load_template(request.template), _template_values(request, context, ttl_minutes=ttl_minutes)
        )
    except KeyError as err:
        raise InvalidRequestError(
            "template", f"template {request.template!r}: {err.args[0]}", "Fix the template."
        ) from err
    manifest = apply_policy(manifest, policy)

    problems = validate_manifest(manifest)
    if problems:
        raise InvalidRequestError(
            problems[0].split(": ", 1)[0],
            f"the rendered RayCluster fails the KubeRay CRD schema: {'; '.join(problems)}",
            f"This is a bug in template {request.template!r} or in the renderer, not in the request; fix it there.",
        )
    logger.debug("Rendered RayCluster %s from template %s", manifest["metadata"]["name"], request.template)
    return manifest


def manifest_to_yaml(manifest: dict[str, Any]) -> str:
    """Serialize a manifest as block-style YAML in the order its keys were built, as ``kubectl apply -f`` reads it."""
    return yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False)
