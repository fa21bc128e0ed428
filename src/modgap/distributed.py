"""torch.distributed set-up for commands launched with ``torchrun`` or ``accelerate launch``.

torch is imported on first use: a single-process command that only needs :func:`rank_slice` (synthesis
shards, NumPy paths) never pays for it.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def _group_exists() -> bool:
    # Without torch loaded there can be no process group, and nothing needs importing it to know.
    return "torch" in sys.modules and _dist().is_available() and _dist().is_initialized()


def init_from_env() -> tuple[int, int]:
    """Join the process group described by torchrun's environment variables, if any.

    Returns (rank, world_size); (0, 1) for a plain single-process run. gloo on CPU, nccl on GPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch

    dist = _dist()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes of the initialised group; (0, 1) without one."""
    if _group_exists():
        return _dist().get_rank(), _dist().get_world_size()
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
    if _group_exists():
        _dist().barrier()


def shutdown() -> None:
    if _group_exists():
        _dist().destroy_process_group()


# -- collectives that keep gradients (the in-batch negatives of contrastive losses) ------------------
def gather_keep_grad(x: Any, world: int) -> Any:
    """Every process's ``x`` concatenated in rank order; this process's part keeps its gradient."""
    if world == 1:
        return x
    import torch

    dist = _dist()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def average_gradients(model: Any, world: int, bucket: int = 2**24) -> None:
    """What DDP's reducer does, once: every trainable gradient averaged over processes (missing ones as 0),
    all-reduced in buckets of about ``bucket`` elements (memory for one bucket, few collectives)."""
    import torch

    dist = _dist()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    groups: list[list[torch.Tensor]] = [[]]
    size = 0
    for p in params:
        if size and size + p.numel() > bucket:
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += p.numel()
    for group in groups:
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat)
        flat /= world
        at = 0
        for p in group:
            p.grad.copy_(flat[at : at + p.numel()].view_as(p))
            at += p.numel()
