"""A Kubernetes API stand-in for tests: real HTTP on 127.0.0.1 that the official `kubernetes` client talks to.

Served: the namespaced resources in `resources.DEFAULT_RESOURCE_TYPES`, which are RayCluster and
RayJob of ray.io/v1, core/v1 pods, services and events, and batch/v1 jobs. Each supports get,
list, watch, create, update (PUT), patch, delete and deletecollection. Patches may be merge,
JSON or strategic merge patches, and the last are applied as merge patches. Also served: the
`/status` subresource, pod logs, label and field selectors, `limit`/`continue`, and `Status`
errors shaped as kube-apiserver sends them.

Not served: cluster-scoped resources (namespaces need not exist), discovery (`/api`, `/apis`),
server-side apply, `dryRun`, authentication, admission webhooks, garbage collection of objects
whose owner was deleted, graceful pod deletion, immutability of pod specs, and streaming logs
with `follow=true`. A `Status` message matches the real server's wording for NotFound,
AlreadyExists, Conflict and Invalid, not for every other error.
"""

from tests.kube_standin.errors import ApiError
from tests.kube_standin.faults import Fault
from tests.kube_standin.resources import (
    EVENTS,
    JOBS,
    PODS,
    RAYCLUSTERS,
    RAYJOBS,
    SERVICES,
    ResourceType,
)
from tests.kube_standin.server import KubeStandin, RecordedRequest
from tests.kube_standin.store import ObjectStore, Watcher, WatchEvent

__all__ = [
    "EVENTS",
    "JOBS",
    "PODS",
    "RAYCLUSTERS",
    "RAYJOBS",
    "SERVICES",
    "ApiError",
    "Fault",
    "KubeStandin",
    "ObjectStore",
    "RecordedRequest",
    "ResourceType",
    "WatchEvent",
    "Watcher",
]
