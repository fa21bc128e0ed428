"""``modgap synth``: text-only data synthesis (Unicorn)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from modgap.cli.common import command_line, out, quiet_transformers
from modgap.cli.options import setting_params, settings_from_options, with_signature
from modgap.errors import ModgapError
from modgap.progress import rich_progress
from modgap.synth.settings import CaptionSettings, InstructionSettings, LLMSettings

app = typer.Typer(help="Synthesise training data from text alone with an LLM (Unicorn).", no_args_is_help=True)

# Each stage's options are generated from its settings class and the backend's (modgap.synth.settings, a cheap
# import: no torch, no network); what is left here are the inputs and outputs.
TURNS = ("min_turns", "max_turns")  # given as one --turns MIN-MAX option


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError as e:
        raise ModgapError(f"--shard must be I/N, got {text!r}") from e
    return index, count


def _option(name: str, tp: Any, default: Any, *flags: str, help: str | None = None) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[tp, typer.Option(*flags, help=help)]
    )


def _io_options(inputs: str, inputs_help: str, out_help: str, text_column: str) -> list[inspect.Parameter]:
    return [
        _option(f"{inputs}_file", Path, inspect.Parameter.empty, f"--{inputs}", help=inputs_help),
        _option("out_file", Path, inspect.Parameter.empty, "--out", help=out_help),
        _option("id_column", str, "id", "--id-column"),
        _option("text_column", str, text_column, "--text-column"),
        _option("shard", str, "0/1", "--shard", help="I/N: this machine's contiguous share of the inputs."),
    ]


def _captions(**options: Any) -> None:
    """Stage 1: expand sparse seeds into detailed captions (template with a {seed} placeholder). Rerun the same
    command to resume."""
    from modgap.synth.captions import synth_captions
    from modgap.synth.llm import open_backend

    llm = settings_from_options(LLMSettings, options)
    settings = settings_from_options(CaptionSettings, options)
    quiet_transformers()
    summary = synth_captions(
        open_backend(llm),
        options["seeds_file"],
        options["out_file"],
        settings,
        id_column=options["id_column"],
        text_column=options["text_column"],
        shard=_shard(options["shard"]),
        command=command_line(),
        progress=rich_progress(unit="replies"),
    )
    out.print(f"{summary.line()} -> {options['out_file']}")


def _instructions(**options: Any) -> None:
    """Stage 2: a multi-turn question/answer conversation per caption, as JSON validated against a schema; the
    rows are what `modgap train sft` reads. Rerun the same command to resume."""
    from modgap.synth.instructions import synth_instructions
    from modgap.synth.llm import open_backend

    turns = options.pop("turns")
    try:
        options["min_turns"], options["max_turns"] = (int(x) for x in turns.split("-"))
    except ValueError as e:
        raise ModgapError(f"--turns must be MIN-MAX, got {turns!r}") from e
    llm = settings_from_options(LLMSettings, options)
    settings = settings_from_options(InstructionSettings, options)
    quiet_transformers()
    summary = synth_instructions(
        open_backend(llm),
        options["captions_file"],
        options["out_file"],
        settings,
        id_column=options["id_column"],
        text_column=options["text_column"],
        shard=_shard(options["shard"]),
        command=command_line(),
        progress=rich_progress(unit="conversations"),
    )
    out.print(f"{summary.line()} -> {options['out_file']}")


_DEFAULT_TURNS = InstructionSettings()
app.command(
    "captions",
    help=_captions.__doc__,
    epilog="Example: modgap synth captions --llm openai:Qwen/Qwen2.5-72B-Instruct --base-url http://gpu1:8000/v1 "
    "--base-url http://gpu2:8000/v1 --seeds seeds.jsonl --per-seed 4 --out captions.jsonl",
)(
    with_signature(
        _captions,
        [
            *_io_options("seeds", "Seed captions: JSONL/CSV/TSV/Parquet with id and text columns.",
                         "Captions JSONL (with .meta.json and .failures.jsonl).", "text"),
            *setting_params(LLMSettings),
            *setting_params(CaptionSettings),
        ],
    )
)  # fmt: skip
app.command(
    "instructions",
    help=_instructions.__doc__,
    epilog="Example: modgap synth instructions --llm openai:Qwen/Qwen2.5-72B-Instruct --base-url http://gpu1:8000/v1 "
    "--captions captions.jsonl --turns 3-8 --out instructions.jsonl",
)(
    with_signature(
        _instructions,
        [
            *_io_options("captions", "Captions (stage 1's output, or any file with id and caption columns).",
                         "Conversations JSONL (with .meta.json, .failures.jsonl).", "caption"),
            _option("turns", str, f"{_DEFAULT_TURNS.min_turns}-{_DEFAULT_TURNS.max_turns}", "--turns",
                    help="MIN-MAX question/answer turns per conversation."),
            *setting_params(LLMSettings),
            *setting_params(InstructionSettings, TURNS),
        ],
    )
)  # fmt: skip


@app.command("run", epilog="Example: modgap synth run --config configs/synth/unicorn.yaml data/unicorn")
def run(
    out_dir: Annotated[Path, typer.Argument(help="Directory of the outputs (rerun the same command to resume).")],
    config: Annotated[Path, typer.Option(help="JSON/YAML config: llm, seeds, captions, instructions, transfer.")],
) -> None:
    """Stages 1-3 in one directory: captions, instruction conversations, the captions' text embeddings moved into
    the image distribution. Finished steps are skipped; prints the training commands that follow."""
    from modgap.synth.pipeline import load_unicorn_config, run_unicorn

    quiet_transformers()
    cfg = load_unicorn_config(config)
    result = run_unicorn(cfg, out_dir, command=command_line(), progress=rich_progress(), log=out.print)
    out.print("next:\n  " + "\n  ".join(result.next_commands()))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="synth")
