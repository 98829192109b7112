"""Mapping of request paths and query strings to the API operation they ask for."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tests.kube_standin import errors
from tests.kube_standin.resources import PODS, ResourceRegistry, ResourceType

# Spellings Go's strconv.ParseBool accepts, which kube-apiserver uses for boolean query parameters.
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


@dataclass(frozen=True)
class Route:
    """One API operation: `verb` is get, list, watch, create, update, patch, delete or deletecollection."""

    verb: str
    resource: ResourceType
    # None for a list or watch across all namespaces.
    namespace: str | None
    name: str | None
    # "status", "log" or None.
    subresource: str | None


def query_value(query: Mapping[str, list[str]], key: str) -> str | None:
    """Return the last value of a query parameter, or None when it is absent."""
    values = query.get(key)
    return values[-1] if values else None


def query_bool(query: Mapping[str, list[str]], key: str) -> bool:
    value = query_value(query, key)
    if value is None or value == "":
        return False
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise errors.bad_request(f"invalid boolean {value!r} for query parameter {key}")


def query_int(query: Mapping[str, list[str]], key: str) -> int | None:
    value = query_value(query, key)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as err:
        raise errors.bad_request(f"invalid integer {value!r} for query parameter {key}") from err


def _split_api_prefix(parts: list[str]) -> tuple[str, str, list[str]] | None:
    """Return (group, version, rest) for /api/v1/... and /apis/{group}/{version}/... paths."""
    if len(parts) >= 2 and parts[0] == "api":
        return "", parts[1], parts[2:]
    if len(parts) >= 3 and parts[0] == "apis":
        return parts[1], parts[2], parts[3:]
    return None


def parse_route(method: str, path: str, query: Mapping[str, list[str]], registry: ResourceRegistry) -> Route:
    """Return the operation that a request names.

    Raises ApiError 404 for a path no served resource has, 405 for a method the path does not allow.
    """
    parts = [part for part in path.split("/") if part]
    prefix = _split_api_prefix(parts)
    if prefix is None:
        raise errors.resource_not_served()
    group, version, rest = prefix

    namespace: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace = rest[1]
        rest = rest[2:]
    if not 1 <= len(rest) <= 3:
        raise errors.resource_not_served()
    plural = rest[0]
    name = rest[1] if len(rest) >= 2 else None
    subresource = rest[2] if len(rest) == 3 else None

    resource = registry.by_url(group, version, plural)
    if resource is None:
        raise errors.resource_not_served()
    if namespace is None and name is not None:
        # Every served type is namespaced, so /apis/{group}/{version}/{plural}/{name} names nothing.
        raise errors.resource_not_served()
    if subresource not in (None, "status", "log"):
        raise errors.resource_not_served()
    if subresource == "log" and (resource != PODS or method != "GET"):
        raise errors.resource_not_served()
    if subresource == "status" and not resource.has_status_subresource:
        raise errors.resource_not_served()

    verb = _verb(method, name=name, namespace=namespace, watch=query_bool(query, "watch"))
    return Route(verb=verb, resource=resource, namespace=namespace, name=name, subresource=subresource)


def _verb(method: str, *, name: str | None, namespace: str | None, watch: bool) -> str:
    if method == "GET":
        if name is not None:
            return "get"
        return "watch" if watch else "list"
    if method == "POST" and name is None and namespace is not None:
        return "create"
    if method == "PUT" and name is not None:
        return "update"
    if method == "PATCH" and name is not None:
        return "patch"
    if method == "DELETE" and namespace is not None:
        return "delete" if name is not None else "deletecollection"
    raise errors.ApiError(
        code=405, reason="MethodNotAllowed", message="the server does not allow this method on the requested resource"
    )
