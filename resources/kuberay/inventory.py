"""Summaries of clusters: origin, owner, expiry, size and state.

``ClusterSummary`` describes clusters of both backends. ``summarize`` builds it from a
RayCluster object alone, so listing clusters costs one list call however many there are.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from resources.kuberay.manifest import (
    ASSET_KEY,
    CODE_LOCATION_KEY,
    JOB_KEY,
    ORIGIN_KEY,
    OWNER_ANNOTATION,
    PARTITION_KEY,
    RUN_ID_KEY,
    RUN_URL_ANNOTATION,
    TEAM_KEY,
    TEMPLATE_ANNOTATION,
    TTL_ANNOTATION,
)
from resources.kuberay.quantity import parse_quantity

GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class ClusterSummary:
    """One RayCluster as ``trainctl list`` and the orphan sensor see it. Memory is in bytes."""

    name: str
    namespace: str
    origin: str
    created: dt.datetime
    ttl: dt.timedelta | None
    state: str
    workers_ready: int
    workers_desired: int
    cpus: Decimal
    gpus: int
    memory: int
    team: str = ""
    owner: str = ""
    template: str = ""
    run_id: str = ""
    run_url: str = ""
    job: str = ""
    partition: str = ""
    asset: str = ""
    code_location: str = ""
    backend: str = "kuberay"
    dashboard_url: str = ""
    # The object's uid on the API server, which a new cluster of the same name does not share.
    uid: str = ""

    @property
    def expires_at(self) -> dt.datetime | None:
        """When the cluster's lifetime ends; ``None`` for a cluster created without one."""
        return None if self.ttl is None else self.created + self.ttl

    def expired(self, now: dt.datetime) -> bool:
        """Tell whether the cluster has outlived its lifetime at ``now``."""
        return self.expires_at is not None and now >= self.expires_at

    def describe_origin(self) -> str:
        """``run <id> (<partition>)`` for a Dagster run's cluster, ``manual (<owner>)`` for one made by hand."""
        if self.origin == "dagster":
            return f"run {self.run_id[:8]}" + (f" ({self.partition})" if self.partition else "")
        return f"manual ({self.owner})" if self.owner else "manual"

    def to_dict(self, now: dt.datetime) -> dict[str, Any]:
        """Convert to JSON-ready values, with age and time left in seconds at ``now``."""
        expires_at = self.expires_at
        return {
            "name": self.name,
            "namespace": self.namespace,
            "backend": self.backend,
            "origin": self.origin,
            "owner": self.owner,
            "team": self.team,
            "template": self.template,
            "run_id": self.run_id or None,
            "run_url": self.run_url or None,
            "job": self.job or None,
            "partition": self.partition or None,
            "asset": self.asset or None,
            "code_location": self.code_location or None,
            "created": self.created.isoformat(),
            "age_s": round((now - self.created).total_seconds()),
            "expires_at": None if expires_at is None else expires_at.isoformat(),
            "time_left_s": None if expires_at is None else round((expires_at - now).total_seconds()),
            "state": self.state,
            "workers_ready": self.workers_ready,
            "workers_desired": self.workers_desired,
            "cpus": float(self.cpus),
            "gpus": self.gpus,
            "memory_bytes": self.memory,
            "dashboard_url": self.dashboard_url or None,
        }


def parse_timestamp(value: object) -> dt.datetime | None:
    """Parse an RFC 3339 timestamp of the API server (``2026-12-04T10:00:00Z``) as an aware datetime."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _pod_requests(template: Mapping[str, Any]) -> tuple[Decimal, int, int]:
    """Sum the limits of every container of a pod template: CPU cores, GPUs and memory bytes."""
    cpus, gpus, memory = Decimal(0), 0, 0
    for container in ((template.get("spec") or {}).get("containers")) or []:
        limits = (container.get("resources") or {}).get("limits") or {}
        try:
            cpus += parse_quantity(limits.get("cpu", 0))
            gpus += int(parse_quantity(limits.get(GPU_RESOURCE, 0)))
            memory += int(parse_quantity(limits.get("memory", 0)))
        except ValueError:
            continue
    return cpus, gpus, memory


def _ttl(annotations: Mapping[str, str]) -> dt.timedelta | None:
    value = annotations.get(TTL_ANNOTATION, "")
    return dt.timedelta(minutes=int(value)) if value.isdigit() else None


def summarize(cluster: Mapping[str, Any], *, now: dt.datetime | None = None) -> ClusterSummary:
    """Summarize a RayCluster object; resources are the limits of the head plus the current worker replicas."""
    metadata = cluster.get("metadata") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    spec = cluster.get("spec") or {}
    status = cluster.get("status") or {}

    cpus, gpus, memory = _pod_requests((spec.get("headGroupSpec") or {}).get("template") or {})
    desired = 0
    for group in spec.get("workerGroupSpecs") or []:
        replicas = group.get("replicas", group.get("minReplicas", 0))
        replicas = replicas if isinstance(replicas, int) else 0
        replicas *= group.get("numOfHosts", 1) if isinstance(group.get("numOfHosts"), int) else 1
        desired += replicas
        group_cpus, group_gpus, group_memory = _pod_requests(group.get("template") or {})
        cpus += group_cpus * replicas
        gpus += group_gpus * replicas
        memory += group_memory * replicas

    ready = status.get("readyWorkerReplicas", 0)
    origin = labels.get(ORIGIN_KEY) or ("dagster" if RUN_ID_KEY in labels else "manual")
    created = parse_timestamp(metadata.get("creationTimestamp")) or now or dt.datetime.now(dt.UTC)
    return ClusterSummary(
        name=str(metadata.get("name", "")),
        namespace=str(metadata.get("namespace", "")),
        origin=origin,
        created=created,
        ttl=_ttl(annotations),
        state=str(status.get("state") or "pending"),
        workers_ready=ready if isinstance(ready, int) else 0,
        workers_desired=int(status.get("desiredWorkerReplicas", desired) or 0),
        cpus=cpus,
        gpus=gpus,
        memory=memory,
        team=labels.get(TEAM_KEY, ""),
        owner=annotations.get(OWNER_ANNOTATION, ""),
        template=annotations.get(TEMPLATE_ANNOTATION, ""),
        # The annotations keep full values; labels are cut to 63 characters.
        run_id=annotations.get(RUN_ID_KEY) or labels.get(RUN_ID_KEY, ""),
        run_url=annotations.get(RUN_URL_ANNOTATION, ""),
        job=labels.get(JOB_KEY, ""),
        partition=annotations.get(PARTITION_KEY) or labels.get(PARTITION_KEY, ""),
        asset=annotations.get(ASSET_KEY) or labels.get(ASSET_KEY, ""),
        code_location=labels.get(CODE_LOCATION_KEY, ""),
        uid=str(metadata.get("uid", "")),
    )
