"""Fixtures for tests that start real local Ray clusters."""

import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psutil
import pytest

from resources.cluster import RayClusterResource
from resources.storage import TrainingStorage
from training_pipelines.data.source import RatingsSource
from training_pipelines.defs.settings import RankingSettings

RAY_PROCESS_MARKERS = ("ray::", "raylet", "gcs_server", "ray start", "ray/dashboard", "ray/_private", "ray/autoscaler")
LEAK_WAIT_S = 10.0


def ray_processes() -> dict[int, str]:
    """PIDs and command lines of every Ray process on this machine."""
    found: dict[int, str] = {}
    for process in psutil.process_iter(["pid", "name", "cmdline"]):
        text = " ".join(process.info["cmdline"] or []) or process.info["name"] or ""
        if not any(marker in text for marker in RAY_PROCESS_MARKERS):
            continue
        try:
            # A process can exit between the listing and this call; it is then no longer running.
            running = process.status() != psutil.STATUS_ZOMBIE
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if running:
            found[process.info["pid"]] = text[:160]
    return found


def is_running(pid: int) -> bool:
    """Return whether ``pid`` exists and is not a zombie that only waits to be reaped."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for_no_new_ray_processes(before: dict[int, str], timeout_s: float = LEAK_WAIT_S) -> dict[int, str]:
    """Wait until no Ray process that is not in ``before`` runs; return those still running at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        leaked = {pid: text for pid, text in ray_processes().items() if pid not in before}
        if not leaked or time.monotonic() > deadline:
            return leaked
        time.sleep(0.2)


@pytest.fixture
def no_leaked_ray_processes() -> Iterator[None]:
    """Fail the test if it leaves a Ray process running."""
    before = ray_processes()
    yield
    leaked = wait_for_no_new_ray_processes(before)
    for pid in leaked:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    assert not leaked, f"Ray processes left running: {leaked}"


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """An ephemeral Dagster instance, disposed after the test rather than by the garbage collector at exit."""
    with dg.DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


@pytest.fixture
def storage_root(tmp_path: Path) -> Path:
    root = tmp_path / "storage"
    root.mkdir()
    return root


def small_resources(storage_root: Path, **cluster_overrides: object) -> dict[str, object]:
    """Resources sized for a 2-core test machine: small cluster, short window, one epoch."""
    cluster_settings: dict[str, object] = {"workers": 2, "memory_per_worker": "1Gi", "object_store_memory": "128Mi"}
    cluster_settings.update(cluster_overrides)
    return {
        "storage": TrainingStorage(root=str(storage_root)),
        "ratings_source": RatingsSource(),
        "ray_cluster": RayClusterResource(**cluster_settings),  # type: ignore[arg-type]
        "ranking_settings": RankingSettings(window_days=7, epochs=2),
    }


def materialize_history(resources: dict[str, object], *, first: str, last: str) -> None:
    """Store ratings_daily for first..last in one run."""
    from training_pipelines.defs.ratings import ratings_daily

    result = dg.materialize(
        [ratings_daily],
        resources=resources,
        tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
    )
    assert result.success
