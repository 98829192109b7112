"""The local keeper's stop when its cluster loses a node: the jobs' end is recorded, within a time limit."""

import datetime as dt
import logging
import threading
import time
from types import SimpleNamespace

import pytest

from resources import local_keeper


class LosingCluster:
    """A cluster that starts at once and then reports that its head exited. Its stop ends a hung Jobs API request."""

    name = "exp-lost"

    def __init__(self, events: list[str], head_gone: threading.Event) -> None:
        self.events = events
        self.head_gone = head_gone

    def start(self) -> SimpleNamespace:
        return SimpleNamespace(dashboard_url="http://127.0.0.1:9", startup_s=0.1)

    def exited_nodes(self) -> list[str]:
        return ["head"]

    def stop(self) -> None:
        self.events.append("cluster stopped")
        self.head_gone.set()


class Registry:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def write(self, record: object) -> None:
        pass

    def write_ending(self, name: str, reason: str, at: dt.datetime) -> None:
        self.events.append(f"ending written: {reason}")

    def remove(self, name: str) -> None:
        self.events.append("record removed")


@pytest.fixture
def keeper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_keeper, "JOB_ENDING_WAIT_S", 0.5)
    monkeypatch.setattr(local_keeper, "HEALTH_CHECK_INTERVAL_S", 0.05)
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
        "cluster stopped",
        "ending written: Ray head exited",
        "record removed",
        "jobs ended: Ray head exited",
    ]
    assert "Stopping exp-lost before its jobs' end is recorded" in caplog.text
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
    assert events == ["cluster stopped", "ending written: Ray head exited", "record removed"]
    assert "Stopped waiting for the job histories of exp-lost after 0.5 s more" in caplog.text


@pytest.mark.usefixtures("keeper")
def test_jobs_end_before_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    monkeypatch.setattr(local_keeper, "_end_jobs_everywhere", lambda *args: events.append("jobs ended"))

    code, _ = hold(events, threading.Event())

    assert code == 1
    assert events == ["jobs ended", "cluster stopped", "ending written: Ray head exited", "record removed"]
