"""``modgap train pretrain|sft``: the options are generated from :class:`~modgap.mllm.train.TrainConfig`.

A setting is written once, where the recipe reads it (see :mod:`modgap.cli.options`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from modgap.cli.common import quiet_transformers
from modgap.cli.options import report_training, settings_command
from modgap.progress import rich_progress

app = typer.Typer(
    help="Train a vision-language model (ReVision: pretrain on aligned text, then sft).", no_args_is_help=True
)

PRETRAIN_EXAMPLE = (
    "Example: modgap train pretrain --llm models/qwen2-0.5b-instruct --data captions.jsonl "
    "--embeddings stores/text --aligner aligners/realign --out runs/pretrain"
)
SFT_EXAMPLE = (
    "Example: accelerate launch --config_file configs/accelerate/ddp.yaml -m modgap.cli.main train sft "
    "--init runs/pretrain/model --data llava_instruct.json --embeddings stores/image --tune lora --out runs/sft"
)
SET_BY_COMMAND = ("stage",)  # fields the subcommand decides


def _command(stage: str) -> Any:
    from modgap.mllm.config import TrainConfig

    def run(given: dict[str, Any], config_file: Path | None) -> None:
        from modgap.files import load_dataclass
        from modgap.mllm.train import train

        quiet_transformers()
        cfg = load_dataclass(TrainConfig, config_file, given, stage=stage)
        result = train(cfg, progress=rich_progress(unit="steps"))
        report_training(result, cfg.out, f"{result.tokens_per_second:,.0f} tokens/s; model in {result.model_dir}")

    return settings_command(TrainConfig, SET_BY_COMMAND, run)


app.command(
    "pretrain", epilog=PRETRAIN_EXAMPLE, help="Stage 1: LLM frozen, projector learns to read aligned text embeddings."
)(_command("pretrain"))
app.command("sft", epilog=SFT_EXAMPLE, help="Stage 2: tune the LLM (full or LoRA) and projector on image embeddings.")(
    _command("sft")
)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="train")
