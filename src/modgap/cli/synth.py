"""``modgap synth``: text-only data synthesis (Unicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from modgap.cli.common import command_line, out, quiet_transformers
from modgap.errors import ModgapError
from modgap.progress import rich_progress
from modgap.synth.settings import CAPTION_SAMPLING, INSTRUCTION_SAMPLING, CaptionSettings, InstructionSettings

if TYPE_CHECKING:
    from modgap.synth.llm import LocalChat, OpenAIChat

# The stages' defaults, written once in modgap.synth.settings (a cheap import: no torch, no network).
CAPTIONS, INSTRUCTIONS = CaptionSettings(), InstructionSettings()

app = typer.Typer(help="Synthesise training data from text alone with an LLM (Unicorn).", no_args_is_help=True)

# Options both stages take, written once.
LlmOpt = Annotated[str, typer.Option(help="openai:MODEL (with --base-url), hf:PATH or builtin:NAME.")]
BaseUrlOpt = Annotated[
    list[str] | None, typer.Option(help="OpenAI-compatible server; repeat to spread requests over several.")
]
ApiKeyEnvOpt = Annotated[str, typer.Option(help="Environment variable holding the API key.")]
ConcurrencyOpt = Annotated[int, typer.Option(help="Requests in flight (openai backend).")]
TimeoutOpt = Annotated[
    float,
    typer.Option(
        help="Seconds to wait for a reply before the request is retried (connecting gives up after 10 s). "
        "Worst case for one request to a hung server: --request-attempts x (--timeout + up to 30 s of back-off)."
    ),
]
RequestAttemptsOpt = Annotated[
    int, typer.Option(help="Attempts per request on connection errors, timeouts, 429 and 5xx.")
]
BatchSizeOpt = Annotated[int, typer.Option(help="Prompts generated together (hf/builtin backend).")]
SeedOpt = Annotated[int, typer.Option(help="Base of the per-sample sampling seeds.")]
PromptFileOpt = Annotated[Path | None, typer.Option(help="Prompt template replacing the shipped one.")]
ShardOpt = Annotated[str, typer.Option(help="I/N: this machine's contiguous share of the inputs.")]
DeviceOpt = Annotated[str, typer.Option(help="Torch device of the hf/builtin backend.")]


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError as e:
        raise ModgapError(f"--shard must be I/N, got {text!r}") from e
    return index, count


def _backend(
    llm: str,
    base_url: list[str] | None,
    api_key_env: str,
    timeout: float,
    request_attempts: int,
    device: str,
    batch_size: int,
) -> OpenAIChat | LocalChat:
    from modgap.synth.llm import load_llm_backend

    quiet_transformers()
    return load_llm_backend(
        llm,
        base_urls=base_url,
        api_key_env=api_key_env,
        timeout=timeout,
        max_attempts=request_attempts,
        device=device,
        batch_size=batch_size,
    )


@app.command(
    "captions",
    epilog="Example: modgap synth captions --llm openai:Qwen/Qwen2.5-72B-Instruct --base-url http://gpu1:8000/v1 "
    "--base-url http://gpu2:8000/v1 --seeds seeds.jsonl --per-seed 4 --out captions.jsonl",
)
def captions(
    llm: LlmOpt,
    seeds: Annotated[Path, typer.Option(help="Seed captions: JSONL/CSV/TSV/Parquet with id and text columns.")],
    out_file: Annotated[Path, typer.Option("--out", help="Captions JSONL (with .meta.json and .failures.jsonl).")],
    per_seed: Annotated[int, typer.Option(help="Captions requested per seed.")] = CAPTIONS.per_seed,
    base_url: BaseUrlOpt = None,
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    concurrency: ConcurrencyOpt = CAPTIONS.concurrency,
    timeout: TimeoutOpt = 120.0,
    request_attempts: RequestAttemptsOpt = 6,
    batch_size: BatchSizeOpt = 16,
    temperature: Annotated[float, typer.Option()] = CAPTION_SAMPLING.temperature,
    top_p: Annotated[float, typer.Option()] = CAPTION_SAMPLING.top_p,
    max_tokens: Annotated[int, typer.Option()] = CAPTION_SAMPLING.max_tokens,
    seed: SeedOpt = 0,
    min_words: Annotated[int, typer.Option(help="Shorter captions are filtered out.")] = CAPTIONS.min_words,
    max_words: Annotated[int, typer.Option(help="Longer captions are filtered out.")] = CAPTIONS.max_words,
    near_duplicate: Annotated[
        float, typer.Option(help="MinHash Jaccard above which a caption is a near duplicate (1: off).")
    ] = CAPTIONS.near_duplicate_threshold,
    keep_duplicates: Annotated[
        bool, typer.Option(help="Keep exact and near duplicates (e.g. to dedupe shards later).")
    ] = False,
    prompt_file: PromptFileOpt = None,
    id_column: Annotated[str, typer.Option()] = "id",
    text_column: Annotated[str, typer.Option()] = "text",
    shard: ShardOpt = "0/1",
    device: DeviceOpt = "cpu",
) -> None:
    """Stage 1: expand sparse seeds into detailed captions (template with a {seed} placeholder). Rerun the same
    command to resume."""
    from modgap.synth.captions import CaptionSettings, synth_captions
    from modgap.synth.llm import Sampling

    backend = _backend(llm, base_url, api_key_env, timeout, request_attempts, device, batch_size)
    settings = CaptionSettings(
        per_seed=per_seed,
        min_words=min_words,
        max_words=max_words,
        near_duplicate_threshold=near_duplicate,
        dedupe=not keep_duplicates,
        concurrency=concurrency,
        sampling=Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed),
    )
    summary = synth_captions(
        backend,
        seeds,
        out_file,
        settings,
        prompt=prompt_file.read_text(encoding="utf-8") if prompt_file else None,
        id_column=id_column,
        text_column=text_column,
        shard=_shard(shard),
        command=command_line(),
        progress=rich_progress(unit="replies"),
    )
    out.print(f"{summary.line()} -> {out_file}")


@app.command(
    "instructions",
    epilog="Example: modgap synth instructions --llm openai:Qwen/Qwen2.5-72B-Instruct --base-url http://gpu1:8000/v1 "
    "--captions captions.jsonl --turns 3-8 --out instructions.jsonl",
)
def instructions(
    llm: LlmOpt,
    captions_file: Annotated[
        Path, typer.Option("--captions", help="Captions (stage 1's output, or any file with id and caption columns).")
    ],
    out_file: Annotated[Path, typer.Option("--out", help="Conversations JSONL (with .meta.json, .failures.jsonl).")],
    turns: Annotated[
        str, typer.Option(help="MIN-MAX question/answer turns per conversation.")
    ] = f"{INSTRUCTIONS.min_turns}-{INSTRUCTIONS.max_turns}",
    max_attempts: Annotated[
        int, typer.Option(help="Requests per caption: an invalid reply is sent back with the error, then retried.")
    ] = INSTRUCTIONS.max_attempts,
    base_url: BaseUrlOpt = None,
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    concurrency: ConcurrencyOpt = INSTRUCTIONS.concurrency,
    timeout: TimeoutOpt = 120.0,
    request_attempts: RequestAttemptsOpt = 6,
    batch_size: BatchSizeOpt = 16,
    temperature: Annotated[float, typer.Option()] = INSTRUCTION_SAMPLING.temperature,
    top_p: Annotated[float, typer.Option()] = INSTRUCTION_SAMPLING.top_p,
    max_tokens: Annotated[int, typer.Option()] = INSTRUCTION_SAMPLING.max_tokens,
    seed: SeedOpt = 0,
    prompt_file: PromptFileOpt = None,
    id_column: Annotated[str, typer.Option()] = "id",
    text_column: Annotated[str, typer.Option()] = "caption",
    shard: ShardOpt = "0/1",
    device: DeviceOpt = "cpu",
) -> None:
    """Stage 2: a multi-turn question/answer conversation per caption, as JSON validated against a schema; the
    rows are what `modgap train sft` reads. Rerun the same command to resume."""
    from modgap.synth.instructions import InstructionSettings, synth_instructions
    from modgap.synth.llm import Sampling

    try:
        lo, hi = (int(x) for x in turns.split("-"))
    except ValueError as e:
        raise ModgapError(f"--turns must be MIN-MAX, got {turns!r}") from e
    settings = InstructionSettings(
        min_turns=lo,
        max_turns=hi,
        max_attempts=max_attempts,
        concurrency=concurrency,
        sampling=Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed),
    )
    backend = _backend(llm, base_url, api_key_env, timeout, request_attempts, device, batch_size)
    summary = synth_instructions(
        backend,
        captions_file,
        out_file,
        settings,
        prompt=prompt_file.read_text(encoding="utf-8") if prompt_file else None,
        id_column=id_column,
        text_column=text_column,
        shard=_shard(shard),
        command=command_line(),
        progress=rich_progress(unit="conversations"),
    )
    out.print(f"{summary.line()} -> {out_file}")


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
