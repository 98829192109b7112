"""Every exit path of a run leaves no Ray process: job failure, interruption and a killed run process."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from resources.cluster import RayClusterResource
from tests.integration.conftest import materialize_history, small_resources

pytestmark = pytest.mark.integration

PARTITION = "1997-10-20"
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
SIGNAL_TIMEOUT_S = 240.0
EXIT_TIMEOUT_S = 60.0

FAILING_ENTRYPOINT = (
    f"{sys.executable} -c \"import sys; [print(f'training step {{i}}', flush=True) for i in range(50)]; "
    "raise RuntimeError('loss became NaN at step 50')\""
)


@dg.asset
def failing_training(ray_cluster: RayClusterResource) -> None:
    ray_cluster.ensure_started()
    ray_cluster.submit_job(entrypoint=FAILING_ENTRYPOINT, job_name="failing", on_log_line=print)


def test_failed_job_fails_step_with_log_tail(no_leaked_ray_processes: None) -> None:
    cluster = RayClusterResource(workers=1, memory_per_worker="512Mi", object_store_memory="128Mi")

    result = dg.materialize([failing_training], resources={"ray_cluster": cluster}, raise_on_error=False)

    assert not result.success
    failure = result.failure_data_for_node("failing_training")
    assert failure is not None
    message = failure.error.to_string() if failure.error else ""
    assert "FAILED" in message
    assert "loss became NaN at step 50" in message
    assert "training step 49" in message


def _start_run(storage_root: Path, *options: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.run_partition", str(storage_root), PARTITION, *options],
        cwd=REPOSITORY_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_for_output(process: subprocess.Popen[str], marker: str) -> tuple[list[str], threading.Thread]:
    """Collect the run's output lines until one contains ``marker``; fail if the run ends or the deadline passes.

    A thread keeps reading after this returns, so the run never blocks on a full pipe.
    """
    assert process.stdout is not None
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if marker in line:
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + SIGNAL_TIMEOUT_S
    while not found.wait(timeout=0.2):
        if process.poll() is not None:
            pytest.fail(f"the run exited with {process.returncode} before {marker!r}:\n{''.join(lines[-40:])}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{marker!r} did not appear within {SIGNAL_TIMEOUT_S:.0f} s:\n{''.join(lines[-40:])}")
    return lines, reader


@pytest.mark.parametrize(
    ("marker", "phase", "epochs"),
    [
        ("workers registered", "while the cluster starts", 200),
        ("Epoch 1/200", "during training", 200),
        # The cluster outlives training: the run's later steps may use it, and it goes when the run ends.
        ('Started execution of step "ranking_model_evaluation"', "while evaluating", 1),
    ],
)
def test_interrupted_run_leaves_no_ray_process(
    storage_root: Path, no_leaked_ray_processes: None, marker: str, phase: str, epochs: int
) -> None:
    materialize_history(small_resources(storage_root), first="1997-09-20", last="1997-10-21")
    process = _start_run(storage_root, f"--epochs={epochs}")
    try:
        lines, reader = _wait_for_output(process, marker)
        # Dagster terminates a run by sending SIGINT to the run worker process.
        process.send_signal(signal.SIGINT)
        process.wait(timeout=EXIT_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(timeout=EXIT_TIMEOUT_S)
    output = "".join(lines)
    assert process.returncode != 0, f"the run did not stop {phase}"
    assert "RUN_FAILURE" in output


def test_killed_run_process_leaves_no_ray_process(storage_root: Path, no_leaked_ray_processes: None) -> None:
    materialize_history(small_resources(storage_root), first="1997-09-20", last="1997-10-21")
    process = _start_run(storage_root)
    try:
        _wait_for_output(process, "Epoch 1/200")
        # SIGKILL runs no cleanup in the run process; the reaper must stop the cluster.
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=EXIT_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
