"""Reading a running Ray cluster through its dashboard: per-node usage and the jobs it runs.

Every read has a timeout, so a hung head costs seconds, not the caller's teardown.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from resources.errors import PlatformError

DASHBOARD_TIMEOUT_S = 5.0


class DashboardError(PlatformError):
    """The Ray dashboard did not respond, or its response could not be read."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"The Ray dashboard at {self.url} cannot be read: {self.reason}. Check that the cluster is running "
            "(trainctl list) and that this machine can reach its dashboard."
        )


@dataclass(frozen=True)
class GpuUsage:
    """One GPU of a node; memory in MiB as the dashboard reports it."""

    name: str
    utilization_percent: float | None
    memory_used_mib: float | None
    memory_total_mib: float | None


@dataclass(frozen=True)
class NodeUsage:
    """Usage of one Ray node. On the local backend every node shares the machine, so they report the same host."""

    node_id: str
    ip: str
    is_head: bool
    state: str
    cpus: float
    cpu_percent: float | None
    memory_used: int | None
    memory_total: int | None
    gpus: list[GpuUsage] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Convert to JSON-ready values."""
        return {
            "node_id": self.node_id,
            "ip": self.ip,
            "is_head": self.is_head,
            "state": self.state,
            "cpus": self.cpus,
            "cpu_percent": self.cpu_percent,
            "memory_used_bytes": self.memory_used,
            "memory_total_bytes": self.memory_total,
            "gpus": [gpu.__dict__ for gpu in self.gpus],
        }


def _auth_headers() -> dict[str, str]:
    """Return the token header that Ray's own clients send when token authentication is on, else nothing."""
    try:
        # A private Ray function, checked with Ray 2.60. SubmissionClient adds the same header.
        from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled
    except ImportError:
        return {}
    return dict(get_auth_headers_if_auth_enabled({}))


def _get_json(url: str, *, timeout_s: float, missing_ok: bool = False) -> Any:
    """Read JSON from ``url``, or return ``None`` for HTTP 404 when ``missing_ok``."""
    from ray.exceptions import RayError

    try:
        headers = _auth_headers()
    except RayError as err:
        # Ray raises this when RAY_AUTH_MODE=token finds no token; its own message is long.
        raise DashboardError(
            url, "RAY_AUTH_MODE=token is set but no token was found. Set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
        ) from err
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        if missing_ok and err.code == 404:
            return None
        reason = f"HTTP {err.code} {err.reason}"
        if err.code in (401, 403) and headers:
            reason += ". The token in RAY_AUTH_TOKEN or ~/.ray/auth_token may not be the cluster's"
        elif err.code in (401, 403):
            reason += (
                ". If the cluster uses token authentication, set RAY_AUTH_MODE=token and the cluster's "
                "token in RAY_AUTH_TOKEN or ~/.ray/auth_token"
            )
        raise DashboardError(url, reason) from err
    # OSError covers refused and reset connections and timeouts.
    except OSError as err:
        raise DashboardError(url, f"no response ({err})") from err
    except http.client.HTTPException as err:
        raise DashboardError(url, f"an incomplete or malformed response ({type(err).__name__}: {err})") from err
    except ValueError as err:
        raise DashboardError(url, f"the response is not JSON ({err})") from err


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _gpu(raw: dict[str, Any]) -> GpuUsage:
    return GpuUsage(
        name=str(raw.get("name", "GPU")),
        utilization_percent=_number(raw.get("utilizationGpu")),
        memory_used_mib=_number(raw.get("memoryUsed")),
        memory_total_mib=_number(raw.get("memoryTotal")),
    )


def node_usage(dashboard_url: str, *, timeout_s: float = DASHBOARD_TIMEOUT_S) -> list[NodeUsage]:
    """Read CPU, memory, GPU and GPU memory use of every node, head first.

    Raises:
        DashboardError: the dashboard did not respond, or the response has no node summary.
    """
    url = f"{dashboard_url.rstrip('/')}/nodes?view=summary"
    payload = _get_json(url, timeout_s=timeout_s)
    try:
        summaries = payload["data"]["summary"]
    except (KeyError, TypeError) as err:
        raise DashboardError(url, "the response has no data.summary") from err

    nodes = []
    for summary in summaries:
        raylet = summary.get("raylet") or {}
        memory = summary.get("mem") or []
        total = _number(memory[0]) if len(memory) > 0 else None
        available = _number(memory[1]) if len(memory) > 1 else None
        nodes.append(
            NodeUsage(
                node_id=str(raylet.get("nodeId", "")),
                ip=str(summary.get("ip", raylet.get("nodeManagerAddress", ""))),
                is_head=bool(raylet.get("isHeadNode")),
                state=str(raylet.get("state", "")),
                cpus=float((raylet.get("resourcesTotal") or {}).get("CPU", 0.0)),
                cpu_percent=_number(summary.get("cpu")),
                memory_used=None if total is None or available is None else int(total - available),
                memory_total=None if total is None else int(total),
                gpus=[_gpu(gpu) for gpu in summary.get("gpus") or []],
            )
        )
    return sorted(nodes, key=lambda node: (not node.is_head, node.node_id))


def alive_worker_count(dashboard_url: str, *, timeout_s: float = DASHBOARD_TIMEOUT_S) -> int:
    """Count the alive nodes other than the head.

    Raises:
        DashboardError: the dashboard did not respond.
    """
    return sum(
        1 for node in node_usage(dashboard_url, timeout_s=timeout_s) if node.state == "ALIVE" and not node.is_head
    )


def _job_url(dashboard_url: str, job_id: str) -> str:
    return f"{dashboard_url.rstrip('/')}/api/jobs/{urllib.parse.quote(job_id, safe='')}"


@dataclass(frozen=True)
class JobState:
    """A Ray job as the Jobs API reports it."""

    status: str
    message: str
    end_time: dt.datetime | None


def job_state(dashboard_url: str, job_id: str, *, timeout_s: float = DASHBOARD_TIMEOUT_S) -> JobState | None:
    """Read the status of job ``job_id`` from the Jobs REST API, or return ``None`` if the cluster has no such job.

    Raises:
        DashboardError: the dashboard did not respond, or the response has no status.
    """
    url = _job_url(dashboard_url, job_id)
    payload = _get_json(url, timeout_s=timeout_s, missing_ok=True)
    if payload is None:
        return None
    if not isinstance(payload, dict) or "status" not in payload:
        raise DashboardError(url, "the response has no job status")
    end_ms = _number(payload.get("end_time"))
    return JobState(
        status=str(payload["status"]),
        message=str(payload.get("message") or ""),
        end_time=dt.datetime.fromtimestamp(end_ms / 1000, dt.UTC) if end_ms else None,
    )


def job_logs(dashboard_url: str, job_id: str, *, timeout_s: float = DASHBOARD_TIMEOUT_S) -> str:
    """Read the whole log of job ``job_id`` from the Jobs REST API.

    Raises:
        DashboardError: the dashboard did not respond, or the cluster has no such job.
    """
    url = _job_url(dashboard_url, job_id) + "/logs"
    payload = _get_json(url, timeout_s=timeout_s)
    if not isinstance(payload, dict):
        raise DashboardError(url, "the response has no logs")
    return str(payload.get("logs") or "")
