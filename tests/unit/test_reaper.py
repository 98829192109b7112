"""Unit tests of the watchdog that kills a local Ray cluster's process groups, on real short-lived processes."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from resources.history import JobHistory
from resources.local_registry import LocalRegistry
from resources.reaper import jobs_line, kill_process_groups
from tests.jobs import record_running_job

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 10.0
POLL_INTERVAL_S = 0.02

# Starts `sleep 60` in a session of its own, prints its pid, then sleeps itself.
LEADER_WITH_DETACHED_CHILD = """
import subprocess, sys, time
child = subprocess.Popen(["sleep", "60"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)
"""

# Starts `sleep 60` in the leader's process group, prints its pid, then sleeps itself.
LEADER_WITH_CHILD_IN_GROUP = """
import subprocess, sys, time
child = subprocess.Popen(["sleep", "60"])
print(child.pid, flush=True)
time.sleep(60)
"""

# Starts a child that stays in the leader's process group, ignores SIGTERM and prints its pid, then exits at once.
LEADER_LEAVING_STUBBORN_CHILD = """
import subprocess, sys
child_script = (
    "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print(os.getpid(), flush=True); time.sleep(60)"
)
subprocess.Popen([sys.executable, "-c", child_script])
"""


def is_running(pid: int) -> bool:
    """Return whether ``pid`` exists and is not a zombie that only waits to be reaped."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(condition: Callable[[], bool], *, timeout_s: float = DEADLINE_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(POLL_INTERVAL_S)
    return condition()


class ProcessTracker:
    """Processes a test started, killed in teardown whatever happens to the test."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[bytes]] = []
        self.pids: list[int] = []

    def start(self, command: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command, **kwargs)  # type: ignore[call-overload]
        self.popens.append(process)
        return process

    def start_leader(self, script: str) -> tuple[subprocess.Popen[bytes], int]:
        """Start ``script`` as a new session leader and return it with the pid of the child it prints."""
        leader = self.start([sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True)
        assert leader.stdout is not None
        child_pid = int(leader.stdout.readline())
        self.pids.append(child_pid)
        return leader, child_pid

    def cleanup(self) -> None:
        for pid in self.pids:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        for process in self.popens:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=DEADLINE_S)
            if process.stdout is not None:
                process.stdout.close()
            if process.stdin is not None and not process.stdin.closed:
                process.stdin.close()


@pytest.fixture
def processes() -> Iterator[ProcessTracker]:
    tracker = ProcessTracker()
    try:
        yield tracker
    finally:
        tracker.cleanup()


def start_reaper(processes: ProcessTracker, *arguments: str) -> subprocess.Popen[bytes]:
    return processes.start(
        [sys.executable, "-m", "resources.reaper", *arguments],
        stdin=subprocess.PIPE,
        cwd=PROJECT_ROOT,
        start_new_session=True,
    )


def send_lines(reaper: subprocess.Popen[bytes], lines: list[str]) -> None:
    assert reaper.stdin is not None
    reaper.stdin.write("".join(f"{line}\n" for line in lines).encode())
    reaper.stdin.flush()


def close_stdin(reaper: subprocess.Popen[bytes]) -> None:
    assert reaper.stdin is not None
    reaper.stdin.close()


def test_kill_stops_group_leader(processes: ProcessTracker) -> None:
    leader = processes.start(["sleep", "60"], start_new_session=True)

    kill_process_groups([leader.pid], grace_period_s=0.5)

    # kill_process_groups reaps its own children through psutil, so Popen gets no exit status.
    assert wait_until(lambda: leader.poll() is not None)


def test_kill_stops_child_in_group(processes: ProcessTracker) -> None:
    leader, child_pid = processes.start_leader(LEADER_WITH_CHILD_IN_GROUP)

    kill_process_groups([leader.pid], grace_period_s=0.5)

    assert wait_until(lambda: leader.poll() is not None)
    assert wait_until(lambda: not is_running(child_pid))


def test_kill_stops_child_in_other_session(processes: ProcessTracker) -> None:
    leader, child_pid = processes.start_leader(LEADER_WITH_DETACHED_CHILD)
    assert os.getsid(child_pid) != os.getsid(leader.pid)

    kill_process_groups([leader.pid], grace_period_s=0.5)

    assert wait_until(lambda: leader.poll() is not None)
    assert wait_until(lambda: not is_running(child_pid))


def test_kill_stops_several_groups(processes: ProcessTracker) -> None:
    first = processes.start(["sleep", "60"], start_new_session=True)
    second = processes.start(["sleep", "60"], start_new_session=True)

    kill_process_groups([first.pid, second.pid], grace_period_s=0.5)

    assert wait_until(lambda: first.poll() is not None)
    assert wait_until(lambda: second.poll() is not None)


def test_kill_escalates_to_sigkill(processes: ProcessTracker) -> None:
    ignores_term = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"
    )
    leader = processes.start([sys.executable, "-c", ignores_term], stdout=subprocess.PIPE, start_new_session=True)
    assert leader.stdout is not None
    leader.stdout.readline()

    kill_process_groups([leader.pid], grace_period_s=0.2)

    # The leader ignores SIGTERM, so only the SIGKILL after the grace period can end it.
    assert wait_until(lambda: leader.poll() is not None)


def test_kill_escalates_without_leader(processes: ProcessTracker) -> None:
    leader, child_pid = processes.start_leader(LEADER_LEAVING_STUBBORN_CHILD)
    leader.wait(timeout=DEADLINE_S)
    assert os.getpgid(child_pid) == leader.pid

    kill_process_groups([leader.pid], grace_period_s=0.2)

    assert wait_until(lambda: not is_running(child_pid), timeout_s=2.0)


def test_kill_ignores_missing_group(processes: ProcessTracker) -> None:
    finished = processes.start(["true"], start_new_session=True)
    finished.wait(timeout=DEADLINE_S)

    kill_process_groups([finished.pid], grace_period_s=0.1)


def test_reaper_kills_on_stdin_close(processes: ProcessTracker, tmp_path: Path) -> None:
    cluster_folder = tmp_path / "ray-cluster"
    cluster_folder.mkdir()
    (cluster_folder / "session.log").write_text("log")
    leader, child_pid = processes.start_leader(LEADER_WITH_DETACHED_CHILD)
    other = processes.start(["sleep", "60"], start_new_session=True)
    reaper = start_reaper(processes, "--cleanup-dir", str(cluster_folder))

    send_lines(reaper, [f"watch {leader.pid}", f"watch {other.pid}"])
    close_stdin(reaper)

    assert wait_until(lambda: leader.poll() is not None)
    assert wait_until(lambda: other.poll() is not None)
    assert wait_until(lambda: not is_running(child_pid))
    assert wait_until(lambda: reaper.poll() is not None)
    assert reaper.returncode == 0
    assert not cluster_folder.exists()


def test_reaper_spares_groups_after_release(processes: ProcessTracker, tmp_path: Path) -> None:
    cluster_folder = tmp_path / "ray-cluster"
    cluster_folder.mkdir()
    leader = processes.start(["sleep", "60"], start_new_session=True)
    reaper = start_reaper(processes, "--cleanup-dir", str(cluster_folder))

    send_lines(reaper, [f"watch {leader.pid}", "release"])
    close_stdin(reaper)

    assert wait_until(lambda: reaper.poll() is not None)
    assert reaper.returncode == 0
    assert leader.poll() is None
    assert is_running(leader.pid)
    assert cluster_folder.exists()


def test_reaper_survives_sigint(processes: ProcessTracker) -> None:
    leader = processes.start(["sleep", "60"], start_new_session=True)
    reaper = start_reaper(processes)
    send_lines(reaper, [f"watch {leader.pid}"])
    # A line round trip is not observable, so wait until the interpreter has set its SIGINT handler.
    assert wait_until(lambda: sigint_ignored(reaper.pid))

    reaper.send_signal(signal.SIGINT)
    close_stdin(reaper)

    assert wait_until(lambda: leader.poll() is not None)
    assert wait_until(lambda: reaper.poll() is not None)
    assert reaper.returncode == 0


def sigint_ignored(pid: int) -> bool:
    """Return whether ``pid`` ignores SIGINT, read from the SigIgn mask in /proc (Linux only)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    for line in status.splitlines():
        if line.startswith("SigIgn:"):
            mask = int(line.split()[1], 16)
            return bool(mask & (1 << (signal.SIGINT - 1)))
    return False


def test_reaper_marks_jobs_lost(processes: ProcessTracker, tmp_path: Path) -> None:
    own, team = (f"sqlite:///{tmp_path / name}" for name in ("own.db", "team.db"))
    for url, job_id in ((own, "job-own"), (team, "job-team")):
        record_running_job(url, job_id, "exp-dead")
    registry = LocalRegistry(tmp_path / "clusters")
    registry.add_history("exp-dead", team)
    leader = processes.start(["sleep", "60"], start_new_session=True)
    reaper = start_reaper(processes)

    line = jobs_line(cluster="exp-dead", registry=registry.root, history_url=own, holder="its keeper process")
    send_lines(reaper, [f"watch {leader.pid}", line])
    close_stdin(reaper)

    assert wait_until(lambda: leader.poll() is not None)
    assert wait_until(lambda: reaper.poll() is not None, timeout_s=30)
    assert reaper.returncode == 0
    for url, job_id in ((own, "job-own"), (team, "job-team")):
        with JobHistory(url) as history:
            record = history.get(job_id)
        assert record is not None
        assert record.status == "LOST"
        assert record.message == "its cluster stopped because its keeper process exited"
    # The watchdog's output goes with the keeper's log, so `trainctl status` reads why from this note.
    ending = registry.ending("exp-dead")
    assert ending is not None
    assert ending.reason == "its keeper process exited"
    assert not (registry.root / "exp-dead.starting").exists()


def test_reaper_ignores_jobs_after_release(processes: ProcessTracker, tmp_path: Path) -> None:
    own = f"sqlite:///{tmp_path / 'own.db'}"
    record_running_job(own, "job-own", "exp-live")
    reaper = start_reaper(processes)

    line = jobs_line(cluster="exp-live", registry=tmp_path / "clusters", history_url=own, holder="its keeper")
    send_lines(reaper, [line, "release"])
    close_stdin(reaper)

    assert wait_until(lambda: reaper.poll() is not None)
    with JobHistory(own) as history:
        record = history.get("job-own")
    assert record is not None
    assert record.status == "RUNNING"


def test_reaper_spares_reused_name(processes: ProcessTracker, tmp_path: Path) -> None:
    own = f"sqlite:///{tmp_path / 'own.db'}"
    record_running_job(own, "job-new", "exp-reused")
    registry = LocalRegistry(tmp_path / "clusters")
    # A new `trainctl up` in this process has taken the name by the time the watchdog marks the jobs.
    assert registry.claim("exp-reused")
    leader = processes.start(["sleep", "60"], start_new_session=True)
    reaper = start_reaper(processes)

    line = jobs_line(cluster="exp-reused", registry=registry.root, history_url=own, holder="its keeper process")
    send_lines(reaper, [f"watch {leader.pid}", line])
    close_stdin(reaper)

    assert wait_until(lambda: reaper.poll() is not None, timeout_s=30)
    assert leader.poll() is not None
    with JobHistory(own) as history:
        record = history.get("job-new")
    assert record is not None
    assert record.status == "RUNNING"
    assert registry.ending("exp-reused") is None
