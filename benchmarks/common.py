"""Measuring pairs side by side: each pair runs alternately and is reported as the median of its pairwise ratios."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil


@dataclass
class Pair:
    """Alternating measurements of a platform path (``ours``) and its reference (``floor``)."""

    ours: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        """``ours / floor`` of each round."""
        return [a / b for a, b in zip(self.ours, self.floor, strict=True) if b > 0]

    @property
    def median_ratio(self) -> float:
        """The median of the pairwise ratios, which holds up on a noisy machine better than a ratio of medians."""
        return statistics.median(self.ratios)


def alternate(ours: Callable[[], float], floor: Callable[[], float], *, rounds: int) -> Pair:
    """Measure both sides ``rounds`` times, swapping which goes first each round so neither always runs warm."""
    pair = Pair()
    for index in range(rounds):
        if index % 2 == 0:
            pair.ours.append(ours())
            pair.floor.append(floor())
        else:
            pair.floor.append(floor())
            pair.ours.append(ours())
    return pair


def ray_environment(root: Path) -> dict[str, str]:
    """Environment for Ray processes of a benchmark: their own HOME, token auth off, no usage reporting."""
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({"HOME": str(home), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
    return env


def processes_mentioning(marker: str) -> list[psutil.Process]:
    """Processes whose command line contains ``marker`` (a cluster's temporary folder), with their descendants.

    Ray retitles its agents and workers (``ray::DashboardAgent``, ``ray::IDLE``), so their
    command lines lose the folder. They are found as descendants of the raylet instead.
    """
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in process.info["cmdline"] or []):
                found[process.pid] = process
                found.update((child.pid, child) for child in process.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def kill_mentioning(marker: str, *, timeout_s: float = 10.0) -> float:
    """SIGKILL every process found by ``processes_mentioning`` and return the seconds until all are gone."""
    started = time.perf_counter()
    processes = processes_mentioning(marker)
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(processes, timeout=timeout_s)
    while processes_mentioning(marker) and time.perf_counter() - started < timeout_s:
        time.sleep(0.02)
    return time.perf_counter() - started


def wait_until_gone(marker: str, *, timeout_s: float = 30.0) -> float:
    """Wait until ``processes_mentioning`` finds no process; return the seconds waited."""
    started = time.perf_counter()
    while processes_mentioning(marker):
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"processes of {marker} still run after {timeout_s:.0f} s")
        time.sleep(0.02)
    return time.perf_counter() - started


def scratch(prefix: str) -> Path:
    """Create a temporary folder for one measurement.

    Keep ``prefix`` short: Ray's socket paths under the folder must fit in 107 bytes.
    """
    return Path(tempfile.mkdtemp(prefix=prefix))


def run_checked(command: Sequence[str], **options: Any) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with its output captured; raise with the output's last lines when it fails."""
    completed = subprocess.run(command, capture_output=True, text=True, check=False, **options)
    if completed.returncode != 0:
        tail = "\n".join((completed.stdout + completed.stderr).splitlines()[-30:])
        raise RuntimeError(f"{' '.join(command[:3])} ... exited with code {completed.returncode}:\n{tail}")
    return completed
