"""A run launched and terminated through the Dagster webserver, as the UI does, leaves no Ray process."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster_graphql import DagsterGraphQLClient

from tests.integration.conftest import materialize_history, small_resources

pytestmark = pytest.mark.integration

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
WEBSERVER_START_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 300.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def webserver(tmp_path: Path, storage_root: Path) -> Iterator[tuple[DagsterGraphQLClient, Path]]:
    """`dg dev` on 127.0.0.1 with its own instance folder; yields a GraphQL client and DAGSTER_HOME."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = _free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "TRAINING_STORAGE_ROOT": str(storage_root),
        "RAY_WORKERS": "1",
        "RAY_MEMORY_PER_WORKER": "1Gi",
        "RAY_OBJECT_STORE_MEMORY": "128Mi",
    }
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dg"),
            "dev",
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=REPOSITORY_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + WEBSERVER_START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"dg dev did not answer on port {port} (exit code {process.poll()})")
                time.sleep(0.5)
        yield DagsterGraphQLClient("127.0.0.1", port_number=port), dagster_home
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            # It usually stops within 2 s, and sometimes waits 30 s or more on a subprocess.
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _wait_for_log(instance: dg.DagsterInstance, run_id: str, marker: str) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(marker in entry.user_message for entry in instance.all_logs(run_id)):
            return
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            pytest.fail(f"run {run_id} ended as {run.status} before {marker!r}")
        time.sleep(1)
    pytest.fail(f"{marker!r} did not appear in run {run_id} within {RUN_TIMEOUT_S:.0f} s")


def test_terminate_from_ui_stops_cluster(
    storage_root: Path, webserver: tuple[DagsterGraphQLClient, Path], no_leaked_ray_processes: None
) -> None:
    client, dagster_home = webserver
    materialize_history(small_resources(storage_root), first="1997-09-20", last="1997-10-21")

    run_id = client.submit_job_execution(
        "daily_retrain_job",
        run_config={"resources": {"ranking_settings": {"config": {"epochs": 200, "window_days": 7}}}},
        tags={"dagster/partition": "1997-10-20"},
    )
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    _wait_for_log(instance, run_id, "Epoch 1/200")
    client.terminate_run(run_id)

    deadline = time.monotonic() + RUN_TIMEOUT_S
    while client.get_run_status(run_id) not in (dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE):
        assert time.monotonic() < deadline, f"run {run_id} did not stop after termination"
        time.sleep(1)
    assert client.get_run_status(run_id) == dg.DagsterRunStatus.CANCELED
