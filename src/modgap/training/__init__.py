"""The training engine every recipe shares: run directories, checkpoints, the Accelerate set-up, data order,
the run settings every recipe has, LoRA.

Recipes (``modgap.mllm.train``, ``modgap.embedder.train``) build their model and data and hand one step
function to :func:`~modgap.training.loop.run_loop`, the loop they share; there is no trainer class to
subclass. Names are imported on first use, so that ``modgap.training.settings`` (the shared settings, which
the CLI reads) loads without torch.
"""

from modgap.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "CHECKPOINTS": "checkpoint",
        "STATE_FILE": "checkpoint",
        "latest_checkpoint": "checkpoint",
        "list_checkpoints": "checkpoint",
        "load_checkpoint": "checkpoint",
        "register_trainable_checkpointing": "checkpoint",
        "resume_checkpoint": "checkpoint",
        "damaged_files": "checkpoint",
        "save_checkpoint": "checkpoint",
        "BAD_ROWS_FILE": "engine",
        "check_finite_loss": "engine",
        "epoch_batches": "engine",
        "finish_run": "engine",
        "start_run": "engine",
        "full_state_dict": "engine",
        "is_sharded": "engine",
        "make_accelerator": "engine",
        "resolve_mixed_precision": "engine",
        "step_generator": "engine",
        "steps_per_epoch": "engine",
        "tracker_config": "engine",
        "train_lora": "lora",
        "LoopResult": "loop",
        "optimizer_and_schedule": "loop",
        "run_loop": "loop",
        "check_run_dir": "run",
        "claim_run_dir": "run",
        "clear_run_dir": "run",
        "record_settings": "run",
        "settings_changes": "run",
        "RESUMABLE_CHANGES": "settings",
        "RunSettings": "settings",
    },
)
