"""The local keeper's stop when its cluster loses a node: the jobs' end is recorded, within a time limit."""

import datetime as dt
import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from resources import history as history_module
from resources import local_keeper


class LosingCluster:
    """A cluster that starts at once and then reports that its head exited. Its stop ends a hung Jobs API request."""

    name = "exp-lost"

    def __init__(self, events: list[str], head_gone: threading.Event) -> None:
        self.events = events
        self.head_gone = head_gone
        self.watched: list[dict[str, object]] = []

    def start(self) -> SimpleNamespace:
        return SimpleNamespace(dashboard_url="http://127.0.0.1:9", startup_s=0.1)

    def exited_nodes(self) -> list[str]:
        return ["head"]

    def watch_jobs(self, **where: object) -> None:
        self.watched.append(where)

    def stop(self) -> None:
        self.events.append("cluster stopped")
        self.head_gone.set()


class Registry:
    root = Path("clusters")

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.ending_times: list[dt.datetime] = []

    def write(self, record: object) -> None:
        pass

    def write_ending(self, name: str, reason: str, at: dt.datetime) -> None:
        self.events.append(f"ending written: {reason}")
        self.ending_times.append(at)

    def remove(self, name: str) -> None:
        self.events.append("record removed")


@pytest.fixture
def keeper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_keeper, "JOB_ENDING_WAIT_S", 0.5)
    monkeypatch.setattr(local_keeper, "HEALTH_CHECK_INTERVAL_S", 0.05)
    monkeypatch.setattr(local_keeper, "_stop_requested", threading.Event())
    monkeypatch.setattr(local_keeper, "_say", lambda kind, text: None)
    monkeypatch.setattr(local_keeper, "_detach_stdout", lambda: None)
    monkeypatch.setattr(
        local_keeper, "record_of", lambda cluster, **_: SimpleNamespace(expires_at=dt.datetime.now(dt.UTC))
    )


def hold(events: list[str], head_gone: threading.Event) -> tuple[int, float]:
    started = time.monotonic()
    code = local_keeper.hold(LosingCluster(events, head_gone), registry=Registry(events), ttl_s=60.0, details={})  # type: ignore[arg-type]
    return code, time.monotonic() - started


@pytest.mark.usefixtures("keeper")
def test_hung_history_does_not_delay_stop(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    events: list[str] = []
    head_gone = threading.Event()

    def end_jobs(registry: object, name: str, dashboard_url: str, reason: str) -> None:
        # Hangs like a request to an unresponsive head, until the cluster's stop closes it.
        head_gone.wait(30)
        events.append(f"jobs ended: {reason}")

    monkeypatch.setattr(local_keeper, "_end_jobs_everywhere", end_jobs)
    with caplog.at_level(logging.WARNING, logger="resources.local_keeper"):
        code, took_s = hold(events, head_gone)

    assert code == 1
    assert took_s < 5
    assert events == [
        "ending written: Ray head exited",
        "cluster stopped",
        "jobs ended: Ray head exited",
        "record removed",
    ]
    assert "Stopping exp-lost before the end of its jobs is recorded" in caplog.text
    assert "Stopped waiting" not in caplog.text


@pytest.mark.usefixtures("keeper")
def test_unresponsive_history_is_abandoned(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    events: list[str] = []
    never = threading.Event()
    monkeypatch.setattr(local_keeper, "_end_jobs_everywhere", lambda *args: never.wait(30))
    with caplog.at_level(logging.WARNING, logger="resources.local_keeper"):
        code, took_s = hold(events, threading.Event())
    never.set()

    assert code == 1
    assert took_s < 5
    assert events == [
        "ending written: Ray head exited",
        "cluster stopped",
        "ending written: Ray head exited. Its unfinished jobs may still show RUNNING, because a job history did not "
        "respond in time",
        "record removed",
    ]
    assert "Stopped waiting for the job histories of exp-lost after 0.5 s more" in caplog.text


@pytest.mark.usefixtures("keeper")
def test_jobs_end_before_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    monkeypatch.setattr(local_keeper, "_end_jobs_everywhere", lambda *args: events.append("jobs ended"))

    code, _ = hold(events, threading.Event())

    assert code == 1
    assert events == ["ending written: Ray head exited", "jobs ended", "cluster stopped", "record removed"]


@pytest.mark.usefixtures("keeper")
def test_stop_request_cuts_wait_short(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # `trainctl down` waits 30 s for the keeper, so a SIGTERM must not wait out a hung history.
    monkeypatch.setattr(local_keeper, "JOB_ENDING_WAIT_S", 20.0)
    events: list[str] = []
    never = threading.Event()

    def end_jobs(*args: object) -> None:
        local_keeper._on_signal(15, None)
        never.wait(30)

    monkeypatch.setattr(local_keeper, "_end_jobs_everywhere", end_jobs)
    with caplog.at_level(logging.INFO, logger="resources.local_keeper"):
        code, took_s = hold(events, threading.Event())
    never.set()

    assert code == 1
    assert took_s < 5
    assert events == ["ending written: Ray head exited", "cluster stopped", "record removed"]
    assert "Stopping exp-lost on request before the end of its jobs is recorded" in caplog.text


@pytest.mark.usefixtures("keeper")
@pytest.mark.timeout(60)
def test_stalled_postgresql_history_is_abandoned(
    silent_server: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TRAINING_HISTORY_URL", f"postgresql+psycopg://user@127.0.0.1:{silent_server}/db")
    monkeypatch.setattr(history_module, "_SERVER_CONNECT_TIMEOUT_S", 30)
    events: list[str] = []
    registry = Registry(events)
    registry.histories = lambda name: []  # type: ignore[attr-defined]

    with caplog.at_level(logging.WARNING, logger="resources.local_keeper"):
        started = time.monotonic()
        code = local_keeper.hold(
            LosingCluster(events, threading.Event()),  # type: ignore[arg-type]
            registry=registry,  # type: ignore[arg-type]
            ttl_s=60.0,
            details={},
        )
        took_s = time.monotonic() - started

    assert code == 1
    assert took_s < 5
    assert events[:2] == ["ending written: Ray head exited", "cluster stopped"]
    assert events[2].startswith("ending written: Ray head exited. Its unfinished jobs may still show RUNNING")
    assert registry.ending_times[0] == registry.ending_times[1]
    assert "Stopping exp-lost before the end of its jobs is recorded" in caplog.text


@pytest.mark.usefixtures("keeper")
def test_stop_request_after_stop_keeps_note(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # A `trainctl down` while the keeper waits for the histories after the cluster stopped: down records the jobs.
    events: list[str] = []
    head_gone = threading.Event()
    never = threading.Event()

    def end_jobs(*args: object) -> None:
        head_gone.wait(30)
        local_keeper._on_signal(15, None)
        never.wait(30)

    monkeypatch.setattr(local_keeper, "_end_jobs_everywhere", end_jobs)
    with caplog.at_level(logging.INFO, logger="resources.local_keeper"):
        code, took_s = hold(events, head_gone)
    never.set()

    assert code == 1
    assert took_s < 5
    assert events == ["ending written: Ray head exited", "cluster stopped", "record removed"]
    assert "Stopped waiting" not in caplog.text


@pytest.mark.usefixtures("keeper")
def test_keeper_tells_watchdog_where_jobs_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINING_HISTORY_URL", f"sqlite:///{tmp_path / 'history.db'}")
    monkeypatch.setattr(local_keeper, "_end_jobs_everywhere", lambda *_: None)
    events: list[str] = []
    cluster = LosingCluster(events, threading.Event())

    local_keeper.hold(cluster, registry=Registry(events), ttl_s=60.0, details={})  # type: ignore[arg-type]

    # If the keeper is killed, its watchdog marks the jobs LOST in this history and those noted in the registry.
    assert cluster.watched == [
        {
            "registry": Path("clusters"),
            "history_url": f"sqlite:///{tmp_path / 'history.db'}",
            "holder": "its keeper process",
        }
    ]
