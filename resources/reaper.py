"""Watchdog that stops a local Ray cluster when the process that started it dies.

The launcher starts this module as a child in its own session and keeps its stdin
open. It writes ``watch <pgid>`` for each Ray process group it starts and
``release`` once it has stopped them itself. If stdin reaches end-of-file without
``release``, the launcher died (even by SIGKILL, which runs no cleanup), so the
watchdog kills every watched group and removes the cluster's temporary folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from collections.abc import Iterable

import psutil

# Ray nodes of a throwaway cluster have nothing to flush that outlives it, so the wait is short.
GRACE_PERIOD_S = 1.0


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
    for line in sys.stdin:
        command, _, value = line.strip().partition(" ")
        if command == "watch" and value.isdigit():
            pgids.append(int(value))
        elif command == "release":
            return 0

    kill_process_groups(pgids)
    if args.cleanup_dir:
        shutil.rmtree(args.cleanup_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
