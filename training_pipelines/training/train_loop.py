"""The per-worker training loop that Ray Train's ``TorchTrainer`` runs on each worker."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from training_pipelines.ranking.features import FEATURE_COLUMNS, LABEL_COLUMN, WEIGHT_COLUMN
from training_pipelines.ranking.model import (
    ModelConfig,
    RankingModel,
    batch_to_tensors,
    model_from_bytes,
    shrink_corrections,
)
from training_pipelines.ranking.train_plain import make_optimizer, train_step

CHECKPOINT_FILE = "state.pt"
# Largest shard a worker keeps in memory between epochs.
SHARD_CACHE_BYTES = 512 * 1024**2
# About this many rows per read from Ray Data (read_rows). Training batches are cut from these chunks in memory.
READ_ROWS = 16384
COLUMNS = [*FEATURE_COLUMNS, LABEL_COLUMN, WEIGHT_COLUMN]

# Ray Train tees print() to both the worker's stdout and its logger, so a printed line
# shows up twice in the job log. A log record shows up once.
logger = logging.getLogger(__name__)


def _warm_start(model: RankingModel, warm_start_path: str, shrink: float) -> None:
    import fsspec

    with fsspec.open(warm_start_path, "rb") as handle:
        previous, previous_config = model_from_bytes(handle.read())
    if previous_config != model.config:
        logger.warning("Training from scratch: %s has another model configuration", warm_start_path)
        return
    model.load_state_dict(previous.state_dict())
    # Yesterday's corrections were fit to yesterday's window; shrinking them toward the
    # popularity baseline keeps a chain of warm starts from drifting.
    shrink_corrections(model, shrink)


class _ShardCache:
    """This worker's shard as tensors in memory, read from Ray Data once and reshuffled every epoch.

    Reading through Ray Data costs milliseconds per batch (block fetch, conversion to
    tensors), which for a small model costs more than the step itself. So the shard is
    read in chunks of about ``READ_ROWS`` rows, and training batches are cut from memory
    in a shuffled order. The first epoch trains on each chunk as it arrives, while Ray
    Data fetches the next one. The training job deals each worker's rows at random
    (``ray_job.deal_rows``), so shuffling within each chunk still gives a random order
    of the whole shard. A shard above ``max_bytes`` is not kept: every epoch reads it
    again the same way.
    """

    def __init__(self, *, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._tensors: dict[str, torch.Tensor] | None = None
        self._streaming = False

    def batches(
        self, shard: Any, *, batch_size: int, seed: int, device: torch.device
    ) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(seed)
        if self._tensors is not None:
            yield from _shuffled_batches(self._tensors, batch_size=batch_size, generator=generator)
            return

        chunks: list[dict[str, torch.Tensor]] = []
        chunk_bytes = 0
        for chunk in shard.iter_batches(batch_size=read_rows(batch_size), batch_format="numpy"):
            tensors = batch_to_tensors({name: chunk[name] for name in COLUMNS}, device=device)
            if not self._streaming:
                chunks.append(tensors)
                chunk_bytes += sum(tensor.element_size() * tensor.nelement() for tensor in tensors.values())
                if chunk_bytes > self._max_bytes:
                    logger.info(
                        "The shard is above %d bytes, so every epoch reads it through Ray Data", self._max_bytes
                    )
                    self._streaming = True
                    chunks = []
            yield from _shuffled_batches(tensors, batch_size=batch_size, generator=generator)
        if chunks and not self._streaming:
            self._tensors = {name: torch.cat([part[name] for part in chunks]) for name in chunks[0]}


def read_rows(batch_size: int) -> int:
    """Rows per read from Ray Data: a whole number of batches, so that only the shard's last batch is short."""
    return max(READ_ROWS // batch_size, 1) * batch_size


def _shuffled_batches(
    tensors: dict[str, torch.Tensor], *, batch_size: int, generator: torch.Generator
) -> Iterator[dict[str, torch.Tensor]]:
    """Cut ``tensors`` into batches of ``batch_size`` rows in an order drawn from ``generator``."""
    rows = len(tensors[LABEL_COLUMN])
    order = torch.randperm(rows, generator=generator).to(tensors[LABEL_COLUMN].device)
    for start in range(0, rows, batch_size):
        indices = order[start : start + batch_size]
        yield {name: tensor[indices] for name, tensor in tensors.items()}


def worker_dataset_name(dataset: str, rank: int) -> str:
    """Name the part of ``dataset`` that the worker of world rank ``rank`` trains on.

    No slash: Ray Data names a log file after the dataset.
    """
    return f"{dataset}-worker-{rank}"


def all_reduce(values: list[float], op: str, device: torch.device) -> list[float]:
    """Combine ``values`` over every worker with the reduce operation named ``op`` ("SUM", "MAX")."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op))
    return [float(value) for value in tensor.cpu()]


# A partition's ``warm_start`` that means: continue from the model of the partition before it in this run.
FROM_PREVIOUS = "previous"


def _new_model(config: dict[str, Any], warm_start: str | None, previous_state: dict[str, Any] | None) -> RankingModel:
    model = RankingModel(ModelConfig.from_dict(config["model_config"]))
    shrink = float(config.get("warm_start_shrink", 1.0))
    if warm_start == FROM_PREVIOUS:
        if previous_state is None:
            raise RuntimeError("a partition warm-starts from the one before it, but none was trained before it")
        model.load_state_dict(previous_state)
        shrink_corrections(model, shrink)
    elif warm_start:
        _warm_start(model, warm_start, shrink)
    return model


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train the ranking model of each partition in ``config["partitions"]``, in order, on this worker's shards.

    Each partition names its dataset, its epochs and where it warm-starts from: nothing,
    a model file, or :data:`FROM_PREVIOUS` for the model the partition before it ends
    with, kept in memory. Every partition starts with a new optimizer, as a run of its
    own would. Resumes from Ray Train's latest checkpoint when a worker group restarts.
    After each epoch reports the partition, the mean loss over all workers and the
    samples per second, with a checkpoint of the model.
    """
    torch.set_num_threads(int(config["cpus_per_worker"]))
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    partitions: list[dict[str, Any]] = config["partitions"]
    learning_rate = float(config["learning_rate"])

    first_index, first_epoch = 0, 0
    resumed: dict[str, Any] | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resumed = torch.load(os.path.join(folder, CHECKPOINT_FILE), weights_only=True)
        first_index, first_epoch = int(resumed["partition_index"]), int(resumed["epoch"]) + 1
        if rank == 0:
            logger.info(
                "Resuming %s from the checkpoint of epoch %d", partitions[first_index]["partition"], first_epoch
            )

    previous_state: dict[str, Any] | None = None
    for index in range(first_index, len(partitions)):
        partition = partitions[index]
        epochs = int(partition["epochs"])
        torch.manual_seed(int(config["seed"]))
        epoch_losses: list[float] = []
        training_s = 0.0
        if resumed is not None and first_epoch >= epochs:
            # The checkpoint contains the end of this partition, so the next one starts from it.
            previous_state, resumed = resumed["model"], None
            continue
        start_epoch = 0
        if resumed is None:
            model = _new_model(config, partition.get("warm_start"), previous_state)
            optimizer = make_optimizer(model, learning_rate=learning_rate)
        else:
            model = RankingModel(ModelConfig.from_dict(config["model_config"]))
            model.load_state_dict(resumed["model"])
            optimizer = make_optimizer(model, learning_rate=learning_rate)
            optimizer.load_state_dict(resumed["optimizer"])
            epoch_losses = [float(loss) for loss in resumed["epoch_losses"]]
            training_s = float(resumed["training_s"])
            start_epoch, resumed = first_epoch, None
        previous_state = _train_partition(
            config,
            model=ray.train.torch.prepare_model(model),
            optimizer=optimizer,
            partition=partition,
            index=index,
            start_epoch=start_epoch,
            epoch_losses=epoch_losses,
            training_s=training_s,
            device=device,
        )


def _train_partition(
    config: dict[str, Any],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    partition: dict[str, Any],
    index: int,
    start_epoch: int,
    epoch_losses: list[float],
    training_s: float,
    device: torch.device,
) -> dict[str, Any]:
    """Train one partition's epochs from ``start_epoch`` and return the model's final state."""
    context = ray.train.get_context()
    rank = context.get_world_rank()
    shard = ray.train.get_dataset_shard(worker_dataset_name(partition["dataset"], rank))
    batch_size = int(config["batch_size"])
    cache = _ShardCache(max_bytes=int(config.get("shard_cache_bytes", SHARD_CACHE_BYTES)))
    epochs = int(partition["epochs"])
    unwrapped = model.module if hasattr(model, "module") else model

    for epoch in range(start_epoch, epochs):
        model.train()
        started = time.perf_counter()
        loss_sum = 0.0
        samples = 0
        for tensors in cache.batches(shard, batch_size=batch_size, seed=int(config["seed"]) + epoch, device=device):
            rows = len(tensors[LABEL_COLUMN])
            loss_sum += train_step(model, optimizer, tensors) * rows
            if samples == 0 and epoch == start_epoch and rank == 0:
                # Wall-clock time, so that a submitter on the same machine can measure time to first step.
                logger.info("First training step done at %.3f (Unix time)", time.time())
            samples += rows
        elapsed = time.perf_counter() - started

        total_loss, total_samples = all_reduce([loss_sum, float(samples)], "SUM", device)
        # The epoch lasts as long as its slowest worker.
        (slowest,) = all_reduce([elapsed], "MAX", device)
        mean_loss = total_loss / total_samples if total_samples else float("nan")
        samples_per_s = total_samples / max(slowest, 1e-9)
        epoch_losses.append(mean_loss)
        training_s += slowest
        metrics = {
            "partition": partition["partition"],
            "partition_index": index,
            "epoch": epoch + 1,
            "loss": mean_loss,
            "epoch_losses": list(epoch_losses),
            "samples": int(total_samples),
            "samples_per_s": samples_per_s,
            "training_s": training_s,
        }

        with tempfile.TemporaryDirectory() as folder:
            saved = None
            if rank == 0:
                state = {
                    "model": unwrapped.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "partition_index": index,
                    "epoch": epoch,
                    "epoch_losses": epoch_losses,
                    "training_s": training_s,
                }
                torch.save(state, os.path.join(folder, CHECKPOINT_FILE))
                saved = ray.train.Checkpoint.from_directory(folder)
                logger.info(
                    "Epoch %d/%d%s: loss %.4f, %d samples, %.0f samples/s",
                    epoch + 1,
                    epochs,
                    f" of {partition['partition']}" if partition["partition"] else "",
                    mean_loss,
                    int(total_samples),
                    samples_per_s,
                )
            ray.train.report(metrics, checkpoint=saved)
    return {name: tensor.detach().clone() for name, tensor in unwrapped.state_dict().items()}
