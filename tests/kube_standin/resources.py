"""The resource types the stand-in serves, with the per-type rules of kube-apiserver that the platform meets."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

_COMMON_FIELDS = frozenset({"metadata.name", "metadata.namespace"})


@dataclass(frozen=True)
class ResourceType:
    """One namespaced resource, such as `rayclusters.ray.io/v1`."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    # Custom resources keep `apiVersion`/`kind` on list items and need `metadata.resourceVersion` on PUT.
    custom: bool
    has_status_subresource: bool
    # Fields accepted by `fieldSelector`; the real server rejects any other with 400.
    selectable_fields: frozenset[str] = _COMMON_FIELDS

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified_name(self) -> str:
        """Return `plural.group`, or `plural` for the core group."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def allows_unconditional_update(self) -> bool:
        """Whether PUT may omit `metadata.resourceVersion` (true for the built-in types used here, false for CRDs)."""
        return not self.custom


RAYCLUSTERS = ResourceType(
    group="ray.io", version="v1", plural="rayclusters", kind="RayCluster", custom=True, has_status_subresource=True
)
RAYJOBS = ResourceType(
    group="ray.io", version="v1", plural="rayjobs", kind="RayJob", custom=True, has_status_subresource=True
)
PODS = ResourceType(
    group="",
    version="v1",
    plural="pods",
    kind="Pod",
    custom=False,
    has_status_subresource=True,
    # A subset of the pod fields the real server accepts in a field selector.
    selectable_fields=_COMMON_FIELDS
    | {"status.phase", "spec.nodeName", "spec.restartPolicy", "spec.serviceAccountName", "status.podIP"},
)
SERVICES = ResourceType(
    group="", version="v1", plural="services", kind="Service", custom=False, has_status_subresource=True
)
EVENTS = ResourceType(
    group="",
    version="v1",
    plural="events",
    kind="Event",
    custom=False,
    has_status_subresource=False,
    selectable_fields=_COMMON_FIELDS
    | {
        "involvedObject.kind",
        "involvedObject.name",
        "involvedObject.namespace",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "type",
        "source",
    },
)
JOBS = ResourceType(group="batch", version="v1", plural="jobs", kind="Job", custom=False, has_status_subresource=True)

DEFAULT_RESOURCE_TYPES: tuple[ResourceType, ...] = (RAYCLUSTERS, RAYJOBS, PODS, SERVICES, EVENTS, JOBS)


class ResourceRegistry:
    """Lookup of resource types by URL parts, by `plural[.group]` or by `apiVersion` and `kind`."""

    def __init__(self, resource_types: Iterable[ResourceType]) -> None:
        self._types = tuple(resource_types)

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(self._types)

    def by_url(self, group: str, version: str, plural: str) -> ResourceType | None:
        for resource in self._types:
            if (resource.group, resource.version, resource.plural) == (group, version, plural):
                return resource
        return None

    def by_kind(self, api_version: str, kind: str) -> ResourceType:
        for resource in self._types:
            if (resource.api_version, resource.kind) == (api_version, kind):
                return resource
        raise KeyError(f"the stand-in serves no resource with apiVersion {api_version!r} and kind {kind!r}")

    def resolve(self, name: str | ResourceType) -> ResourceType:
        """Return the type named by a ResourceType, `plural`, `plural.group` or `Kind`.

        Raises KeyError when no type or more than one type has that name.
        """
        if isinstance(name, ResourceType):
            return name
        matches = [
            resource for resource in self._types if name in (resource.plural, resource.qualified_name, resource.kind)
        ]
        if len(matches) != 1:
            served = ", ".join(resource.qualified_name for resource in self._types)
            raise KeyError(f"resource {name!r} matches {len(matches)} served types; served types: {served}")
        return matches[0]
