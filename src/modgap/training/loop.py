"""The one training loop every recipe runs: optimisation set-up, resume, the (seed, epoch) batch order, the
step loop with progress, tracking and checkpoints, and the end of the run.

A recipe (``modgap.mllm.train``, ``modgap.embedder.train``) builds its model and data, then hands the loop a
*step function*: ``step(model, indices, step, micro)`` runs forward and backward through ``model`` (the
engine's wrapper) on the samples ``indices`` of one micro-batch and returns ``(loss, count)`` — the detached
loss and how many units (tokens, samples) it processed. The loop owns everything else, so what is true of
one recipe (exact resume, a NaN loss stopping the run, checkpoints at step boundaries) is true of every one.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from modgap.progress import ProgressFactory, silent
from modgap.training.checkpoint import register_trainable_checkpointing, resume_checkpoint, save_checkpoint
from modgap.training.engine import check_finite_loss, epoch_batches, finish_run, steps_per_epoch, tracker_config
from modgap.training.settings import RunSettings

StepFn = Callable[[Any, Sequence[int], int, int], tuple[torch.Tensor, torch.Tensor | int]]


@dataclasses.dataclass
class LoopResult:
    model_dir: Path
    steps: int
    final_loss: float
    losses: list[float]  # the global loss of every step taken by this call
    per_second: float  # units (``count``) per second over the steps taken by this call
    stopped_early: bool
    seconds: float  # wall time of those steps
    model: Any = None  # the trained model in memory (unwrapped from the engine)


def optimizer_and_schedule(
    groups: Iterable[dict[str, Any]], cfg: Any, total_steps: int
) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over parameter ``groups`` and a cosine schedule with linear warm-up (``cfg.warmup_ratio``)."""
    from transformers import get_cosine_schedule_with_warmup

    optimizer = torch.optim.AdamW(list(groups), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)


def run_loop(
    accelerator: Any,
    model: torch.nn.Module,
    groups: Iterable[dict[str, Any]],
    cfg: RunSettings,
    step_fn: StepFn,
    *,
    samples: int,
    settings: dict[str, Any],
    created_by: dict[str, Any],
    model_dir: Path,
    label: str,
    unit: str,
    grad_accum: int = 1,
    progress: ProgressFactory = silent,
) -> LoopResult:
    """Train ``model`` (not yet prepared) on ``samples`` samples with ``step_fn``; see the module docstring.

    ``cfg`` holds the run settings (``out``, checkpoints, resume, trackers) and the optimisation ones
    (``batch_size``, ``epochs``/``max_steps``, ``lr``, ``weight_decay``, ``warmup_ratio``, ``max_grad_norm``,
    ``seed``). ``unit`` names what ``step_fn`` counts ("tok", "samples"); it is checkpointed, so a resumed
    run reports the same totals. The model directory is written when the last step is taken.
    """
    out = Path(cfg.out)  # type: ignore[arg-type]
    world, rank = accelerator.num_processes, accelerator.process_index
    batch_size, seed = cfg.batch_size, cfg.seed  # type: ignore[attr-defined]
    per_epoch = steps_per_epoch(samples, batch_size, world, grad_accum)
    total_steps = cfg.max_steps or cfg.epochs * per_epoch  # type: ignore[attr-defined]

    optimizer, scheduler = optimizer_and_schedule(groups, cfg, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    # The scheduler is stepped here once per optimizer step (Accelerate's wrapper would step it once per
    # process); it is checkpointed with the rest.
    accelerator.register_for_checkpointing(scheduler)
    register_trainable_checkpointing(accelerator)

    step, seen = 0, 0
    if cfg.resume and (found := resume_checkpoint(accelerator, out)):
        step, seen = found[0], int(found[1].get(unit, 0))
    log_with = cfg.report_to != "none"
    if log_with:
        accelerator.init_trackers(label, config=tracker_config(settings))
    main = accelerator.is_main_process
    progress = progress if main else silent

    losses: list[float] = []
    stop_at = min(total_steps, cfg.stop_after) if cfg.stop_after is not None else total_steps
    max_grad_norm = cfg.max_grad_norm  # type: ignore[attr-defined]
    model.train()
    started, seen_at_start, last_loss = time.perf_counter(), seen, float("nan")
    with progress(label, total_steps, step) as advance:
        while step < stop_at:
            epoch = step // per_epoch
            batches = epoch_batches(samples, batch_size, world, rank, seed=seed, epoch=epoch)
            for in_epoch in range(step % per_epoch, per_epoch):
                step_loss = torch.zeros((), device=accelerator.device)
                step_count = torch.zeros((), dtype=torch.long, device=accelerator.device)
                for micro in range(grad_accum):
                    with accelerator.accumulate(model):
                        loss, count = step_fn(model, batches[in_epoch * grad_accum + micro], step, micro)
                        if accelerator.sync_gradients and max_grad_norm:
                            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
                        optimizer.step()
                        optimizer.zero_grad()
                    step_loss += loss.to(step_loss.device) / grad_accum
                    step_count += count
                scheduler.step()
                step += 1
                last_loss = accelerator.reduce(step_loss, "mean").item()
                check_finite_loss(last_loss, step)
                seen += int(accelerator.reduce(step_count, "sum").item())
                losses.append(last_loss)
                if log_with and (step % cfg.log_every == 0 or step == stop_at):
                    accelerator.log({"loss": last_loss, "lr": scheduler.get_last_lr()[0], unit: seen}, step=step)
                rate = (seen - seen_at_start) / max(time.perf_counter() - started, 1e-9)
                advance(1, f"loss {last_loss:.4f} · {rate:,.1f} {unit}/s")
                if (cfg.save_every and step % cfg.save_every == 0) or step == stop_at:
                    save_checkpoint(accelerator, out, step, cfg.keep_checkpoints, epoch=epoch, **{unit: seen})
                if step >= stop_at:
                    break
    elapsed = time.perf_counter() - started
    stopped_early = step < total_steps
    created_by = {"command": " ".join(sys.argv), **created_by, "steps": step}
    finish_run(accelerator, model, model_dir, save=not stopped_early, created_by=created_by)
    rate = (seen - seen_at_start) / elapsed if elapsed > 0 else 0.0
    return LoopResult(model_dir, step, last_loss, losses, rate, stopped_early, elapsed, accelerator.unwrap_model(model))
