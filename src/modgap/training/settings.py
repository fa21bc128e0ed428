"""The run settings every training recipe has (torch-free: the CLI builds options from them).

A recipe's settings dataclass inherits :class:`RunSettings`; its own fields (data, model, optimisation)
come after these in ``--help``.
"""

from __future__ import annotations

import dataclasses

from modgap.files import setting

# Settings that may change between a run and its resumption without changing what it computes.
RESUMABLE_CHANGES = {"resume", "stop_after", "save_every", "keep_checkpoints", "log_every", "report_to", "overwrite"}


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
