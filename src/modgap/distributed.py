"""torch.distributed set-up for commands launched with ``torchrun`` or ``accelerate launch``."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env() -> tuple[int, int]:
    """Join the process group described by torchrun's environment variables, if any.

    Returns (rank, world_size); (0, 1) for a plain single-process run. gloo on CPU, nccl on GPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes of the initialised group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_slice(n: int, rank: int | None = None, world: int | None = None) -> tuple[int, int]:
    """The contiguous block [start, stop) of ``n`` items that ``rank`` of ``world`` takes (sizes differ by <= 1)."""
    if rank is None or world is None:
        rank, world = rank_and_world()
    return n * rank // world, n * (rank + 1) // world


def local_device(device: str) -> str:
    """``cuda`` means this process's own GPU under torchrun (``LOCAL_RANK``); other devices are kept."""
    if device == "cuda":
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
