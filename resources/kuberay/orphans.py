"""Finding RayClusters that outlived their Dagster run, and deleting them."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from resources.kuberay.lifecycle import API_TIMEOUT_S, GROUP, PLURAL, VERSION, RayClusterClient
from resources.kuberay.manifest import CODE_LOCATION_KEY, MANAGED_BY, RUN_ID_KEY
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
    max_age: dt.timedelta = DEFAULT_MAX_AGE,
) -> list[Orphan]:
    """Pick the clusters whose run has ended or no longer exists, or that are older than ``max_age``.

    ``run_is_active`` returns True for a queued, starting or running run, False for one
    that finished, failed or was cancelled, and None when no run has that id.
    """
    orphans = []
    for cluster in clusters:
        metadata = cluster.get("metadata") or {}
        run_id = (metadata.get("labels") or {}).get(RUN_ID_KEY, "")
        created = dt.datetime.fromisoformat(
            str(metadata.get("creationTimestamp", now.isoformat())).replace("Z", "+00:00")
        )
        active = run_is_active(run_id) if run_id else None
        if active is None:
            reason = f"its Dagster run {run_id or '(unlabelled)'} does not exist"
        elif not active:
            reason = f"its Dagster run {run_id} has ended"
        elif now - created > max_age:
            reason = f"it is {(now - created).total_seconds() / 3600:.1f} h old, above the maximum of {max_age}"
        else:
            continue
        orphans.append(Orphan(name=metadata["name"], namespace=metadata["namespace"], run_id=run_id, reason=reason))
    return orphans


def list_clusters(custom_api: client.CustomObjectsApi, *, namespace: str, code_location: str) -> list[dict[str, Any]]:
    """List this code location's RayClusters in ``namespace``, page by page."""
    selector = f"app.kubernetes.io/managed-by={MANAGED_BY},{CODE_LOCATION_KEY}={label_value(code_location)}"
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
