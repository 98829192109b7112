"""The checks that ``make demo`` runs before it starts any run."""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from training_pipelines import demo
from training_pipelines.defs.ranking import AUC_CHECK
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


def test_demo_source_check_names_variables(tmp_path: Path) -> None:
    missing = tmp_path / "events.parquet"

    result = run_demo(tmp_path, RATINGS_EVENTS_URI=str(missing))

    assert result.returncode == 2, result.stderr
    assert f"demo: invalid setting RATINGS_EVENTS_URI: {missing} does not exist." in result.stderr
    assert "Point RATINGS_EVENTS_URI at an existing Parquet table." in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "dagster").exists()


def test_demo_rejects_day_without_next_day(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--partition", "1998-04-22"])

    assert caught.value.code == 2
    assert "the days that have a next day" in capsys.readouterr().err


def gate_run(
    *, passed: bool, fail_production: bool = False, fail_after_check: bool = False
) -> dg.ExecuteInProcessResult:
    """Run stand-ins of the evaluation and promotion assets whose AUC check passes or fails."""

    @dg.asset(
        name="ranking_model_evaluation",
        check_specs=[dg.AssetCheckSpec(demo.AUC_CHECK, asset="ranking_model_evaluation", blocking=True)],
    )
    def evaluation():  # type: ignore[no-untyped-def]
        yield dg.MaterializeResult(metadata={"holdout_rows": 0})
        yield dg.AssetCheckResult(
            check_name=demo.AUC_CHECK,
            passed=passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description="No AUC on 1997-12-11: the hold-out has 0 event(s) and needs both labels",
        )
        if fail_after_check:
            raise OSError("the evaluation report could not be written")

    @dg.asset(name="production_model", deps=[evaluation])
    def production() -> None:
        if fail_production:
            raise RuntimeError("storage failed")

    return dg.materialize([evaluation, production], raise_on_error=False)


def test_demo_failed_gate_is_an_outcome(capsys: pytest.CaptureFixture[str]) -> None:
    result = gate_run(passed=False)

    demo._print_summary(result, day=dt.date(1997, 12, 10), next_day="1997-12-11", history_rows=100)

    assert demo._failed_gate(result) == "No AUC on 1997-12-11: the hold-out has 0 event(s) and needs both labels"
    output = capsys.readouterr().out
    assert "Daily retrain of 1997-12-10: trained, not promoted" in output
    assert "the blocking check auc_not_below_baseline failed" in output
    assert "none: the next day needs events with both labels" in output
    assert "FAILED" not in output


def test_demo_other_failures_stay_failures() -> None:
    assert demo._failed_gate(gate_run(passed=True, fail_production=True)) is None
    assert demo._failed_gate(gate_run(passed=True)) is None
    # An error of the step itself is a failure even when the check failed too.
    assert demo._failed_gate(gate_run(passed=False, fail_after_check=True)) is None


def test_demo_check_name_matches_definitions() -> None:
    assert demo.AUC_CHECK == AUC_CHECK
