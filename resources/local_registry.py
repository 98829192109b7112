"""A record of each local Ray cluster on this machine, so that ``trainctl`` can list, inspect and stop them.

A local cluster is owned by one process, its holder: the Dagster run that started it,
or the keeper process that ``trainctl up`` leaves behind. Each cluster has a JSON file
``<state dir>/clusters/<name>.json`` that names its holder and the process groups of
its Ray nodes, with their start times, so that a recycled PID is never mistaken for
one of ours. A file whose holder has died is stale and is removed when read. A cluster
that its keeper stopped on its own leaves ``<name>.ended`` with the reason, until a new
cluster takes the name. ``<name>.histories/`` lists the job histories that ``trainctl submit``
recorded the cluster's jobs in, so that the keeper or ``trainctl down`` records their end there.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from resources.local import LocalRayCluster

logger = logging.getLogger(__name__)

# psutil reports start times with a precision of 10 ms on Linux.
START_TIME_TOLERANCE_S = 0.05


@dataclass(frozen=True)
class ProcessRef:
    """A process named by its PID and start time, which together identify it even after PID reuse."""

    pid: int
    started: float

    @classmethod
    def of(cls, pid: int) -> ProcessRef:
        """Reference the running process ``pid``.

        Raises:
            psutil.NoSuchProcess: no process has that PID.
        """
        return cls(pid=pid, started=psutil.Process(pid).create_time())

    def is_alive(self) -> bool:
        """Tell whether this very process still runs (and is not a zombie)."""
        try:
            process = psutil.Process(self.pid)
            return (
                abs(process.create_time() - self.started) < START_TIME_TOLERANCE_S
                and process.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.NoSuchProcess:
            return False


@dataclass(frozen=True)
class LocalClusterRecord:
    """The record of one local cluster. Memory values are bytes and times are UTC."""

    name: str
    dashboard_url: str
    holder: ProcessRef
    nodes: tuple[ProcessRef, ...]
    created: dt.datetime
    workers: int
    cpus_per_worker: int
    memory_per_worker: int
    gpus_per_worker: int
    head_cpus: int
    origin: str = "manual"
    owner: str = ""
    team: str = ""
    ttl: dt.timedelta | None = None
    run_id: str = ""
    partition: str = ""
    asset: str = ""
    state: str = "ready"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def expires_at(self) -> dt.datetime | None:
        """When the cluster's lifetime ends; ``None`` for a Dagster run's cluster, which ends with its run."""
        return None if self.ttl is None else self.created + self.ttl

    def expired(self, now: dt.datetime) -> bool:
        """Tell whether the lifetime has passed at ``now``."""
        return self.expires_at is not None and now >= self.expires_at

    def to_json(self) -> dict[str, Any]:
        """Convert the record to JSON-ready values."""
        data = asdict(self)
        data["created"] = self.created.isoformat()
        data["ttl"] = None if self.ttl is None else self.ttl.total_seconds()
        data["extra"] = dict(self.extra)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LocalClusterRecord:
        """Read a record written by :meth:`to_json`.

        Raises:
            KeyError, TypeError, ValueError: the data is not such a record.
        """
        values = dict(data)
        values["holder"] = ProcessRef(**values["holder"])
        values["nodes"] = tuple(ProcessRef(**node) for node in values["nodes"])
        values["created"] = dt.datetime.fromisoformat(values["created"])
        values["ttl"] = None if values.get("ttl") is None else dt.timedelta(seconds=float(values["ttl"]))
        return cls(**values)


@dataclass(frozen=True)
class Ending:
    """The reason and time of a keeper stopping its cluster on its own."""

    reason: str
    at: dt.datetime


class LocalRegistry:
    """The folder of cluster records; safe for several processes that each write their own clusters."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        """Return the path of the record of cluster ``name``."""
        return self.root / f"{name}.json"

    def log_path(self, name: str) -> Path:
        """Return the path of the log of cluster ``name``'s keeper."""
        return self.root / f"{name}.log"

    def ending_path(self, name: str) -> Path:
        """Return the path of the note with the reason the keeper stopped cluster ``name`` on its own."""
        return self.root / f"{name}.ended"

    def histories_path(self, name: str) -> Path:
        """Return the folder that lists the job histories of cluster ``name``'s jobs."""
        return self.root / f"{name}.histories"

    def add_history(self, name: str, url: str) -> None:
        """Note that jobs of cluster ``name`` are recorded in the job history at ``url``.

        One file per URL, named by its hash, so that two submissions at once never lose one.
        The URL may hold a database password, so the folder and file are readable by their owner only.
        """
        folder = self.histories_path(name)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = folder / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}.url"
        if path.exists():
            return
        handle, temporary = tempfile.mkstemp(prefix=".url.", dir=folder)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(url)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def histories(self, name: str) -> list[str]:
        """Return the job history URLs noted for cluster ``name``, in no particular order."""
        try:
            paths = sorted(self.histories_path(name).glob("*.url"))
        except OSError:
            return []
        urls = []
        for path in paths:
            try:
                urls.append(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                logger.warning("Ignoring the unreadable job history note %s: %s", path, err)
        return urls

    def write(self, record: LocalClusterRecord) -> None:
        """Write or replace a record atomically, so a reader never sees half of it."""
        self._write_json(self.path(record.name), record.to_json())

    def write_ending(self, name: str, reason: str, at: dt.datetime) -> None:
        """Note that cluster ``name`` stopped at ``at`` because ``reason`` (such as "its lifetime of 8h ended")."""
        self._write_json(self.ending_path(name), {"reason": reason, "at": at.isoformat()})

    def ending(self, name: str) -> Ending | None:
        """Read why cluster ``name`` last stopped on its own, or return ``None`` if no readable note exists."""
        try:
            data = json.loads(self.ending_path(name).read_text(encoding="utf-8"))
            return Ending(reason=str(data["reason"]), at=dt.datetime.fromisoformat(data["at"]))
        except FileNotFoundError:
            return None
        except (OSError, KeyError, TypeError, ValueError) as err:
            logger.warning("Ignoring the unreadable note %s: %s", self.ending_path(name), err)
            return None

    def _write_json(self, path: Path, data: Mapping[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", dir=self.root)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(data, stream, indent=2)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def claim(self, name: str) -> bool:
        """Reserve ``name`` for a cluster about to start; False when a live process owns or reserved it.

        The reservation is a file created exclusively, so of two ``trainctl up`` with one
        name at the same time only one gets it. A reservation whose process died is taken over.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        if self.get(name) is not None:
            return False
        claim = self.root / f"{name}.starting"
        for _ in range(2):
            try:
                handle = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = ProcessRef(**json.loads(claim.read_text(encoding="utf-8")))
                except (OSError, TypeError, ValueError):
                    owner = None
                if owner is not None and owner.is_alive():
                    return False
                claim.unlink(missing_ok=True)
                continue
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(asdict(ProcessRef.of(os.getpid())), stream)
            # The name now belongs to a new cluster, so the notes on the last one no longer apply.
            self.ending_path(name).unlink(missing_ok=True)
            shutil.rmtree(self.histories_path(name), ignore_errors=True)
            return True
        return False

    def release_claim(self, name: str) -> None:
        """Drop the reservation of ``name``; its record, once written, keeps the name taken."""
        (self.root / f"{name}.starting").unlink(missing_ok=True)

    def remove(self, name: str) -> None:
        """Remove a cluster's record, its keeper's log and its job history notes; nothing happens if they are gone.

        Raises:
            OSError: the record could not be removed. A log that cannot be removed only gets a warning,
                because by then the cluster is gone for every command.
        """
        self.path(name).unlink(missing_ok=True)
        try:
            self.log_path(name).unlink(missing_ok=True)
        except OSError as err:
            logger.warning("Failed to remove the keeper's log of %s: %s", name, err)
        shutil.rmtree(self.histories_path(name), ignore_errors=True)

    def get(self, name: str) -> LocalClusterRecord | None:
        """Read the record of a live cluster; a stale or unreadable record is removed and ``None`` returned."""
        path = self.path(name)
        try:
            record = LocalClusterRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, KeyError, TypeError, ValueError) as err:
            logger.warning("Ignoring the unreadable cluster record %s: %s", path, err)
            return None
        if not record.holder.is_alive():
            logger.info("Removing the record of %s: its holder process %d has exited", name, record.holder.pid)
            self.remove(name)
            return None
        return record

    def list(self) -> list[LocalClusterRecord]:
        """Records of every live cluster, oldest first."""
        if not self.root.is_dir():
            return []
        records = [self.get(path.stem) for path in self.root.glob("*.json")]
        return sorted((record for record in records if record is not None), key=lambda record: record.created)


def record_of(cluster: LocalRayCluster, *, dashboard_url: str, **details: Any) -> LocalClusterRecord:
    """Build the record of a cluster that this process owns and that has just become ready."""
    spec = cluster.spec
    return LocalClusterRecord(
        name=cluster.name,
        dashboard_url=dashboard_url,
        holder=ProcessRef.of(os.getpid()),
        nodes=tuple(ProcessRef.of(pid) for pid in cluster.pids),
        created=dt.datetime.now(dt.UTC),
        workers=spec.workers,
        cpus_per_worker=spec.cpus_per_worker,
        memory_per_worker=spec.memory_per_worker,
        gpus_per_worker=spec.gpus_per_worker,
        head_cpus=spec.head_cpus,
        **details,
    )
