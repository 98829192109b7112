"""How the training loop combines one epoch's figures over its workers, with a real two-process gloo group."""

import socket
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training_pipelines.training.train_loop import all_reduce

CPU = torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank: int, port: int, results: Any) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # Rank 0 trains 100 rows in 1.5 s, rank 1 trains 120 rows in 2.5 s.
        sums = all_reduce([100.0 + 20 * rank, 1.5 + rank], "SUM", CPU)
        maxima = all_reduce([1.5 + rank], "MAX", CPU)
        results.put((rank, sums, maxima))
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_and_takes_max() -> None:
    context = mp.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_worker, args=(rank, port, results)) for rank in (0, 1)]
    for process in processes:
        process.start()
    outputs = sorted(results.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(timeout=30)

    assert [rank for rank, _, _ in outputs] == [0, 1]
    for _, sums, maxima in outputs:
        assert sums == [220.0, 4.0]
        assert maxima == [2.5]


def test_all_reduce_without_group_returns_values() -> None:
    assert all_reduce([3.0, 4.0], "MAX", CPU) == [3.0, 4.0]
