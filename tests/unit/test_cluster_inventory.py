"""Cluster summaries, expiry and the orphan rules for clusters made by hand; the local cluster records."""

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dagster as dg
import psutil
import pytest

from resources import cluster as cluster_module
from resources.cli.backends import KubeRayClusters
from resources.cluster import RayClusterResource
from resources.history import JobHistory
from resources.kuberay.inventory import summarize
from resources.kuberay.manifest import ClusterRequest, RunContext, render_raycluster
from resources.kuberay.orphans import find_orphans
from resources.kuberay.policy import load_policy
from resources.local import LocalRayCluster
from resources.local_registry import LocalRegistry, ProcessRef, record_of
from resources.recorder import other_histories
from resources.spec import ClusterSpec
from tests.jobs import record_running_job
from tests.kube_standin import RAYCLUSTERS, KubeStandin
from training_pipelines.defs.clusters import orphaned_ray_clusters_sensor

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
GIB = 1024**3


def cluster(
    name: str,
    *,
    origin: str = "manual",
    created: dt.datetime = NOW - dt.timedelta(hours=1),
    ttl_minutes: int = 120,
    code_location: str = "training_pipelines",
    workers: int = 2,
) -> dict[str, Any]:
    """A RayCluster as the API server returns it, rendered from the real templates and policy."""
    context = RunContext(
        run_id=f"run-of-{name}",
        job_name="daily_retrain_job" if origin == "dagster" else "",
        namespace="ml-training",
        code_location=code_location if origin == "dagster" else "",
        owner="alice",
        run_url="",
        origin=origin,
        name=name,
        partition="1998-03-15" if origin == "dagster" else None,
    )
    request = ClusterRequest(workers=workers, memory_per_worker=4 * GIB, head_memory=2 * GIB, ttl_minutes=ttl_minutes)
    manifest = render_raycluster(request=request, context=context, policy=load_policy())
    manifest["metadata"]["creationTimestamp"] = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest["status"] = {"state": "ready", "readyWorkerReplicas": workers, "desiredWorkerReplicas": workers}
    return manifest


def test_summary_reads_origin_size_and_expiry() -> None:
    summary = summarize(cluster("exp-a", workers=3))
    assert summary.origin == "manual"
    assert summary.owner == "alice"
    assert (summary.workers_ready, summary.workers_desired) == (3, 3)
    assert summary.memory == 2 * GIB + 3 * 4 * GIB
    assert summary.cpus == 1 + 3
    assert summary.expires_at == NOW + dt.timedelta(hours=1)
    assert not summary.expired(NOW)
    assert summary.expired(NOW + dt.timedelta(hours=1))
    assert summary.describe_origin() == "manual (alice)"
    assert summary.to_dict(NOW)["time_left_s"] == 3600


def test_run_summary_names_partition() -> None:
    summary = summarize(cluster("ray-run", origin="dagster"))
    assert summary.origin == "dagster"
    assert summary.run_id == "run-of-ray-run"
    assert summary.describe_origin() == "run run-of-r (1998-03-15)"


def test_manual_clusters_are_deleted_only_once_expired() -> None:
    clusters = [
        cluster("exp-young"),
        cluster("exp-expired", created=NOW - dt.timedelta(hours=3)),
    ]
    orphans = find_orphans(clusters, run_is_active=lambda run_id: None, now=NOW)
    assert [orphan.name for orphan in orphans] == ["exp-expired"]
    assert "lifetime of 2 h ended" in orphans[0].reason


def test_other_locations_kept_until_expired() -> None:
    clusters = [
        cluster("ray-theirs", origin="dagster", code_location="other_location"),
        cluster("ray-theirs-old", origin="dagster", code_location="other_location", created=NOW - dt.timedelta(days=1)),
        cluster("ray-ours", origin="dagster"),
    ]
    orphans = find_orphans(clusters, run_is_active=lambda run_id: None, now=NOW, code_location="training_pipelines")
    assert sorted(orphan.name for orphan in orphans) == ["ray-ours", "ray-theirs-old"]


def test_active_run_kept_until_expired() -> None:
    young = cluster("ray-live", origin="dagster")
    old = cluster("ray-live-old", origin="dagster", created=NOW - dt.timedelta(hours=5))
    orphans = find_orphans([young, old], run_is_active=lambda run_id: True, now=NOW)
    assert [orphan.name for orphan in orphans] == ["ray-live-old"]


def test_registry_drops_records_whose_holder_died(tmp_path: Path) -> None:
    registry = LocalRegistry(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        cluster = LocalRayCluster(
            name="exp-held", spec=ClusterSpec(workers=1, cpus_per_worker=1, memory_per_worker=GIB)
        )
        # A cluster whose only "node" is the sleeping child.
        cluster._nodes = [SimpleNamespace(process=holder)]  # type: ignore[list-item]
        record = record_of(cluster, dashboard_url="http://127.0.0.1:1", owner="alice", ttl=dt.timedelta(hours=1))
        # The holder is this test process.
        assert record.holder.pid == os.getpid()
        registry.write(record)
        assert [r.name for r in registry.list()] == ["exp-held"]
        assert registry.get("exp-held") == record

        stale = json.loads(registry.path("exp-held").read_text())
        stale["holder"] = {"pid": holder.pid, "started": psutil.Process(holder.pid).create_time()}
        registry.path("exp-held").write_text(json.dumps(stale))
        assert registry.get("exp-held") is not None
    finally:
        holder.kill()
        holder.wait()
    assert registry.list() == []
    assert not registry.path("exp-held").exists()


def test_process_ref_detects_pid_reuse() -> None:
    me = ProcessRef.of(os.getpid())
    assert me.is_alive()
    assert not ProcessRef(pid=me.pid, started=me.started - 100).is_alive()


def test_orphan_sensor_deletes_expired_manual_cluster() -> None:
    now = dt.datetime.now(dt.UTC)
    with KubeStandin() as standin:
        for name, created in (("exp-expired", now - dt.timedelta(hours=3)), ("exp-young", now)):
            standin.store.put(cluster(name))
            stored = standin.store.get(RAYCLUSTERS, "ml-training", name)
            stored["metadata"]["creationTimestamp"] = created.strftime("%Y-%m-%dT%H:%M:%SZ")
            standin.store.put(stored)
        resource = RayClusterResource(backend="kuberay", kube_api_url=standin.url, namespace="ml-training")
        with (
            dg.DagsterInstance.ephemeral() as instance,
            dg.build_sensor_context(instance=instance, resources={"ray_cluster": resource}) as context,
        ):
            result = orphaned_ray_clusters_sensor(context)
        remaining = [item["metadata"]["name"] for item in standin.store.objects(RAYCLUSTERS)]

    assert isinstance(result, dg.SkipReason)
    assert "exp-expired" in str(result.skip_message)
    assert remaining == ["exp-young"]


def test_registry_remove_survives_unremovable_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = LocalRegistry(tmp_path)
    registry.path("exp-a").write_text("{}")
    # A folder where the keeper's log should be: unlink fails with IsADirectoryError.
    registry.log_path("exp-a").mkdir()

    registry.remove("exp-a")

    assert not registry.path("exp-a").exists()
    assert "Failed to remove the keeper's log of exp-a" in caplog.text


def test_registry_claim_is_exclusive(tmp_path: Path) -> None:
    registry = LocalRegistry(tmp_path)
    assert registry.claim("exp-a")
    # This process holds the claim, so a second claim fails until it is released.
    assert not registry.claim("exp-a")
    registry.release_claim("exp-a")
    assert registry.claim("exp-a")


def test_registry_takes_over_a_dead_claim(tmp_path: Path) -> None:
    registry = LocalRegistry(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "exp-b.starting").write_text(json.dumps({"pid": dead.pid, "started": 0.0}))
    assert registry.claim("exp-b")


def test_registry_ending_lasts_until_name_claimed(tmp_path: Path) -> None:
    registry = LocalRegistry(tmp_path)
    at = dt.datetime(2026, 12, 5, 17, 0, tzinfo=dt.UTC)
    registry.write_ending("exp-c", "its lifetime of 8h ended", at)

    ending = registry.ending("exp-c")
    assert ending is not None
    assert ending.reason == "its lifetime of 8h ended"
    assert ending.at == at
    assert registry.list() == []

    assert registry.claim("exp-c")
    assert registry.ending("exp-c") is None


def test_registry_ignores_unreadable_ending(tmp_path: Path) -> None:
    registry = LocalRegistry(tmp_path)
    registry.ending_path("exp-d").write_text("{not json")

    assert registry.ending("exp-d") is None


def test_registry_notes_each_history_once(tmp_path: Path) -> None:
    registry = LocalRegistry(tmp_path)
    secret = "postgresql://trainer:s3cret@db.internal/history"
    registry.add_history("exp-e", secret)
    registry.add_history("exp-e", secret)
    registry.add_history("exp-e", "sqlite:////tmp/other.db")

    assert sorted(registry.histories("exp-e")) == [secret, "sqlite:////tmp/other.db"]
    assert registry.histories("exp-f") == []
    # The URLs may hold passwords, so only their owner can read them.
    for path in registry.histories_path("exp-e").iterdir():
        assert path.stat().st_mode & 0o077 == 0
    assert registry.histories_path("exp-e").stat().st_mode & 0o077 == 0


def test_registry_history_notes_go_with_cluster(tmp_path: Path) -> None:
    registry = LocalRegistry(tmp_path)
    registry.add_history("exp-g", "sqlite:////tmp/a.db")
    registry.remove("exp-g")
    assert registry.histories("exp-g") == []

    registry.add_history("exp-h", "sqlite:////tmp/a.db")
    assert registry.claim("exp-h")
    assert registry.histories("exp-h") == []


def test_registry_ignores_unreadable_history_note(tmp_path: Path) -> None:
    registry = LocalRegistry(tmp_path)
    registry.add_history("exp-i", "sqlite:////tmp/a.db")
    (registry.histories_path("exp-i") / "broken.url").write_bytes(b"sqlite:////tmp/\xff.db")

    assert registry.histories("exp-i") == ["sqlite:////tmp/a.db"]


def test_other_histories_skip_first_and_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = ("default.db", "team.db", "mine.db")
    default, team, mine = (f"sqlite:///{tmp_path / name}" for name in names)
    for name in names:
        (tmp_path / name).touch()
    monkeypatch.setenv("TRAINING_HISTORY_URL", default)
    # A history whose SQLite file is missing contains no job, and opening it would create it.
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    noted = [default, team, team, missing, mine]

    assert other_histories(None, noted) == [team, mine]
    assert other_histories(team, noted) == [default, mine]
    monkeypatch.chdir(tmp_path)
    assert other_histories("sqlite:///team.db", noted) == [default, mine]


def test_run_cluster_stop_marks_noted_jobs_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINING_HISTORY_URL", f"sqlite:///{tmp_path / 'default.db'}")
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    record_running_job(other_url, "job-manual", "run-1")
    registry = LocalRegistry(tmp_path / "clusters")
    registry.add_history("run-1", other_url)
    resource = RayClusterResource()
    stopped: list[str] = []
    resource._cluster = SimpleNamespace(name="run-1", stop=lambda: stopped.append("run-1"))  # type: ignore[assignment]
    resource._registry = registry

    resource.stop()

    assert stopped == ["run-1"]
    with JobHistory(other_url) as other:
        record = other.get("job-manual")
    assert record is not None
    assert record.status == "LOST"
    assert record.message == "its cluster was removed before the job ended"
    assert not registry.histories_path("run-1").exists()


def test_run_stop_bounds_stalled_history(
    tmp_path: Path, silent_server: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TRAINING_HISTORY_URL", f"sqlite:///{tmp_path / 'default.db'}")
    monkeypatch.setattr(cluster_module, "NOTED_HISTORIES_WAIT_S", 0.5)
    registry = LocalRegistry(tmp_path / "clusters")
    # The URL's own connect timeout outlasts the teardown's bound, and the SQLite history after it
    # is skipped once the bound has passed.
    stalled = f"postgresql+psycopg://user@127.0.0.1:{silent_server}/db?connect_timeout=3"
    later = f"sqlite:///{tmp_path / 'later.db'}"
    record_running_job(later, "job-later", "run-2")
    for url in (stalled, later):
        registry.add_history("run-2", url)
    # The notes are read in no fixed order; here the stalled server comes first.
    monkeypatch.setattr(registry, "histories", lambda name: [stalled, later])
    resource = RayClusterResource()
    resource._cluster = SimpleNamespace(name="run-2", stop=lambda: None)  # type: ignore[assignment]
    resource._registry = registry

    started = time.monotonic()
    resource.stop()

    assert time.monotonic() - started < 2.5
    assert "Stopped waiting for the job histories noted for run-2 after 0.5 s" in caplog.text
    assert not registry.histories_path("run-2").exists()
    # The thread gives up on the stalled server by itself, and leaves the rest as they are.
    [thread] = [thread for thread in threading.enumerate() if thread.name == "mark-lost-run-2"]
    thread.join(10)
    assert not thread.is_alive()
    assert "The time to update the job histories of run-2 ran out; 1 of them were skipped" in caplog.text
    with JobHistory(later) as history:
        record = history.get("job-later")
    assert record is not None
    assert record.status == "RUNNING"


def test_kuberay_history_notes_follow_the_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINCTL_HOME", str(tmp_path))
    with KubeStandin() as standin, KubeStandin() as other_server:
        standin.store.put(cluster("exp-a"))
        # A RayCluster made without the platform's labels is found by name all the same.
        by_hand = cluster("exp-by-hand")
        by_hand["metadata"]["labels"] = {}
        standin.store.put(by_hand)
        other_server.store.put(cluster("exp-a"))
        clusters, elsewhere = (
            KubeRayClusters(RayClusterResource(backend="kuberay", kube_api_url=server.url, namespace="ml-training"))
            for server in (standin, other_server)
        )
        first = clusters.find("exp-a")
        assert first.uid
        clusters.note_history(first, "sqlite:////tmp/team.db")
        clusters.note_history(clusters.find("exp-by-hand"), "sqlite:////tmp/team.db")
        # Another API server with a namespace and a cluster of the same names keeps its own notes.
        elsewhere.note_history(elsewhere.find("exp-a"), "sqlite:////tmp/staging.db")
        assert clusters.noted_histories(first) == ["sqlite:////tmp/team.db"]
        assert clusters.noted_histories(clusters.find("exp-by-hand")) == ["sqlite:////tmp/team.db"]

        # A cluster of the same name made again is another object, which the notes do not follow.
        standin.store.delete(RAYCLUSTERS, "ml-training", "exp-a")
        standin.store.put(cluster("exp-a"))
        second = clusters.find("exp-a")
        assert clusters.noted_histories(second) == []
        # Noting a history for the new cluster drops the notes on the old one.
        clusters.note_history(second, "sqlite:////tmp/mine.db")
        assert clusters.noted_histories(first) == []
        assert clusters.noted_histories(second) == ["sqlite:////tmp/mine.db"]
        assert clusters.noted_histories(clusters.find("exp-by-hand")) == ["sqlite:////tmp/team.db"]

        clusters.delete("exp-a")
        assert clusters.noted_histories(second) == []
        assert elsewhere.noted_histories(elsewhere.find("exp-a")) == ["sqlite:////tmp/staging.db"]
    left = sorted(path.name.split(".")[0] for path in tmp_path.glob("kuberay/*/ml-training/*.histories"))
    assert left == ["exp-a", "exp-by-hand"]
    assert {path.stat().st_mode & 0o777 for path in tmp_path.glob("kuberay/*/ml-training/*.histories")} == {0o700}


def test_run_cluster_tells_watchdog_where_jobs_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINCTL_HOME", str(tmp_path / "state"))
    monkeypatch.setattr(cluster_module, "record_of", lambda cluster, **_: SimpleNamespace(name=cluster.name))
    monkeypatch.setattr(LocalRegistry, "write", lambda self, record: None)
    watched: list[dict[str, object]] = []
    fake = SimpleNamespace(name="run-3", watch_jobs=lambda **where: watched.append(where))
    resource = RayClusterResource(history_url=f"sqlite:///{tmp_path / 'runs.db'}")

    resource._register(fake, SimpleNamespace(dashboard_url="http://127.0.0.1:9"), asset=None)  # type: ignore[arg-type]

    assert watched == [
        {
            "registry": tmp_path / "state" / "clusters",
            "history_url": f"sqlite:///{tmp_path / 'runs.db'}",
            "holder": "the Dagster run's process",
        }
    ]
