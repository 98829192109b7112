"""Unit tests of TrainingStorage on a local folder and on fsspec's in-memory filesystem."""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pandas as pd
import pytest

from resources.errors import StorageError
from resources.storage import TrainingStorage


def make_frame() -> pd.DataFrame:
    return pd.DataFrame({"user_id": [1, 2, 3], "rating": [4.0, 2.5, 5.0], "name": ["a", "b", "c"]})


def fail_replace(source: str, destination: str, **kwargs: object) -> None:
    raise OSError(28, "No space left on device")


@pytest.fixture
def storage(tmp_path: Path) -> TrainingStorage:
    return TrainingStorage(root=str(tmp_path))


@pytest.fixture
def memory_storage() -> Iterator[TrainingStorage]:
    # The in-memory filesystem is one process-wide store, so each test gets its own folder.
    folder = f"training-storage-{uuid.uuid4().hex}"
    yield TrainingStorage(root=f"memory://{folder}")

    filesystem = fsspec.filesystem("memory")
    if filesystem.exists(f"/{folder}"):
        filesystem.rm(f"/{folder}", recursive=True)


def test_bytes_round_trip(storage: TrainingStorage) -> None:
    storage.write_bytes(b"\x00model\xff", "models", "1997-10-01", "model.pt")

    assert storage.read_bytes("models", "1997-10-01", "model.pt") == b"\x00model\xff"


def test_write_bytes_returns_uri(storage: TrainingStorage, tmp_path: Path) -> None:
    uri = storage.write_bytes(b"x", "a", "b.bin")

    assert uri == storage.uri("a", "b.bin")
    assert uri == f"{tmp_path}/a/b.bin"
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"x"


def test_write_bytes_replaces_existing_file(storage: TrainingStorage) -> None:
    storage.write_bytes(b"old", "file.bin")
    storage.write_bytes(b"new", "file.bin")

    assert storage.read_bytes("file.bin") == b"new"


def test_json_round_trip(storage: TrainingStorage) -> None:
    value = {"partition": "1997-10-01", "auc": 0.75, "model_path": ["ranking_model", "1997-10-01", "model.pt"]}

    storage.write_json(value, "production", "champion.json")

    assert storage.read_json("production", "champion.json") == value


def test_json_writes_unknown_types_as_strings(storage: TrainingStorage) -> None:
    storage.write_json({"path": Path("/x/y")}, "value.json")

    assert storage.read_json("value.json") == {"path": "/x/y"}


def test_parquet_round_trip(storage: TrainingStorage) -> None:
    frame = make_frame()

    storage.write_parquet(frame, "ratings_daily", "1997-10-01.parquet")

    pd.testing.assert_frame_equal(storage.read_parquet("ratings_daily", "1997-10-01.parquet"), frame)


def test_parquet_file_metadata_round_trip(storage: TrainingStorage) -> None:
    storage.write_parquet(
        make_frame(), "day.parquet", file_metadata={"ratings_fingerprint": "abc123", "source": "synthetic"}
    )

    metadata = storage.read_parquet_file_metadata("day.parquet")

    assert metadata["ratings_fingerprint"] == "abc123"
    assert metadata["source"] == "synthetic"
    assert "pandas" in metadata


def test_parquet_without_file_metadata(storage: TrainingStorage) -> None:
    storage.write_parquet(make_frame(), "day.parquet")

    metadata = storage.read_parquet_file_metadata("day.parquet")

    assert "ratings_fingerprint" not in metadata


def test_list_returns_sorted_names(storage: TrainingStorage) -> None:
    storage.write_bytes(b"2", "folder", "b.parquet")
    storage.write_bytes(b"1", "folder", "a.parquet")
    storage.write_bytes(b"3", "folder", "sub", "c.parquet")

    assert storage.list("folder") == ["a.parquet", "b.parquet", "sub"]


def test_list_missing_folder_is_empty(storage: TrainingStorage) -> None:
    assert storage.list("no-such-folder") == []


def test_exists_reports_written_file(storage: TrainingStorage) -> None:
    storage.write_bytes(b"x", "folder", "file.bin")

    assert storage.exists("folder", "file.bin")
    assert storage.exists("folder")
    assert not storage.exists("folder", "other.bin")


def test_read_missing_file_raises(storage: TrainingStorage) -> None:
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("missing.bin")


def test_failed_move_leaves_no_file(storage: TrainingStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "replace", fail_replace)

    with pytest.raises(StorageError) as caught:
        storage.write_bytes(b"payload", "folder", "file.bin")

    assert not (tmp_path / "folder" / "file.bin").exists()
    assert os.listdir(tmp_path / "folder") == []
    assert storage.uri("folder", "file.bin") in str(caught.value)
    assert "No space left on device" in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)


def test_failed_move_keeps_previous_file(
    storage: TrainingStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.write_bytes(b"old", "file.bin")
    monkeypatch.setattr(os, "replace", fail_replace)

    with pytest.raises(StorageError):
        storage.write_bytes(b"new", "file.bin")

    assert (tmp_path / "file.bin").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]


def test_failed_parquet_write_raises_storage_error(
    storage: TrainingStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "replace", fail_replace)

    with pytest.raises(StorageError):
        storage.write_parquet(make_frame(), "day.parquet")

    assert os.listdir(tmp_path) == []


def test_write_leaves_no_temporary_file(storage: TrainingStorage, tmp_path: Path) -> None:
    storage.write_bytes(b"x", "folder", "file.bin")

    assert os.listdir(tmp_path / "folder") == ["file.bin"]


def test_relative_root_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = TrainingStorage(root=".data")

    uri = storage.write_bytes(b"x", "folder", "file.bin")

    assert os.path.isabs(uri)
    assert uri == f"{tmp_path}/.data/folder/file.bin"
    assert storage.uri() == f"{tmp_path}/.data"


def test_file_uri_root_is_local(tmp_path: Path) -> None:
    storage = TrainingStorage(root=f"file://{tmp_path}")

    storage.write_bytes(b"x", "file.bin")

    assert storage.uri("file.bin") == f"{tmp_path}/file.bin"
    assert (tmp_path / "file.bin").read_bytes() == b"x"


def test_memory_root_uri_keeps_protocol(memory_storage: TrainingStorage) -> None:
    uri = memory_storage.uri("folder", "file.bin")

    assert uri.startswith("memory://")
    assert uri.endswith(f"{memory_storage.root.removeprefix('memory://')}/folder/file.bin")


def test_memory_root_round_trips(memory_storage: TrainingStorage) -> None:
    uri = memory_storage.write_bytes(b"payload", "folder", "file.bin")

    assert memory_storage.read_bytes("folder", "file.bin") == b"payload"
    assert memory_storage.exists("folder", "file.bin")
    assert memory_storage.list("folder") == ["file.bin"]
    with fsspec.open(uri, "rb") as handle:
        assert handle.read() == b"payload"


def test_memory_root_parquet_metadata(memory_storage: TrainingStorage) -> None:
    memory_storage.write_parquet(make_frame(), "day.parquet", file_metadata={"ratings_fingerprint": "f00d"})

    assert memory_storage.read_parquet_file_metadata("day.parquet")["ratings_fingerprint"] == "f00d"
    pd.testing.assert_frame_equal(memory_storage.read_parquet("day.parquet"), make_frame())


def test_memory_root_json_round_trip(memory_storage: TrainingStorage) -> None:
    memory_storage.write_json({"auc": 0.5}, "report.json")

    assert memory_storage.read_json("report.json") == {"auc": 0.5}


def test_memory_root_missing_folder_lists_empty(memory_storage: TrainingStorage) -> None:
    assert memory_storage.list("none") == []
    assert not memory_storage.exists("none", "file.bin")
