"""Unit tests of memory parsing, ClusterSpec validation and the picklability of platform errors."""

import pickle

import pytest

from resources.errors import (
    ClusterStartError,
    InvalidRequestError,
    PlatformError,
    RayJobError,
    StorageError,
)
from resources.spec import MAX_WORKERS, MIN_OBJECT_STORE_BYTES, ClusterSpec, format_memory, parse_memory
from training_pipelines.data.validation import SourceError

GIB = 1024**3
MIB = 1024**2


def make_spec(**overrides: object) -> ClusterSpec:
    fields: dict[str, object] = {"workers": 2, "cpus_per_worker": 1, "memory_per_worker": 1 * GIB}
    fields.update(overrides)
    return ClusterSpec(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("512Mi", 512 * MIB),
        ("2Gi", 2 * GIB),
        ("1.5G", 1_500_000_000),
        ("4G", 4 * 1000**3),
        ("1k", 1000),
        ("1Ki", 1024),
        ("1Ti", 1024**4),
        ("1000", 1000),
        (" 3 Gi ", 3 * GIB),
        ("2GiB", 2 * GIB),
        (1073741824, GIB),
    ],
)
def test_parse_memory_accepts_quantity(value: str | int, expected: int) -> None:
    assert parse_memory(value, field="memory_per_worker") == expected


@pytest.mark.parametrize("value", ["", "lots", "2 Gb of RAM", "-1Gi", "2Xi", "2mi", "1.5.0G", "Gi"])
def test_parse_memory_rejects_malformed_string(value: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_memory(value, field="memory_per_worker")

    message = str(caught.value)
    assert message.startswith("memory_per_worker: ")
    assert "'2Gi'" in message
    assert caught.value.field == "memory_per_worker"


@pytest.mark.parametrize("value", [0, -5, "0", "0Mi", "0.1"])
def test_parse_memory_rejects_non_positive(value: str | int) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_memory(value, field="object_store_memory")

    assert "must be positive" in str(caught.value)
    assert caught.value.field == "object_store_memory"


def test_parse_memory_rejects_bool() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_memory(True, field="memory_per_worker")

    assert "True" in str(caught.value)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (2 * GIB, "2Gi"),
        (512 * MIB, "512Mi"),
        (3 * 1024**4, "3Ti"),
        (3072, "3Ki"),
        (1536, "1536"),
        (1000, "1000"),
        (1536 * MIB, "1536Mi"),
    ],
)
def test_format_memory_uses_largest_unit(size: int, expected: str) -> None:
    assert format_memory(size) == expected


@pytest.mark.parametrize("text", ["512Mi", "2Gi", "3Ti", "7Ki"])
def test_format_memory_round_trips(text: str) -> None:
    assert format_memory(parse_memory(text, field="memory")) == text


def test_valid_spec_passes_validation() -> None:
    spec = make_spec(gpus_per_worker=1)

    spec.validate(available_memory=64 * GIB, available_gpus=2)


def test_total_memory_counts_head_and_stores() -> None:
    spec = make_spec(workers=3, memory_per_worker=2 * GIB, object_store_memory=256 * MIB)

    assert spec.total_memory == 3 * (2 * GIB + 256 * MIB) + 512 * MIB + 256 * MIB


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"workers": 0}, "workers", "at least 1"),
        ({"workers": -3}, "workers", "at least 1"),
        ({"workers": 1.5}, "workers", "at least 1"),
        ({"workers": MAX_WORKERS + 1}, "workers", "maximum"),
        ({"workers": 10_000}, "workers", "maximum"),
        ({"cpus_per_worker": 0}, "cpus_per_worker", "at least 1"),
        ({"cpus_per_worker": -1}, "cpus_per_worker", "at least 1"),
        ({"cpus_per_worker": 0.5}, "cpus_per_worker", "whole number"),
        ({"head_cpus": -1}, "head_cpus", "0 or more"),
        ({"gpus_per_worker": -1}, "gpus_per_worker", "0 or more"),
        ({"object_store_memory": MIN_OBJECT_STORE_BYTES - 1}, "object_store_memory", "75Mi"),
        ({"object_store_memory": 64 * MIB}, "object_store_memory", "64Mi"),
    ],
)
def test_validate_rejects_invalid_field(overrides: dict[str, object], field: str, fragment: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        make_spec(**overrides).validate()

    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert fragment in str(caught.value)


def test_validate_accepts_minimum_object_store() -> None:
    make_spec(object_store_memory=MIN_OBJECT_STORE_BYTES).validate()


def test_validate_accepts_maximum_workers() -> None:
    make_spec(workers=MAX_WORKERS).validate()


def test_validate_rejects_memory_above_machine() -> None:
    spec = make_spec(workers=4, memory_per_worker=4 * GIB, object_store_memory=256 * MIB)

    with pytest.raises(InvalidRequestError) as caught:
        spec.validate(available_memory=8 * GIB)

    message = str(caught.value)
    assert caught.value.field == "memory_per_worker"
    assert "the head (512Mi + 256Mi) need 17.8 GiB" in message
    assert "8.0 GiB" in message
    assert "Lower `workers`" in message


def test_validate_accepts_memory_equal_to_machine() -> None:
    spec = make_spec()

    spec.validate(available_memory=spec.total_memory)


def test_validate_skips_checks_without_limits() -> None:
    spec = make_spec(workers=MAX_WORKERS, memory_per_worker=1024 * GIB, gpus_per_worker=8)

    spec.validate()


def test_validate_rejects_gpus_above_machine() -> None:
    spec = make_spec(workers=2, gpus_per_worker=1)

    with pytest.raises(InvalidRequestError) as caught:
        spec.validate(available_gpus=1)

    message = str(caught.value)
    assert caught.value.field == "gpus_per_worker"
    assert "need 2 GPUs" in message
    assert "has 1" in message
    assert "Set gpus_per_worker to 0" in message


def test_validate_accepts_cpu_only_without_gpus() -> None:
    make_spec(gpus_per_worker=0).validate(available_gpus=0)


@pytest.mark.parametrize("memory", [0, -GIB])
def test_validate_rejects_non_positive_memory(memory: int) -> None:
    with pytest.raises(InvalidRequestError):
        make_spec(memory_per_worker=memory).validate(available_memory=64 * GIB)


@pytest.mark.parametrize(
    "error",
    [
        PlatformError("something failed"),
        InvalidRequestError("workers", "must be at least 1, got 0", "Ask for 1 or more workers."),
        ClusterStartError("local-1", "head did not start", "line 1\nline 2"),
        ClusterStartError("local-2", "head did not start"),
        RayJobError("job-1", "FAILED", "exit code 1", "Traceback ..."),
        RayJobError("job-2", "STOPPED", "stopped by user"),
        StorageError("Writing /x failed"),
        SourceError("events_uri", "/x does not exist", "Point events_uri at an existing Parquet table."),
    ],
    ids=lambda error: type(error).__name__,
)
def test_error_survives_pickle(error: Exception) -> None:
    restored = pickle.loads(pickle.dumps(error))

    assert type(restored) is type(error)
    assert str(restored) == str(error)
    assert restored.args == error.args
    assert vars(restored) == vars(error)
