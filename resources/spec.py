"""A Ray cluster request in high-level terms, validated before anything starts."""

from __future__ import annotations

import re
from dataclasses import dataclass

from resources.errors import InvalidRequestError

# Ray rejects an object store below 75 MiB (ray_constants.OBJECT_STORE_MINIMUM_MEMORY_BYTES).
MIN_OBJECT_STORE_BYTES = 75 * 1024**2
# Ray 2.60 accepts any `memory` value for a node, but reserves at least 500 MiB for its own
# processes when resource isolation is on (ray_constants.DEFAULT_MIN_SYSTEM_RESERVED_MEMORY_BYTES),
# so a smaller node leaves nothing for tasks. This is the smallest node the platform starts.
MIN_NODE_MEMORY_BYTES = 512 * 1024**2
# Logical memory of a head that runs on this machine (the local backend). The head runs job
# drivers, Ray Train's controller and Ray Data's coordinators, which request no memory. The
# smallest node size keeps tasks that request more memory on the workers.
LOCAL_HEAD_MEMORY_BYTES = MIN_NODE_MEMORY_BYTES
MAX_WORKERS = 256

_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?|[kmgt]i?)?\s*[Bb]?\s*$")
_UNITS = {
    "": 1,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}


def parse_memory(value: str | int, *, field: str) -> int:
    """Parse a memory size such as ``512Mi``, ``2Gi``, ``1.5G`` or ``1073741824`` into bytes.

    Units follow Kubernetes quantities: ``Ki``/``Mi``/``Gi``/``Ti`` are powers of 1024,
    ``K``/``M``/``G``/``T`` powers of 1000, and a bare number is bytes.

    Raises:
        InvalidRequestError: the value does not parse or is not positive.
    """
    if isinstance(value, bool):
        raise InvalidRequestError(field, f"expected a memory size, got {value!r}", "Use a size such as '2Gi'.")
    if isinstance(value, int):
        size = value
    else:
        match = _QUANTITY.match(str(value))
        unit = match.group(2) if match else None
        if match is None or (unit or "") not in _UNITS:
            raise InvalidRequestError(
                field,
                f"{value!r} is not a memory size",
                "Use a number with a unit such as '512Mi', '2Gi' or '4G'.",
            )
        size = int(float(match.group(1)) * _UNITS[unit or ""])
    if size <= 0:
        raise InvalidRequestError(field, f"must be positive, got {value!r}", "Use a size such as '2Gi'.")
    return size


_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?")


def parse_duration_minutes(value: str, *, field: str) -> int:
    """Parse a lifetime such as ``8h``, ``90m``, ``1h30m`` or ``2d`` into whole minutes.

    Raises:
        InvalidRequestError: the value does not parse or is not at least one minute.
    """
    text = str(value).strip().lower()
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        problem = f"{value!r} is not a duration"
        if text.startswith("-"):
            problem = f"must be positive, got {value!r}"
        elif text.isdigit():
            problem = f"{value!r} has no unit"
        elif text.endswith("s") and text[:-1].isdigit():
            problem = f"{value!r} is in seconds, and the smallest unit is a minute"
        raise InvalidRequestError(field, problem, "Use days, hours and minutes such as '8h', '90m' or '1d12h'.")
    days, hours, minutes = (int(part) if part else 0 for part in match.groups())
    total = (days * 24 + hours) * 60 + minutes
    if total < 1:
        raise InvalidRequestError(field, f"must be at least 1 minute, got {value!r}", "Use a lifetime such as '8h'.")
    return total


def format_size(size: float) -> str:
    """Format a byte count for people, rounded to one decimal: ``512Mi``, ``1.5Gi``, ``24Gi``."""
    for unit in ("Ti", "Gi", "Mi", "Ki"):
        if abs(size) >= _UNITS[unit]:
            value = size / _UNITS[unit]
            return f"{value:.1f}".rstrip("0").rstrip(".") + unit
    return f"{int(size)}"


def format_duration(seconds: float) -> str:
    """Format seconds for a table: ``45s``, ``12m``, ``3h05m``, ``2d04h``; negative values with a minus sign."""
    sign = "-" if seconds < 0 else ""
    seconds = abs(int(seconds))
    if seconds < 60:
        return f"{sign}{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{sign}{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{sign}{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{sign}{days}d{hours:02d}h"


def check_node_memory(size: int, *, field: str) -> None:
    """Raise ``InvalidRequestError`` naming ``field`` when ``size`` bytes are too little memory for a Ray node."""
    if size < MIN_NODE_MEMORY_BYTES:
        minimum = format_memory(MIN_NODE_MEMORY_BYTES)
        size_text = f"{size} bytes" if size < 1024 else f"{format_size(size)} ({size} bytes)"
        raise InvalidRequestError(
            field,
            f"{size_text} is below the minimum of {minimum} for a Ray node",
            f"Use at least '{minimum}'. A number without a unit is bytes: write '2Gi' for 2 GiB.",
        )


def format_memory(size: int) -> str:
    """Format a byte count with the largest binary unit that divides it, such as ``2Gi``."""
    for unit in ("Ti", "Gi", "Mi", "Ki"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


def _is_count(value: object) -> bool:
    # bool is a subclass of int, but `workers: true` in a config is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ClusterSpec:
    """The shape of one Ray cluster: a head plus identical workers.

    Memory values are bytes. ``memory_per_worker`` becomes Ray's logical ``memory``
    resource of each worker node, which schedules tasks and actors; it is not a
    hard limit on a local machine.
    """

    workers: int
    cpus_per_worker: int
    memory_per_worker: int
    gpus_per_worker: int = 0
    object_store_memory: int = 256 * 1024**2
    head_cpus: int = 1

    @property
    def total_memory(self) -> int:
        """Memory in bytes that the cluster takes on one machine: workers, the head and one object store per node."""
        return (
            self.workers * (self.memory_per_worker + self.object_store_memory)
            + LOCAL_HEAD_MEMORY_BYTES
            + self.object_store_memory
        )

    def validate(
        self,
        *,
        available_memory: int | None = None,
        available_gpus: int | None = None,
        available_cpus: int | None = None,
    ) -> None:
        """Check every field; ``available_*`` are the host's limits, or ``None`` to skip that check.

        Raises:
            InvalidRequestError: naming the first invalid field and how to fix it.
        """
        if not _is_count(self.workers) or self.workers < 1:
            raise InvalidRequestError(
                "workers", f"must be at least 1, got {self.workers!r}", "Ask for 1 or more workers."
            )
        if self.workers > MAX_WORKERS:
            raise InvalidRequestError(
                "workers",
                f"{self.workers} is above the maximum of {MAX_WORKERS}",
                f"Ask for at most {MAX_WORKERS} workers.",
            )
        if not _is_count(self.cpus_per_worker) or self.cpus_per_worker < 1:
            raise InvalidRequestError(
                "cpus_per_worker",
                f"must be a whole number of at least 1, got {self.cpus_per_worker!r}",
                "Ask for 1 or more CPUs per worker.",
            )
        if not _is_count(self.head_cpus) or self.head_cpus < 0:
            raise InvalidRequestError(
                "head_cpus", f"must be 0 or more, got {self.head_cpus!r}", "Use 1 so Ray Data has a CPU on the head."
            )
        if not _is_count(self.gpus_per_worker) or self.gpus_per_worker < 0:
            raise InvalidRequestError(
                "gpus_per_worker", f"must be 0 or more, got {self.gpus_per_worker!r}", "Use 0 for CPU training."
            )
        if self.memory_per_worker <= 0:
            raise InvalidRequestError(
                "memory_per_worker",
                f"must be positive, got {self.memory_per_worker} bytes",
                "Use a size such as '2Gi'.",
            )
        check_node_memory(self.memory_per_worker, field="memory_per_worker")
        if self.object_store_memory < MIN_OBJECT_STORE_BYTES:
            raise InvalidRequestError(
                "object_store_memory",
                f"{format_memory(self.object_store_memory)} is below Ray's minimum of 75Mi",
                "Use 75Mi or more, such as '128Mi'.",
            )
        if available_memory is not None and self.total_memory > available_memory:
            raise InvalidRequestError(
                "memory_per_worker",
                f"{self.workers} workers x ({format_memory(self.memory_per_worker)} + "
                f"{format_memory(self.object_store_memory)} object store) and the head "
                f"({format_memory(LOCAL_HEAD_MEMORY_BYTES)} + {format_memory(self.object_store_memory)}) "
                f"need {self.total_memory / 1024**3:.1f} GiB but this machine has "
                f"{available_memory / 1024**3:.1f} GiB",
                "Lower `workers`, `memory_per_worker` or `object_store_memory`.",
            )
        if available_cpus is not None:
            self._check_cpus(available_cpus)
        if available_gpus is not None and self.workers * self.gpus_per_worker > available_gpus:
            raise InvalidRequestError(
                "gpus_per_worker",
                f"{self.workers} workers x {self.gpus_per_worker} GPUs need "
                f"{self.workers * self.gpus_per_worker} GPUs but this machine has {available_gpus}"
                " (GPUs that nvidia-smi lists and CUDA_VISIBLE_DEVICES leaves visible)",
                "Set gpus_per_worker to 0, list more devices in CUDA_VISIBLE_DEVICES, or run on a backend with GPUs.",
            )

    def _check_cpus(self, available_cpus: int) -> None:
        # Ray's CPU counts are logical, so the workers together may ask for more CPUs than the
        # machine has. One node asking for more than the whole machine is a typo.
        for field, cpus in (("cpus_per_worker", self.cpus_per_worker), ("head_cpus", self.head_cpus)):
            if cpus > available_cpus:
                raise InvalidRequestError(
                    field,
                    f"{cpus} CPUs for one node is more than this machine's {available_cpus} CPUs",
                    f"Ask for at most {available_cpus}, or run on the kuberay backend.",
                )
