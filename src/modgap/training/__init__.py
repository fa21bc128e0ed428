"""The training engine every recipe shares: run directories, checkpoints, the Accelerate set-up, data order.

Recipes (``modgap.mllm.train``, and the ones to come) stay linear files that call these functions; there is
no trainer class to subclass.
"""

from modgap.training.checkpoint import (
    CHECKPOINTS,
    STATE_FILE,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    register_trainable_checkpointing,
    save_checkpoint,
)
from modgap.training.engine import (
    epoch_batches,
    full_state_dict,
    is_sharded,
    make_accelerator,
    resolve_mixed_precision,
    step_generator,
    steps_per_epoch,
    tracker_config,
)
from modgap.training.run import check_run_dir, claim_run_dir, clear_run_dir, record_settings, settings_changes

__all__ = [
    "CHECKPOINTS",
    "STATE_FILE",
    "check_run_dir",
    "claim_run_dir",
    "clear_run_dir",
    "epoch_batches",
    "full_state_dict",
    "is_sharded",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "make_accelerator",
    "record_settings",
    "register_trainable_checkpointing",
    "resolve_mixed_precision",
    "save_checkpoint",
    "settings_changes",
    "step_generator",
    "steps_per_epoch",
    "tracker_config",
]
