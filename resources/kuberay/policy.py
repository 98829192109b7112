"""The organisation's policy for Ray clusters on Kubernetes, and ``apply_policy`` that enforces it on a RayCluster.

``apply_policy`` rewrites what it can (security contexts, requests equal to limits,
priority class, GPU node selection, /dev/shm, service account token) whatever the
template contains, and raises ``InvalidRequestError`` for what it cannot: an image outside
the allow-list, more workers or GPUs per cluster than allowed, more memory or CPUs per pod
than allowed, an unknown GPU type, GPUs without a type, host namespaces, ports or volumes,
and a head Service or Ingress that makes the Ray dashboard reachable from outside the
Kubernetes cluster. It runs before anything is sent to the API server.
"""

from __future__ import annotations

import copy
import importlib.resources
import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from resources.errors import InvalidRequestError
from resources.kuberay.podspec import enforce_autoscaler, enforce_pod_template
from resources.kuberay.quantity import parse_quantity
from resources.spec import parse_memory

logger = logging.getLogger(__name__)

DEFAULT_POLICY_FILE = "policy.default.yaml"
MIB = 1024**2
_MEMORY_FIELDS = ("max_memory_per_pod", "shm_max")
# The only type of head Service allowed. The templates start Ray without authentication, so anyone
# who reaches the dashboard can submit jobs, and the head Service must stay inside the cluster.
HEAD_SERVICE_TYPE = "ClusterIP"


@dataclass(frozen=True)
class GpuType:
    """Scheduling rules for pods with one type of GPU: node labels to select and taints to tolerate."""

    node_selector: Mapping[str, str]
    tolerations: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class Policy:
    """Limits and settings that every RayCluster the platform writes must meet. Memory values are bytes."""

    allowed_image_prefixes: tuple[str, ...]
    max_workers: int
    max_gpus_per_cluster: int
    max_memory_per_pod: int
    max_cpus_per_pod: int
    priority_class_name: str
    allowed_priority_classes: tuple[str, ...]
    run_as_user: int
    run_as_group: int
    shm_fraction: float
    shm_max: int
    default_ttl_hours: int
    max_ttl_hours: int
    autoscaler_cpu: str
    autoscaler_memory: str
    gpu_types: Mapping[str, GpuType]

    def check_image(self, image: object, *, field: str) -> None:
        """Raise ``InvalidRequestError`` unless ``image`` starts with an allowed prefix and names a tag or digest."""
        quoted = [repr(prefix) for prefix in self.allowed_image_prefixes]
        allowed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
        # A prefix ending in ':' names one repository, which an image may also pin by digest only.
        prefixes = self.allowed_image_prefixes + tuple(
            prefix[:-1] + "@" for prefix in self.allowed_image_prefixes if prefix.endswith(":")
        )
        # An allowed repository without any tag, such as 'rayproject/ray', is only missing its version.
        allowed_repository = isinstance(image, str) and f"{image}:" in self.allowed_image_prefixes
        if not isinstance(image, str) or not (image.startswith(prefixes) or allowed_repository):
            raise InvalidRequestError(
                field, f"image {image!r} is not from an allowed registry", f"Use an image starting with {allowed}."
            )
        name = image.split("@", 1)[0]
        tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
        if "@" not in image and tag in ("", "latest"):
            raise InvalidRequestError(
                field,
                f"image {image!r} names no fixed version",
                "Pin the image with a version tag such as ':2.60.0-py311-cpu' or a digest.",
            )

    def gpu_type(self, name: object, *, field: str) -> GpuType:
        """Return the scheduling rules of GPU type ``name``.

        Raises:
            InvalidRequestError: ``name`` is missing or not a GPU type of this policy.
        """
        known = ", ".join(sorted(self.gpu_types))
        if not name:
            raise InvalidRequestError(
                field, "GPUs are requested without a GPU type", f"Set gpu_type to one of {known}."
            )
        if name not in self.gpu_types:
            raise InvalidRequestError(field, f"unknown GPU type {name!r}", f"Use one of {known}.")
        return self.gpu_types[str(name)]

    def shm_size(self, memory: int) -> int:
        """Return the /dev/shm size in bytes for a container with ``memory`` bytes, in whole MiB and at least 1 MiB."""
        size = min(self.shm_max, int(memory * self.shm_fraction))
        return max(MIB, size // MIB * MIB)

    def ttl_minutes(self, requested: int | None) -> int:
        """Return the cluster lifetime in minutes: ``requested``, or the policy's default when ``None``.

        Raises:
            InvalidRequestError: ``requested`` is below 1 minute or above the policy's maximum.
        """
        if requested is None:
            return self.default_ttl_hours * 60
        cap = self.max_ttl_hours * 60
        if isinstance(requested, bool) or not isinstance(requested, int) or not 1 <= requested <= cap:
            raise InvalidRequestError(
                "ttl",
                f"{_minutes_text(requested)} is outside 1m to the policy's maximum of {self.max_ttl_hours}h",
                f"Ask for at most {self.max_ttl_hours}h, or leave it unset for {self.default_ttl_hours}h.",
            )
        return requested


def _minutes_text(minutes: object) -> str:
    if isinstance(minutes, int) and not isinstance(minutes, bool) and minutes >= 60:
        hours, rest = divmod(minutes, 60)
        return f"{hours}h{rest:02d}m" if rest else f"{hours}h"
    return f"{minutes!r}m"


def _parse_gpu_types(raw: object, *, source: str) -> dict[str, GpuType]:
    if not isinstance(raw, dict):
        raise InvalidRequestError(
            f"{source}: gpu_types", "must map GPU type names to rules", f"See {_default_policy_path()}."
        )

    gpu_types = {}
    for name, rules in raw.items():
        if not isinstance(rules, dict) or not isinstance(rules.get("node_selector"), dict):
            raise InvalidRequestError(
                f"{source}: gpu_types.{name}", "needs a node_selector mapping", f"See {_default_policy_path()}."
            )
        tolerations = rules.get("tolerations", [])
        if not isinstance(tolerations, list) or not all(isinstance(item, dict) for item in tolerations):
            raise InvalidRequestError(
                f"{source}: gpu_types.{name}.tolerations",
                "must be a list of tolerations",
                f"See {_default_policy_path()}.",
            )
        selector = {str(key): str(value) for key, value in rules["node_selector"].items()}
        gpu_types[str(name)] = GpuType(node_selector=selector, tolerations=tuple(dict(item) for item in tolerations))
    return gpu_types


def _default_policy_path() -> str:
    """Return where the packaged default policy is, for messages that point at its format."""
    return str(importlib.resources.files("resources.kuberay") / DEFAULT_POLICY_FILE)


def _read_yaml(path: str | None) -> tuple[dict[str, Any], str]:
    if path is None:
        resource = importlib.resources.files("resources.kuberay") / DEFAULT_POLICY_FILE
        return yaml.safe_load(resource.read_text(encoding="utf-8")), DEFAULT_POLICY_FILE
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise InvalidRequestError(
            "policy", f"cannot read {path}: {err.strerror}", "Pass the path of a policy file."
        ) from err
    loaded = yaml.safe_load(text)
    if not isinstance(loaded, dict):
        raise InvalidRequestError(
            "policy", f"{path} is not a YAML mapping", f"See {_default_policy_path()} for the format."
        )
    return loaded, path


def load_policy(path: str | None = None) -> Policy:
    """Load a policy: the packaged default, with the keys of the YAML file at ``path`` replacing its values.

    A key given in ``path`` replaces the whole default value, so ``gpu_types`` there lists
    every GPU type the organisation allows.

    Raises:
        InvalidRequestError: the file cannot be read, has an unknown key or an invalid value.
    """
    values, _ = _read_yaml(None)
    if path is not None:
        overrides, source = _read_yaml(path)
        unknown = sorted(set(overrides) - {field.name for field in fields(Policy)})
        if unknown:
            raise InvalidRequestError(f"{source}: {unknown[0]}", "unknown policy key", f"See {_default_policy_path()}.")
        values.update(overrides)
    source = path or DEFAULT_POLICY_FILE

    for name in _MEMORY_FIELDS:
        values[name] = parse_memory(values[name], field=f"{source}: {name}")
    for name in ("autoscaler_cpu", "autoscaler_memory"):
        try:
            parse_quantity(values[name])
        except ValueError as err:
            raise InvalidRequestError(
                f"{source}: {name}", str(err), "Use a quantity such as '500m' or '512Mi'."
            ) from err
        values[name] = str(values[name])
    for name in ("allowed_image_prefixes", "allowed_priority_classes"):
        values[name] = tuple(str(item) for item in values[name])
    bad_prefixes = [prefix for prefix in values["allowed_image_prefixes"] if not prefix.endswith(("/", ":"))]
    if bad_prefixes:
        raise InvalidRequestError(
            f"{source}: allowed_image_prefixes",
            f"{bad_prefixes[0]!r} does not end in '/' or ':' and would allow any registry starting with it",
            "End each prefix with '/' (a registry or path) or ':' (one repository).",
        )
    values["gpu_types"] = _parse_gpu_types(values["gpu_types"], source=source)

    policy = Policy(**values)
    if policy.priority_class_name not in policy.allowed_priority_classes:
        raise InvalidRequestError(
            f"{source}: priority_class_name",
            f"{policy.priority_class_name!r} is not in allowed_priority_classes",
            "Add it to allowed_priority_classes.",
        )
    if isinstance(policy.run_as_user, bool) or not isinstance(policy.run_as_user, int) or policy.run_as_user < 1:
        raise InvalidRequestError(
            f"{source}: run_as_user",
            f"{policy.run_as_user!r} is not a non-root user id, which the restricted Pod Security Standard requires",
            "Use the uid of the image's user, such as 1000 for the rayproject/ray images.",
        )
    if (
        isinstance(policy.max_cpus_per_pod, bool)
        or not isinstance(policy.max_cpus_per_pod, int)
        or policy.max_cpus_per_pod < 1
    ):
        raise InvalidRequestError(
            f"{source}: max_cpus_per_pod",
            f"{policy.max_cpus_per_pod!r} is not a whole number of CPUs of at least 1",
            "Use the CPUs of the largest node a Ray pod may fill, such as 64.",
        )
    if not 0 < policy.shm_fraction < 1:
        raise InvalidRequestError(f"{source}: shm_fraction", f"{policy.shm_fraction} is outside (0, 1)", "Use 0.3.")
    if not 1 <= policy.default_ttl_hours <= policy.max_ttl_hours:
        raise InvalidRequestError(
            f"{source}: default_ttl_hours",
            f"{policy.default_ttl_hours} is outside 1 to max_ttl_hours ({policy.max_ttl_hours})",
            "Lower default_ttl_hours or raise max_ttl_hours.",
        )
    logger.debug("Loaded the Ray cluster policy from %s", source)
    return policy


def _worker_count(group: Mapping[str, Any]) -> int:
    """Return the most pods a worker group can have: its largest replica bound times ``numOfHosts``."""
    counts = [group.get(field) for field in ("replicas", "minReplicas", "maxReplicas")]
    hosts = group.get("numOfHosts", 1)
    hosts = hosts if isinstance(hosts, int) and hosts > 0 else 1
    return max([count for count in counts if isinstance(count, int)], default=0) * hosts


def _check_pod_cpus(template: Mapping[str, Any], *, path: str, policy: Policy) -> None:
    """Raise ``InvalidRequestError`` when a pod's CPU limits, all containers together, exceed the policy maximum.

    Runs after ``enforce_pod_template``, which gives every container a CPU limit. Init
    containers run one at a time before the others, so the largest of them counts.
    """
    pod_spec = template["spec"]

    def cpu_limit(container: Mapping[str, Any]) -> Decimal:
        return parse_quantity(container["resources"]["limits"]["cpu"])

    init_cpus = max((cpu_limit(item) for item in pod_spec.get("initContainers") or []), default=Decimal(0))
    pod_cpus = max(init_cpus, sum((cpu_limit(item) for item in pod_spec["containers"]), Decimal(0)))
    if pod_cpus > policy.max_cpus_per_pod:
        fix = f"Ask for at most {policy.max_cpus_per_pod} CPUs per worker, or for more workers with fewer CPUs each."
        if path.startswith("spec.headGroupSpec"):
            fix = f"Ask for at most {policy.max_cpus_per_pod} head CPUs (head_cpus)."
        raise InvalidRequestError(
            f"{path}.spec.containers[*].resources.limits.cpu",
            f"the pod needs {pod_cpus.normalize():f} CPUs, above the policy maximum of {policy.max_cpus_per_pod}",
            fix,
        )


def _check_head_exposure(head: Mapping[str, Any]) -> None:
    """Raise ``InvalidRequestError`` for a head Service or Ingress that is reachable from outside the cluster."""
    path = "spec.headGroupSpec"
    service_type = head.get("serviceType")
    if service_type not in (None, HEAD_SERVICE_TYPE):
        raise InvalidRequestError(
            f"{path}.serviceType",
            f"service type {service_type!r} makes the Ray dashboard reachable from outside the Kubernetes cluster",
            f"Remove serviceType or set it to {HEAD_SERVICE_TYPE}; from a laptop use KUBERAY_PORT_FORWARD=true.",
        )

    service_spec = (head.get("headService") or {}).get("spec") or {}
    head_service_type = service_spec.get("type")
    if head_service_type not in (None, HEAD_SERVICE_TYPE):
        raise InvalidRequestError(
            f"{path}.headService.spec.type",
            f"service type {head_service_type!r} makes the Ray dashboard reachable from outside the Kubernetes cluster",
            f"Remove the type or set it to {HEAD_SERVICE_TYPE}.",
        )
    if service_spec.get("externalIPs"):
        raise InvalidRequestError(
            f"{path}.headService.spec.externalIPs",
            "external IPs make the Ray dashboard reachable from outside the Kubernetes cluster",
            "Remove externalIPs.",
        )

    if head.get("enableIngress"):
        raise InvalidRequestError(
            f"{path}.enableIngress",
            "an Ingress makes the Ray dashboard reachable from outside the Kubernetes cluster",
            "Remove enableIngress; from a laptop use KUBERAY_PORT_FORWARD=true.",
        )


def apply_policy(manifest: Mapping[str, Any], policy: Policy) -> dict[str, Any]:
    """Return a copy of a RayCluster manifest with the policy enforced; ``manifest`` is not changed.

    Raises:
        InvalidRequestError: a violation that enforcement cannot fix, naming the manifest field.
    """
    result = copy.deepcopy(dict(manifest))
    spec = result.get("spec")
    if (
        result.get("kind") != "RayCluster"
        or not isinstance(spec, dict)
        or not isinstance(spec.get("headGroupSpec"), dict)
    ):
        raise InvalidRequestError(
            "kind", "apply_policy needs a RayCluster with spec.headGroupSpec", "Render a template first."
        )
    _check_head_exposure(spec["headGroupSpec"])

    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    workers = spec.setdefault("workerGroupSpecs", [])
    total_workers = sum(_worker_count(group) for group in workers)
    if total_workers > policy.max_workers:
        # An autoscaling group's largest size is max_workers; a fixed one's is `workers`.
        bound = "`max_workers`" if autoscaling else "`workers`"
        raise InvalidRequestError(
            "spec.workerGroupSpecs[*].maxReplicas",
            f"{total_workers} workers are above the policy maximum of {policy.max_workers}",
            f"Ask for at most {policy.max_workers} workers ({bound}).",
        )

    # The autoscaler sidecar in the head pod lists pods and patches the RayCluster through the
    # API server with the head's service account, so only that pod keeps its token.
    head_gpus = enforce_pod_template(
        spec["headGroupSpec"].setdefault("template", {}),
        path="spec.headGroupSpec.template",
        policy=policy,
        mount_service_account_token=autoscaling,
    )
    _check_pod_cpus(spec["headGroupSpec"]["template"], path="spec.headGroupSpec.template", policy=policy)
    total_gpus = head_gpus
    for index, group in enumerate(workers):
        gpus = enforce_pod_template(
            group.setdefault("template", {}),
            path=f"spec.workerGroupSpecs[{index}].template",
            policy=policy,
            mount_service_account_token=False,
        )
        _check_pod_cpus(group["template"], path=f"spec.workerGroupSpecs[{index}].template", policy=policy)
        total_gpus += gpus * _worker_count(group)
    if total_gpus > policy.max_gpus_per_cluster:
        raise InvalidRequestError(
            "spec.workerGroupSpecs[*].template.spec.containers[*].resources.limits.nvidia.com/gpu",
            f"the cluster needs {total_gpus} GPUs at its maximum size, above the policy maximum of "
            f"{policy.max_gpus_per_cluster}",
            "Lower `gpus_per_worker` or `workers`.",
        )

    if autoscaling:
        enforce_autoscaler(spec.setdefault("autoscalerOptions", {}), policy=policy)
    else:
        spec.pop("autoscalerOptions", None)
    logger.debug("Applied the policy to RayCluster %s", result.get("metadata", {}).get("name"))
    return result


__all__ = ["GpuType", "Policy", "apply_policy", "load_policy"]
