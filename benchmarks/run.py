"""Run the benchmarks, write ``benchmarks/results.json`` and regenerate ``docs/benchmarks.md``.

``python -m benchmarks.run`` runs every benchmark at full size. ``--smoke`` runs them
with tiny sizes and one round, only to keep them working: CI does that, with
``--output`` pointing at a temporary folder. ``--only NAME`` picks benchmarks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

REPOSITORY = Path(__file__).resolve().parent.parent
RESULTS = REPOSITORY / "benchmarks" / "results.json"
REPORT = REPOSITORY / "docs" / "benchmarks.md"


def _cluster(smoke: bool) -> dict[str, Any]:
    from benchmarks import cluster

    return cluster.run(workers=1 if smoke else 2, rounds=1 if smoke else 5)


def _training(smoke: bool) -> dict[str, Any]:
    from benchmarks import training

    if smoke:
        return training.run(window_days=2, epochs=2, rounds=1, short_window_days=1)
    # The whole history up to the benchmark's last day (1997-09-20..1998-03-15), and the default window.
    # Five rounds: with three, the median ratio moved by 0.05 between two runs on an idle machine.
    return training.run(window_days=177, epochs=3, rounds=5, short_window_days=28)


def _training_gpu(smoke: bool) -> dict[str, Any] | None:
    from benchmarks import training_gpu

    reason = training_gpu.unavailable_reason()
    if reason is not None:
        print(f"  skipped: {reason}", flush=True)
        return None
    if smoke:
        return training_gpu.run(window_days=2, epochs=1, rounds=1)
    return training_gpu.run(window_days=177, epochs=3, rounds=3)


def _orphans(smoke: bool) -> dict[str, Any]:
    from benchmarks import orphans

    return orphans.run(clusters=5 if smoke else 200)


def _end_to_end(smoke: bool) -> dict[str, Any]:
    from benchmarks import end_to_end

    if smoke:
        return end_to_end.run(partition=dt.date(1997, 9, 24), rounds=1)
    return end_to_end.run(partition=dt.date(1998, 4, 21), rounds=3)


def _first_step(smoke: bool) -> dict[str, Any]:
    from benchmarks import first_step

    return first_step.run(window_days=2 if smoke else 7, rounds=1 if smoke else 3)


def _backfill(smoke: bool) -> dict[str, Any]:
    from benchmarks import backfill

    if smoke:
        return backfill.run(first=dt.date(1997, 9, 21), days=2, rounds=1)
    # One round: its separate side alone is 14 runs, about 10 minutes on 2 CPUs.
    return backfill.run(first=dt.date(1998, 1, 5), days=14, rounds=3)


# Each returns its figures, or None when this machine cannot run it.
BENCHMARKS: dict[str, Callable[[bool], dict[str, Any] | None]] = {
    "cluster": _cluster,
    "training": _training,
    "training_gpu": _training_gpu,
    "first_step": _first_step,
    "orphans": _orphans,
    "end_to_end": _end_to_end,
    "backfill": _backfill,
}

# Figure, target, and whether a lower figure is better.
TARGETS: dict[str, tuple[float, bool]] = {
    "ready_vs_bare_ratio": (1.1, True),
    "teardown_s": (3.0, True),
    "throughput_vs_plain_ratio": (0.9, False),
    "orphan_tick_s": (2.0, True),
    "first_step_vs_bare_ratio": (1.2, True),
    "kuberay_vs_local_ratio": (1.2, True),
    "e2e_vs_plain_ratio": (1.5, True),
    "backfill_shared_vs_separate_ratio": (0.4, True),
    "run_process_peak_rss_mb": (1536, True),
}


def machine() -> dict[str, Any]:
    """Describe where the figures were measured."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "versions": {name: metadata.version(name) for name in ("ray", "torch", "dagster", "kubernetes")},
    }


def _without_date(info: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in info.items() if key != "date"}


def _describe(info: dict[str, Any]) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in info["versions"].items())
    return f"{info['cpus']} CPUs and {info['memory_gib']} GiB ({info['system']}), Python {info['python']}, {versions}"


def _verdict(name: str, value: Any) -> str:
    if name not in TARGETS or not isinstance(value, int | float):
        return ""
    target, lower_is_better = TARGETS[name]
    met = value <= target if lower_is_better else value >= target
    return f"{'≤' if lower_is_better else '≥'} {target:g}: {'met' if met else 'NOT met'}"


def _e2e_floor(figures: dict[str, dict[str, Any]]) -> list[str]:
    """Explain the end-to-end ratio with Ray's own floor: the start of a bare cluster, then the job's first step."""
    try:
        bare_ready_s = figures["cluster"]["bare_ready_s"]
        first_step_s = figures["first_step"]["first_step_bare_s"]
        plain_s = figures["end_to_end"]["e2e_plain_s"]
    except KeyError:
        return []
    return [
        "",
        "## The end-to-end ratio against Ray's floor",
        "",
        f"A bare Ray cluster alone takes {bare_ready_s:.1f} s to start here (`bare_ready_s`), which is"
        f" {bare_ready_s / plain_s:.1f} times the whole plain script ({plain_s:.1f} s).",
        "A run that starts its own cluster then still waits for Ray Train's workers and Ray Data's first batch"
        f" before its first step (`first_step_bare_s`: {first_step_s:.1f} s for the benchmark's driver).",
        "So on this machine no run that starts a cluster gets `e2e_vs_plain_ratio` near 1.5.",
        "A backfill run shares the cluster and the job's start among up to 14 days"
        " (`backfill_shared_vs_separate_ratio`).",
        *_e2e_phases(figures["end_to_end"]),
    ]


def _e2e_phases(end_to_end: dict[str, Any]) -> list[str]:
    """Describe where the platform's end-to-end run spends its time, from the phases that the benchmark measured."""
    try:
        ready_s, first_step_s, written_s, total_s = (
            end_to_end[name]
            for name in ("e2e_cluster_ready_s", "e2e_first_step_s", "e2e_model_written_s", "e2e_platform_s")
        )
    except KeyError:
        return []
    return [
        "",
        f"The platform run takes {total_s:.1f} s. Python, Dagster and the cluster start in the first"
        f" {ready_s:.1f} s, until every worker has registered. The Ray job, Ray Train's workers and Ray Data's"
        f" first batch take {first_step_s - ready_s:.1f} s more, until the first training step."
        f" Training and its checkpoints take {written_s - first_step_s:.1f} s, until the model is written."
        f" The end of the step, the cluster's stop and the process's exit take the last {total_s - written_s:.1f} s.",
    ]


def render_report(results: dict[str, Any]) -> str:
    """Write the Markdown page of ``results``."""
    info = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "The platform's own cost against the floor that Ray and PyTorch set, measured side by side in",
        "one run: each pair runs alternately, and a ratio is the median of the pairwise ratios.",
        "This page and `benchmarks/results.json` are written by `make bench`; edit the code, not the page.",
        "",
        f"Measured on {_describe(info)}.",
        f"Last run {info['date']}. Each benchmark below gives the date of the run its figures come from,",
        "and its machine where that differs.",
        "",
        "| figure | value | target |",
        "| --- | --- | --- |",
    ]
    for section, figures in results["figures"].items():
        for name, value in figures.items():
            lines.append(f"| `{name}` ({section}) | {value} | {_verdict(name, value)} |")
    lines += _e2e_floor(results["figures"])
    lines += ["", "## What each benchmark measures", ""]
    measured = results.get("measured", {})
    machines = results.get("machines", {})
    for section in results["figures"]:
        doc = (importlib.import_module(f"benchmarks.{section}").__doc__ or "").strip()
        where = machines.get(section, _without_date(info))
        elsewhere = "" if where == _without_date(info) else f" on {_describe(where)}"
        when = measured.get(section, info["date"])
        lines += [f"**{section}** (measured {when}{elsewhere}): {' '.join(doc.split())}", ""]
    if "training_gpu" not in results["figures"]:
        lines += [
            "## Not measured yet",
            "",
            "- Training with NCCL on a GPU (`benchmarks/training_gpu.py`): no run so far had a CUDA device"
            " and a CUDA build of torch.",
            "",
        ]
    lines += [
        "## Reproduce",
        "",
        "```sh",
        "make bench                                   # every benchmark, full size (about 40 minutes)",
        ".venv/bin/python -m benchmarks.run --only training",
        ".venv/bin/python -m benchmarks.run --only training_gpu   # needs a CUDA GPU and torch built for CUDA",
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and one round, to check the code runs")
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run only this benchmark")
    parser.add_argument(
        "--output", type=Path, help="folder for results.json and benchmarks.md instead of the repository's"
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # The benchmarks' clusters and jobs stay out of the user's cluster records and job history.
    os.environ["TRAINCTL_HOME"] = tempfile.mkdtemp(prefix="bench-state-")
    os.environ.pop("TRAINING_HISTORY_URL", None)
    names = args.only or list(BENCHMARKS)
    results_path = RESULTS if args.output is None else args.output / "results.json"
    report_path = REPORT if args.output is None else args.output / "benchmarks.md"
    if args.smoke and args.output is None:
        parser.error("--smoke figures are not worth keeping; give --output for them")

    previous = json.loads(results_path.read_text()) if results_path.exists() else {"figures": {}}
    figures = dict(previous.get("figures", {}))
    # Figures of benchmarks not run this time stay, with the date of the run they come from.
    measured = {name: previous.get("measured", {}).get(name, previous["machine"]["date"]) for name in figures}
    machines = {name: previous.get("machines", {}).get(name, _without_date(previous["machine"])) for name in figures}
    written = False
    for name in names:
        started = time.perf_counter()
        print(f"Running benchmark {name}...", flush=True)
        measured_figures = BENCHMARKS[name](args.smoke)
        if measured_figures is None:
            # The figures of an earlier run, on a machine that could run it, are kept.
            continue
        figures[name] = measured_figures
        print(f"  {json.dumps(figures[name])} ({time.perf_counter() - started:.0f} s)", flush=True)
        info = machine()
        measured[name] = info["date"]
        machines[name] = _without_date(info)
        # Written after each benchmark, so that one that fails late keeps the figures of the others.
        results = {"machine": info, "smoke": args.smoke, "figures": figures, "measured": measured, "machines": machines}
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        report_path.write_text(render_report(results))
        written = True
    print(f"Wrote {results_path} and {report_path}" if written else f"Nothing measured; {results_path} is unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
