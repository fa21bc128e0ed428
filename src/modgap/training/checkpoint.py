"""Checkpoints of Accelerate runs: trainable weights only, written whole or not at all, pruned to the newest.

``OUT/checkpoints/step-N`` holds what ``Accelerator.save_state`` writes (model, optimizer, scheduler, RNG
states of every process) plus ``trainer_state.json`` (step, epoch and any counters the recipe keeps). It is
written under a temporary name and renamed when every process has written its part, so a killed run
leaves either a complete checkpoint or none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from modgap.errors import ModgapError
from modgap.files import write_json
from modgap.training.run import CHECKPOINTS

STATE_FILE = "trainer_state.json"


def list_checkpoints(out: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``out`` as (step, path), oldest first."""
    found = []
    for p in (Path(out) / CHECKPOINTS).glob("step-*"):
        m = re.fullmatch(r"step-(\d+)", p.name)
        if m and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out: str | os.PathLike) -> tuple[int, Path] | None:
    found = list_checkpoints(out)
    return found[-1] if found else None


def register_trainable_checkpointing(accelerator: Any) -> None:
    """Checkpoint only the trainable parameters (a frozen 7B LLM is not copied into every checkpoint).

    DeepSpeed and FSDP keep their own sharded checkpoint formats.
    """
    from accelerate.utils import DistributedType
    from safetensors.torch import load_file

    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        return

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        for i, m in enumerate(models):
            if i < len(weights):
                weights[i] = {
                    n: p.detach().cpu() for n, p in accelerator.unwrap_model(m).named_parameters() if p.requires_grad
                }

    def load_hook(models: list, input_dir: str) -> None:
        while models:
            m = accelerator.unwrap_model(models.pop(0))
            state = load_file(os.path.join(input_dir, "model.safetensors"))
            result = m.load_state_dict(state, strict=False)
            trainable = {n for n, p in m.named_parameters() if p.requires_grad}
            missing = trainable & set(result.missing_keys)
            if missing or result.unexpected_keys:
                raise ModgapError(
                    f"{input_dir}: checkpoint does not match the model (missing {sorted(missing)[:5]}, "
                    f"unexpected {result.unexpected_keys[:5]})"
                )

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save_checkpoint(accelerator: Any, out: str | os.PathLike, step: int, keep: int, **state: Any) -> Path:
    """``accelerator.save_state`` into ``OUT/checkpoints/step-N`` (atomically), then keep the ``keep`` newest."""
    out = Path(out)
    final = out / CHECKPOINTS / f"step-{step}"
    tmp = out / CHECKPOINTS / f".tmp-step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / STATE_FILE, {"step": step, **state})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns its ``trainer_state.json``."""
    accelerator.load_state(str(path))
    return json.loads((Path(path) / STATE_FILE).read_text())


def damaged_files(path: str | os.PathLike) -> list[str]:
    """Files of a checkpoint that are cut short or corrupt: safetensors whose size disagrees with their
    header, torch zip archives that fail their CRC check, a trainer state that is not JSON."""
    import zipfile

    bad = []
    for f in sorted(Path(path).iterdir()):
        if not f.is_file():
            continue
        try:
            if f.suffix == ".safetensors":
                with open(f, "rb") as h:
                    size = int.from_bytes(h.read(8), "little")
                    header = json.loads(h.read(size))
                ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
                if f.stat().st_size != 8 + size + max(ends, default=0):
                    bad.append(f.name)
            elif f.suffix in (".bin", ".pt", ".pth", ".pkl"):
                with zipfile.ZipFile(f) as z:
                    if z.testzip() is not None:
                        bad.append(f.name)
            elif f.name == STATE_FILE:
                json.loads(f.read_text())
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError):
            bad.append(f.name)
    return bad


def resume_checkpoint(accelerator: Any, out: str | os.PathLike) -> tuple[int, dict[str, Any]] | None:
    """Restore the newest intact checkpoint of ``out``: (step, its trainer state), or None when there is none.
    A damaged checkpoint (a file cut short by a full disk or a copy) is named on stderr and skipped for the
    one before it; if every one is damaged, the run stops with the names of the damaged files."""
    import sys

    found = list_checkpoints(out)
    damaged: list[str] = []
    for step, path in reversed(found):
        broken = damaged_files(path)
        if broken:
            damaged.append(f"{path} ({', '.join(broken)})")
            if accelerator.is_main_process:
                print(f"checkpoint {path} is damaged ({', '.join(broken)}); trying the one before", file=sys.stderr)
            continue
        state = load_checkpoint(accelerator, path)
        if accelerator.is_main_process:
            print(f"resuming from {path} (step {step})", file=sys.stderr)
        return step, state
    if damaged:
        raise ModgapError(
            f"{out}: no intact checkpoint to resume from; damaged: {'; '.join(damaged)} (start over with --overwrite)"
        )
    return None
