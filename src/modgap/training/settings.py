"""The run settings every training recipe has (torch-free: the CLI builds options from them).

A recipe's settings dataclass inherits :class:`RunSettings`; its own fields (data, model, optimisation)
come after these in ``--help``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from modgap.errors import ModgapError
from modgap.files import setting

# Settings that may change between a run and its resumption without changing what it computes.
# input_fingerprints is compared by the run-directory guard itself (it names the input whose content changed).
RESUMABLE_CHANGES = {
    "resume",
    "stop_after",
    "save_every",
    "keep_checkpoints",
    "log_every",
    "report_to",
    "overwrite",
    "input_fingerprints",
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
        if self.log_every < 1:
            raise ModgapError("--log-every must be at least 1")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ModgapError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
            if isinstance(value, float) and value < 0 and f.name not in self.may_be_negative:
                raise ModgapError(f"--{f.name.replace('_', '-')} must not be negative, got {value}")
