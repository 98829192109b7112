"""The checks that ``make demo`` runs before it starts any run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from training_pipelines.demo import main


def run_demo(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    # The definitions read the environment when they are imported, so each case needs its own process.
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "TRAINCTL_HOME": str(tmp_path / "state"),
        # The machine check runs on the local backend only.
        "RAY_BACKEND": "local",
    }
    env.update(variables)
    return subprocess.run(
        [sys.executable, "-m", "training_pipelines.demo"], env=env, capture_output=True, text=True, timeout=120
    )


def test_demo_machine_check_names_variables(tmp_path: Path) -> None:
    # 256 workers of 64Gi need about 16 TiB.
    result = run_demo(tmp_path, RAY_WORKERS="256", RAY_MEMORY_PER_WORKER="64Gi")

    assert result.returncode == 2, result.stderr
    assert "demo: invalid setting RAY_MEMORY_PER_WORKER: 256 workers x (64Gi + " in result.stderr
    assert "Lower RAY_WORKERS, RAY_MEMORY_PER_WORKER or RAY_OBJECT_STORE_MEMORY." in result.stderr
    assert not (tmp_path / "dagster").exists()


def test_demo_rejects_day_without_next_day(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--partition", "1998-04-22"])

    assert caught.value.code == 2
    assert "the days that have a next day" in capsys.readouterr().err
