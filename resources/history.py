"""A persistent record of every Ray job the platform submits, kept after its Ray cluster is gone.

The history lives in SQLite by default and in any SQLAlchemy database given by
``TRAINING_HISTORY_URL`` in production, such as ``postgresql://...``.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from resources.errors import PlatformError

logger = logging.getLogger(__name__)

TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED", "LOST"})
LOG_TAIL_LINES = 200
_SCHEMA_VERSION = 1
_SQLITE_BUSY_TIMEOUT_S = 30.0
_SERVER_CONNECT_TIMEOUT_S = 10
# The PostgreSQL drivers built on libpq, which takes a connect_timeout in seconds.
_LIBPQ_DRIVERS = frozenset({"psycopg2", "psycopg"})

_ACTIVE_STATUSES = frozenset({"PENDING", "RUNNING"})
_STATUSES = _ACTIVE_STATUSES | TERMINAL_STATUSES
_DEFAULT_FIX = "Check that the database is reachable and writable, or set TRAINING_HISTORY_URL to another database"


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Return the folder for the platform's local state, without creating it.

    That is ``TRAINCTL_HOME`` if set, else ``$XDG_STATE_HOME/training-pipelines``, else
    ``~/.local/state/training-pipelines``. A relative ``XDG_STATE_HOME`` is ignored, as the
    XDG Base Directory specification requires.
    """
    environ = os.environ if environ is None else environ
    if environ.get("TRAINCTL_HOME"):
        return Path(environ["TRAINCTL_HOME"]).expanduser()
    xdg_state_home = environ.get("XDG_STATE_HOME", "")
    if xdg_state_home and Path(xdg_state_home).is_absolute():
        return Path(xdg_state_home) / "training-pipelines"
    home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    return home / ".local" / "state" / "training-pipelines"


def default_history_url(environ: Mapping[str, str] | None = None) -> str:
    """Return ``TRAINING_HISTORY_URL`` if set, else an SQLite URL of ``history.db`` under :func:`state_dir`."""
    environ = os.environ if environ is None else environ
    if environ.get("TRAINING_HISTORY_URL"):
        return environ["TRAINING_HISTORY_URL"]
    return f"sqlite:///{(state_dir(environ) / 'history.db').absolute()}"


class HistoryError(PlatformError):
    """Reading or writing the job history failed. The message shows database URLs with the password hidden."""


def _utc(name: str, value: datetime.datetime) -> datetime.datetime:
    if value.tzinfo is None:
        raise ValueError(f"{name}: naive datetime {value.isoformat()}. Pass a timezone-aware datetime.")
    return value.astimezone(datetime.UTC)


def _last_lines(text: str) -> str:
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])


@dataclass(frozen=True)
class JobRecord:
    """One Ray job as submitted, with its latest known status. Datetimes are timezone-aware UTC."""

    job_id: str
    cluster: str
    backend: str
    entrypoint: str
    submitter: str
    origin: str
    submitted_at: datetime.datetime
    status: str = "PENDING"
    namespace: str | None = None
    template: str | None = None
    request: Mapping[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    partition: str | None = None
    asset: str | None = None
    dashboard_url: str | None = None
    message: str = ""
    started_at: datetime.datetime | None = None
    ended_at: datetime.datetime | None = None
    log_tail: str = ""

    def __post_init__(self) -> None:
        """Convert datetimes to UTC and copy ``request``.

        Raises:
            ValueError: a datetime is naive or the status is unknown.
        """
        if self.status not in _STATUSES:
            raise ValueError(f"status: unknown status {self.status!r}. Use one of {', '.join(sorted(_STATUSES))}.")
        for name in ("submitted_at", "started_at", "ended_at"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _utc(name, value))
        object.__setattr__(self, "request", dict(self.request))

    def to_dict(self) -> dict[str, Any]:
        """Return the record as JSON-ready values, with datetimes as ISO 8601 strings."""
        result = {item.name: getattr(self, item.name) for item in fields(self)}
        for name, value in result.items():
            if isinstance(value, datetime.datetime):
                result[name] = value.isoformat()
        result["request"] = dict(self.request)
        return result

    @property
    def duration_s(self) -> float | None:
        """Seconds from start (or from submission, when the job never started) to end, or None until the job ends."""
        if self.ended_at is None:
            return None
        return (self.ended_at - (self.started_at or self.submitted_at)).total_seconds()


class _UtcDateTime(sa.TypeDecorator[datetime.datetime]):
    """A timezone-aware UTC datetime, stored without offset because SQLite drops it."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime.datetime | None, dialect: Any) -> datetime.datetime | None:
        return None if value is None else _utc("datetime", value).replace(tzinfo=None)

    def process_result_value(self, value: datetime.datetime | None, dialect: Any) -> datetime.datetime | None:
        return None if value is None else value.replace(tzinfo=datetime.UTC)


_metadata = sa.MetaData()
_schema_version = sa.Table(
    "schema_version", _metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("version", sa.Integer)
)
_jobs = sa.Table(
    "ray_jobs",
    _metadata,
    sa.Column("job_id", sa.String(255), primary_key=True),
    sa.Column("cluster", sa.String(255), nullable=False, index=True),
    sa.Column("backend", sa.String(32), nullable=False),
    sa.Column("entrypoint", sa.Text, nullable=False),
    sa.Column("submitter", sa.String(255), nullable=False, index=True),
    sa.Column("origin", sa.String(32), nullable=False),
    sa.Column("submitted_at", _UtcDateTime, nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("namespace", sa.String(255)),
    sa.Column("template", sa.String(255)),
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("run_id", sa.String(255), index=True),
    sa.Column("partition", sa.String(255)),
    sa.Column("asset", sa.String(255)),
    sa.Column("dashboard_url", sa.Text),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("started_at", _UtcDateTime),
    sa.Column("ended_at", _UtcDateTime),
    sa.Column("log_tail", sa.Text, nullable=False),
)


def _render_url(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _enable_wal(dbapi_connection: Any, connection_record: Any) -> None:
    # WAL lets readers go on while one process writes. The busy timeout makes writers wait for each other.
    # The mode is stored in the file, so only the first connection to a new database changes it.
    if dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    try:
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as err:
        # SQLite refuses the change without waiting while another connection uses the file. The
        # database works in its current mode; a later connection switches it.
        logger.debug("Kept the journal mode of the job history: %s", err)


def _sqlite_file(url: URL) -> Path | None:
    """Return the database file of an SQLite URL; None for another database or an in-memory or URI one."""
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return None if url.database.startswith("file:") else Path(url.database)


def portable_history_url(url: str) -> str:
    """Return ``url`` with a relative SQLite path made absolute, so that it names the same file from any folder.

    The password stays in the result.

    Raises:
        HistoryError: ``url`` is not a database URL.
    """
    try:
        parsed = sa.make_url(url)
    except (SQLAlchemyError, ValueError) as err:
        raise HistoryError(f"Invalid job history URL: {err}.") from err
    path = _sqlite_file(parsed)
    if path is None or path.is_absolute():
        return url
    return parsed.set(database=str(path.absolute())).render_as_string(hide_password=False)


def history_exists(url: str) -> bool:
    """Tell whether the history at ``url`` may contain records: False only for an SQLite file that does not exist."""
    return missing_sqlite_file(url) is None


def missing_sqlite_file(url: str) -> Path | None:
    """Return the file of an SQLite history at ``url`` that does not exist; ``None`` for any other URL."""
    # make_url raises ValueError for a port that is not a number.
    try:
        path = _sqlite_file(sa.make_url(url))
    except (SQLAlchemyError, ValueError):
        return None
    return path if path is not None and not path.exists() else None


def _server_connect_args(url: URL) -> dict[str, Any]:
    """Return the connection arguments of a server database: a connect timeout for libpq, unless the URL sets one."""
    # Without connect_timeout libpq waits indefinitely, so a server that accepts connections and never
    # responds would hang a run or `trainctl` for good.
    if url.get_driver_name() in _LIBPQ_DRIVERS and "connect_timeout" not in url.query:
        return {"connect_timeout": _SERVER_CONNECT_TIMEOUT_S}
    return {}


def _make_private(path: Path) -> None:
    """Create the SQLite file at ``path`` readable by its owner only, since it keeps the jobs' last log lines.

    SQLite gives its -wal and -shm files the same permissions. A file that exists keeps its own,
    except the default history, which earlier versions made readable by every user.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    try:
        stat = path.stat()
        if path.absolute() == state_dir() / "history.db" and stat.st_uid == os.getuid() and stat.st_mode & 0o077:
            path.chmod(0o600)
    except OSError as err:
        logger.warning("The job history %s may be readable by other users: %s", path, err)


def _create_engine(url: URL) -> sa.Engine:
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True, connect_args=_server_connect_args(url))
    path = _sqlite_file(url)
    if path is not None:
        _make_private(path)
    engine = sa.create_engine(url, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_S})
    sa.event.listen(engine, "connect", _enable_wal)
    return engine


def _create_schema(connection: Connection) -> list[int]:
    with connection.begin():
        if connection.dialect.name == "sqlite":
            # create_all reads the catalogue before it writes. In WAL mode a transaction that read
            # before another connection's commit cannot start writing and fails at once, without the
            # busy timeout, so take the write lock first and wait for it like any other writer.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        _metadata.create_all(connection)
        versions = list(connection.execute(sa.select(_schema_version.c.version)).scalars())
        if not versions:
            connection.execute(_schema_version.insert().values(id=1, version=_SCHEMA_VERSION))
            versions = [_SCHEMA_VERSION]
    return versions


class JobHistory:
    """The job history in one database, usable as a context manager that closes it.

    Updates of a job id that was never recorded change nothing and raise nothing.
    """

    def __init__(self, url: str | None = None) -> None:
        """Open the history at ``url`` (default :func:`default_history_url`), creating its tables if needed.

        Raises:
            HistoryError: the URL is invalid, the database is unreachable or not writable,
                or it has another schema version.
        """
        raw_url = default_history_url() if url is None else url
        try:
            self._url = sa.make_url(raw_url)
        except (SQLAlchemyError, ValueError) as err:
            raise HistoryError(
                f"Invalid job history URL: {err}. Set TRAINING_HISTORY_URL to an SQLAlchemy database URL "
                "such as sqlite:////var/lib/training/history.db or postgresql+psycopg://user@host/db."
            ) from err

        try:
            self._engine = _create_engine(self._url)
        except ImportError as err:
            raise self._error("open", err, fix="Install the database driver that the URL names") from err
        except (OSError, SQLAlchemyError) as err:
            raise self._error("open", err) from err

        try:
            versions = self._prepare_schema()
        except SQLAlchemyError as err:
            self._engine.dispose()
            raise self._error("create the tables of", err) from err

        if versions != [_SCHEMA_VERSION]:
            self._engine.dispose()
            found = ", ".join(str(version) for version in versions)
            raise HistoryError(
                f"The job history at {self.url} has schema version {found}, but this code reads version "
                f"{_SCHEMA_VERSION}. Set TRAINING_HISTORY_URL to a new database, or migrate this one to "
                f"version {_SCHEMA_VERSION}."
            )
        logger.debug("Opened the job history at %s", self.url)

    def _prepare_schema(self) -> list[int]:
        """Create the tables and the version row where missing, and return the stored schema versions."""
        # On a server database, processes opening a new database at once race to create each table and
        # the version row. Each lost race means another process created one of them, so one attempt per
        # object and one more always succeed. SQLite serialises the creation instead (see _create_schema).
        # A failed connection raises at once, without retries.
        attempts = len(_metadata.tables) + 2
        with self._engine.connect() as connection:
            for _ in range(attempts - 1):
                try:
                    return _create_schema(connection)
                except SQLAlchemyError as err:
                    logger.debug("Retrying the creation of the job history tables at %s after: %s", self.url, err)
            return _create_schema(connection)

    @property
    def url(self) -> str:
        """The database URL, with the password hidden."""
        return _render_url(self._url)

    def _error(self, action: str, err: BaseException, fix: str = _DEFAULT_FIX) -> HistoryError:
        cause = str(err.orig) if isinstance(err, DBAPIError) else str(err)
        if self._url.password:
            # Whole words only: a short password such as "p" would otherwise mask letters of other words.
            password = re.escape(str(self._url.password))
            cause = re.sub(rf"(?<![A-Za-z0-9]){password}(?![A-Za-z0-9])", "***", cause)
        return HistoryError(f"Could not {action} the job history at {self.url}: {cause}. {fix}.")

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[Connection]:
        try:
            with self._engine.begin() as connection:
                yield connection
        except SQLAlchemyError as err:
            raise self._error(action, err) from err

    def record_submitted(self, record: JobRecord) -> None:
        """Insert ``record``, replacing an earlier record of the same job id, as a retried submission does."""
        values = {item.name: getattr(record, item.name) for item in fields(record)}
        values["log_tail"] = _last_lines(record.log_tail)
        with self._transaction(f"write job {record.job_id} to") as connection:
            connection.execute(_jobs.delete().where(_jobs.c.job_id == record.job_id))
            connection.execute(_jobs.insert().values(**values))

    def record_started(self, job_id: str, *, at: datetime.datetime) -> None:
        """Mark a job RUNNING since ``at``.

        A job already started keeps its first start time, and a job that has ended is left as it is.
        """
        at = _utc("at", at)
        with self._transaction(f"write job {job_id} to") as connection:
            connection.execute(
                _jobs.update()
                .where(_jobs.c.job_id == job_id, _jobs.c.status.in_(_ACTIVE_STATUSES), _jobs.c.started_at.is_(None))
                .values(status="RUNNING", started_at=at)
            )

    def record_log_tail(self, job_id: str, log_tail: str) -> None:
        """Store the last :data:`LOG_TAIL_LINES` lines of ``log_tail`` as the job's log tail."""
        with self._transaction(f"write job {job_id} to") as connection:
            connection.execute(_jobs.update().where(_jobs.c.job_id == job_id).values(log_tail=_last_lines(log_tail)))

    def record_finished(
        self, job_id: str, *, status: str, message: str, at: datetime.datetime, log_tail: str | None = None
    ) -> None:
        """Store the end of a job, replacing an earlier end such as LOST from :meth:`mark_lost`.

        A LOST end does not replace an earlier LOST one: the first records why the job was lost
        (such as the end of its cluster's lifetime), and a later one from its submitter only
        that the cluster stopped answering.

        Raises:
            ValueError: ``status`` is not in :data:`TERMINAL_STATUSES`, or ``at`` is naive.
        """
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status: {status!r} is not terminal. Use one of {', '.join(sorted(TERMINAL_STATUSES))}.")
        values: dict[str, Any] = {"status": status, "message": message, "ended_at": _utc("at", at)}
        if log_tail is not None:
            values["log_tail"] = _last_lines(log_tail)
        condition = _jobs.c.job_id == job_id
        if status == "LOST":
            condition = sa.and_(condition, _jobs.c.status != "LOST")
        with self._transaction(f"write job {job_id} to") as connection:
            connection.execute(_jobs.update().where(condition).values(**values))

    def mark_lost(self, cluster: str, *, message: str, at: datetime.datetime) -> int:
        """Mark every PENDING or RUNNING job of ``cluster`` as LOST and return how many there were."""
        at = _utc("at", at)
        with self._transaction(f"mark the jobs of cluster {cluster} lost in") as connection:
            result = connection.execute(
                _jobs.update()
                .where(_jobs.c.cluster == cluster, _jobs.c.status.in_(_ACTIVE_STATUSES))
                .values(status="LOST", message=message, ended_at=at)
            )
        return result.rowcount

    def get(self, job_id: str) -> JobRecord | None:
        """Return the record of ``job_id``, or None when it was never recorded."""
        with self._transaction(f"read job {job_id} from") as connection:
            row = connection.execute(sa.select(_jobs).where(_jobs.c.job_id == job_id)).mappings().first()
        return None if row is None else JobRecord(**row)

    def latest(self, cluster: str) -> JobRecord | None:
        """Return the job last submitted to ``cluster``, or None when it has none."""
        records = self.list(cluster=cluster, limit=1)
        return records[0] if records else None

    def close(self) -> None:
        """Close every pooled connection. The object must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> JobHistory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def list(
        self,
        *,
        cluster: str | None = None,
        submitter: str | None = None,
        status: str | None = None,
        run_id: str | None = None,
        since: datetime.datetime | None = None,
        limit: int = 50,
    ) -> list[JobRecord]:
        """Return at most ``limit`` jobs that match every given filter, newest submission first.

        ``since`` keeps jobs submitted at or after it.

        Raises:
            ValueError: ``status`` is unknown, ``since`` is naive, or ``limit`` is below 1.
        """
        if status is not None and status not in _STATUSES:
            raise ValueError(f"status: unknown status {status!r}. Use one of {', '.join(sorted(_STATUSES))}.")
        if limit < 1:
            raise ValueError(f"limit: {limit} is below 1. Pass a positive number of jobs.")

        query = sa.select(_jobs).order_by(_jobs.c.submitted_at.desc(), _jobs.c.job_id.desc()).limit(limit)
        for column, value in (("cluster", cluster), ("submitter", submitter), ("status", status), ("run_id", run_id)):
            if value is not None:
                query = query.where(_jobs.c[column] == value)
        if since is not None:
            query = query.where(_jobs.c.submitted_at >= _utc("since", since))

        with self._transaction("list the jobs in") as connection:
            rows = connection.execute(query).mappings().all()
        return [JobRecord(**row) for row in rows]
