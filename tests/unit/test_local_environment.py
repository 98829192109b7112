"""The environment the local backend gives its Ray nodes, which every job on them inherits."""

from pathlib import Path

import pytest

from resources.local import LocalRayCluster
from resources.spec import ClusterSpec

WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def _node_environment(tmp_path: Path) -> dict[str, str]:
    cluster = LocalRayCluster(
        name="env", spec=ClusterSpec(workers=1, cpus_per_worker=1, memory_per_worker=1024**3), temp_root=str(tmp_path)
    )
    # The folder that start() creates. Nothing is started.
    cluster._work_dir = tmp_path
    return cluster._ray_env()


def test_preemption_watcher_off_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WATCHER, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")

    environment = _node_environment(tmp_path)

    assert environment[WATCHER] == "0"
    assert "RAY_ADDRESS" not in environment
    assert environment["HOME"] == str(tmp_path / "home")


def test_preemption_watcher_setting_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WATCHER, "1")

    assert _node_environment(tmp_path)[WATCHER] == "1"
