"""A Ray node dies while a partition trains: training resumes from its last checkpoint and leaves nothing behind.

A training worker's death is Ray Train's to handle: it restarts the worker group from the
last checkpoint. The head node's death takes the Jobs API with it, so the job fails at the
next poll. The step then stops what is left of the cluster, and Dagster retries it on a new
cluster, where Ray Train resumes from the checkpoint the run left in storage.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import materialize_history, small_resources
from tests.integration.kuberay_fixtures import KubeEnvironment, kube
from tests.integration.test_kuberay_faults import raycluster_names
from tests.integration.test_teardown import EXIT_TIMEOUT_S, PARTITION, REPOSITORY_ROOT, _wait_for_output

pytestmark = pytest.mark.integration

__all__ = ["kube"]

EPOCHS = 12
RUN_TIMEOUT_S = 400.0
CHECKPOINT_TIMEOUT_S = 60.0


def _start_run(storage_root: Path, *arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "tests.integration.run_partition", str(storage_root), PARTITION,
            *arguments, f"--epochs={EPOCHS}",
        ],
        cwd=REPOSITORY_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )  # fmt: skip


def _descendants(pid: int, *markers: str) -> list[psutil.Process]:
    """Return the descendant processes of ``pid`` whose command line contains every one of ``markers``."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if all(marker in command for marker in markers):
            found.append(child)
    return found


def _wait_for_checkpoint(storage_root: Path, process: subprocess.Popen[str]) -> None:
    """Wait until Ray Train's controller has registered a checkpoint, which it does some time after the report."""
    deadline = time.monotonic() + CHECKPOINT_TIMEOUT_S
    while not list(storage_root.glob(f"ray_train/*/ranking_model-{PARTITION}/checkpoint_manager_snapshot.json")):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail("Ray Train registered no checkpoint while the run trained")
        time.sleep(0.1)


def _run_until_finished(
    storage_root: Path, kill: Callable[[subprocess.Popen[str]], None], *arguments: str
) -> tuple[int, str]:
    """Run the partition, call ``kill`` once a checkpoint is registered, and return the exit code and output."""
    materialize_history(small_resources(storage_root), first="1997-09-20", last="1997-10-21")
    process = _start_run(storage_root, *arguments)
    try:
        lines, reader = _wait_for_output(process, f"Epoch 2/{EPOCHS}")
        _wait_for_checkpoint(storage_root, process)
        kill(process)
        process.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    reader.join(timeout=EXIT_TIMEOUT_S)
    return process.returncode, "".join(lines)


def _kill_training_worker(process: subprocess.Popen[str]) -> None:
    workers = _descendants(process.pid, "RayTrainWorker")
    assert len(workers) == 1, [worker.cmdline() for worker in workers]
    workers[0].send_signal(signal.SIGKILL)


def _kill_head_node(process: subprocess.Popen[str], *, nodes_of: int | None = None) -> None:
    # The local backend's nodes descend from the run process, the stand-in operator's from this one.
    heads = _descendants(process.pid if nodes_of is None else nodes_of, "ray start", "--head")
    assert len(heads) == 1, [head.cmdline() for head in heads]
    # Every process of the head node: GCS, raylet, the dashboard with the Jobs API, and the job's driver.
    os.killpg(os.getpgid(heads[0].pid), signal.SIGKILL)


def test_worker_death_resumes(storage_root: Path, no_leaked_ray_processes: None) -> None:
    returncode, output = _run_until_finished(storage_root, _kill_training_worker)

    assert returncode == 0, output[-5000:]
    assert f"Resuming {PARTITION} from the checkpoint of epoch" in output
    # The restarted worker group went on from the checkpoint rather than from the first epoch.
    assert output.count(f"Epoch 1/{EPOCHS} of {PARTITION}") == 1
    assert f"Epoch {EPOCHS}/{EPOCHS} of {PARTITION}" in output
    assert "RUN_SUCCESS" in output


def test_worker_killed_without_restarts_fails_with_reason(storage_root: Path, no_leaked_ray_processes: None) -> None:
    # The kernel's out-of-memory killer sends SIGKILL. With no restarts allowed, the job must fail with the reason.
    returncode, output = _run_until_finished(storage_root, _kill_training_worker, "--max-failures=0")

    assert returncode == 1, output[-5000:]
    failure = output[output.index("STEP_FAILURE") :]
    assert "ended as FAILED" in failure
    # The step's error carries the job's last log lines, which name the dead worker.
    assert "Last log lines of the job" in failure
    assert "RayTrainWorker" in failure
    assert "RUN_FAILURE" in output


def test_head_death_retries_on_new_cluster(storage_root: Path, no_leaked_ray_processes: None) -> None:
    returncode, output = _run_until_finished(storage_root, _kill_head_node)

    assert returncode == 0, output[-5000:]
    assert "The Ray cluster was lost while training" in output
    assert "retrying on a new cluster from the last checkpoint" in output
    assert output.count("Starting Ray head of") == 2
    retry = output.rindex("Starting Ray head of")
    # The retry's job on the new cluster went on from the checkpoint rather than from the first epoch.
    assert f"Resuming {PARTITION} from the checkpoint of epoch" in output[retry:]
    assert f"Epoch 1/{EPOCHS} of {PARTITION}" not in output[retry:]
    assert f"Epoch {EPOCHS}/{EPOCHS} of {PARTITION}" in output[retry:]
    assert "RUN_SUCCESS" in output


def test_head_death_on_kuberay_retries_on_new_raycluster(
    storage_root: Path, kube: KubeEnvironment, no_leaked_ray_processes: None
) -> None:
    returncode, output = _run_until_finished(
        storage_root, lambda process: _kill_head_node(process, nodes_of=os.getpid()), kube.standin.url
    )

    assert returncode == 0, output[-5000:]
    assert "The Ray cluster was lost while training" in output
    creates = kube.standin.calls(verb="create", plural="rayclusters")
    assert len(creates) == 2
    retry = output.rindex("Creating RayCluster")
    assert f"Resuming {PARTITION} from the checkpoint of epoch" in output[retry:]
    assert f"Epoch 1/{EPOCHS} of {PARTITION}" not in output[retry:]
    assert raycluster_names(kube) == []
    assert kube.operator.running_clusters() == []
