"""Training throughput on GPUs: the platform's loop with NCCL against a plain PyTorch loop on the same GPU.

It trains on the whole history up to 1998-03-15, as the CPU training benchmark does.
``gpu_throughput_vs_plain_ratio`` is one Ray Train worker with one GPU, reading its shard
through Ray Data, against the plain loop over the same rows already on the GPU, counting
the samples per second of all epochs.
With two GPUs or more, ``gpu_scaling_2_vs_1_ratio`` is 2 workers (DistributedDataParallel
over NCCL) against 1. Each local worker node is limited to its own GPU. Without a CUDA
device or a CUDA build of torch, ``make bench`` skips it and keeps the figures of an
earlier GPU run.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import alternate, scratch
from benchmarks.training import MIB, plain_samples_per_s, platform_samples_per_s, stored_window
from resources.local import LocalRayCluster
from resources.spec import ClusterSpec


def unavailable_reason() -> str | None:
    """Return why this machine cannot run the benchmark, or None when it can."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build"
    if torch.cuda.device_count() == 0:
        return "torch finds no CUDA device"
    return None


def run(*, window_days: int, epochs: int, rounds: int) -> dict[str, Any]:
    """Measure one worker against the plain loop on the same GPU, and 2 workers against 1 with two GPUs or more.

    Call it only where ``unavailable_reason()`` returns None.
    NOTE: this path has not run yet, because the machines that measured the figures had no GPU.
    """
    gpus = torch.cuda.device_count()
    examples, examples_uri = stored_window(window_days)
    workers = min(gpus, 2)
    spec = ClusterSpec(
        workers=workers,
        cpus_per_worker=1,
        gpus_per_worker=1,
        memory_per_worker=2048 * MIB,
        object_store_memory=256 * MIB,
    )
    cluster = LocalRayCluster(
        name="bench-throughput-gpu", spec=spec, temp_root=str(scratch("bc")), on_progress=lambda m: None
    )
    info = cluster.start()
    try:
        one_vs_plain = alternate(
            lambda: (
                platform_samples_per_s(info.dashboard_url, examples_uri, workers=1, epochs=epochs, gpu=True).all_epochs
            ),
            lambda: plain_samples_per_s(examples, epochs=epochs, device="cuda").all_epochs,
            rounds=rounds,
        )
        figures: dict[str, Any] = {
            "gpus": gpus,
            "gpu_name": torch.cuda.get_device_name(0),
            "gpu_platform_samples_per_s": round(sorted(one_vs_plain.ours)[len(one_vs_plain.ours) // 2]),
            "gpu_plain_samples_per_s": round(sorted(one_vs_plain.floor)[len(one_vs_plain.floor) // 2]),
            "gpu_throughput_vs_plain_ratio": round(one_vs_plain.median_ratio, 3),
        }
        if workers == 2:
            two_vs_one = alternate(
                lambda: (
                    platform_samples_per_s(
                        info.dashboard_url, examples_uri, workers=2, epochs=epochs, gpu=True
                    ).all_epochs
                ),
                lambda: (
                    platform_samples_per_s(
                        info.dashboard_url, examples_uri, workers=1, epochs=epochs, gpu=True
                    ).all_epochs
                ),
                rounds=rounds,
            )
            figures["gpu_scaling_2_vs_1_ratio"] = round(two_vs_one.median_ratio, 3)
    finally:
        cluster.stop()
    return figures
