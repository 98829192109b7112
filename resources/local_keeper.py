"""The process that keeps a local Ray cluster made with ``trainctl up --backend local``.

``trainctl up`` starts this module in its own session and reads its standard output:
``progress <text>`` lines while the cluster starts, then one ``ready <json>`` line.
From then on the keeper runs on its own: it keeps the cluster running until its lifetime ends, it
receives SIGTERM (``trainctl down``), or one of the cluster's nodes exits, and in each
case stops every process of the cluster and removes its record. When it stops the
cluster on its own, it first records the end of the cluster's jobs in the job history, and
leaves a note of the reason that ``trainctl status`` shows. A history or Jobs API that
hangs delays the stop by at most ``JOB_ENDING_WAIT_S``. If the keeper itself
is killed, the cluster's watchdog (``resources.reaper``) stops the nodes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from resources.dashboard import DashboardError
from resources.errors import ClusterStartError, PlatformError
from resources.history import HistoryError, default_history_url, portable_history_url
from resources.local import DEFAULT_NODE_IP, LocalRayCluster
from resources.local_registry import LocalRegistry, record_of
from resources.recorder import open_history, other_histories, settle_jobs, unfinished_jobs
from resources.spec import ClusterSpec, format_duration

logger = logging.getLogger("resources.local_keeper")

HEALTH_CHECK_INTERVAL_S = 2.0
# How long the keeper waits for its jobs' end to be recorded before it stops the cluster, and
# again after. A history or a head that hangs must not keep the nodes running past the lifetime.
JOB_ENDING_WAIT_S = 40.0


# Set by SIGTERM or SIGHUP. The handler only sets it: an exception raised from a handler
# could land between starting a Ray node and recording its PID, and leak that node.
_stop_requested = threading.Event()


def _on_signal(signum: int, _frame: object) -> None:
    _stop_requested.set()


def _say(kind: str, text: str) -> None:
    # A BrokenPipeError here means `trainctl up` died before the cluster was ready. The
    # caller then stops the cluster, because no command has printed its name.
    sys.stdout.write(f"{kind} {text}\n")
    sys.stdout.flush()


def _detach_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def hold(cluster: LocalRayCluster, *, registry: LocalRegistry, ttl_s: float, details: dict[str, Any]) -> int:
    """Start ``cluster``, report it ready, and hold it until it expires, is stopped or loses a node."""
    name = cluster.name
    info = None
    # Why the keeper stops the cluster on its own, for the jobs it ends.
    reason: str | None = None
    try:
        info = cluster.start()
        record = record_of(cluster, dashboard_url=info.dashboard_url, **details)
        registry.write(record)
        cluster.watch_jobs(registry=registry.root, history_url=_own_history_url(), holder="its keeper process")
        _say("ready", json.dumps({"name": name, "dashboard_url": info.dashboard_url, "startup_s": info.startup_s}))
        _detach_stdout()
        logger.info("Holding %s until %s UTC", name, f"{record.expires_at:%Y-%m-%d %H:%M:%S}")

        deadline = time.monotonic() + ttl_s
        while time.monotonic() < deadline:
            if _stop_requested.wait(min(HEALTH_CHECK_INTERVAL_S, max(deadline - time.monotonic(), 0.0))):
                logger.info("Stopping %s on request", name)
                return 0
            lost = cluster.exited_nodes()
            if lost:
                reason = f"Ray {', '.join(lost)} exited"
                logger.warning("Stopping %s: %s", name, reason)
                return 1
        reason = f"its lifetime of {format_duration(ttl_s)} ended"
        logger.info("Stopping %s: %s", name, reason)
        return 0
    except BrokenPipeError:
        logger.warning("Stopping %s: trainctl up exited before the cluster was ready", name)
        return 1
    except ClusterStartError as err:
        if _stop_requested.is_set():
            logger.info("Stopped %s while it was starting, on request", name)
            return 0
        return _report_failure(name, err)
    except Exception as err:  # noqa: BLE001 - every failure is reported to `trainctl up` before the cluster stops
        return _report_failure(name, err)
    finally:
        if reason is not None and info is not None:
            _stop_after_ending_jobs(cluster, registry, info.dashboard_url, reason)
        else:
            cluster.stop()
        registry.remove(name)


def _stop_after_ending_jobs(cluster: LocalRayCluster, registry: LocalRegistry, dashboard_url: str, reason: str) -> None:
    """Stop a cluster for ``reason``, recording its jobs' end if the Jobs API and the histories respond in time.

    The stop note is written first, so that ``trainctl status`` shows the cluster as stopping
    and the note survives a keeper killed during the stop.
    """
    name = cluster.name
    stopped_at = dt.datetime.now(dt.UTC)
    _write_ending(registry, name, reason, stopped_at)
    ending = threading.Thread(target=_end_jobs_everywhere, args=(registry, name, dashboard_url, reason), daemon=True)
    ending.start()
    if not _wait_for(ending, JOB_ENDING_WAIT_S):
        if _stop_requested.is_set():
            logger.info("Stopping %s on request before the end of its jobs is recorded", name)
        else:
            logger.warning(
                "Stopping %s before the end of its jobs is recorded: the Jobs API or a job history did not respond "
                "within %g s",
                name,
                JOB_ENDING_WAIT_S,
            )
    cluster.stop()
    # The cluster is gone, so the thread has only the history writes left (marking the jobs LOST).
    # The record stays until then, so that a new cluster cannot take the name while they run.
    if _wait_for(ending, JOB_ENDING_WAIT_S) or _stop_requested.is_set():
        return
    logger.warning("Stopped waiting for the job histories of %s after %g s more", name, JOB_ENDING_WAIT_S)
    given_up = ". Its unfinished jobs may still show RUNNING, because a job history did not respond in time"
    _write_ending(registry, name, reason + given_up, stopped_at)


def _own_history_url() -> str | None:
    try:
        return portable_history_url(default_history_url())
    except HistoryError:
        return None


def _write_ending(registry: LocalRegistry, name: str, reason: str, at: dt.datetime) -> None:
    try:
        registry.write_ending(name, reason, at)
    except OSError as err:
        logger.warning("Failed to write the reason %s stopped: %s", name, err)


def _wait_for(thread: threading.Thread, timeout_s: float) -> bool:
    """Wait until ``thread`` ends, ``timeout_s`` passes or a stop is requested; return whether it ended.

    `trainctl down` waits only ``resources.cli.backends.KEEPER_STOP_TIMEOUT_S`` for the keeper, and records
    the jobs' end itself.
    """
    deadline = time.monotonic() + timeout_s
    while thread.is_alive() and not _stop_requested.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        thread.join(min(remaining, 0.2))
    return not thread.is_alive()


def _end_jobs_everywhere(registry: LocalRegistry, name: str, dashboard_url: str, reason: str) -> None:
    """Run :func:`_end_jobs` on the keeper's own history, then on each other one that ``trainctl submit`` noted.

    Nothing raised here may keep the cluster running, so every error is logged.
    """
    try:
        urls = [None, *other_histories(None, registry.histories(name))]
    except Exception:  # noqa: BLE001 - the keeper's own history is still updated
        logger.exception("Failed to read the job histories noted for %s", name)
        urls = [None]
    for url in urls:
        try:
            _end_jobs(name, dashboard_url, reason, url)
        except Exception:  # noqa: BLE001 - the next history and the cluster's stop still run
            logger.exception("Failed to record the end of the jobs of %s", name)


def _end_jobs(name: str, dashboard_url: str, reason: str, history_url: str | None) -> None:
    """Record the jobs of a cluster that stops on its own: their real end where Ray has one, LOST otherwise.

    ``trainctl down`` does the same for a cluster it deletes. Without it, a job whose
    ``submit`` was killed stayed RUNNING in the history for good. ``history_url`` is the
    history to update, the default one when ``None``.
    """
    history = open_history(history_url, warn=logger.warning)
    if history is None:
        return
    try:
        unfinished = unfinished_jobs(history, name)
        if not unfinished:
            return
        try:
            settle_jobs(history, unfinished, dashboard_url)
        except DashboardError as err:
            logger.warning("The jobs of %s could not be read before it stopped: %s", name, err)
        lost = history.mark_lost(name, message=f"its cluster stopped because {reason}", at=dt.datetime.now(dt.UTC))
        logger.info("Marked %d unfinished job(s) of %s LOST", lost, name)
    except HistoryError as err:
        logger.warning("The job history was not updated: %s", err)
    finally:
        history.close()


def _report_failure(name: str, err: Exception) -> int:
    logger.error("Stopping %s after an error", name, exc_info=err)
    if isinstance(err, ClusterStartError):
        # `trainctl up` raises its own ClusterStartError, which names the cluster again.
        message = err.reason + (f"\nLast log lines:\n{err.log_tail}" if err.log_tail else "")
    else:
        message = str(err) if isinstance(err, PlatformError) else f"{type(err).__name__}: {err}"
    try:
        _say("failed", json.dumps({"error": message}))
    except BrokenPipeError:
        pass
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--registry", required=True, help="folder of the local cluster records")
    parser.add_argument("--ttl-s", type=float, required=True, help="seconds to hold the cluster")
    parser.add_argument("--spec", required=True, help="ClusterSpec fields as JSON")
    parser.add_argument("--owner", default="")
    parser.add_argument("--team", default="")
    parser.add_argument("--node-ip", default=DEFAULT_NODE_IP)
    parser.add_argument("--start-timeout-s", type=float, default=180.0)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.Formatter.converter = time.gmtime  # UTC, like every other time trainctl shows
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    # The keeper runs in its own session; a Ctrl-C meant for `trainctl up` is handled there.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    spec = ClusterSpec(**json.loads(args.spec))
    cluster = LocalRayCluster(
        name=args.name,
        spec=spec,
        node_ip=args.node_ip,
        start_timeout_s=args.start_timeout_s,
        on_progress=lambda message: (_say("progress", message), logger.info("%s", message)),
        cancel=_stop_requested,
    )
    details = {"origin": "manual", "owner": args.owner, "team": args.team, "ttl": dt.timedelta(seconds=args.ttl_s)}
    return hold(cluster, registry=LocalRegistry(Path(args.registry)), ttl_s=args.ttl_s, details=details)


def spec_arguments(spec: ClusterSpec) -> str:
    """Serialize ``spec`` for ``--spec``."""
    return json.dumps(asdict(spec))


if __name__ == "__main__":
    sys.exit(main())
