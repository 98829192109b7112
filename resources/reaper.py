"""Watchdog that stops a local Ray cluster when the process that started it dies.

The launcher starts this module as a child in its own session and keeps its stdin
open. It writes ``watch <pgid>`` for each Ray process group it starts and
``release`` once it has stopped them itself. If stdin reaches end-of-file without
``release``, the launcher died (even by SIGKILL, which runs no cleanup), so the
watchdog kills every watched group and removes the cluster's temporary folder.

Once the cluster has a record for ``trainctl``, the launcher also writes ``jobs <json>``
(see :func:`jobs_line`). The watchdog then marks the cluster's unfinished jobs LOST in
the launcher's job history and in each history that ``trainctl submit`` noted, since no
one else is left to record their end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger("resources.reaper")

# Ray nodes of a throwaway cluster have nothing to flush that outlives it, so the wait is short.
GRACE_PERIOD_S = 1.0
# How long the watchdog waits for the job histories after the nodes are gone.
HISTORY_WAIT_S = 60.0


def jobs_line(*, cluster: str, registry: Path, history_url: str | None, holder: str) -> str:
    """Build the ``jobs`` line: where the watchdog finds the records of the jobs of ``cluster``.

    ``registry`` is the folder of the cluster records, ``history_url`` the launcher's own
    history (``None`` when it has none) and ``holder`` names the launcher in the LOST message,
    such as "its keeper process". The URL may hold a password, so it goes through the pipe,
    never on a command line.
    """
    return "jobs " + json.dumps(
        {"cluster": cluster, "registry": str(registry), "history_url": history_url, "holder": holder}
    )


def kill_process_groups(pgids: list[int], *, grace_period_s: float = GRACE_PERIOD_S) -> None:
    """Stop each process group and every descendant of its leader, even those in other groups.

    Ray's raylet starts its agents and workers with their own sessions, so killing
    the group alone can leave them running until they notice the raylet is gone.
    Sends SIGTERM, then SIGKILL to whatever is alive after the grace period, and
    returns when all of them have exited or a second grace period has passed.
    """
    processes: dict[int, psutil.Process] = {}
    for pgid in pgids:
        try:
            leader = psutil.Process(pgid)
            processes[pgid] = leader
            for child in leader.children(recursive=True):
                processes[child.pid] = child
        except psutil.NoSuchProcess:
            continue

    _signal_all(pgids, processes.values(), signal.SIGTERM)
    _, alive = psutil.wait_procs(list(processes.values()), timeout=grace_period_s)
    # A group whose leader already exited is not among the tracked processes, so every
    # group gets SIGKILL whether or not a tracked process survived.
    _signal_all(pgids, alive, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=grace_period_s)


def remove_folder(folder: Path) -> None:
    """Remove ``folder`` and what is in it, once more after a moment if something was still being written there.

    A Ray process that is just exiting can still create a session folder while the first removal runs.
    """
    for attempt in range(2):
        if attempt:
            time.sleep(GRACE_PERIOD_S / 2)
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            return


def _signal_all(pgids: list[int], processes: Iterable[psutil.Process], signum: signal.Signals) -> None:
    for pgid in pgids:
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass
    for process in processes:
        try:
            process.send_signal(signum)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cleanup-dir", help="folder to remove after the groups are killed")
    args = parser.parse_args(argv)

    # Ctrl-C in the launcher's terminal reaches this process too; it must outlive the launcher.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    pgids: list[int] = []
    jobs: dict[str, Any] | None = None
    for line in sys.stdin:
        command, _, value = line.strip().partition(" ")
        if command == "watch" and value.isdigit():
            pgids.append(int(value))
        elif command == "jobs":
            try:
                jobs = json.loads(value)
            except ValueError:
                jobs = None
        elif command == "release":
            return 0

    # The notes go with the record once it is found stale, so they are read before the kill.
    noted = _noted_histories(jobs) if jobs else []
    kill_process_groups(pgids)
    if args.cleanup_dir:
        remove_folder(Path(args.cleanup_dir))
    if jobs:
        logging.basicConfig(level=logging.INFO, format="reaper: %(message)s")
        try:
            _end_jobs(jobs, noted)
        except Exception:  # noqa: BLE001 - the cluster is already stopped, which is what matters
            logger.exception("Failed to record the end of the jobs of %s", jobs.get("cluster"))
    return 0


def _noted_histories(jobs: dict[str, Any]) -> list[str]:
    from resources.local_registry import LocalRegistry

    try:
        return LocalRegistry(Path(jobs["registry"])).histories(str(jobs["cluster"]))
    except (KeyError, TypeError, OSError):
        return []


def _end_jobs(jobs: dict[str, Any], noted: list[str]) -> None:
    """Mark the unfinished jobs of the stopped cluster LOST, and leave a note of why it stopped for ``trainctl status``.

    The watchdog's own output goes to the holder's log, which goes with the stale record, so
    the note is the only lasting trace.
    """
    # Imported only now: the watchdog waits with as little loaded as it can.
    from resources.history import history_exists
    from resources.local_registry import LocalRegistry
    from resources.recorder import mark_lost_within, other_histories

    cluster, own = str(jobs["cluster"]), jobs.get("history_url")
    registry = LocalRegistry(Path(jobs["registry"]))
    # The jobs are matched by cluster name, so the name stays reserved while they are marked: a new
    # cluster of that name cannot start meanwhile. Taking the name also drops the stale record.
    if not registry.claim(cluster):
        logger.warning("Left the jobs of %s as they are: a new cluster has taken its name", cluster)
        return
    try:
        reason = f"{jobs.get('holder') or 'the process that held it'} exited"
        urls = ([own] if own and history_exists(own) else []) + other_histories(own, noted)
        message = f"its cluster stopped because {reason}"
        if not mark_lost_within(urls, cluster, message=message, timeout_s=HISTORY_WAIT_S):
            logger.warning("Stopped waiting for the job histories of %s after %g s", cluster, HISTORY_WAIT_S)
            reason += ". Its unfinished jobs may still show RUNNING, because a job history did not respond in time"
        registry.write_ending(cluster, reason, datetime.datetime.now(datetime.UTC))
    finally:
        registry.release_claim(cluster)


if __name__ == "__main__":
    sys.exit(main())
