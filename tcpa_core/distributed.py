"""Helpers for running training and evaluation under ``torchrun`` (DistributedDataParallel).

A single process (no ``torchrun``) is the world of size 1: every helper then does the trivial thing, so
the training loop has one code path. Under ``torchrun --nproc_per_node=N`` the process group is created
with ``nccl`` on GPUs and ``gloo`` on CPUs.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0: the process that writes checkpoints and logs."""
    return get_rank() == 0


def launched_by_torchrun() -> bool:
    """True when the environment says this process is one of several started by ``torchrun``."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def default_device() -> torch.device:
    """The device this process should use: its local GPU when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(backend: str | None = None) -> bool:
    """Join the process group that ``torchrun`` set up; a no-op in a plain single process.

    Returns True when running distributed. ``backend`` defaults to ``nccl`` with CUDA, ``gloo`` without.
    """
    if not launched_by_torchrun():
        return False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available()
        backend = backend or ("nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(default_device())
        dist.init_process_group(backend=backend)
    return is_distributed()


def cleanup_distributed() -> None:
    """Destroy the process group if this process created one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def _reduce_device() -> torch.device:
    if is_distributed() and dist.get_backend() == "nccl":
        return default_device()
    return torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a list of numbers over all processes (float64, so counts stay exact)."""
    if not is_distributed():
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


def all_gather_objects(obj: Any) -> list[Any]:
    """Collect one picklable object from every process, in rank order."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """The value of ``obj`` on rank ``src``, on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard_indices(num_samples: int, rank: int | None = None, world_size: int | None = None) -> range:
    """Pad-free shard of ``range(num_samples)`` for this rank (every index on exactly one rank)."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    return range(rank, num_samples, world_size)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed derived deterministically from ``parts`` (e.g. ``(seed, "epoch", 3, rank)``)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


__all__ = [
    "all_gather_objects", "all_reduce_sum", "barrier", "broadcast_object", "cleanup_distributed",
    "default_device", "derive_seed", "get_rank", "get_world_size", "init_distributed", "is_distributed",
    "is_main_process", "launched_by_torchrun", "shard_indices",
]
