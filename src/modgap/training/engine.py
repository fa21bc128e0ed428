"""The Accelerate set-up every recipe shares, and the pieces of a loop that must agree across processes.

* :func:`start_run` / :func:`finish_run`: the opening and the close every recipe shares (run-directory
  guard, Accelerator, seeds; the gathered final save, trackers closed).
* :func:`make_accelerator`: one call for CPU, one GPU, DDP, FSDP and DeepSpeed (the launcher's config
  decides); on a machine without a GPU, Accelerate is told it is on CPU, the only way it joins a
  ``torchrun``/``accelerate launch`` gloo process group there.
* :func:`full_state_dict`: the gather step that sharded engines (DeepSpeed ZeRO-3, FSDP) need before a
  final save; a collective, so every process calls it.
* :func:`epoch_batches`: the data order, a function of (seed, epoch) only, which is what makes a resumed
  run take exactly the steps of an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from modgap.errors import ModgapError
from modgap.files import content_fingerprint
from modgap.training.run import INPUTS_KEY, check_run_dir, clear_run_dir
from modgap.training.settings import RESUMABLE_CHANGES, RunSettings

# peft and Accelerate ask transformers 5 for a renamed attribute in every run; the notice is theirs to act on
# and would precede every one-line message of ours.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def resolve_mixed_precision(setting: str) -> str:
    """``auto``: bf16 on GPU, none on CPU (half-precision matmuls are far slower there)."""
    if setting == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    if setting not in ("no", "bf16", "fp16"):
        raise ModgapError(f"--mixed-precision must be auto, no, bf16 or fp16, got {setting!r}")
    return setting


def make_accelerator(
    out: str | os.PathLike, *, grad_accum: int = 1, mixed_precision: str = "auto", report_to: str = "none"
) -> Any:
    """An ``Accelerator`` logging to ``OUT/logs`` (``report_to``: tensorboard, wandb or none)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    if report_to not in ("tensorboard", "wandb", "none"):
        raise ModgapError(f"--report-to must be tensorboard, wandb or none, got {report_to!r}")
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=grad_accum,
        mixed_precision=resolve_mixed_precision(mixed_precision),
        log_with=None if report_to == "none" else report_to,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=os.path.join(str(out), "logs")),
    )
    check_engine(accelerator)
    return accelerator


def check_engine(accelerator: Any) -> None:
    """Refuse the set-ups Accelerate would run silently as something else: FSDP or DeepSpeed asked for (by an
    ``accelerate launch`` config) on a machine where Accelerate falls back to plain DDP (CPU only: measured
    with torch 2.13 and accelerate 1.x, the FSDP plugin is ignored under ``cpu=True``), and several launched
    processes that each train alone."""
    from accelerate.utils import DistributedType

    flag = {"FSDP": "ACCELERATE_USE_FSDP", "DeepSpeed": "ACCELERATE_USE_DEEPSPEED"}
    wanted = {DistributedType.FSDP: "FSDP", DistributedType.DEEPSPEED: "DeepSpeed"}
    for kind, name in wanted.items():
        if os.environ.get(flag[name], "").lower() in ("1", "true") and accelerator.distributed_type != kind:
            raise ModgapError(
                f"{name} was asked for, but Accelerate set up {accelerator.distributed_type.value} on this machine "
                f"(on CPU it runs {name} as plain data parallelism, unsharded); use a GPU machine for {name}, or "
                "configs/accelerate/cpu-2proc.yaml / torchrun for CPU processes"
            )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        raise ModgapError(
            f"{launched} processes were launched but Accelerate joined {accelerator.num_processes}: each would "
            "train alone on its own share"
        )


def is_sharded(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


def full_state_dict(accelerator: Any, model: Any) -> dict[str, torch.Tensor] | None:
    """The gathered full state of a sharded model (every process must call this), or None when the
    module's own parameters are complete (no sharding)."""
    return accelerator.get_state_dict(model) if is_sharded(accelerator) else None


def epoch_batches(
    n: int, batch_size: int, world_size: int, rank: int, *, seed: int, epoch: int, shuffle: bool = True
) -> list[list[int]]:
    """This rank's micro-batches for one epoch: a permutation fixed by (seed, epoch), cut into global
    batches of ``batch_size * world_size`` (the last partial one dropped), each split across ranks."""
    if shuffle:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    step = batch_size * world_size
    return [order[b + rank * batch_size : b + (rank + 1) * batch_size] for b in range(0, n - step + 1, step)]


def steps_per_epoch(n: int, batch_size: int, world_size: int, grad_accum: int) -> int:
    """Optimizer steps in one epoch of :func:`epoch_batches`; an error if the data cannot fill one."""
    steps = (n // (batch_size * world_size)) // grad_accum
    if steps == 0:
        raise ModgapError(
            f"{n} samples are fewer than one optimizer step needs "
            f"(batch {batch_size} x {world_size} processes x {grad_accum} accumulation)"
        )
    return steps


BAD_ROWS_FILE = "bad_rows.jsonl"  # the samples --on-bad skip left out, in the run directory


def check_finite_loss(loss: float, step: int) -> None:
    """A NaN/Inf loss ends the run with an error before any model is written (every process sees the same
    reduced loss, so all stop together); checkpoints already written stay."""
    if not math.isfinite(loss):
        raise ModgapError(
            f"step {step}: the loss is {loss} (not finite); stopped, no model written. "
            "Check the embeddings and lower --lr; --resume continues from the last checkpoint"
        )


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """A generator that is a function of (seed, step, micro-batch, rank): resumed runs draw the same noise."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1009 + micro) * 131 + rank)


def tracker_config(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as the trackers accept them (scalars; anything else as a string)."""
    return {k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in settings.items()}


def start_run(
    cfg: RunSettings,
    settings: dict[str, Any],
    settings_file: str,
    *,
    seed: int,
    grad_accum: int = 1,
    inputs: Sequence[str | os.PathLike | None] = (),
) -> Any:
    """Open a run: the run-directory guard (a resume may change only :data:`RESUMABLE_CHANGES`; ``--overwrite``
    replaces only a run directory holding none of ``inputs``), the Accelerator, ``--overwrite`` clearing the
    directory (main process; everyone waits), the seeds."""
    from accelerate.utils import set_seed

    out = Path(cfg.out)  # type: ignore[arg-type]
    settings[INPUTS_KEY] = {str(p): content_fingerprint(p) for p in inputs if p is not None and Path(p).exists()}
    check_run_dir(
        out,
        settings,
        resume=cfg.resume,
        overwrite=cfg.overwrite,
        may_change=RESUMABLE_CHANGES,
        settings_file=settings_file,
        inputs=inputs,
    )
    accelerator = make_accelerator(
        out, grad_accum=grad_accum, mixed_precision=cfg.mixed_precision, report_to=cfg.report_to
    )
    if accelerator.is_main_process and cfg.overwrite and not cfg.resume and out.exists():
        clear_run_dir(out)
    accelerator.wait_for_everyone()
    set_seed(seed)
    return accelerator


def finish_run(
    accelerator: Any, model: Any, model_dir: str | os.PathLike, *, save: bool, created_by: dict[str, Any]
) -> None:
    """Close a run: with ``save``, the full state is gathered (a collective: every process calls this) and the
    main process writes the model directory (``model.save(path, created_by=, state_dict=)``); trackers end."""
    accelerator.wait_for_everyone()
    if save:
        full_state = full_state_dict(accelerator, model)
        if accelerator.is_main_process:
            accelerator.unwrap_model(model).save(model_dir, created_by=created_by, state_dict=full_state)
    accelerator.wait_for_everyone()
    if accelerator.trackers:
        accelerator.end_training()
