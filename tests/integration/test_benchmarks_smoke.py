"""The benchmarks at tiny sizes, only to keep them running; their figures are not checked against targets."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2]


def test_benchmarks_run_in_smoke_mode(tmp_path: Path, no_leaked_ray_processes: None) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--output", str(tmp_path)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr

    results = json.loads((tmp_path / "results.json").read_text())
    figures = {name for section in results["figures"].values() for name in section}
    expected = (
        "ready_vs_bare_ratio",
        "teardown_s",
        "throughput_vs_plain_ratio",
        "last_epoch_vs_plain_ratio",
        "scaling_2_vs_1_ratio",
        "short_window_vs_plain_ratio",
        "first_step_vs_bare_ratio",
        "kuberay_vs_local_ratio",
        "orphan_api_calls",
        "e2e_vs_plain_ratio",
        "run_process_peak_rss_mb",
        "backfill_shared_vs_separate_ratio",
    )
    for name in expected:
        assert name in figures
    # The sampler found the Ray Train workers by their process titles.
    end_to_end = results["figures"]["end_to_end"]
    assert end_to_end["worker_peak_rss_mb"] > 0
    # The run's log named the end of each phase, in order.
    phases = [end_to_end[name] for name in ("e2e_cluster_ready_s", "e2e_first_step_s", "e2e_model_written_s")]
    assert 0 < phases[0] < phases[1] < phases[2] < end_to_end["e2e_platform_s"]
    if torch.version.cuda is None or torch.cuda.device_count() == 0:
        # The GPU benchmark prints why it was skipped and adds no figure.
        assert "training_gpu" not in results["figures"]
        assert "skipped:" in completed.stdout
    else:
        assert "gpu_throughput_vs_plain_ratio" in figures
    assert results["smoke"] is True
    assert "| figure | value | target |" in (tmp_path / "benchmarks.md").read_text()
