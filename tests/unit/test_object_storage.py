"""The source and the storage root on S3, through fsspec and pyarrow, against a moto server on 127.0.0.1."""

import socket
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from resources.storage import TrainingStorage
from training_pipelines.data.source import RatingsSource
from training_pipelines.defs.ratings import FINGERPRINT_KEY, RATINGS_FOLDER, ratings_daily

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

BUCKET = "ratings-test"
DAY = "1997-10-01"
DAY_START_S = 875664000  # 1997-10-01T00:00:00Z


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    try:
        s3fs.S3FileSystem.clear_instance_cache()
        # moto keeps its state per process, so the bucket may exist from an earlier test.
        s3fs.S3FileSystem().makedirs(BUCKET, exist_ok=True)
        yield endpoint
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def _upload(frame: pd.DataFrame, key: str, tmp_path: Path) -> str:
    local = tmp_path / key.replace("/", "_")
    frame.to_parquet(local)
    uri = f"s3://{BUCKET}/{key}"
    s3fs.S3FileSystem().put(str(local), uri)
    return uri


def test_ratings_daily_reads_and_writes_s3(s3_endpoint: str, tmp_path: Path) -> None:
    events = pd.DataFrame(
        {
            "user_id": [1, 2, 2],
            "movie_id": [10, 20, 30],
            "rating": [5, 3, 4],
            "timestamp": [DAY_START_S + 60, DAY_START_S + 3600, DAY_START_S + 86400 + 5],
        }
    )
    source = RatingsSource(events_uri=_upload(events, "source/events.parquet", tmp_path))
    storage = TrainingStorage(root=f"s3://{BUCKET}/outputs")

    result = dg.materialize(
        [ratings_daily], resources={"ratings_source": source, "storage": storage}, partition_key=DAY
    )

    assert result.success
    stored = storage.read_parquet(RATINGS_FOLDER, f"{DAY}.parquet")
    assert sorted(stored["item_id"]) == [10, 20]
    assert storage.read_parquet_file_metadata(RATINGS_FOLDER, f"{DAY}.parquet")[FINGERPRINT_KEY] != ""
    assert storage.uri(RATINGS_FOLDER) == f"s3://{BUCKET}/outputs/{RATINGS_FOLDER}"


def test_storage_json_round_trip_on_s3(s3_endpoint: str) -> None:
    storage = TrainingStorage(root=f"s3://{BUCKET}/outputs")

    storage.write_json({"partition": DAY}, "production", "champion.json")

    assert storage.read_json("production", "champion.json") == {"partition": DAY}
    assert storage.list("production") == ["champion.json"]
