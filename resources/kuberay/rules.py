"""Checks on a Ray manifest that the CRD schema cannot express.

``check_object_meta`` applies the API server's ObjectMeta rules for creating an object
and KubeRay's name rule. ``check_raycluster_spec`` applies the KubeRay operator's spec
checks (``ValidateRayClusterSpec`` in ``ray-operator/controllers/ray/utils/validation.go``)
that a generated manifest could break, and the replica bounds the platform relies on.
Each function returns messages that start with the field's path; an empty list means valid.
"""

from __future__ import annotations

from typing import Any

from resources.kuberay.naming import (
    MAX_CLUSTER_NAME_LENGTH,
    is_dns1035_label,
    is_dns1123_label,
    is_label_value,
    is_qualified_name,
)

# ObjectMeta fields a client may set when it creates an object; the API server sets the rest.
CREATE_METADATA_FIELDS = frozenset(
    {"name", "generateName", "namespace", "labels", "annotations", "ownerReferences", "finalizers"}
)
OWNER_REFERENCE_FIELDS = frozenset({"apiVersion", "kind", "name", "uid", "controller", "blockOwnerDeletion"})
# The API server rejects an object whose annotation keys and values add up to more (TotalAnnotationSizeLimitB).
MAX_ANNOTATIONS_BYTES = 256 * 1024
# KubeRay's RayJob adds a 6-character suffix to its name to name the RayCluster it creates.
MAX_NAME_LENGTH = {"RayCluster": MAX_CLUSTER_NAME_LENGTH, "RayJob": MAX_CLUSTER_NAME_LENGTH - 6}
# rayStartParams that KubeRay rejects together with the group's `resources` field.
RAY_START_RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")


def check_labels(labels: object, *, path: str) -> list[str]:
    """Check label keys (qualified names) and values (label values)."""
    if not isinstance(labels, dict):
        return [f"{path}: expected a mapping of strings, got {type(labels).__name__}"]

    problems = []
    for key, value in labels.items():
        if not isinstance(key, str) or not is_qualified_name(key):
            problems.append(f"{path}.{key}: invalid label key; use [prefix/]name with alphanumerics, '-', '_', '.'")
        if not isinstance(value, str) or not is_label_value(value):
            problems.append(
                f"{path}.{key}: invalid label value {value!r}; use at most 63 characters of alphanumerics, "
                "'-', '_' and '.', starting and ending with an alphanumeric"
            )
    return problems


def check_annotations(annotations: object, *, path: str) -> list[str]:
    """Check annotation keys (qualified names), that values are strings, and the total size."""
    if not isinstance(annotations, dict):
        return [f"{path}: expected a mapping of strings, got {type(annotations).__name__}"]

    problems = []
    total = 0
    for key, value in annotations.items():
        if not isinstance(key, str) or not is_qualified_name(key):
            problems.append(
                f"{path}.{key}: invalid annotation key; use [prefix/]name with alphanumerics, '-', '_', '.'"
            )
        if not isinstance(value, str):
            problems.append(f"{path}.{key}: annotation values must be strings, got {value!r}")
            continue
        total += len(str(key).encode()) + len(value.encode())
    if total > MAX_ANNOTATIONS_BYTES:
        problems.append(
            f"{path}: annotations total {total} bytes, above the API server's limit of {MAX_ANNOTATIONS_BYTES}"
        )
    return problems


def check_object_meta(metadata: dict[str, Any], *, kind: str) -> list[str]:
    """Check the root ``metadata`` of a RayCluster or RayJob that is about to be created."""
    problems = [
        f"metadata.{field}: is set by the API server and must not be in a manifest to create"
        for field in sorted(set(metadata) - CREATE_METADATA_FIELDS)
    ]

    name = metadata.get("name")
    max_length = MAX_NAME_LENGTH.get(kind, MAX_CLUSTER_NAME_LENGTH)
    if not isinstance(name, str) or not name:
        problems.append("metadata.name: required field is missing")
    elif len(name) > max_length or not is_dns1035_label(name):
        problems.append(
            f"metadata.name: {name!r} is not a valid {kind} name; KubeRay requires a DNS-1035 label "
            f"(lowercase alphanumerics and '-', starting with a letter) of at most {max_length} characters"
        )

    namespace = metadata.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or not is_dns1123_label(namespace)):
        problems.append(f"metadata.namespace: {namespace!r} is not a valid namespace name (a DNS-1123 label)")

    if "labels" in metadata:
        problems.extend(check_labels(metadata["labels"], path="metadata.labels"))
    if "annotations" in metadata:
        problems.extend(check_annotations(metadata["annotations"], path="metadata.annotations"))
    problems.extend(_check_owner_references(metadata.get("ownerReferences", [])))
    return problems


def _check_owner_references(references: object) -> list[str]:
    if not isinstance(references, list):
        return [f"metadata.ownerReferences: expected a list, got {type(references).__name__}"]

    problems = []
    for index, reference in enumerate(references):
        path = f"metadata.ownerReferences[{index}]"
        if not isinstance(reference, dict):
            problems.append(f"{path}: expected a mapping, got {type(reference).__name__}")
            continue
        problems.extend(f"{path}.{field}: unknown field" for field in sorted(set(reference) - OWNER_REFERENCE_FIELDS))
        for field in ("apiVersion", "kind", "name", "uid"):
            if not isinstance(reference.get(field), str) or not reference[field]:
                problems.append(f"{path}.{field}: required field is missing")
        for field in ("controller", "blockOwnerDeletion"):
            if field in reference and not isinstance(reference[field], bool):
                problems.append(f"{path}.{field}: expected a boolean, got {reference[field]!r}")
    return problems


def _check_group(group: dict[str, Any], *, path: str) -> list[str]:
    problems = []
    template = group.get("template")
    pod_spec = template.get("spec") if isinstance(template, dict) else None
    containers = pod_spec.get("containers") if isinstance(pod_spec, dict) else None
    if isinstance(containers, list) and not containers:
        problems.append(f"{path}.template.spec.containers: needs at least one container, the Ray container first")

    pod_metadata = template.get("metadata") if isinstance(template, dict) else None
    if isinstance(pod_metadata, dict):
        if "labels" in pod_metadata:
            problems.extend(check_labels(pod_metadata["labels"], path=f"{path}.template.metadata.labels"))
        if "annotations" in pod_metadata:
            problems.extend(
                check_annotations(pod_metadata["annotations"], path=f"{path}.template.metadata.annotations")
            )
    if isinstance(group.get("labels"), dict):
        problems.extend(check_labels(group["labels"], path=f"{path}.labels"))

    start_params = group.get("rayStartParams")
    if isinstance(start_params, dict):
        if "labels" in start_params:
            problems.append(f"{path}.rayStartParams.labels: KubeRay rejects it; use {path}.labels instead")
        resource_params = [name for name in RAY_START_RESOURCE_PARAMS if start_params.get(name)]
        if resource_params and group.get("resources"):
            problems.append(
                f"{path}.resources: KubeRay rejects it together with rayStartParams {resource_params}; set only one"
            )
    return problems


def _check_replicas(group: dict[str, Any], *, path: str) -> list[str]:
    counts = {field: group.get(field) for field in ("replicas", "minReplicas", "maxReplicas")}
    if not all(
        isinstance(value, int) and not isinstance(value, bool) for value in counts.values() if value is not None
    ):
        return []  # The schema reports the wrong type.

    problems = [
        f"{path}.{field}: {value} is less than the minimum of 0"
        for field, value in counts.items()
        if value is not None and value < 0
    ]
    if problems:
        return problems

    low, high, replicas = counts["minReplicas"], counts["maxReplicas"], counts["replicas"]
    if low is not None and high is not None and low > high:
        problems.append(f"{path}.minReplicas: {low} is greater than maxReplicas {high}")
    elif replicas is not None and low is not None and replicas < low:
        problems.append(f"{path}.replicas: {replicas} is less than minReplicas {low}")
    elif replicas is not None and high is not None and replicas > high:
        problems.append(f"{path}.replicas: {replicas} is greater than maxReplicas {high}")
    return problems


def check_raycluster_spec(spec: dict[str, Any], *, path: str = "spec") -> list[str]:
    """Check a RayCluster spec for what KubeRay rejects and for consistent replica bounds per worker group.

    KubeRay clamps ``replicas`` into ``[minReplicas, maxReplicas]`` (``GetWorkerGroupDesiredReplicas``
    in ``ray-operator/controllers/ray/utils/util.go``). The platform rejects a manifest that
    needs clamping, because such a manifest means the request was misread.
    """
    problems = []
    head = spec.get("headGroupSpec")
    if isinstance(head, dict):
        problems.extend(_check_group(head, path=f"{path}.headGroupSpec"))

    groups = spec.get("workerGroupSpecs", [])
    if not isinstance(groups, list):
        return problems
    seen_names: set[str] = set()
    for index, group in enumerate(groups):
        group_path = f"{path}.workerGroupSpecs[{index}]"
        if not isinstance(group, dict):
            continue
        problems.extend(_check_group(group, path=group_path))
        problems.extend(_check_replicas(group, path=group_path))
        name = group.get("groupName")
        if isinstance(name, str):
            if name in seen_names:
                problems.append(f"{group_path}.groupName: {name!r} is used by another worker group")
            seen_names.add(name)
    return problems
