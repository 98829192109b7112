"""Faults that need no Ray: Kubernetes API trouble around a RayCluster, a cluster of the same name made by
another run, storage failures while the champion model is promoted, and sensors restarted mid-tick.

The Kubernetes API is the stand-in in tests.kube_standin, which can apply a request and then drop the
connection or delay the response, so that a change is applied although the client never receives the
response. Time is a fake clock wherever the product code takes one. The Dagster sensor daemon runs in
this process against a temporary instance.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import kubernetes
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import urllib3
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.scheduler.instigation import SensorInstigatorData
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time, instance_for_test
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.sensor import execute_sensor_iteration
from fsspec.implementations.local import LocalFileOpener, LocalFileSystem
from kubernetes.client.exceptions import ApiException

import resources.kuberay.lifecycle as lifecycle
from resources.cluster import RayClusterResource
from resources.errors import ClusterStartError
from resources.kuberay.backend import KubeRayCluster, kubernetes_api_client
from resources.kuberay.lifecycle import ClusterConflictError, RayClusterClient
from resources.kuberay.manifest import RUN_ID_KEY, ClusterRequest, RunContext, render_raycluster
from resources.kuberay.policy import load_policy
from resources.kuberay.retry import BASE_DELAY_S, MAX_ATTEMPTS, MAX_DELAY_S
from resources.storage import TrainingStorage
from tests.kube_standin import RAYCLUSTERS, KubeStandin
from training_pipelines.data.source import RatingsSource, day_bounds
from training_pipelines.defs.automation import CHANGED_DAYS_TAG, late_ratings_sensor
from training_pipelines.defs.clusters import orphaned_ray_clusters_sensor
from training_pipelines.defs.ranking import CHAMPION_FILE, EVALUATION_FOLDER, MODEL_FOLDER, production_model
from training_pipelines.defs.ratings import ratings_daily
from training_pipelines.training.request import MODEL_FILE

NAMESPACE = "ml-training"
RUN_ID = "5f0c2a9e-7d41-4c55-9a0e-2b8f6c1d3e47"
OWNER_LABELS = {RUN_ID_KEY: RUN_ID}
CLUSTER = "ray-fault-matrix"
# The client's limit of one API call in the tests of slow responses, and a slow response that takes longer.
# Other tests keep the product's limit, so that a loaded machine cannot add a retry to their counts.
CLIENT_TIMEOUT_S = 0.3
SLOW_RESPONSE_S = 1.0
# A watch requested for 1-5 s ends after 1% of that, so a wait loop turns over in milliseconds.
WATCH_TIMEOUT_SCALE = 0.01
DASHBOARD_TEMPLATE = "http://{service_ip}:{dashboard_port}"
READY_STATUS = {
    "state": "ready",
    "conditions": [{"type": "HeadPodReady", "status": "True", "reason": "HeadPodRunningAndReady"}],
    "head": {"serviceIP": "127.0.0.1"},
    "endpoints": {"dashboard": "18265"},
}
# Maximum total sleep of one call's retries: a delay after every attempt but the last, each capped.
MAX_RETRY_SLEEP_S = (MAX_ATTEMPTS - 1) * MAX_DELAY_S
# Real seconds a call may take here: every attempt waiting out the client's timeout, plus slack
# for a loaded machine. The fake sleeper makes the retry delays themselves take no real time.
MAX_REAL_CALL_S = MAX_ATTEMPTS * CLIENT_TIMEOUT_S + 2.0


class FakeTime:
    """A fake clock and sleeper: sleep() records its delay and moves the clock by it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, delay_s: float) -> None:
        self.sleeps.append(delay_s)
        self.now += delay_s


class ProbeSequence:
    """A dashboard probe that returns the queued results in order, then repeats the last one."""

    def __init__(self, *results: bool) -> None:
        self.results = list(results)

    def __call__(self, url: str) -> bool:
        return self.results.pop(0) if len(self.results) > 1 else self.results[0]


@pytest.fixture
def standin() -> Iterator[KubeStandin]:
    with KubeStandin(watch_timeout_scale=WATCH_TIMEOUT_SCALE) as server:
        yield server


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def short_client_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every API call of the lifecycle client passes this module constant as its timeout.
    monkeypatch.setattr(lifecycle, "API_TIMEOUT_S", CLIENT_TIMEOUT_S)


def make_client(
    standin: KubeStandin, fake_time: FakeTime, probe: Callable[[str], bool] = lambda url: True
) -> RayClusterClient:
    # The API client the kuberay backend builds, with urllib3's own retries off.
    api_client = kubernetes_api_client(api_url=standin.url)
    return RayClusterClient(
        custom_api=kubernetes.client.CustomObjectsApi(api_client),
        core_api=kubernetes.client.CoreV1Api(api_client),
        namespace=NAMESPACE,
        dashboard_url_template=DASHBOARD_TEMPLATE,
        probe_dashboard=probe,
        clock=fake_time.clock,
        sleep=fake_time.sleep,
    )


def manifest() -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": CLUSTER, "namespace": NAMESPACE, "labels": dict(OWNER_LABELS)},
        "spec": {"headGroupSpec": {"rayStartParams": {}}},
    }


def seed_ready_cluster(standin: KubeStandin) -> None:
    standin.store.put(manifest())
    standin.store.update_status(RAYCLUSTERS, NAMESPACE, CLUSTER, READY_STATUS)
    standin.store.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{CLUSTER}-head",
                "namespace": NAMESPACE,
                "labels": {"ray.io/cluster": CLUSTER, "ray.io/node-type": "head"},
            },
            "spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.60.0-py311-cpu"}]},
            "status": {"phase": "Running"},
        }
    )


def statuses(standin: KubeStandin, verb: str, plural: str = "rayclusters") -> list[int | None]:
    return [call.status for call in standin.calls(verb=verb, plural=plural)]


def cluster_uids(standin: KubeStandin) -> list[str]:
    return [item["metadata"]["uid"] for item in standin.store.objects(RAYCLUSTERS)]


def wait_for_calls(standin: KubeStandin, verb: str, count: int, timeout_s: float = 5.0) -> None:
    """Wait until the stand-in has recorded ``count`` requests of ``verb``, including one it still delays."""
    deadline = time.monotonic() + timeout_s
    while len(standin.calls(verb=verb, plural="rayclusters")) < count:
        assert time.monotonic() < deadline, f"the stand-in recorded fewer than {count} {verb} requests"
        time.sleep(0.02)


# ----- create -----


def test_create_lost_response_adopts_cluster(standin: KubeStandin, fake_time: FakeTime) -> None:
    # The server creates the cluster and the response never arrives, so the retry gets 409.
    standin.inject_fault(verb="create", plural="rayclusters", drop_after_serving=True)
    clusters = make_client(standin, fake_time)

    adopted = clusters.create(manifest(), owner_labels=OWNER_LABELS)

    assert statuses(standin, "create") == [None, 409]
    assert cluster_uids(standin) == [adopted["metadata"]["uid"]]
    assert adopted["metadata"]["labels"] == OWNER_LABELS
    assert fake_time.sleeps == [BASE_DELAY_S]
    assert statuses(standin, "delete") == []


@pytest.mark.usefixtures("short_client_timeout")
def test_create_slow_response_adopts_cluster(standin: KubeStandin, fake_time: FakeTime) -> None:
    # The server creates the cluster at once and sends the response after the client's timeout.
    standin.inject_fault(verb="create", plural="rayclusters", response_delay_s=SLOW_RESPONSE_S)
    clusters = make_client(standin, fake_time)
    started = time.monotonic()

    adopted = clusters.create(manifest(), owner_labels=OWNER_LABELS)

    assert time.monotonic() - started < SLOW_RESPONSE_S
    assert statuses(standin, "create") == [201, 409]
    assert cluster_uids(standin) == [adopted["metadata"]["uid"]]
    assert fake_time.sleeps == [BASE_DELAY_S]


@pytest.mark.usefixtures("short_client_timeout")
def test_create_slow_server_creates_once(standin: KubeStandin, fake_time: FakeTime) -> None:
    # The server delays the first create past the client's timeout and applies it after the retry.
    standin.inject_fault(verb="create", plural="rayclusters", delay_s=SLOW_RESPONSE_S)
    clusters = make_client(standin, fake_time)

    created = clusters.create(manifest(), owner_labels=OWNER_LABELS)
    wait_for_calls(standin, "create", 2)

    assert statuses(standin, "create") == [201, 409]
    assert cluster_uids(standin) == [created["metadata"]["uid"]]


def test_create_mixed_burst_adopts(standin: KubeStandin, fake_time: FakeTime) -> None:
    for fault in (
        {"status": 429},
        {"status": 429, "retry_after_s": 2},
        {"status": 500, "message": "etcdserver: leader changed"},
        {"drop_connection": True},
        {"drop_after_serving": True},
    ):
        standin.inject_fault(verb="create", plural="rayclusters", **fault)
    clusters = make_client(standin, fake_time)

    adopted = clusters.create(manifest(), owner_labels=OWNER_LABELS)

    assert statuses(standin, "create") == [429, 429, 500, None, None, 409]
    assert len(statuses(standin, "create")) == MAX_ATTEMPTS
    assert fake_time.sleeps == [0.2, 2.0, 0.8, 1.6, 3.2]
    assert sum(fake_time.sleeps) <= MAX_RETRY_SLEEP_S
    assert cluster_uids(standin) == [adopted["metadata"]["uid"]]


def test_create_429_storm_gives_up_in_bounds(standin: KubeStandin, fake_time: FakeTime) -> None:
    standin.inject_fault(verb="create", plural="rayclusters", status=429, retry_after_s=30, times=MAX_ATTEMPTS + 2)
    clusters = make_client(standin, fake_time)

    with pytest.raises(ApiException) as caught:
        clusters.create(manifest(), owner_labels=OWNER_LABELS)

    assert caught.value.status == 429
    assert len(statuses(standin, "create")) == MAX_ATTEMPTS
    # Retry-After requests 30 s, and each delay is capped at MAX_DELAY_S.
    assert fake_time.sleeps == [MAX_DELAY_S] * (MAX_ATTEMPTS - 1)
    assert standin.store.objects(RAYCLUSTERS) == []


@pytest.mark.usefixtures("short_client_timeout")
def test_create_timeouts_bounded_in_time(standin: KubeStandin, fake_time: FakeTime) -> None:
    # The response to every attempt comes after the client's timeout, so every attempt times out.
    standin.inject_fault(verb="create", plural="rayclusters", status=503, delay_s=SLOW_RESPONSE_S, times=MAX_ATTEMPTS)
    clusters = make_client(standin, fake_time)
    started = time.monotonic()

    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        clusters.create(manifest(), owner_labels=OWNER_LABELS)
    elapsed_s = time.monotonic() - started

    assert elapsed_s < MAX_REAL_CALL_S
    assert len(fake_time.sleeps) == MAX_ATTEMPTS - 1
    assert standin.store.objects(RAYCLUSTERS) == []


# ----- wait -----


def test_wait_rides_out_api_faults(standin: KubeStandin, fake_time: FakeTime) -> None:
    seed_ready_cluster(standin)
    standin.inject_fault(verb="get", plural="rayclusters", status=429, retry_after_s=1)
    standin.inject_fault(verb="get", plural="rayclusters", drop_connection=True)
    standin.inject_fault(verb="list", plural="pods", status=500)
    standin.inject_fault(verb="list", plural="pods", status=503)
    standin.inject_fault(verb="watch", plural="rayclusters", status=503)
    standin.inject_fault(verb="watch", plural="rayclusters", drop_connection=True)
    standin.inject_fault(verb="watch", plural="rayclusters", status=429)
    # The dashboard responds on the fourth turn, so the wait watches three times before that.
    clusters = make_client(standin, fake_time, ProbeSequence(False, False, False, True))

    ready = clusters.wait_until_ready(CLUSTER, timeout_s=60)

    assert ready.name == CLUSTER
    assert statuses(standin, "get") == [429, None, 200, 200, 200, 200]
    assert statuses(standin, "list", plural="pods") == [500, 503, 200, 200, 200, 200]
    assert statuses(standin, "watch") == [503, None, 429]
    assert fake_time.sleeps == [1.0, 0.4, 0.2, 0.4, 1.0, 1.0, 1.0]
    assert standin.faults.pending() == []


@pytest.mark.usefixtures("short_client_timeout")
def test_wait_retries_slow_get(standin: KubeStandin, fake_time: FakeTime) -> None:
    seed_ready_cluster(standin)
    standin.inject_fault(verb="get", plural="rayclusters", delay_s=SLOW_RESPONSE_S)
    clusters = make_client(standin, fake_time)
    started = time.monotonic()

    ready = clusters.wait_until_ready(CLUSTER, timeout_s=60)

    assert ready.name == CLUSTER
    assert time.monotonic() - started < SLOW_RESPONSE_S
    assert fake_time.sleeps == [BASE_DELAY_S]


@pytest.mark.usefixtures("short_client_timeout")
def test_wait_abandons_slow_watch(standin: KubeStandin, fake_time: FakeTime) -> None:
    seed_ready_cluster(standin)
    # A watch's own timeout is its window plus the client's timeout: 0.5 s + CLIENT_TIMEOUT_S here.
    standin.inject_fault(verb="watch", plural="rayclusters", response_delay_s=5.0)
    clusters = make_client(standin, fake_time, ProbeSequence(False, True))
    started = time.monotonic()

    ready = clusters.wait_until_ready(CLUSTER, timeout_s=0.5)

    assert ready.name == CLUSTER
    assert time.monotonic() - started < 2.0
    assert fake_time.sleeps == [0.5]
    assert statuses(standin, "watch") == [200]
    assert len(statuses(standin, "get")) == 2


def test_wait_keeps_timeout_under_429_storm(standin: KubeStandin, fake_time: FakeTime) -> None:
    seed_ready_cluster(standin)
    standin.inject_fault(verb="get", plural="rayclusters", status=429, retry_after_s=5, times=100)
    clusters = make_client(standin, fake_time)

    with pytest.raises(ClusterStartError) as caught:
        clusters.wait_until_ready(CLUSTER, timeout_s=12)

    assert sum(fake_time.sleeps) <= 12
    assert caught.value.cluster == f"{NAMESPACE}/{CLUSTER}"
    assert "HTTP 429" in caught.value.reason
    assert "12 s" in caught.value.reason
    assert len(statuses(standin, "get")) == 3


# ----- delete -----


def test_delete_lost_response_counts_as_done(standin: KubeStandin, fake_time: FakeTime) -> None:
    standin.store.put(manifest())
    standin.inject_fault(verb="delete", plural="rayclusters", drop_after_serving=True)
    clusters = make_client(standin, fake_time)

    clusters.delete(CLUSTER)

    assert statuses(standin, "delete") == [None, 404]
    assert standin.store.objects(RAYCLUSTERS) == []
    assert fake_time.sleeps == [BASE_DELAY_S]


@pytest.mark.usefixtures("short_client_timeout")
def test_delete_slow_response_counts_as_done(standin: KubeStandin, fake_time: FakeTime) -> None:
    standin.store.put(manifest())
    standin.inject_fault(verb="delete", plural="rayclusters", response_delay_s=SLOW_RESPONSE_S)
    clusters = make_client(standin, fake_time)
    started = time.monotonic()

    clusters.delete(CLUSTER)

    assert time.monotonic() - started < SLOW_RESPONSE_S
    assert statuses(standin, "delete") == [200, 404]
    assert standin.store.objects(RAYCLUSTERS) == []


def test_delete_mixed_burst_succeeds(standin: KubeStandin, fake_time: FakeTime) -> None:
    standin.store.put(manifest())
    for fault in (
        {"status": 429},
        {"status": 429, "retry_after_s": 1},
        {"status": 500},
        {"status": 503},
        {"drop_connection": True},
    ):
        standin.inject_fault(verb="delete", plural="rayclusters", **fault)
    clusters = make_client(standin, fake_time)

    clusters.delete(CLUSTER)

    assert statuses(standin, "delete") == [429, 429, 500, 503, None, 200]
    assert fake_time.sleeps == [0.2, 1.0, 0.8, 1.6, 3.2]
    assert standin.store.objects(RAYCLUSTERS) == []


def test_delete_storm_raises_and_keeps_cluster(standin: KubeStandin, fake_time: FakeTime) -> None:
    standin.store.put(manifest())
    standin.inject_fault(verb="delete", plural="rayclusters", status=503, times=MAX_ATTEMPTS + 1)
    clusters = make_client(standin, fake_time)

    with pytest.raises(ApiException) as caught:
        clusters.delete(CLUSTER)

    assert caught.value.status == 503
    assert len(statuses(standin, "delete")) == MAX_ATTEMPTS
    assert sum(fake_time.sleeps) <= MAX_RETRY_SLEEP_S
    assert len(standin.store.objects(RAYCLUSTERS)) == 1


# ----- the backend's start: a create that gave up, and a cluster of another run -----


def backend_cluster(standin: KubeStandin, fake_time: FakeTime, run_id: str = RUN_ID) -> KubeRayCluster:
    context = RunContext(
        run_id=run_id,
        job_name="daily_retrain_job",
        namespace=NAMESPACE,
        code_location="training_pipelines",
        owner="dagster",
        run_url="",
        partition="1998-03-15",
        name=CLUSTER,
    )
    return KubeRayCluster(
        api_client=kubernetes_api_client(api_url=standin.url),
        request=ClusterRequest(workers=1),
        context=context,
        policy=load_policy(),
        dashboard_url_template=DASHBOARD_TEMPLATE,
        clock=fake_time.clock,
        sleep=fake_time.sleep,
    )


def test_start_deletes_cluster_of_failed_create(standin: KubeStandin, fake_time: FakeTime) -> None:
    # The first attempt creates the cluster but its response is lost. Every retry then gets 503.
    standin.inject_fault(verb="create", plural="rayclusters", drop_after_serving=True)
    standin.inject_fault(verb="create", plural="rayclusters", status=503, times=MAX_ATTEMPTS)
    cluster = backend_cluster(standin, fake_time)

    with pytest.raises(ApiException) as caught:
        cluster.start()

    assert caught.value.status == 503
    assert len(statuses(standin, "create")) == MAX_ATTEMPTS
    assert statuses(standin, "delete") == [200]
    assert standin.store.objects(RAYCLUSTERS) == []


CONFLICT_PRELUDES = {
    "first attempt": [],
    "after a 503": [{"status": 503}],
    "after a reset": [{"drop_connection": True}],
}


@pytest.mark.parametrize("prelude", list(CONFLICT_PRELUDES), ids=list(CONFLICT_PRELUDES))
def test_start_conflict_keeps_other_runs_cluster(standin: KubeStandin, fake_time: FakeTime, prelude: str) -> None:
    other = backend_cluster(standin, fake_time, run_id="0d7e1b52-other-run")
    theirs = standin.store.put(other.manifest)
    for fault in CONFLICT_PRELUDES[prelude]:
        standin.inject_fault(verb="create", plural="rayclusters", **fault)
    cluster = backend_cluster(standin, fake_time)

    with pytest.raises(ClusterConflictError) as caught:
        cluster.start()
    cluster.stop()

    message = str(caught.value)
    assert f"{NAMESPACE}/{CLUSTER}" in message
    assert "0d7e1b52-other-run" in message
    assert f"kubectl delete raycluster -n {NAMESPACE} {CLUSTER}" in message
    assert "check which run created it" in message
    assert statuses(standin, "create")[-1] == 409
    assert statuses(standin, "delete") == []
    assert standin.store.objects(RAYCLUSTERS) == [theirs]


# ----- storage failures while the champion is promoted -----

DAY = "1997-10-10"
HOLDOUT_DAY = "1997-10-11"
CHAMPION_DAY = "1997-10-05"
PRODUCTION_FOLDER = os.path.dirname(CHAMPION_FILE)
CHAMPION_NAME = os.path.basename(CHAMPION_FILE)


def in_production_folder(path: str | os.PathLike[str]) -> bool:
    return f"/{PRODUCTION_FOLDER}/" in os.fspath(path)


def full_disk(path: str | os.PathLike[str]) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", os.fspath(path))


def fail_temporary_open(monkeypatch: pytest.MonkeyPatch) -> None:
    original = LocalFileSystem._open

    def failing_open(self: LocalFileSystem, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "w" in mode and in_production_folder(path):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return original(self, path, mode, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "_open", failing_open)


def fill_disk_while_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    original = LocalFileOpener.write

    def failing_write(self: LocalFileOpener, data: bytes) -> int:
        if not in_production_folder(self.path):
            return int(original(self, data))
        original(self, data[: len(data) // 2])
        raise full_disk(self.path)

    monkeypatch.setattr(LocalFileOpener, "write", failing_write)


def fill_disk_on_close(monkeypatch: pytest.MonkeyPatch) -> None:
    original = LocalFileOpener.__exit__

    def failing_exit(self: LocalFileOpener, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        original(self, exc_type, exc_value, traceback)
        if exc_type is None and "w" in self.mode and in_production_folder(self.path):
            # The buffered bytes are flushed on close, and the flush finds the disk full.
            raise full_disk(self.path)

    monkeypatch.setattr(LocalFileOpener, "__exit__", failing_exit)


def fail_rename(monkeypatch: pytest.MonkeyPatch) -> None:
    # rename(2) returns ENOSPC when the directory has no room for the new entry.
    for name in ("rename", "replace"):
        original = getattr(os, name)

        def failing_rename(source: Any, destination: Any, *args: Any, _original: Any = original, **kwargs: Any) -> None:
            if in_production_folder(destination):
                raise full_disk(destination)
            _original(source, destination, *args, **kwargs)

        monkeypatch.setattr(os, name, failing_rename)


def fail_rename_on_full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    fail_rename(monkeypatch)
    original = os.sendfile

    def failing_sendfile(out_fd: int, in_fd: int, offset: Any, count: int) -> int:
        # On Linux, shutil copies file contents with sendfile, and the disk is full for every file in the folder.
        destination = os.readlink(f"/proc/self/fd/{out_fd}")
        if in_production_folder(destination):
            raise full_disk(destination)
        return int(original(out_fd, in_fd, offset, count))

    monkeypatch.setattr(os, "sendfile", failing_sendfile)


STORAGE_FAULTS: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], str]] = {
    "temporary file not writable": (fail_temporary_open, "Permission denied"),
    "disk full while writing": (fill_disk_while_writing, "No space left on device"),
    "disk full on close": (fill_disk_on_close, "No space left on device"),
    "rename fails": (fail_rename, "No space left on device"),
    "rename fails on a full disk": (fail_rename_on_full_disk, "No space left on device"),
}


@pytest.fixture
def promotion_storage(tmp_path: Path) -> TrainingStorage:
    """A storage root with a champion from CHAMPION_DAY and an evaluation of DAY whose model beats it."""
    storage = TrainingStorage(root=str(tmp_path))
    storage.write_json(
        {
            "partition": CHAMPION_DAY,
            "model_path": [MODEL_FOLDER, CHAMPION_DAY, MODEL_FILE],
            "model_uri": storage.uri(MODEL_FOLDER, CHAMPION_DAY, MODEL_FILE),
            "auc": 0.70,
            "holdout_day": "1997-10-06",
            "run_id": "earlier-run",
        },
        CHAMPION_FILE,
    )
    storage.write_json(
        {
            "partition": DAY,
            "holdout_day": HOLDOUT_DAY,
            "model": {"auc": 0.75, "log_loss": 0.6, "ndcg_at_10": 0.3, "hit_rate_at_10": 0.5},
            "baseline": {"auc": 0.6, "log_loss": 0.7, "ndcg_at_10": 0.2, "hit_rate_at_10": 0.4},
            "champion": {"partition": CHAMPION_DAY, "auc": 0.71, "log_loss": 0.6, "ndcg_at_10": 0.3},
        },
        EVALUATION_FOLDER,
        f"{DAY}.json",
    )
    return storage


def materialize_production_model(storage: TrainingStorage) -> dg.ExecuteInProcessResult:
    return dg.materialize([production_model], partition_key=DAY, resources={"storage": storage}, raise_on_error=False)


def test_promotion_without_fault_replaces_champion(promotion_storage: TrainingStorage) -> None:
    result = materialize_production_model(promotion_storage)

    assert result.success
    assert promotion_storage.read_json(CHAMPION_FILE)["partition"] == DAY
    assert promotion_storage.list(PRODUCTION_FOLDER) == [CHAMPION_NAME]


@pytest.mark.parametrize("fault", list(STORAGE_FAULTS), ids=list(STORAGE_FAULTS))
def test_promotion_storage_fault_keeps_champion(
    promotion_storage: TrainingStorage, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    inject, os_message = STORAGE_FAULTS[fault]
    champion_path = Path(promotion_storage.uri(CHAMPION_FILE))
    before = champion_path.read_bytes()
    inject(monkeypatch)

    result = materialize_production_model(promotion_storage)
    monkeypatch.undo()

    assert not result.success
    [failure] = result.get_step_failure_events()
    error = failure.step_failure_data.error
    assert error is not None
    cause = error.cause
    assert cause is not None
    assert cause.cls_name == "StorageError"
    assert f"Writing {champion_path} failed" in cause.message
    assert os_message in cause.message
    assert result.asset_materializations_for_node("production_model") == []
    assert champion_path.read_bytes() == before
    assert json.loads(champion_path.read_bytes())["partition"] == CHAMPION_DAY
    assert sorted(os.listdir(champion_path.parent)) == [CHAMPION_NAME]


# ----- late_ratings_sensor restarted mid-tick -----

RATINGS_DAYS = ["1997-10-01", "1997-10-02", "1997-10-03"]
SENSOR_ENV = {
    "events": "FAULT_MATRIX_EVENTS_URI",
    "users": "FAULT_MATRIX_USERS_URI",
    "items": "FAULT_MATRIX_ITEMS_URI",
    "root": "FAULT_MATRIX_STORAGE_ROOT",
}

# The code location that the sensor daemon loads from this module. Its resources come from the
# environment, which each test sets to its own temporary folder.
defs = dg.Definitions(
    assets=[ratings_daily],
    sensors=[late_ratings_sensor],
    resources={
        "ratings_source": RatingsSource(
            events_uri=dg.EnvVar(SENSOR_ENV["events"]),
            users_uri=dg.EnvVar(SENSOR_ENV["users"]),
            items_uri=dg.EnvVar(SENSOR_ENV["items"]),
            column_renames={"movie_id": "item_id"},
        ),
        "storage": TrainingStorage(root=dg.EnvVar(SENSOR_ENV["root"])),
    },
)


def at(day: str, hour: int = 12) -> int:
    return day_bounds(dt.date.fromisoformat(day))[0] + hour * 3600


def write_events(path: Path, extra: list[tuple[int, int, int, int]] | None = None) -> None:
    rows = [
        (1, 10, 4, at("1997-10-01")),
        (2, 20, 2, at("1997-10-02")),
        (3, 10, 3, at("1997-10-03")),
        *(extra or []),
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "timestamp"])
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


class SimulatedCrash(Exception):
    """Raised at one of the sensor daemon's debug crash points, in place of the process dying there."""


class SensorDaemon:
    """Ticks of Dagster's sensor daemon in this process, on an instance with ratings_daily materialized.

    Runs are only queued, because no daemon dequeues and starts them.

    NOTE: this drives dagster._daemon.sensor and dagster._core.test_utils, which are not public API;
    it was written against dagster 1.13.
    """

    def __init__(self, instance: dg.DagsterInstance, workspace: WorkspaceProcessContext, events_path: Path) -> None:
        self.instance = instance
        self.workspace = workspace
        self.events_path = events_path
        self.now = time.time()
        self.logger = logging.getLogger("test_fault_matrix.sensor_daemon")

    def tick(self, *, crash_at: str | None = None) -> None:
        """Run one tick, later than the sensor's minimum interval after the previous one."""
        self.now += 600
        crash_flags = {late_ratings_sensor.name: {crash_at: SimulatedCrash(crash_at)}} if crash_at else None
        with freeze_time(self.now):
            list(execute_sensor_iteration(self.workspace, self.logger, None, None, debug_crash_flags=crash_flags))

    def sensor_state(self) -> Any:
        location = next(iter(self.workspace.create_request_context().get_code_location_entries().values()))
        assert location.code_location is not None, location.load_error
        repository = next(iter(location.code_location.get_repositories().values()))
        sensor = repository.get_sensor(late_ratings_sensor.name)
        return self.instance.get_instigator_state(sensor.get_remote_origin_id(), sensor.selector_id)

    def stored_cursor(self) -> str | None:
        data = self.sensor_state().instigator_data
        return None if data is None else data.cursor

    def set_cursor(self, cursor: str | None) -> None:
        state = self.sensor_state()
        data: SensorInstigatorData = state.instigator_data
        self.instance.update_instigator_state(state.with_data(data._replace(cursor=cursor)))

    def sensor_runs(self) -> list[dg.DagsterRun]:
        return list(
            self.instance.get_runs(filters=dg.RunsFilter(tags={"dagster/sensor_name": late_ratings_sensor.name}))
        )

    def evaluate_directly(self, cursor: str | None) -> dg.SensorResult | dg.SkipReason:
        with dg.build_sensor_context(instance=self.instance, cursor=cursor, resources=defs.resources) as context:
            return late_ratings_sensor(context)


@pytest.fixture
def sensor_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SensorDaemon]:
    events_path = tmp_path / "events.parquet"
    write_events(events_path)
    monkeypatch.setenv(SENSOR_ENV["events"], str(events_path))
    monkeypatch.setenv(SENSOR_ENV["users"], str(tmp_path / "users.parquet"))
    monkeypatch.setenv(SENSOR_ENV["items"], str(tmp_path / "items.parquet"))
    monkeypatch.setenv(SENSOR_ENV["root"], str(tmp_path / "storage"))
    coordinator = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name=__name__, attribute="defs", working_directory=os.getcwd()),
        location_name="fault_matrix",
    )

    with instance_for_test(overrides={"run_coordinator": coordinator}) as instance:
        # One run over the range, as a backfill stores it, records a materialization per day.
        result = dg.materialize(
            [ratings_daily],
            instance=instance,
            resources=defs.resources,
            tags={
                "dagster/asset_partition_range_start": RATINGS_DAYS[0],
                "dagster/asset_partition_range_end": RATINGS_DAYS[-1],
            },
        )
        assert result.success
        assert sorted(instance.get_materialized_partitions(ratings_daily.key)) == RATINGS_DAYS
        with create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance) as workspace:
            yield SensorDaemon(instance, workspace, events_path)


def change_days(daemon: SensorDaemon) -> None:
    """Add late events on 1997-10-01 and 1997-10-03, two days that are not adjacent."""
    write_events(daemon.events_path, extra=[(5, 30, 4, at("1997-10-01", 20)), (5, 20, 1, at("1997-10-03", 20))])


def run_keys(runs: list[dg.DagsterRun]) -> list[str]:
    return sorted(run.tags["dagster/run_key"] for run in runs)


def requested_days(runs: list[dg.DagsterRun]) -> list[str]:
    return sorted(day for run in runs for day in run.tags[CHANGED_DAYS_TAG].split(","))


def test_daemon_crash_before_launch_requests_once(sensor_daemon: SensorDaemon) -> None:
    change_days(sensor_daemon)

    # A result thrown away before its cursor is stored leaves the next evaluation the same cursor.
    expected = sensor_daemon.evaluate_directly(cursor=None)
    again = sensor_daemon.evaluate_directly(cursor=None)

    assert isinstance(expected, dg.SensorResult)
    assert isinstance(again, dg.SensorResult)
    assert len(expected.run_requests or []) == 2
    assert [request.run_key for request in again.run_requests or []] == [
        request.run_key for request in expected.run_requests or []
    ]
    assert [request.tags for request in again.run_requests or []] == [
        request.tags for request in expected.run_requests or []
    ]
    assert again.cursor == expected.cursor

    # The daemon evaluates the sensor and dies before it reserves runs or stores the cursor.
    sensor_daemon.tick(crash_at="AUTOMATION_EVALUATIONS_ADDED")
    assert sensor_daemon.sensor_runs() == []
    assert sensor_daemon.stored_cursor() is None

    sensor_daemon.tick()
    sensor_daemon.tick()

    runs = sensor_daemon.sensor_runs()
    assert run_keys(runs) == sorted(request.run_key or "" for request in expected.run_requests or [])
    assert requested_days(runs) == ["1997-10-01", "1997-10-03"]
    assert sensor_daemon.stored_cursor() == expected.cursor


def test_lost_cursor_after_launch_adds_no_run(sensor_daemon: SensorDaemon) -> None:
    change_days(sensor_daemon)
    sensor_daemon.tick()
    launched = sensor_daemon.sensor_runs()
    cursor = sensor_daemon.stored_cursor()
    assert requested_days(launched) == ["1997-10-01", "1997-10-03"]
    assert cursor is not None

    # Dagster resumes a crashed tick from the requests it reserved, and evaluates the sensor again
    # with the old cursor only when it cannot (the tick is older than a day or failed twice).
    # Setting the stored cursor back gives that state: runs launched, cursor not stored.
    sensor_daemon.set_cursor(None)
    sensor_daemon.tick()

    runs = sensor_daemon.sensor_runs()
    assert run_keys(runs) == run_keys(launched)
    assert requested_days(runs) == ["1997-10-01", "1997-10-03"]
    assert all(run.status == dg.DagsterRunStatus.QUEUED for run in runs)
    assert sensor_daemon.stored_cursor() == cursor


# ----- orphaned_ray_clusters_sensor interrupted mid-sweep -----


def run_cluster(name: str, run_id: str) -> dict[str, Any]:
    """A RayCluster of a Dagster run of this code location, rendered from the real templates and policy."""
    context = RunContext(
        run_id=run_id,
        job_name="daily_retrain_job",
        namespace=NAMESPACE,
        code_location="training_pipelines",
        owner="dagster",
        run_url="",
        partition="1998-03-15",
        name=name,
    )
    request = ClusterRequest(workers=1, ttl_minutes=120)
    return render_raycluster(request=request, context=context, policy=load_policy())


def add_run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus) -> str:
    run = dg.DagsterRun(job_name="daily_retrain_job", run_id=str(uuid.uuid4()), status=status)
    instance.add_run(run)
    return run.run_id


def sweep(instance: dg.DagsterInstance, standin: KubeStandin) -> dg.SkipReason:
    """Run one tick of the orphan sensor from a fresh context, as after a daemon restart."""
    resource = RayClusterResource(backend="kuberay", kube_api_url=standin.url, namespace=NAMESPACE)
    with dg.build_sensor_context(instance=instance, resources={"ray_cluster": resource}) as context:
        return orphaned_ray_clusters_sensor(context)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def test_orphan_sweep_resumes_after_failed_tick(instance: dg.DagsterInstance) -> None:
    orphans = {
        "ray-a-failed": add_run(instance, dg.DagsterRunStatus.FAILURE),
        "ray-b-succeeded": add_run(instance, dg.DagsterRunStatus.SUCCESS),
        "ray-c-canceled": add_run(instance, dg.DagsterRunStatus.CANCELED),
        "ray-d-no-run": str(uuid.uuid4()),
    }
    live = {
        "ray-live-started": add_run(instance, dg.DagsterRunStatus.STARTED),
        "ray-live-starting": add_run(instance, dg.DagsterRunStatus.STARTING),
        "ray-live-canceling": add_run(instance, dg.DagsterRunStatus.CANCELING),
    }

    with KubeStandin() as standin:
        for name, run_id in {**orphans, **live}.items():
            standin.store.put(run_cluster(name, run_id))
        # First tick: the second delete is applied but its response is lost, and the third fails
        # for a reason that is not retried, which ends the tick as a killed daemon would.
        standin.inject_fault(verb="delete", name="ray-b-succeeded", drop_after_serving=True)
        standin.inject_fault(verb="delete", name="ray-c-canceled", status=401, reason="Unauthorized")
        with pytest.raises(ApiException) as caught:
            sweep(instance, standin)
        after_first = sorted(item["metadata"]["name"] for item in standin.store.objects(RAYCLUSTERS))

        # Second tick: another client deletes ray-d-no-run just before this tick's delete of it.
        standin.inject_fault(
            verb="delete",
            name="ray-d-no-run",
            before_serving=lambda: standin.store.delete(RAYCLUSTERS, NAMESPACE, "ray-d-no-run"),
        )
        second = sweep(instance, standin)
        third = sweep(instance, standin)
        remaining = sorted(item["metadata"]["name"] for item in standin.store.objects(RAYCLUSTERS))
        delete_statuses = {
            name: [call.status for call in standin.calls(verb="delete", name=name)] for name in [*orphans, *live]
        }

    assert caught.value.status == 401
    assert after_first == ["ray-c-canceled", "ray-d-no-run", *sorted(live)]
    assert "Deleted 2 orphaned RayCluster(s): ray-c-canceled, ray-d-no-run" in str(second.skip_message)
    assert f"No orphaned RayCluster among {len(live)}" in str(third.skip_message)
    assert remaining == sorted(live)
    assert delete_statuses["ray-a-failed"] == [200]
    assert delete_statuses["ray-b-succeeded"] == [None, 404]
    assert delete_statuses["ray-c-canceled"] == [401, 200]
    assert delete_statuses["ray-d-no-run"] == [404]
    for name in live:
        assert delete_statuses[name] == [], f"the sweep sent a delete for {name}, whose run is live"
