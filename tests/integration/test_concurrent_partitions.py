"""Two partitions run at once, each in its own run process: neither touches the other's cluster or files."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import materialize_history, small_resources
from tests.integration.test_teardown import REPOSITORY_ROOT

pytestmark = pytest.mark.integration

# Not adjacent, so neither day warm-starts from the other's model.
DAYS = ("1997-10-18", "1997-10-21")
RUN_TIMEOUT_S = 600


def test_two_partitions_at_once(storage_root: Path, no_leaked_ray_processes: None) -> None:
    materialize_history(small_resources(storage_root), first="1997-09-20", last="1997-10-22")
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.integration.run_partition", str(storage_root), day, "--epochs=2"],
            cwd=REPOSITORY_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for day in DAYS
    ]
    outputs = []
    for process in processes:
        try:
            output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.kill()
        outputs.append(output)

    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-5000:]
        # Ray's State API inside each cluster found its own cluster, not both.
        assert "Found multiple active Ray instances" not in output
    clusters = [set(re.findall(r"Starting Ray head of (\S+)", output)) for output in outputs]
    assert all(len(names) == 1 for names in clusters)
    assert clusters[0] != clusters[1]
    # Each run's log names only its own cluster.
    assert next(iter(clusters[1])) not in outputs[0]
    assert next(iter(clusters[0])) not in outputs[1]

    requests = [json.loads((storage_root / "ranking_model" / day / "request.json").read_text()) for day in DAYS]
    train_dirs = {request["train_dir"] for request in requests}
    assert len(train_dirs) == 2, "the runs shared a Ray Train folder"
    for day, request in zip(DAYS, requests, strict=True):
        assert request["partition"] == day
        assert request["warm_start_model"] is None
        assert (storage_root / "ranking_model" / day / "model.pt").is_file()
        assert (storage_root / "ranking_model_evaluation" / f"{day}.json").is_file()
        # The checkpoints of a run hold only its own day.
        assert [path.name for path in Path(request["train_dir"]).iterdir()] == [f"ranking_model-{day}"]
