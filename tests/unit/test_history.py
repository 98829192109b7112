"""Unit tests of the job history on SQLite files under pytest's temporary folder."""

import datetime
import importlib.util
import pickle
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from resources import history as history_module
from resources.errors import PlatformError
from resources.history import (
    LOG_TAIL_LINES,
    HistoryError,
    JobHistory,
    JobRecord,
    default_history_url,
    history_exists,
    portable_history_url,
    state_dir,
)

T0 = datetime.datetime(2025, 3, 1, 12, 0, tzinfo=datetime.UTC)


def at(minutes: float) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minutes)


def make_record(job_id: str = "raysubmit_1", **overrides: object) -> JobRecord:
    values: dict[str, object] = {
        "job_id": job_id,
        "cluster": "ranking",
        "backend": "local",
        "entrypoint": "python -m train",
        "submitter": "alice",
        "origin": "manual",
        "submitted_at": T0,
    }
    values.update(overrides)
    return JobRecord(**values)  # type: ignore[arg-type]


@pytest.fixture
def history(tmp_path: Path) -> Iterator[JobHistory]:
    with JobHistory(f"sqlite:///{tmp_path / 'history.db'}") as opened:
        yield opened


def test_full_record_round_trip(history: JobHistory) -> None:
    record = make_record(
        status="SUCCEEDED",
        namespace="ml",
        template="gpu-small",
        request={"workers": 2, "cpus_per_worker": 4, "memory_per_worker": "16Gi", "gpu_type": None},
        run_id="run-123",
        partition="2025-03-01",
        asset="ranking_model",
        dashboard_url="http://127.0.0.1:8265",
        message="done",
        started_at=at(1),
        ended_at=at(11),
        log_tail="epoch 1\nepoch 2",
    )
    history.record_submitted(record)

    loaded = history.get("raysubmit_1")

    assert loaded == record
    assert loaded is not None
    assert loaded.submitted_at.tzinfo == datetime.UTC
    assert loaded.ended_at is not None
    assert loaded.ended_at.tzinfo == datetime.UTC


def test_datetimes_stored_as_utc(history: JobHistory) -> None:
    berlin = datetime.timezone(datetime.timedelta(hours=1))
    history.record_submitted(make_record(submitted_at=datetime.datetime(2025, 3, 1, 13, 0, tzinfo=berlin)))

    loaded = history.get("raysubmit_1")

    assert loaded is not None
    assert loaded.submitted_at == T0
    assert loaded.submitted_at.utcoffset() == datetime.timedelta(0)


def test_naive_datetimes_rejected(history: JobHistory) -> None:
    naive = datetime.datetime(2025, 3, 1, 12, 0)
    with pytest.raises(ValueError, match="submitted_at"):
        make_record(submitted_at=naive)

    history.record_submitted(make_record())
    with pytest.raises(ValueError, match="at"):
        history.record_started("raysubmit_1", at=naive)
    with pytest.raises(ValueError, match="since"):
        history.list(since=naive)


def test_record_unknown_status_rejected() -> None:
    with pytest.raises(ValueError, match="RUNING"):
        make_record(status="RUNING")


def test_record_to_dict_and_duration() -> None:
    record = make_record(request={"workers": 2}, started_at=at(2), ended_at=at(12))

    as_dict = record.to_dict()

    assert as_dict["submitted_at"] == "2025-03-01T12:00:00+00:00"
    assert as_dict["ended_at"] == "2025-03-01T12:12:00+00:00"
    assert as_dict["request"] == {"workers": 2}
    assert as_dict["namespace"] is None
    assert record.duration_s == 600.0
    assert make_record(ended_at=at(3)).duration_s == 180.0
    assert make_record(started_at=at(3)).duration_s is None


def test_second_submission_replaces_first(history: JobHistory) -> None:
    history.record_submitted(make_record(entrypoint="python -m train --epochs 1"))
    history.record_finished("raysubmit_1", status="FAILED", message="boom", at=at(5))

    history.record_submitted(make_record(entrypoint="python -m train --epochs 2", submitted_at=at(6)))

    loaded = history.get("raysubmit_1")
    assert loaded is not None
    assert loaded.entrypoint == "python -m train --epochs 2"
    assert loaded.status == "PENDING"
    assert loaded.ended_at is None
    assert len(history.list()) == 1


def test_status_transitions(history: JobHistory) -> None:
    history.record_submitted(make_record())

    history.record_started("raysubmit_1", at=at(1))
    running = history.get("raysubmit_1")
    assert running is not None
    assert running.status == "RUNNING"
    assert running.started_at == at(1)

    history.record_started("raysubmit_1", at=at(2))
    still_running = history.get("raysubmit_1")
    assert still_running is not None
    assert still_running.started_at == at(1)

    history.record_finished("raysubmit_1", status="SUCCEEDED", message="ok", at=at(10), log_tail="done")
    finished = history.get("raysubmit_1")
    assert finished is not None
    assert finished.status == "SUCCEEDED"
    assert finished.message == "ok"
    assert finished.ended_at == at(10)
    assert finished.log_tail == "done"
    assert finished.duration_s == 540.0

    history.record_started("raysubmit_1", at=at(11))
    after_late_start = history.get("raysubmit_1")
    assert after_late_start is not None
    assert after_late_start.status == "SUCCEEDED"
    assert after_late_start.started_at == at(1)


def test_record_finished_keeps_log_tail(history: JobHistory) -> None:
    history.record_submitted(make_record())
    history.record_log_tail("raysubmit_1", "line 1\nline 2")

    history.record_finished("raysubmit_1", status="STOPPED", message="stopped by alice", at=at(3))

    loaded = history.get("raysubmit_1")
    assert loaded is not None
    assert loaded.log_tail == "line 1\nline 2"
    assert loaded.started_at is None
    assert loaded.duration_s == 180.0


@pytest.mark.parametrize("status", ["PENDING", "RUNNING", "DONE"])
def test_record_finished_rejects_non_terminal(history: JobHistory, status: str) -> None:
    history.record_submitted(make_record())

    with pytest.raises(ValueError, match=status):
        history.record_finished("raysubmit_1", status=status, message="", at=at(1))

    loaded = history.get("raysubmit_1")
    assert loaded is not None
    assert loaded.status == "PENDING"


def test_log_tail_cut_to_last_lines(history: JobHistory) -> None:
    lines = [f"line {number}" for number in range(LOG_TAIL_LINES + 50)]
    history.record_submitted(make_record(log_tail="\n".join(lines)))
    submitted = history.get("raysubmit_1")
    assert submitted is not None
    assert submitted.log_tail.splitlines() == lines[-LOG_TAIL_LINES:]

    history.record_log_tail("raysubmit_1", "\n".join(lines[:10]))
    short = history.get("raysubmit_1")
    assert short is not None
    assert short.log_tail.splitlines() == lines[:10]

    history.record_finished("raysubmit_1", status="FAILED", message="boom", at=at(1), log_tail="\n".join(lines))
    finished = history.get("raysubmit_1")
    assert finished is not None
    assert finished.log_tail.splitlines() == lines[-LOG_TAIL_LINES:]


def test_updates_of_unknown_job_do_nothing(history: JobHistory) -> None:
    history.record_started("missing", at=at(1))
    history.record_log_tail("missing", "text")
    history.record_finished("missing", status="FAILED", message="boom", at=at(2))

    assert history.get("missing") is None
    assert history.list() == []


def test_mark_lost_only_active_jobs_of_cluster(history: JobHistory) -> None:
    history.record_submitted(make_record("pending"))
    history.record_submitted(make_record("running"))
    history.record_started("running", at=at(1))
    history.record_submitted(make_record("succeeded"))
    history.record_finished("succeeded", status="SUCCEEDED", message="ok", at=at(2))
    history.record_submitted(make_record("other-cluster", cluster="vision"))

    count = history.mark_lost("ranking", message="cluster ranking is gone", at=at(5))

    assert count == 2
    for job_id in ("pending", "running"):
        lost = history.get(job_id)
        assert lost is not None
        assert lost.status == "LOST"
        assert lost.message == "cluster ranking is gone"
        assert lost.ended_at == at(5)
    succeeded = history.get("succeeded")
    assert succeeded is not None
    assert succeeded.status == "SUCCEEDED"
    assert succeeded.ended_at == at(2)
    other = history.get("other-cluster")
    assert other is not None
    assert other.status == "PENDING"
    assert history.mark_lost("ranking", message="again", at=at(6)) == 0


def test_lost_keeps_first_reason(history: JobHistory) -> None:
    history.record_submitted(make_record("lost"))
    history.record_submitted(make_record("finished-late"))
    history.mark_lost("ranking", message="its cluster stopped because its lifetime of 1m ended", at=at(5))

    history.record_finished("lost", status="LOST", message="the cluster stopped answering", at=at(6))
    history.record_finished("finished-late", status="SUCCEEDED", message="", at=at(4))

    lost = history.get("lost")
    assert lost is not None
    assert lost.message == "its cluster stopped because its lifetime of 1m ended"
    assert lost.ended_at == at(5)
    finished = history.get("finished-late")
    assert finished is not None
    assert finished.status == "SUCCEEDED"


def test_list_filters_order_and_limit(history: JobHistory) -> None:
    from_dagster = {"run_id": "run-1", "origin": "dagster", "submitter": "dagster"}
    history.record_submitted(make_record("a", submitted_at=at(0), **from_dagster))
    history.record_submitted(make_record("b", submitted_at=at(1), **from_dagster))
    history.record_submitted(make_record("c", submitted_at=at(2), cluster="vision"))
    history.record_submitted(make_record("d", submitted_at=at(3)))
    history.record_finished("d", status="FAILED", message="boom", at=at(4))

    def job_ids(**filters: object) -> list[str]:
        return [record.job_id for record in history.list(**filters)]  # type: ignore[arg-type]

    assert job_ids() == ["d", "c", "b", "a"]
    assert job_ids(limit=2) == ["d", "c"]
    assert job_ids(cluster="ranking") == ["d", "b", "a"]
    assert job_ids(cluster="vision") == ["c"]
    assert job_ids(submitter="dagster") == ["b", "a"]
    assert job_ids(status="FAILED") == ["d"]
    assert job_ids(status="PENDING") == ["c", "b", "a"]
    assert job_ids(run_id="run-1") == ["b", "a"]
    assert job_ids(since=at(1)) == ["d", "c", "b"]
    assert job_ids(cluster="ranking", submitter="alice") == ["d"]
    assert job_ids(cluster="nowhere") == []


def test_list_rejects_invalid_arguments(history: JobHistory) -> None:
    with pytest.raises(ValueError, match="RUNING"):
        history.list(status="RUNING")
    with pytest.raises(ValueError, match="limit"):
        history.list(limit=0)


def test_latest_returns_newest_of_cluster(history: JobHistory) -> None:
    assert history.latest("ranking") is None

    history.record_submitted(make_record("old", submitted_at=at(0)))
    history.record_submitted(make_record("new", submitted_at=at(5)))
    history.record_submitted(make_record("other", submitted_at=at(9), cluster="vision"))

    latest = history.latest("ranking")
    assert latest is not None
    assert latest.job_id == "new"


def test_state_dir_environment() -> None:
    assert state_dir({"TRAINCTL_HOME": "/srv/trainctl", "XDG_STATE_HOME": "/xdg"}) == Path("/srv/trainctl")
    assert state_dir({"XDG_STATE_HOME": "/xdg", "HOME": "/home/alice"}) == Path("/xdg/training-pipelines")
    assert state_dir({"HOME": "/home/alice"}) == Path("/home/alice/.local/state/training-pipelines")
    assert state_dir({"XDG_STATE_HOME": "relative", "HOME": "/home/alice"}) == Path(
        "/home/alice/.local/state/training-pipelines"
    )
    assert state_dir({"TRAINCTL_HOME": "", "HOME": "/home/alice"}) == Path(
        "/home/alice/.local/state/training-pipelines"
    )


def test_default_history_url_environment(tmp_path: Path) -> None:
    assert default_history_url({"TRAINING_HISTORY_URL": "postgresql://u@db/h", "TRAINCTL_HOME": "/x"}) == (
        "postgresql://u@db/h"
    )
    assert default_history_url({"TRAINCTL_HOME": "/srv/trainctl"}) == "sqlite:////srv/trainctl/history.db"
    assert default_history_url({"HOME": "/home/alice"}) == (
        "sqlite:////home/alice/.local/state/training-pipelines/history.db"
    )
    assert default_history_url({"TRAINING_HISTORY_URL": "", "TRAINCTL_HOME": "/srv/trainctl"}) == (
        "sqlite:////srv/trainctl/history.db"
    )


def test_default_url_is_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)

    assert default_history_url({"TRAINCTL_HOME": "state"}) == f"sqlite:///{tmp_path / 'state' / 'history.db'}"


def test_default_url_creates_state_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRAINCTL_HOME", str(tmp_path / "state" / "nested"))
    monkeypatch.delenv("TRAINING_HISTORY_URL", raising=False)

    with JobHistory() as history:
        history.record_submitted(make_record())
        assert history.url == f"sqlite:///{tmp_path / 'state' / 'nested' / 'history.db'}"

    assert (tmp_path / "state" / "nested" / "history.db").is_file()


def test_two_histories_share_one_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    with JobHistory(url) as writer, JobHistory(url) as reader:
        writer.record_submitted(make_record())
        seen = reader.get("raysubmit_1")
        assert seen is not None
        assert seen.status == "PENDING"

        reader.record_started("raysubmit_1", at=at(1))
        writer.record_finished("raysubmit_1", status="SUCCEEDED", message="ok", at=at(2))

        final = reader.get("raysubmit_1")
        assert final is not None
        assert final.status == "SUCCEEDED"
        assert final.started_at == at(1)

    journal_mode = sqlite3.connect(tmp_path / "history.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert journal_mode == "wal"


def open_and_submit(url: str, job_id: str, barrier: threading.Barrier, errors: list[HistoryError]) -> None:
    barrier.wait()
    try:
        with JobHistory(url) as history:
            history.record_submitted(make_record(job_id))
    except HistoryError as err:
        errors.append(err)


def test_concurrent_open_of_new_file(tmp_path: Path) -> None:
    # Each round starts eight threads at once on a new file, so they race to create the tables.
    for round_number in range(5):
        url = f"sqlite:///{tmp_path / f'history-{round_number}.db'}"
        barrier = threading.Barrier(8)
        errors: list[HistoryError] = []
        threads = [
            threading.Thread(target=open_and_submit, args=(url, f"job-{number}", barrier, errors))
            for number in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        with JobHistory(url) as history:
            assert len(history.list()) == 8


def test_reopen_keeps_records(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    with JobHistory(url) as history:
        history.record_submitted(make_record())

    with JobHistory(url) as reopened:
        assert reopened.get("raysubmit_1") == make_record()


def test_schema_version_mismatch_raises(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    JobHistory(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE schema_version SET version = 2")

    with pytest.raises(HistoryError) as raised:
        JobHistory(f"sqlite:///{path}")

    message = str(raised.value)
    assert "schema version 2" in message
    assert str(path) in message
    assert "TRAINING_HISTORY_URL" in message
    assert "migrate" in message


def test_unwritable_location_raises(tmp_path: Path) -> None:
    regular_file = tmp_path / "file"
    regular_file.write_text("not a folder")
    url = f"sqlite:///{regular_file / 'state' / 'history.db'}"

    with pytest.raises(HistoryError) as raised:
        JobHistory(url)

    assert url in str(raised.value)
    assert "TRAINING_HISTORY_URL" in str(raised.value)
    assert isinstance(raised.value, PlatformError)


def test_database_error_names_operation(tmp_path: Path, history: JobHistory) -> None:
    with sqlite3.connect(tmp_path / "history.db") as connection:
        connection.execute("DROP TABLE ray_jobs")

    with pytest.raises(HistoryError) as raised:
        history.get("raysubmit_1")

    message = str(raised.value)
    assert "Could not read job raysubmit_1 from the job history" in message
    assert history.url in message
    assert "no such table" in message


def test_invalid_url_raises() -> None:
    with pytest.raises(HistoryError, match="TRAINING_HISTORY_URL"):
        JobHistory("not a database url")
    with pytest.raises(HistoryError, match="TRAINING_HISTORY_URL"):
        JobHistory("nosuchdatabase://user@127.0.0.1/history")


def test_error_hides_sqlite_url_password(tmp_path: Path) -> None:
    # SQLite rejects a URL with a user and password when the engine is created, before any file is opened.
    with pytest.raises(HistoryError) as raised:
        JobHistory(f"sqlite://user:s3cret@/{tmp_path / 'history.db'}")

    assert "s3cret" not in str(raised.value)
    assert "user:***@" in str(raised.value)


def _history_error(monkeypatch: pytest.MonkeyPatch, driver_message: str, url: str) -> str:
    """Return the HistoryError message of opening ``url`` when the driver fails with ``driver_message``."""

    def fail_to_create_engine(url: sa.URL) -> sa.Engine:
        raise sa.exc.OperationalError("connect", {}, Exception(driver_message))

    monkeypatch.setattr(history_module, "_create_engine", fail_to_create_engine)
    with pytest.raises(HistoryError) as raised:
        JobHistory(url)
    return str(raised.value)


def test_error_hides_password_quoted_by_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _history_error(
        monkeypatch,
        'connection to server failed: password "s3cret" rejected',
        "postgresql://user:s3cret@127.0.0.1:1/db",
    )

    assert "s3cret" not in message
    assert 'password "***" rejected' in message
    assert "postgresql://user:***@127.0.0.1:1/db" in message


def test_error_hides_short_password_only(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _history_error(
        monkeypatch, 'No module named "psycopg2"; password "p" for user "u"', "postgresql://u:p@127.0.0.1:1/db"
    )

    assert 'No module named "psycopg2"' in message
    assert 'password "***" for user' in message
    assert "postgresql://u:***@127.0.0.1:1/db" in message


@pytest.mark.skipif(
    importlib.util.find_spec("psycopg2") is not None,
    reason="psycopg2 is installed, so the engine would try to connect instead of failing at import",
)
def test_error_hides_postgresql_password() -> None:
    with pytest.raises(HistoryError) as raised:
        JobHistory("postgresql+psycopg2://user:s3cret@127.0.0.1:1/db")

    message = str(raised.value)
    assert "s3cret" not in message
    assert "postgresql+psycopg2://user:***@127.0.0.1:1/db" in message
    assert "psycopg2" in message


def test_history_error_pickles() -> None:
    error = HistoryError("Could not open the job history at sqlite:///x.db: disk full.")

    restored = pickle.loads(pickle.dumps(error))

    assert str(restored) == str(error)


def test_portable_url_makes_sqlite_path_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    assert portable_history_url("sqlite:///history.db") == f"sqlite:///{tmp_path / 'history.db'}"
    assert portable_history_url("sqlite:////var/lib/history.db") == "sqlite:////var/lib/history.db"
    # A password stays, so that the history can be opened from the URL.
    assert portable_history_url("postgresql://trainer:s3cret@db/history") == "postgresql://trainer:s3cret@db/history"
    assert portable_history_url("sqlite://") == "sqlite://"


def test_history_exists_only_false_for_missing_sqlite(tmp_path: Path) -> None:
    (tmp_path / "there.db").touch()

    assert history_exists(f"sqlite:///{tmp_path / 'there.db'}")
    assert not history_exists(f"sqlite:///{tmp_path / 'missing.db'}")
    assert history_exists("postgresql://trainer@db/history")
    assert history_exists("sqlite://")


def test_error_hides_password_from_psycopg() -> None:
    # Nothing listens on port 1, so psycopg fails at connect.
    with pytest.raises(HistoryError) as raised:
        JobHistory("postgresql+psycopg://user:s3cret@127.0.0.1:1/db")

    message = str(raised.value)
    assert "s3cret" not in message
    assert "postgresql+psycopg://user:***@127.0.0.1:1/db" in message


@pytest.mark.timeout(60)
def test_stalled_postgresql_times_out(silent_server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history_module, "_SERVER_CONNECT_TIMEOUT_S", 1)
    started = time.monotonic()

    with pytest.raises(HistoryError) as raised:
        JobHistory(f"postgresql+psycopg://user@127.0.0.1:{silent_server}/db")

    assert time.monotonic() - started < 15
    assert "timeout" in str(raised.value).lower()


def test_connect_timeout_in_url_is_kept() -> None:
    url = sa.make_url("postgresql+psycopg://user@db.internal/history?connect_timeout=3")

    assert history_module._server_connect_args(url) == {}
    assert history_module._server_connect_args(sa.make_url("postgresql+psycopg://user@db.internal/history")) == {
        "connect_timeout": 10
    }


def test_new_sqlite_file_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "state" / "history.db"

    with JobHistory(f"sqlite:///{path}"):
        pass

    # The history keeps the jobs' last log lines.
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_default_history_made_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINCTL_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("TRAINING_HISTORY_URL", raising=False)
    default, shared = tmp_path / "state" / "history.db", tmp_path / "team" / "history.db"
    for path in (default, shared):
        # As an earlier version left it, readable by every user.
        path.parent.mkdir(parents=True)
        with JobHistory(f"sqlite:///{path}"):
            pass
        path.chmod(0o644)

    for url in (None, f"sqlite:///{shared}"):
        with JobHistory(url):
            pass

    assert default.stat().st_mode & 0o777 == 0o600
    # A history that the user placed elsewhere keeps the permissions the user chose.
    assert shared.stat().st_mode & 0o777 == 0o644
