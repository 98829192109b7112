"""Finding RayClusters that outlived their Dagster run or their lifetime, and deleting them."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from resources.kuberay.inventory import summarize
from resources.kuberay.lifecycle import API_TIMEOUT_S, GROUP, PLURAL, VERSION, RayClusterClient
from resources.kuberay.manifest import MANAGED_BY
from resources.kuberay.naming import label_value
from resources.kuberay.retry import call_with_retries

logger = logging.getLogger(__name__)

LIST_PAGE_SIZE = 100
DEFAULT_MAX_AGE = dt.timedelta(hours=24)


@dataclass(frozen=True)
class Orphan:
    """A RayCluster to delete and why."""

    name: str
    namespace: str
    run_id: str
    reason: str


def find_orphans(
    clusters: list[Mapping[str, Any]],
    *,
    run_is_active: Callable[[str], bool | None],
    now: dt.datetime,
    code_location: str | None = None,
    max_age: dt.timedelta = DEFAULT_MAX_AGE,
) -> list[Orphan]:
    """Pick the clusters that outlived their lifetime, and this code location's clusters whose run is over.

    Every cluster is deleted once its TTL (``training-pipelines/ttl-minutes``, or
    ``max_age`` for a cluster created without one) has passed, whoever made it. A Dagster
    run's cluster of ``code_location`` (any code location when ``None``) is deleted as
    soon as ``run_is_active`` returns False (the run finished, failed or was cancelled)
    or None (no run has that id). Runs of other code locations are not judged, because
    another Dagster instance may own them.
    """
    orphans = []
    own_location = None if code_location is None else label_value(code_location)
    for cluster in clusters:
        summary = summarize(cluster, now=now)
        expires_at = summary.expires_at or summary.created + max_age
        reason = None
        if now >= expires_at:
            lifetime = (expires_at - summary.created).total_seconds() / 3600
            reason = f"its lifetime of {lifetime:g} h ended at {expires_at:%Y-%m-%d %H:%M} UTC"
        elif summary.origin == "dagster" and own_location in (None, summary.code_location):
            active = run_is_active(summary.run_id) if summary.run_id else None
            if active is None:
                reason = f"its Dagster run {summary.run_id or '(unlabelled)'} does not exist"
            elif not active:
                reason = f"its Dagster run {summary.run_id} has ended"
        if reason is not None:
            orphans.append(Orphan(name=summary.name, namespace=summary.namespace, run_id=summary.run_id, reason=reason))
    return orphans


def list_clusters(custom_api: client.CustomObjectsApi, *, namespace: str) -> list[dict[str, Any]]:
    """List the platform's RayClusters in ``namespace`` (every code location's and those made by hand), page by page."""
    selector = f"app.kubernetes.io/managed-by={MANAGED_BY}"
    clusters: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = call_with_retries(
            lambda page_token=token: custom_api.list_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                label_selector=selector,
                limit=LIST_PAGE_SIZE,
                _continue=page_token,
                _request_timeout=API_TIMEOUT_S,
            ),
            description=f"list rayclusters in {namespace}",
        )
        clusters.extend(page.get("items") or [])
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return clusters


def delete_orphans(clusters: RayClusterClient, orphans: list[Orphan]) -> list[str]:
    """Delete each orphan (a 404 counts as deleted) and return the names deleted."""
    deleted = []
    for orphan in orphans:
        clusters.delete(orphan.name)
        logger.info("Deleted orphaned RayCluster %s/%s: %s", orphan.namespace, orphan.name, orphan.reason)
        deleted.append(orphan.name)
    return deleted
