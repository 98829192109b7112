"""The environment the local backend gives its Ray nodes, which every job on them inherits."""

import os
from pathlib import Path

import pytest

from resources.cluster import local_gpu_count
from resources.errors import InvalidRequestError
from resources.local import LocalRayCluster
from resources.spec import ClusterSpec

WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def _node_environment(tmp_path: Path) -> dict[str, str]:
    cluster = LocalRayCluster(
        name="env", spec=ClusterSpec(workers=1, cpus_per_worker=1, memory_per_worker=1024**3), temp_root=str(tmp_path)
    )
    # The folder and address that start() sets. Nothing is started.
    cluster._work_dir = tmp_path
    cluster._gcs_address = "127.0.0.2:50000"
    return cluster._ray_env()


def test_preemption_watcher_off_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WATCHER, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")

    environment = _node_environment(tmp_path)

    assert environment[WATCHER] == "0"
    # The cluster's own address, not the one of the process that starts it.
    assert environment["RAY_ADDRESS"] == "127.0.0.2:50000"
    assert environment["HOME"] == str(tmp_path / "home")


def test_preemption_watcher_setting_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WATCHER, "1")

    assert _node_environment(tmp_path)[WATCHER] == "1"


def _worker_environments(tmp_path: Path, *, workers: int, gpus_per_worker: int) -> list[dict[str, str]]:
    spec = ClusterSpec(workers=workers, cpus_per_worker=1, memory_per_worker=1024**3, gpus_per_worker=gpus_per_worker)
    cluster = LocalRayCluster(name="env", spec=spec, temp_root=str(tmp_path))
    cluster._work_dir = tmp_path
    cluster._gcs_address = "127.0.0.2:50000"
    return [cluster._worker_env(index) for index in range(workers)]


def test_worker_gpus_disjoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    environments = _worker_environments(tmp_path, workers=2, gpus_per_worker=2)

    assert environments[0]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert environments[1]["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_worker_gpus_within_visible_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, GPU-5b1c")

    environments = _worker_environments(tmp_path, workers=2, gpus_per_worker=1)

    assert environments[0]["CUDA_VISIBLE_DEVICES"] == "3"
    assert environments[1]["CUDA_VISIBLE_DEVICES"] == "GPU-5b1c"


def test_cpu_workers_keep_device_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    environments = _worker_environments(tmp_path, workers=2, gpus_per_worker=0)

    assert all("CUDA_VISIBLE_DEVICES" not in environment for environment in environments)


def test_too_few_visible_gpus_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    spec = ClusterSpec(workers=2, cpus_per_worker=1, memory_per_worker=1024**3, gpus_per_worker=1)
    cluster = LocalRayCluster(name="env", spec=spec, temp_root=str(tmp_path))

    with pytest.raises(InvalidRequestError) as caught:
        cluster.start()

    assert caught.value.field == "gpus_per_worker"
    assert "CUDA_VISIBLE_DEVICES lists 1" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        (None, 4),
        ("1,2", 2),
        ("", 0),
        ("-1", 0),
        ("NoDevFiles", 0),
        ("7", 0),
        ("0,-1,1", 1),
        ("0,1,2,3,4,5", 4),
        ("GPU-2, GPU-0", 2),
        ("GPU-9", 0),
        ("MIG-a1,MIG-a2", 2),
    ],
)
def test_gpu_count_respects_visible_devices(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, visible: str | None, expected: int
) -> None:
    # A stand-in nvidia-smi that lists four GPUs, the first one split into two MIG devices.
    script = tmp_path / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        'for i in 0 1 2 3; do echo "GPU $i: NVIDIA H200 (UUID: GPU-$i)"; done\n'
        'echo "  MIG 3g.71gb     Device  0: (UUID: MIG-a1)"\n'
        'echo "  MIG 3g.71gb     Device  1: (UUID: MIG-a2)"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}

    assert local_gpu_count(environ) == expected
