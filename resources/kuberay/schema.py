"""Validation of RayCluster and RayJob manifests against the KubeRay CRD schemas stored in this package.

The stored files are the CRDs' v1 ``openAPIV3Schema`` without descriptions (written by
``scripts/extract_kuberay_schemas.py``; ``crds/VERSION`` names the KubeRay release).
They are turned into JSON Schema with the Kubernetes rules for structural schemas:

* an object lists its fields, so an unknown field is an error here where the API server
  would silently drop it, unless the node sets ``x-kubernetes-preserve-unknown-fields``;
* ``x-kubernetes-int-or-string`` accepts an integer or a string, even without ``type``;
* ``nullable: true`` is the only way to accept ``null``;
* ``format: int32`` and ``int64`` bound integers, and an integer is never a float or bool;
* ``x-kubernetes-list-type: set`` and ``map`` reject duplicate items or keys.

After the schema, the ObjectMeta rules of the API server and the KubeRay operator's
own spec checks run (see ``resources.kuberay.rules``).
"""

from __future__ import annotations

import copy
import datetime
import functools
import importlib.resources
import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import jsonschema
from jsonschema import Draft7Validator, FormatChecker, ValidationError

from resources.kuberay.rules import check_object_meta, check_raycluster_spec

logger = logging.getLogger(__name__)

API_VERSION = "ray.io/v1"
SCHEMA_FILES = {"RayCluster": "rayclusters.ray.io.v1.json", "RayJob": "rayjobs.ray.io.v1.json"}

_INT32_RANGE = (-(2**31), 2**31 - 1)
_INT64_RANGE = (-(2**63), 2**63 - 1)
_SUBSCHEMA_KEYWORDS = ("additionalProperties", "items", "not")
_SUBSCHEMA_LIST_KEYWORDS = ("allOf", "anyOf", "oneOf")


@functools.cache
def load_schema(kind: str) -> dict[str, Any]:
    """Return the stored openAPIV3Schema of ``kind`` (``RayCluster`` or ``RayJob``), read once per process.

    Raises:
        KeyError: ``kind`` has no stored schema.
    """
    resource = importlib.resources.files("resources.kuberay") / "crds" / SCHEMA_FILES[kind]
    return json.loads(resource.read_text(encoding="utf-8"))


@functools.cache
def kuberay_version() -> str:
    """Return the KubeRay release the stored schemas come from, such as ``v1.7.0``."""
    return (importlib.resources.files("resources.kuberay") / "crds" / "VERSION").read_text().strip()


def to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """Translate one structural OpenAPI v3 schema node, and everything under it, into JSON Schema."""
    result = {keyword: value for keyword, value in node.items() if keyword != "properties"}

    if "properties" in node:
        result["properties"] = {name: to_json_schema(child) for name, child in node["properties"].items()}
    for keyword in _SUBSCHEMA_KEYWORDS:
        if isinstance(node.get(keyword), dict):
            result[keyword] = to_json_schema(node[keyword])
    for keyword in _SUBSCHEMA_LIST_KEYWORDS:
        if keyword in node:
            result[keyword] = [to_json_schema(child) for child in node[keyword]]

    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        result["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in node:
        result["type"] = [node["type"], "null"]

    is_object = node.get("type") == "object" or "properties" in node
    if is_object and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        result["additionalProperties"] = False
    return result


def _check_list_type(
    validator: Draft7Validator, list_type: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not isinstance(instance, list):
        return

    if list_type == "set":
        seen: list[Any] = []
        for item in instance:
            if item in seen:
                yield ValidationError(f"duplicate item {item!r} in a list of type set")
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen_keys: set[str] = set()
        for item in instance:
            if not isinstance(item, dict):
                continue
            key = json.dumps([item.get(name) for name in keys])
            if key in seen_keys:
                described = ", ".join(f"{name}={item.get(name)!r}" for name in keys)
                yield ValidationError(f"duplicate item with {described}; the list keys are {keys}")
            seen_keys.add(key)


def _is_strict_integer(checker: Any, instance: Any) -> bool:
    # JSON Schema counts 1.0 as an integer; Kubernetes int32 and int64 fields do not.
    return isinstance(instance, int) and not isinstance(instance, bool)


def _in_range(bounds: tuple[int, int]) -> Any:
    def check(instance: object) -> bool:
        if not isinstance(instance, int) or isinstance(instance, bool):
            return True
        return bounds[0] <= instance <= bounds[1]

    return check


def _is_date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    try:
        datetime.datetime.fromisoformat(instance)
    except ValueError:
        return False
    return True


_FORMAT_CHECKER = FormatChecker(formats=())
_FORMAT_CHECKER.checks("int32")(_in_range(_INT32_RANGE))
_FORMAT_CHECKER.checks("int64")(_in_range(_INT64_RANGE))
_FORMAT_CHECKER.checks("date-time")(_is_date_time)

_KubernetesValidator = jsonschema.validators.extend(
    Draft7Validator,
    validators={"x-kubernetes-list-type": _check_list_type},
    type_checker=Draft7Validator.TYPE_CHECKER.redefine("integer", _is_strict_integer),
)


@functools.cache
def _validator(kind: str) -> Draft7Validator:
    schema = copy.deepcopy(load_schema(kind))
    # The API server validates the root metadata as ObjectMeta whatever the CRD contains,
    # so the schema only requires an object and rules.check_object_meta checks the fields.
    schema["properties"]["metadata"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    logger.debug("Built the %s validator from KubeRay %s", kind, kuberay_version())
    return _KubernetesValidator(to_json_schema(schema), format_checker=_FORMAT_CHECKER)


def format_path(parts: Iterable[str | int]) -> str:
    """Format a JSON path the way kubectl prints field paths: ``spec.workerGroupSpecs[0].replicas``."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif text:
            text += f".{part}"
        else:
            text = str(part)
    return text


def _describe(error: ValidationError) -> list[str]:
    path = format_path(error.absolute_path)
    prefix = f"{path}." if path else ""
    where = path or "(root)"

    if error.validator == "additionalProperties" and error.validator_value is False:
        known = error.schema.get("properties", {})
        return [
            f"{prefix}{name}: unknown field; the CRD schema does not define it, so Kubernetes would drop it"
            for name in sorted(set(error.instance) - set(known))
        ]
    if error.validator == "required":
        return [
            f"{prefix}{name}: required field is missing" for name in error.validator_value if name not in error.instance
        ]
    if error.validator == "anyOf" and error.schema.get("x-kubernetes-int-or-string"):
        return [f"{where}: expected an integer or a string, got {error.instance!r}"]
    if error.validator == "format":
        return [f"{where}: {error.instance!r} is not a valid {error.validator_value}"]
    return [f"{where}: {error.message}"]


def validate_manifest(manifest: dict[str, Any]) -> list[str]:
    """Validate a RayCluster or RayJob manifest and return one message per problem, each starting with its path.

    An empty list means the manifest passes the stored schema with no field that
    Kubernetes would drop, the API server's ObjectMeta rules, and the KubeRay operator
    checks in ``resources.kuberay.rules``.

    Limitation: the CEL rules of ``x-kubernetes-validations`` are not evaluated. In KubeRay
    v1.7.0 they guard immutability on update, the values of ``spec.managedBy`` and the
    combinations in a RayJob's ``deletionStrategy``, none of which the platform sets.
    """
    if not isinstance(manifest, dict):
        return [f"(root): expected a mapping, got {type(manifest).__name__}"]

    problems: list[str] = []
    if manifest.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion: expected {API_VERSION!r}, got {manifest.get('apiVersion')!r}")
    kind = manifest.get("kind")
    if kind not in SCHEMA_FILES:
        problems.append(f"kind: expected one of {sorted(SCHEMA_FILES)}, got {kind!r}")
        return problems

    errors = sorted(_validator(kind).iter_errors(manifest), key=lambda error: [str(p) for p in error.absolute_path])
    for error in errors:
        for message in _describe(error):
            if message not in problems:
                problems.append(message)

    metadata = manifest.get("metadata")
    if isinstance(metadata, dict):
        problems.extend(check_object_meta(metadata, kind=kind))
    elif metadata is None:
        problems.append("metadata: required field is missing")

    spec = manifest.get("spec")
    if spec is None:
        problems.append("spec: required field is missing")
    cluster_spec_path = "spec" if kind == "RayCluster" else "spec.rayClusterSpec"
    cluster_spec = spec.get("rayClusterSpec") if kind == "RayJob" and isinstance(spec, dict) else spec
    if isinstance(cluster_spec, dict):
        problems.extend(check_raycluster_spec(cluster_spec, path=cluster_spec_path))
    return problems
