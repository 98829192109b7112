"""Thread-safe object store with the write semantics of kube-apiserver and a change history for watches.

The HTTP server calls `create`, `replace`, `patch` and `delete`, which check resource versions and
run the registered validators. Tests and stand-in controllers may call the same methods, or seed
and change objects without those checks through `put` and `update_status`.
"""

from __future__ import annotations

import copy
import datetime
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.kube_standin import errors
from tests.kube_standin.patch import apply_patch
from tests.kube_standin.resources import (
    DEFAULT_RESOURCE_TYPES,
    PODS,
    SERVICES,
    ResourceRegistry,
    ResourceType,
)
from tests.kube_standin.selectors import FieldSelector, LabelSelector

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime.datetime]
Validator = Callable[[dict[str, Any]], list[str]]
Subscriber = Callable[["WatchEvent"], None]

# Changes kept for watches that resume from a resourceVersion; an older version gets 410 Gone.
DEFAULT_HISTORY_LIMIT = 10_000
# Characters kube-apiserver uses for the random suffix of `metadata.generateName` (no vowels, no 0/1/3).
_GENERATE_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_GENERATE_NAME_SUFFIX_LENGTH = 5
# Metadata fields that only the server sets; a client's values for them are ignored on update.
_SERVER_MANAGED_METADATA = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def format_timestamp(moment: datetime.datetime) -> str:
    """Format as RFC 3339 in UTC with second precision, as `metadata.creationTimestamp` is written."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class WatchEvent:
    """One committed change: `type` is ADDED, MODIFIED or DELETED, `object` the object after it."""

    type: str
    resource: ResourceType
    object: dict[str, Any]
    # The object before a MODIFIED or DELETED change; None for ADDED.
    old_object: dict[str, Any] | None
    resource_version: int

    @property
    def namespace(self) -> str:
        return str(self.object["metadata"]["namespace"])


def _namespace_name(obj: Mapping[str, Any]) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace", "")), str(metadata.get("name", ""))


def _sort_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    # etcd returns lists ordered by key, which is /registry/<resource>/<namespace>/<name>.
    return _namespace_name(obj)


def _without_metadata_and_status(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in obj.items() if key not in ("metadata", "status", "apiVersion", "kind")}


class Watcher:
    """A watch on one resource type: initial ADDED events, then committed changes that match its filters.

    Changes are translated against the selectors as kube-apiserver does: an object modified into the
    selection arrives as ADDED, one modified out of it as DELETED.
    """

    def __init__(
        self,
        *,
        store: ObjectStore,
        resource: ResourceType,
        namespace: str | None,
        label_selector: LabelSelector,
        field_selector: FieldSelector,
        cursor: int,
        initial_events: Iterable[WatchEvent],
    ) -> None:
        self._store = store
        self.resource = resource
        self.namespace = namespace
        self._label_selector = label_selector
        self._field_selector = field_selector
        self._cursor = cursor
        self._initial_events = deque(initial_events)
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether the watch was closed by `close()` or by the store shutting down."""
        return self._closed or self._store.closed

    @property
    def resource_version(self) -> int:
        """The version of the last change this watch has looked at."""
        return self._cursor

    def close(self) -> None:
        with self._store._changed:
            self._closed = True
            self._store._changed.notify_all()

    def _matches(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        namespace, _ = _namespace_name(obj)
        if self.namespace is not None and namespace != self.namespace:
            return False
        labels = (obj.get("metadata") or {}).get("labels")
        return self._label_selector.matches(labels) and self._field_selector.matches(obj)

    def _translate(self, event: WatchEvent) -> WatchEvent | None:
        if event.resource != self.resource:
            return None
        matched_before = self._matches(event.old_object)
        matched_now = self._matches(event.object)
        if event.type == "ADDED":
            return event if matched_now else None
        if event.type == "DELETED":
            return event if matched_before else None
        if matched_before and matched_now:
            return event
        if matched_now:
            return WatchEvent("ADDED", event.resource, event.object, event.old_object, event.resource_version)
        if matched_before:
            return WatchEvent("DELETED", event.resource, event.object, event.old_object, event.resource_version)
        return None

    def next_event(self, timeout_s: float | None = None) -> WatchEvent | None:
        """Return the next matching event, or None when `timeout_s` passes or the watch is closed.

        Raises ApiError 410 when the history no longer contains the changes after this watch's version.
        """
        if self._initial_events:
            return self._initial_events.popleft()

        with self._store._changed:
            deadline = None if timeout_s is None else self._store._monotonic() + timeout_s
            while not self.closed:
                for event in self._store._events_after(self._cursor):
                    self._cursor = event.resource_version
                    translated = self._translate(event)
                    if translated is not None:
                        return translated
                remaining = None if deadline is None else deadline - self._store._monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._store._changed.wait(remaining)
        return None


class ObjectStore:
    """In-memory objects of the served resource types, all namespaced, with one global resourceVersion.

    Every public method takes the resource as a ResourceType, `plural`, `plural.group` or `Kind`.
    Returned objects are copies, so callers may change them freely.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        validators: Mapping[tuple[str, str], Validator] | None = None,
        resource_types: Iterable[ResourceType] = DEFAULT_RESOURCE_TYPES,
        history_limit: int = DEFAULT_HISTORY_LIMIT,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self.resources = ResourceRegistry(resource_types)
        self._clock = clock or utc_now
        self._validators = dict(validators or {})
        self._monotonic = monotonic or time.monotonic
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._objects: dict[tuple[ResourceType, str, str], dict[str, Any]] = {}
        self._resource_version = 0
        self._history: deque[WatchEvent] = deque(maxlen=history_limit)
        self._subscribers: list[Subscriber] = []
        self._undelivered: deque[WatchEvent] = deque()
        self._delivering = False
        self._pod_logs: dict[tuple[str, str, str | None], str] = {}
        self._next_cluster_ip = 1
        self._closed = False
        self.subscriber_errors: list[Exception] = []

    # ----- state -----

    @property
    def resource_version(self) -> int:
        """The version of the last committed change (0 before the first)."""
        with self._lock:
            return self._resource_version

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """End every open watch; later writes still work, so a test can inspect the store after shutdown."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def objects(self, resource: str | ResourceType | None = None) -> list[dict[str, Any]]:
        """Return copies of all objects, or of one resource type's, ordered by namespace and name."""
        with self._lock:
            resource_type = None if resource is None else self.resources.resolve(resource)
            found = [obj for key, obj in self._objects.items() if resource_type in (None, key[0])]
            return copy.deepcopy(sorted(found, key=_sort_key))

    # ----- API operations -----

    def get(self, resource: str | ResourceType, namespace: str, name: str) -> dict[str, Any]:
        """Return the object; raise ApiError 404 when it does not exist."""
        resource_type = self.resources.resolve(resource)
        with self._lock:
            return copy.deepcopy(self._require(resource_type, namespace, name))

    def list(
        self,
        resource: str | ResourceType,
        namespace: str | None = None,
        *,
        label_selector: LabelSelector | None = None,
        field_selector: FieldSelector | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """Return the matching objects of all namespaces (`namespace=None`) or one, and the list's resourceVersion."""
        resource_type = self.resources.resolve(resource)
        label_selector = label_selector or LabelSelector()
        field_selector = field_selector or FieldSelector()
        with self._lock:
            items = [
                obj
                for (key_type, key_namespace, _), obj in self._objects.items()
                if key_type == resource_type
                and namespace in (None, key_namespace)
                and label_selector.matches(obj["metadata"].get("labels"))
                and field_selector.matches(obj)
            ]
            return copy.deepcopy(sorted(items, key=_sort_key)), self._resource_version

    def create(self, resource: str | ResourceType, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create an object as POST does: the server fills metadata and drops a status the type keeps in `/status`.

        Raises ApiError: 400 for a namespace or kind that does not match the request, 409 AlreadyExists,
        422 when neither name nor generateName is set or a validator rejects the object.
        """
        resource_type = self.resources.resolve(resource)
        obj = self._check_body(resource_type, body)
        metadata = obj.setdefault("metadata", {})
        if metadata.get("namespace", namespace) != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        metadata["namespace"] = namespace
        for field in (*_SERVER_MANAGED_METADATA, "resourceVersion"):
            metadata.pop(field, None)

        if resource_type.has_status_subresource:
            obj.pop("status", None)
        if resource_type == PODS:
            obj["status"] = {"phase": "Pending"}

        with self._lock:
            if not metadata.get("name"):
                metadata["name"] = self._generate_name(resource_type, namespace, metadata)
            name = metadata["name"]
            if (resource_type, namespace, name) in self._objects:
                raise errors.already_exists(resource_type.group, resource_type.plural, name)
            if resource_type == SERVICES:
                self._allocate_cluster_ip(obj)
            self._fill_new_metadata(metadata)
            self._validate(resource_type, obj)
            return self._commit("ADDED", resource_type, obj, old=None)

    def replace(
        self,
        resource: str | ResourceType,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """Replace an object as PUT does, on the main endpoint or on `subresource="status"`.

        The main endpoint keeps the stored status of types with a status subresource, and
        `/status` changes nothing but `status`. Raises ApiError: 404, 400 for a name or namespace
        that does not match the URL, 409 Conflict for a stale `metadata.resourceVersion`, 422 for a
        missing one on a custom resource or when a validator rejects the object.
        """
        resource_type = self.resources.resolve(resource)
        obj = self._check_body(resource_type, body)
        metadata = obj.setdefault("metadata", {})
        if metadata.setdefault("name", name) != name:
            raise errors.bad_request(
                f"the name of the object ({metadata['name']}) does not match the name on the URL ({name})"
            )
        if metadata.setdefault("namespace", namespace) != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )

        with self._lock:
            current = self._require_for_subresource(resource_type, namespace, name, subresource)
            requested_version = metadata.get("resourceVersion")
            if requested_version:
                self._check_resource_version(resource_type, current, requested_version)
            elif not resource_type.allows_unconditional_update:
                raise errors.invalid(
                    group=resource_type.group,
                    kind=resource_type.kind,
                    name=name,
                    causes=["metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"],
                )
            return self._update(resource_type, current, obj, subresource=subresource, validate=True)

    def patch(
        self,
        resource: str | ResourceType,
        namespace: str,
        name: str,
        patch: Any,
        *,
        content_type: str,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """Patch an object as PATCH does; see `patch.apply_patch` for the supported content types.

        A patch that sets `metadata.resourceVersion` is checked against the stored version (409 on
        a mismatch), as on the real server. The rules for status are those of `replace`.
        """
        resource_type = self.resources.resolve(resource)
        with self._lock:
            current = self._require_for_subresource(resource_type, namespace, name, subresource)
            patched = apply_patch(current, patch, content_type=content_type)
            if not isinstance(patched.get("metadata"), dict):
                raise errors.bad_request("the patch removed metadata from the object")
            requested_version = patched["metadata"].get("resourceVersion")
            if requested_version:
                self._check_resource_version(resource_type, current, requested_version)
            patched["metadata"]["name"] = name
            patched["metadata"]["namespace"] = namespace
            return self._update(resource_type, current, patched, subresource=subresource, validate=True)

    def delete(
        self,
        resource: str | ResourceType,
        namespace: str,
        name: str,
        *,
        preconditions: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Delete an object and return its last state, as DELETE does.

        An object with `metadata.finalizers` only gets `deletionTimestamp`; it goes away on the
        update that empties its finalizers. Pods go away at once, as there is no kubelet to stop
        them gracefully. Raises ApiError 404, or 409 when `preconditions` (uid, resourceVersion)
        do not match.
        """
        resource_type = self.resources.resolve(resource)
        with self._lock:
            current = self._require(resource_type, namespace, name)
            for field in ("uid", "resourceVersion"):
                expected = (preconditions or {}).get(field)
                actual = current["metadata"].get(field)
                if expected and expected != actual:
                    raise errors.ApiError(
                        code=409,
                        reason="Conflict",
                        message=f"Precondition failed: {field} in precondition: {expected}, "
                        f"{field} in object meta: {actual}",
                    )

            if current["metadata"].get("finalizers"):
                if current["metadata"].get("deletionTimestamp"):
                    return copy.deepcopy(current)
                marked = copy.deepcopy(current)
                marked["metadata"]["deletionTimestamp"] = format_timestamp(self._clock())
                marked["metadata"]["deletionGracePeriodSeconds"] = 0
                return self._commit("MODIFIED", resource_type, marked, old=current)
            return self._commit("DELETED", resource_type, copy.deepcopy(current), old=current)

    # ----- direct access for tests and stand-in controllers -----

    def put(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create or overwrite an object without version checks or validators; its status is kept.

        The type comes from `apiVersion` and `kind`, the namespace from `metadata.namespace`
        ("default" when missing). Overwriting keeps `uid` and `creationTimestamp` unless given and
        raises `generation` when anything outside metadata and status changed.
        """
        resource_type = self.resources.by_kind(str(obj.get("apiVersion")), str(obj.get("kind")))
        new = self._check_body(resource_type, obj)
        metadata = new.setdefault("metadata", {})
        metadata.setdefault("namespace", "default")
        if not metadata.get("name"):
            raise ValueError(f"put() needs metadata.name, got metadata {metadata!r}")
        metadata.pop("resourceVersion", None)

        with self._lock:
            current = self._objects.get((resource_type, metadata["namespace"], metadata["name"]))
            if current is None:
                self._fill_new_metadata(metadata, keep_given=True)
                return self._commit("ADDED", resource_type, new, old=None)
            for field in ("uid", "creationTimestamp"):
                metadata.setdefault(field, current["metadata"][field])
            return self._update(resource_type, current, new, subresource=None, validate=False, from_client=False)

    def update_status(
        self, resource: str | ResourceType, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Replace `status` without version checks or validators; the write never conflicts."""
        resource_type = self.resources.resolve(resource)
        with self._lock:
            current = self._require(resource_type, namespace, name)
            new = copy.deepcopy(current)
            new["status"] = copy.deepcopy(dict(status))
            return self._update(resource_type, current, new, subresource="status", validate=False)

    def set_pod_log(self, namespace: str, name: str, text: str, *, container: str | None = None) -> None:
        """Set the text that GET .../pods/{name}/log returns; without `container`, for every container."""
        with self._lock:
            self._pod_logs[(namespace, name, container)] = text

    def pod_log(self, namespace: str, name: str, *, container: str | None = None) -> str:
        """Return the pod's log text ("" when none was set); raise ApiError 404 when the pod does not exist."""
        with self._lock:
            self._require(PODS, namespace, name)
            if (namespace, name, container) in self._pod_logs:
                return self._pod_logs[(namespace, name, container)]
            return self._pod_logs.get((namespace, name, None), "")

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback` with every committed change; return a function that unsubscribes it.

        Callbacks run on the writing thread with the store lock held, one change at a time in
        commit order. A callback may write to the store: its changes reach the subscribers after
        the current change has reached all of them. A callback must not wait for another thread
        that uses the store. Exceptions from a callback are logged and kept in
        `subscriber_errors`, and the write that triggered it still succeeds.
        """
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def watch(
        self,
        resource: str | ResourceType,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        label_selector: LabelSelector | None = None,
        field_selector: FieldSelector | None = None,
    ) -> Watcher:
        """Open a watch with the `resourceVersion` rules of the watch API.

        Unset or "0": an ADDED event for each matching object, then later changes. A number:
        the changes after that version. Raises ApiError 410 when that version is older than the
        kept history, 400 when it is not a number.
        """
        resource_type = self.resources.resolve(resource)
        label_selector = label_selector or LabelSelector()
        field_selector = field_selector or FieldSelector()
        with self._lock:
            if resource_version in (None, "", "0"):
                watcher = Watcher(
                    store=self,
                    resource=resource_type,
                    namespace=namespace,
                    label_selector=label_selector,
                    field_selector=field_selector,
                    cursor=self._resource_version,
                    initial_events=[],
                )
                items, _ = self.list(
                    resource_type, namespace, label_selector=label_selector, field_selector=field_selector
                )
                watcher._initial_events.extend(
                    WatchEvent("ADDED", resource_type, item, None, int(item["metadata"]["resourceVersion"]))
                    for item in items
                )
                return watcher

            try:
                cursor = int(resource_version)
            except ValueError as err:
                raise errors.bad_request(f"invalid resourceVersion {resource_version!r}: expected an integer") from err
            self._events_after(cursor)
            return Watcher(
                store=self,
                resource=resource_type,
                namespace=namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                cursor=cursor,
                initial_events=[],
            )

    def compact(self) -> None:
        """Drop the change history, so a watch from any version before now gets 410 Gone."""
        with self._lock:
            self._history.clear()

    # ----- internals; the caller holds self._lock unless noted -----

    def _events_after(self, version: int) -> list[WatchEvent]:
        """Return the kept changes newer than `version`; raise ApiError 410 when some were already dropped.

        The history is contiguous, because every commit adds exactly one event and one version.
        """
        if version >= self._resource_version:
            return []
        oldest = self._history[0].resource_version if self._history else self._resource_version + 1
        if version < oldest - 1:
            raise errors.gone(f"too old resource version: {version} ({oldest - 1})")
        return list(self._history)[version - oldest + 1 :]

    def _check_body(self, resource_type: ResourceType, body: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(body, Mapping):
            raise errors.bad_request(f"the request body must be a JSON object, got {type(body).__name__}")
        obj = copy.deepcopy(dict(body))
        for field, expected in (("apiVersion", resource_type.api_version), ("kind", resource_type.kind)):
            if obj.get(field) not in (None, "", expected):
                raise errors.bad_request(
                    f"the {field} of the object ({obj[field]}) does not match the {field} of the URL ({expected})"
                )
            obj[field] = expected
        if not isinstance(obj.setdefault("metadata", {}), dict):
            raise errors.bad_request("metadata must be a JSON object")
        return obj

    def _require(self, resource_type: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        found = self._objects.get((resource_type, namespace, name))
        if found is None:
            raise errors.not_found(resource_type.group, resource_type.plural, name)
        return found

    def _require_for_subresource(
        self, resource_type: ResourceType, namespace: str, name: str, subresource: str | None
    ) -> dict[str, Any]:
        if subresource not in (None, "status") or (
            subresource == "status" and not resource_type.has_status_subresource
        ):
            raise errors.resource_not_served()
        return self._require(resource_type, namespace, name)

    def _check_resource_version(self, resource_type: ResourceType, current: Mapping[str, Any], requested: Any) -> None:
        if str(requested) != current["metadata"]["resourceVersion"]:
            raise errors.conflict(resource_type.group, resource_type.plural, current["metadata"]["name"])

    def _generate_name(self, resource_type: ResourceType, namespace: str, metadata: dict[str, Any]) -> str:
        prefix = metadata.get("generateName")
        if not prefix:
            raise errors.invalid(
                group=resource_type.group,
                kind=resource_type.kind,
                name="",
                causes=["metadata.name: Required value: name or generateName is required"],
            )
        while True:
            suffix = "".join(random.choices(_GENERATE_NAME_ALPHABET, k=_GENERATE_NAME_SUFFIX_LENGTH))
            if (resource_type, namespace, prefix + suffix) not in self._objects:
                return str(prefix + suffix)

    def _allocate_cluster_ip(self, service: dict[str, Any]) -> None:
        spec = service.setdefault("spec", {})
        if spec.get("clusterIP") or spec.get("type") == "ExternalName":
            return
        number = self._next_cluster_ip
        self._next_cluster_ip += 1
        spec["clusterIP"] = f"10.96.{number // 256}.{number % 256}"
        spec["clusterIPs"] = [spec["clusterIP"]]

    def _fill_new_metadata(self, metadata: dict[str, Any], *, keep_given: bool = False) -> None:
        values = {
            "uid": str(uuid.uuid4()),
            "creationTimestamp": format_timestamp(self._clock()),
            "generation": 1,
        }
        for field, value in values.items():
            if keep_given:
                metadata.setdefault(field, value)
            else:
                metadata[field] = value

    def _validate(self, resource_type: ResourceType, obj: dict[str, Any]) -> None:
        validator = self._validators.get((resource_type.group, resource_type.plural))
        if validator is None:
            return
        causes = validator(copy.deepcopy(obj))
        if causes:
            raise errors.invalid(
                group=resource_type.group, kind=resource_type.kind, name=obj["metadata"]["name"], causes=causes
            )

    def _update(
        self,
        resource_type: ResourceType,
        current: dict[str, Any],
        requested: dict[str, Any],
        *,
        subresource: str | None,
        validate: bool,
        from_client: bool = True,
    ) -> dict[str, Any]:
        """Commit an update built from `requested`, keeping what the endpoint may not change.

        With `from_client`, the server-managed metadata comes from `current`, and so does the
        status of a type with a status subresource. Without it, as for `put`, the values in
        `requested` win. An update that changes nothing is not written and keeps its
        resourceVersion, as on the real server.
        """
        if subresource == "status":
            new = copy.deepcopy(current)
            if "status" in requested:
                new["status"] = copy.deepcopy(requested["status"])
            else:
                new.pop("status", None)
        else:
            new = copy.deepcopy(requested)
            if from_client:
                for field in _SERVER_MANAGED_METADATA:
                    if field in current["metadata"]:
                        new["metadata"][field] = current["metadata"][field]
                    else:
                        new["metadata"].pop(field, None)
                if resource_type.has_status_subresource:
                    if "status" in current:
                        new["status"] = copy.deepcopy(current["status"])
                    else:
                        new.pop("status", None)
            if from_client or "generation" not in new["metadata"]:
                generation = int(current["metadata"].get("generation", 1))
                if _without_metadata_and_status(new) != _without_metadata_and_status(current):
                    generation += 1
                new["metadata"]["generation"] = generation
        new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]

        if validate:
            self._validate(resource_type, new)
        if new == current:
            return copy.deepcopy(current)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            return self._commit("DELETED", resource_type, new, old=current)
        return self._commit("MODIFIED", resource_type, new, old=current)

    def _commit(
        self, event_type: str, resource_type: ResourceType, obj: dict[str, Any], *, old: dict[str, Any] | None
    ) -> dict[str, Any]:
        self._resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self._resource_version)
        namespace, name = _namespace_name(obj)
        key = (resource_type, namespace, name)
        if event_type == "DELETED":
            del self._objects[key]
        else:
            self._objects[key] = obj
        logger.debug(
            "%s %s %s/%s at resourceVersion %d", event_type, resource_type.kind, namespace, name, self._resource_version
        )

        event = WatchEvent(event_type, resource_type, copy.deepcopy(obj), copy.deepcopy(old), self._resource_version)
        self._history.append(event)
        self._changed.notify_all()
        self._deliver(event)
        return copy.deepcopy(obj)

    def _deliver(self, event: WatchEvent) -> None:
        self._undelivered.append(event)
        if self._delivering:
            # A subscriber wrote to the store; the outer loop delivers this change after the current one.
            return
        self._delivering = True
        try:
            while self._undelivered:
                pending = self._undelivered.popleft()
                for callback in list(self._subscribers):
                    try:
                        callback(pending)
                    except Exception as err:
                        logger.exception(
                            "subscriber %r failed on %s %s/%s",
                            callback,
                            pending.type,
                            pending.resource.kind,
                            pending.object["metadata"]["name"],
                        )
                        self.subscriber_errors.append(err)
        finally:
            self._delivering = False
