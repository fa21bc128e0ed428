"""The run and optimisation settings every training recipe has (torch-free: the CLI builds options from them).

A recipe's settings dataclass inherits :class:`RunSettings`; its own fields (data, model, losses) come first
in ``--help``. A recipe whose default differs (the embedder's batch size, the learning rate of a stage)
restates only that default, with :func:`modgap.files.setting_like`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from modgap.errors import ModgapError
from modgap.files import setting
from modgap.training.run import INPUTS_KEY

# Settings that may change between a run and its resumption without changing what it computes.
# The input fingerprints are compared by the run-directory guard itself (it names the input that changed).
RESUMABLE_CHANGES = {
    "resume",
    "stop_after",
    "save_every",
    "keep_checkpoints",
    "log_every",
    "report_to",
    "overwrite",
    INPUTS_KEY,
}


@dataclasses.dataclass
class RunSettings:
    out: str | None = setting(None, "Run directory (the model in OUT/model).")
    mixed_precision: str = setting("auto", "auto (bf16 on GPU) | no | bf16 | fp16.")
    gradient_checkpointing: bool = setting(False, "Recompute activations to save memory.")
    save_every: int = setting(0, "Checkpoint every N optimizer steps (0: at the end).")
    keep_checkpoints: int = setting(2, "Checkpoints kept.")
    resume: bool = setting(False, "Continue from the latest checkpoint in --out.")
    overwrite: bool = setting(False, "Start over if --out exists.")
    stop_after: int | None = setting(None, "Stop after N optimizer steps (checkpointed; --resume continues).")
    log_every: int = setting(10, "Log to the tracker every N steps.")
    report_to: str = setting("tensorboard", "tensorboard | wandb | none.")
    online: bool = setting(False, "Allow Hub downloads.")
    trust_remote_code: bool = setting(False, "Run model code shipped with the checkpoint.")
    on_bad: str = setting(
        "error", "NaN/Inf/zero embeddings: 'error' stops, 'skip' leaves their samples out (bad_rows.jsonl)."
    )
    # -- optimisation (a recipe restates only a different default, with files.setting_like) --------
    epochs: int = setting(1, "Passes over the data.")
    max_steps: int | None = setting(None, "Optimizer steps (overrides --epochs).")
    batch_size: int = setting(8, "Samples per process per micro-batch.")
    lr: float | None = setting(None, "Learning rate.")
    weight_decay: float = setting(0.0, "AdamW weight decay.")
    warmup_ratio: float = setting(0.03, "Fraction of steps of linear warm-up.")
    max_grad_norm: float = setting(1.0, "Gradient clipping (0: off).")
    seed: int = setting(0, "Seed of the data order, of a fresh model's initialisation and of train-time noise.")
    lora_r: int = setting(16, "LoRA rank.")
    lora_alpha: int = setting(32, "LoRA alpha.")
    lora_dropout: float = setting(0.05, "LoRA dropout.")

    may_be_negative: ClassVar[tuple[str, ...]] = ()  # float settings allowed below 0 (every other one is not)

    def check_run_settings(self) -> None:
        """The checks every recipe's settings share (its ``__post_init__`` calls this)."""
        if not self.out:
            raise ModgapError("--out is required")
        self.out = str(self.out)
        if self.on_bad not in ("error", "skip"):
            raise ModgapError(f"--on-bad must be 'error' or 'skip', got {self.on_bad!r}")
        for name in ("save_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ModgapError(f"--{name.replace('_', '-')} must not be negative")
        for name in ("stop_after", "max_steps"):
            value = getattr(self, name, None)
            if value is not None and value < 1:
                raise ModgapError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        for name in ("log_every", "epochs", "batch_size", "lora_r"):
            if getattr(self, name) < 1:
                raise ModgapError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr is not None and self.lr <= 0:
            raise ModgapError(f"--lr must be positive, got {self.lr}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ModgapError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
            if isinstance(value, float) and value < 0 and f.name not in self.may_be_negative:
                raise ModgapError(f"--{f.name.replace('_', '-')} must not be negative, got {value}")
