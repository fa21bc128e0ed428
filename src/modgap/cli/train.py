"""``modgap train pretrain|sft``: the options are generated from :class:`~modgap.mllm.train.TrainConfig`.

Each field of the dataclass is one option (its metadata holds the help text and, where it differs from
``--field-name``, the flag), so a setting is written once, where the recipe reads it. ``--config FILE``
takes the same settings from JSON/YAML; options given on the command line win.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from modgap.cli.common import out, quiet_transformers
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
CONFIG_OPTION = "config"


def option_fields() -> list[dataclasses.Field]:
    from modgap.mllm.config import TrainConfig

    return [f for f in dataclasses.fields(TrainConfig) if f.name not in SET_BY_COMMAND]


def _cli_type(tp: Any) -> Any:
    """The type Typer parses: paths stay strings, lists of strings are repeatable options."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is list:
        return list[str] | None
    if args and len(args) == 1:
        return args[0] | None
    return tp


def _parameters() -> list[inspect.Parameter]:
    from modgap.mllm.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    for f in option_fields():
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        default = None if f.default is dataclasses.MISSING else f.default
        annotation = Annotated[_cli_type(hints[f.name]), typer.Option(flag, help=f.metadata.get("help"))]
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))
    config_help = "JSON/YAML file of these settings (options given here win)."
    params.append(
        inspect.Parameter(
            CONFIG_OPTION,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[Path | None, typer.Option("--config", help=config_help)],
        )
    )
    return params


def _command(stage: str) -> Any:
    def command(ctx: typer.Context, **options: Any) -> None:
        from modgap.mllm.config import load_config
        from modgap.mllm.train import train

        quiet_transformers()
        config_file = options.pop(CONFIG_OPTION)
        given = {
            name: value
            for name, value in options.items()
            if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)
            or not config_file  # without a file every value (defaults included) comes from here
        }
        for key in ("data", "embeddings"):
            if key in given:
                given[key] = list(given[key] or [])
        cfg = load_config(stage, config_file, given)
        result = train(cfg, progress=rich_progress(unit="steps"))
        if result.stopped_early:
            out.print(f"stopped after step {result.steps} (checkpoint in {cfg.out}/checkpoints; --resume continues)")
        else:
            out.print(
                f"trained {result.steps} steps, final loss {result.final_loss:.4f}, "
                f"{result.tokens_per_second:,.0f} tokens/s; model in {result.model_dir}"
            )

    params = _parameters()
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


app.command(
    "pretrain", epilog=PRETRAIN_EXAMPLE, help="Stage 1: LLM frozen, projector learns to read aligned text embeddings."
)(_command("pretrain"))
app.command("sft", epilog=SFT_EXAMPLE, help="Stage 2: tune the LLM (full or LoRA) and projector on image embeddings.")(
    _command("sft")
)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="train")
