"""One partition end to end through Dagster, on a real local Ray cluster with real training."""

import json
from pathlib import Path

import dagster as dg
import pytest

from resources.history import JobHistory, state_dir
from resources.local_registry import LocalRegistry
from tests.integration.conftest import materialize_history, ray_processes, small_resources
from training_pipelines.definitions import defs
from training_pipelines.defs.ranking import ranking_model

pytestmark = pytest.mark.integration

PARTITION = "1997-10-20"


def test_partition_trains_end_to_end(
    storage_root: Path, instance: dg.DagsterInstance, no_leaked_ray_processes: None
) -> None:
    history_url = f"sqlite:///{storage_root.parent / 'history.db'}"
    resources = small_resources(storage_root, history_url=history_url)
    materialize_history(resources, first="1997-09-20", last="1997-10-21")
    job = defs.resolve_job_def("daily_retrain_job")

    result = job.execute_in_process(
        partition_key=PARTITION, instance=instance, resources=resources, raise_on_error=False
    )

    assert result.success
    model = result.asset_materializations_for_node("ranking_model")[0].metadata
    assert model["rows"].value > 1000
    assert model["workers"].value == 2
    assert model["cluster_startup_s"].value > 0
    assert model["samples_per_s"].value > 0
    assert len(model["epoch_losses"].value["loss"]) == 2
    assert Path(model["model_uri"].value).is_file()
    assert Path(model["checkpoint_uri"].value).is_dir()

    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("Epoch 2/2" in message for message in logs), "training progress did not reach the Dagster log"

    evaluation = result.asset_materializations_for_node("ranking_model_evaluation")[0].metadata
    assert 0.0 < evaluation["model_auc"].value < 1.0
    assert 0.0 < evaluation["baseline_auc"].value < 1.0
    checks = result.get_asset_check_evaluations()
    assert [check.check_name for check in checks] == ["auc_not_below_baseline"]

    champion = json.loads((storage_root / "production" / "champion.json").read_text())
    if checks[0].passed:
        assert champion["partition"] == PARTITION
    assert not list(storage_root.rglob("*.tmp")), "a temporary file was left behind"

    # The training job is in the job history, linked from the asset's metadata.
    job_id = model["ray_job_id"].value
    assert job_id in model["job_history"].value
    with JobHistory(history_url) as history:
        record = history.get(job_id)
    assert record is not None
    assert (record.status, record.origin, record.backend) == ("SUCCEEDED", "dagster", "local")
    assert (record.run_id, record.partition, record.asset) == (result.run_id, PARTITION, "ranking_model")
    assert record.started_at is not None and record.ended_at is not None
    assert "Epoch 2/2" in record.log_tail
    # The run's cluster was listed for trainctl while it ran, and is no longer.
    assert LocalRegistry(state_dir() / "clusters").list() == []


def test_range_shares_one_job(storage_root: Path, instance: dg.DagsterInstance, no_leaked_ray_processes: None) -> None:
    history_url = f"sqlite:///{storage_root.parent / 'history.db'}"
    resources = small_resources(storage_root, workers=1, history_url=history_url)
    materialize_history(resources, first="1997-09-20", last="1997-10-23")

    first = dg.materialize([ranking_model], partition_key="1997-10-20", instance=instance, resources=resources)
    # What a backfill run of several partitions carries: the days train in order, in one job on one cluster.
    days = ["1997-10-21", "1997-10-22", "1997-10-23"]
    backfill = dg.materialize(
        [ranking_model],
        instance=instance,
        resources=resources,
        tags={"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]},
    )

    assert first.asset_materializations_for_node("ranking_model")[0].metadata["warm_started"].value is False
    materializations = backfill.asset_materializations_for_node("ranking_model")
    assert sorted(event.partition for event in materializations) == days
    metadata = materializations[0].metadata
    assert metadata["partitions"].value == f"{days[0]}..{days[-1]}"
    per_partition = metadata["per_partition"].value
    assert list(per_partition) == days
    # The first day of the range warm-starts from the earlier run's model, each next day from the one before.
    assert all(per_partition[day]["warm_started"] for day in days)
    assert all(Path(per_partition[day]["model_uri"]).is_file() for day in days)
    assert metadata["rows"].value == sum(per_partition[day]["rows"] for day in days)

    with JobHistory(history_url) as history:
        records = history.list(run_id=backfill.run_id)
    assert [record.job_id for record in records] == [metadata["ray_job_id"].value]
    assert records[0].status == "SUCCEEDED"
    logs = [entry.user_message for entry in instance.all_logs(backfill.run_id)]
    assert any(f"Epoch 1/1 of {days[-1]}" in message for message in logs)
    assert sum(message.startswith("Starting Ray head of") for message in logs) == 1

    # A new run of a trained day trains again rather than resuming the earlier run's finished training.
    rerun = dg.materialize([ranking_model], partition_key="1997-10-20", instance=instance, resources=resources)
    rerun_logs = [entry.user_message for entry in instance.all_logs(rerun.run_id)]
    assert any("Epoch 2/2 of 1997-10-20" in message for message in rerun_logs)
    assert not any("Resuming" in message for message in rerun_logs)


def test_ratings_only_run_starts_no_cluster(storage_root: Path, no_leaked_ray_processes: None) -> None:
    before = set(ray_processes())
    resources = small_resources(storage_root)

    materialize_history(resources, first="1997-09-20", last="1997-09-25")

    assert set(ray_processes()) == before
