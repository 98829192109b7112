"""A local worker node that fails while starting is started again once. A second failure fails the start."""

import sys

import pytest
from ray.util.state import list_nodes

from resources.errors import ClusterStartError
from resources.local import LocalRayCluster
from resources.spec import ClusterSpec

pytestmark = pytest.mark.integration

SPEC = ClusterSpec(workers=1, cpus_per_worker=1, memory_per_worker=512 * 1024**2, object_store_memory=128 * 1024**2)
EXIT_CODE = 3


class FailingWorkerCluster(LocalRayCluster):
    """A local cluster whose worker node exits with ``EXIT_CODE`` on its first ``failing_starts`` starts."""

    def __init__(self, *, failing_starts: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.failing_starts = failing_starts

    def _worker_args(self, index: int, gcs_address: str, *, attempt: int) -> list[str]:
        if attempt <= self.failing_starts:
            return [sys.executable, "-c", f"import sys; sys.exit({EXIT_CODE})"]
        return super()._worker_args(index, gcs_address, attempt=attempt)


def test_failed_worker_node_started_again(no_leaked_ray_processes: None) -> None:
    progress: list[str] = []
    cluster = FailingWorkerCluster(failing_starts=1, name="retry-node", spec=SPEC, on_progress=progress.append)
    try:
        info = cluster.start()
        alive = list_nodes(address=info.dashboard_url, filters=[("state", "=", "ALIVE")], timeout=10)
        assert len(alive) == 2
        assert f"Ray worker-0 exited with code {EXIT_CODE} while starting; starting it again" in progress
        assert progress[-1].startswith("All 1 workers registered")
        assert len(cluster.pids) == 2
    finally:
        cluster.stop()


def test_second_worker_failure_fails_start(no_leaked_ray_processes: None) -> None:
    cluster = FailingWorkerCluster(failing_starts=2, name="retry-node-fails", spec=SPEC, on_progress=lambda _: None)
    expected = rf"worker-0 exited with code {EXIT_CODE} while starting \(start 2 of 2\)"

    with pytest.raises(ClusterStartError, match=expected):
        cluster.start()

    assert cluster.pids == []
    assert cluster.info is None
