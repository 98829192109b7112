"""Bad input fails the run with an error that names the field, before any Ray process starts."""

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from resources.cluster import RayClusterResource
from tests.integration.conftest import ray_processes, small_resources
from training_pipelines.data.source import RatingsSource
from training_pipelines.definitions import defs


def _run(resources: dict[str, object], partition: str = "1997-10-20") -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def("daily_retrain_job")
    return job.execute_in_process(partition_key=partition, resources=resources, raise_on_error=False)


def _error_text(result: dg.ExecuteInProcessResult) -> str:
    failures = [event for event in result.all_events if event.is_failure]
    return "\n".join(str(event.event_specific_data) for event in failures)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"workers": 0}, "workers"),
        ({"workers": -3}, "workers"),
        ({"memory_per_worker": "lots"}, "memory_per_worker"),
        ({"memory_per_worker": "4096Gi"}, "memory_per_worker"),
        ({"object_store_memory": "1Mi"}, "object_store_memory"),
        ({"gpus_per_worker": 1}, "gpus_per_worker"),
    ],
)
def test_invalid_cluster_request_fails_before_start(
    storage_root: Path, overrides: dict[str, object], field: str
) -> None:
    before = set(ray_processes())
    resources = small_resources(storage_root)
    resources["ray_cluster"] = RayClusterResource(**overrides)  # type: ignore[arg-type]

    result = _run(resources)

    assert not result.success
    assert f"{field}:" in _error_text(result)
    assert set(ray_processes()) <= before
    assert not (storage_root / "ratings_daily").exists(), "a step ran although the request was invalid"


def test_missing_source_names_uri(storage_root: Path) -> None:
    resources = small_resources(storage_root)
    resources["ratings_source"] = RatingsSource(events_uri=str(storage_root / "absent.parquet"))

    result = _run(resources)

    assert not result.success
    assert "events_uri" in _error_text(result)
    assert "absent.parquet does not exist" in _error_text(result)


def test_non_numeric_ratings_name_column(storage_root: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.parquet"
    pd.DataFrame(
        {"user_id": [1, 2], "item_id": [10, 20], "rating": ["good", "bad"], "timestamp": [877000000, 877000100]}
    ).to_parquet(events)
    resources = small_resources(storage_root)
    resources["ratings_source"] = RatingsSource(events_uri=str(events))

    result = _run(resources, partition="1997-10-16")

    assert not result.success
    assert "events.rating" in _error_text(result)


def test_model_without_history_names_missing_days(storage_root: Path) -> None:
    before = set(ray_processes())
    result = _run(small_resources(storage_root))

    assert not result.success
    assert "ratings_daily" in _error_text(result)
    assert "1997-09-20" in _error_text(result)
    assert set(ray_processes()) <= before


def test_partition_outside_data_is_rejected(storage_root: Path) -> None:
    with pytest.raises(dg.DagsterUnknownPartitionError, match="1999-01-01"):
        _run(small_resources(storage_root), partition="1999-01-01")
