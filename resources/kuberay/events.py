"""The recent core/v1 Events about a RayCluster and its pods, as `kubectl describe` shows them."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

from resources.kuberay.lifecycle import API_TIMEOUT_S, CLUSTER_LABEL
from resources.kuberay.retry import call_with_retries

DEFAULT_EVENT_LIMIT = 20
_OLDEST = datetime.datetime.min.replace(tzinfo=datetime.UTC)


def recent_events(
    core_api: client.CoreV1Api,
    namespace: str,
    cluster: str,
    *,
    limit: int = DEFAULT_EVENT_LIMIT,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any]]:
    """Return the newest ``limit`` events about the RayCluster ``cluster`` and its pods, oldest first.

    Each event is a dict with ``time`` (when it was last seen, RFC 3339 in UTC, "" when the
    event has no time), ``type`` (Normal or Warning), ``reason``, ``object`` (``RayCluster/<name>``
    or ``Pod/<name>``), ``message`` and ``count``. ``clock`` and ``sleep`` pace the retries of
    transient API errors.

    Raises:
        ValueError: ``limit`` is below 1.
        ApiException: a list call failed with a non-transient error, or retries ran out.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")

    def retry(call: Callable[[], Any], description: str) -> Any:
        return call_with_retries(call, description=description, clock=clock, sleep=sleep)

    pods = retry(
        lambda: core_api.list_namespaced_pod(
            namespace, label_selector=f"{CLUSTER_LABEL}={cluster}", _request_timeout=API_TIMEOUT_S
        ),
        f"list pods of raycluster {namespace}/{cluster}",
    ).items

    # One list call per object, filtered by the API server, rather than one list of the whole
    # namespace, because the namespace's events include every other workload's (kube-apiserver keeps
    # events for an hour by default, its --event-ttl), while a RayCluster has a head and a few
    # worker pods.
    # NOTE: only pods that exist now are found, so the events of deleted pods are left out.
    involved = [("RayCluster", cluster)] + [("Pod", pod.metadata.name) for pod in pods]
    events: list[client.CoreV1Event] = []
    for kind, name in involved:
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        listed = retry(
            lambda selector=selector: core_api.list_namespaced_event(
                namespace, field_selector=selector, _request_timeout=API_TIMEOUT_S
            ),
            f"list events of {kind} {namespace}/{name}",
        )
        events.extend(listed.items)

    events.sort(key=_sort_key)
    return [_summary(event) for event in events[-limit:]]


def _sort_key(event: client.CoreV1Event) -> tuple[datetime.datetime, int, str]:
    # lastTimestamp has whole seconds, so events of the same second are ordered by the time in
    # their name, because client-go's recorders name an event "<object>.<creation time in hex nanoseconds>".
    name = event.metadata.name or ""
    _, dot, suffix = name.rpartition(".")
    try:
        created_ns = int(suffix, 16) if dot else 0
    except ValueError:
        created_ns = 0
    return _last_seen(event) or _OLDEST, created_ns, name


def _last_seen(event: client.CoreV1Event) -> datetime.datetime | None:
    """Return when an event was last seen, or ``None`` when it carries no time.

    That is `lastTimestamp`, or for an event series written through events.k8s.io/v1 the last
    observed time of the series, and otherwise the time the event was first written.
    """
    series_time = event.series.last_observed_time if event.series is not None else None
    for moment in (
        event.last_timestamp,
        series_time,
        event.event_time,
        event.first_timestamp,
        event.metadata.creation_timestamp,
    ):
        if moment is not None:
            return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)
    return None


def _summary(event: client.CoreV1Event) -> dict[str, Any]:
    moment = _last_seen(event)
    involved = event.involved_object
    count = event.count or (event.series.count if event.series is not None else None) or 1
    return {
        "time": moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else "",
        "type": event.type or "",
        "reason": event.reason or "",
        "object": f"{involved.kind}/{involved.name}",
        "message": event.message or "",
        "count": count,
    }
