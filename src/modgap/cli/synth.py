"""``modgap synth``: text-only data synthesis (Unicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modgap.cli.common import command_line, out, quiet_transformers
from modgap.errors import ModgapError
from modgap.progress import rich_progress

app = typer.Typer(help="Synthesise training data from text alone with an LLM (Unicorn).", no_args_is_help=True)


@app.command(
    "captions",
    epilog="Example: modgap synth captions --llm openai:Qwen/Qwen2.5-72B-Instruct --base-url http://gpu1:8000/v1 "
    "--base-url http://gpu2:8000/v1 --seeds seeds.jsonl --per-seed 4 --out captions.jsonl",
)
def captions(
    llm: Annotated[str, typer.Option(help="openai:MODEL (with --base-url), hf:PATH or builtin:NAME.")],
    seeds: Annotated[Path, typer.Option(help="Seed captions: JSONL/CSV/TSV/Parquet with id and text columns.")],
    out_file: Annotated[Path, typer.Option("--out", help="Captions JSONL (with .meta.json and .failures.jsonl).")],
    per_seed: Annotated[int, typer.Option(help="Captions requested per seed.")] = 1,
    base_url: Annotated[
        list[str] | None, typer.Option(help="OpenAI-compatible server; repeat to spread requests over several.")
    ] = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API key.")] = "OPENAI_API_KEY",
    concurrency: Annotated[int, typer.Option(help="Requests in flight (openai backend).")] = 8,
    timeout: Annotated[float, typer.Option(help="Seconds per request before it is retried.")] = 120.0,
    max_attempts: Annotated[int, typer.Option(help="Attempts per request on connection errors, 429 and 5xx.")] = 6,
    batch_size: Annotated[int, typer.Option(help="Prompts generated together (hf/builtin backend).")] = 16,
    temperature: Annotated[float, typer.Option()] = 0.8,
    top_p: Annotated[float, typer.Option()] = 0.95,
    max_tokens: Annotated[int, typer.Option()] = 256,
    seed: Annotated[int, typer.Option(help="Base of the per-sample sampling seeds.")] = 0,
    min_words: Annotated[int, typer.Option(help="Shorter captions are filtered out.")] = 5,
    max_words: Annotated[int, typer.Option(help="Longer captions are filtered out.")] = 200,
    near_duplicate: Annotated[
        float, typer.Option(help="MinHash Jaccard above which a caption is a near duplicate (1: off).")
    ] = 0.9,
    keep_duplicates: Annotated[
        bool, typer.Option(help="Keep exact and near duplicates (e.g. to dedupe shards later).")
    ] = False,
    prompt_file: Annotated[Path | None, typer.Option(help="Prompt template with a {seed} placeholder.")] = None,
    id_column: Annotated[str, typer.Option()] = "id",
    text_column: Annotated[str, typer.Option()] = "text",
    shard: Annotated[str, typer.Option(help="I/N: this machine's contiguous share of the seeds.")] = "0/1",
    device: Annotated[str, typer.Option()] = "cpu",
) -> None:
    """Stage 1: expand sparse seeds into detailed captions. Rerun the same command to resume."""
    from modgap.synth.captions import CaptionSettings, synth_captions
    from modgap.synth.llm import Sampling, load_llm_backend

    quiet_transformers()
    try:
        index, count = (int(x) for x in shard.split("/"))
    except ValueError as e:
        raise ModgapError(f"--shard must be I/N, got {shard!r}") from e
    prompt = prompt_file.read_text(encoding="utf-8") if prompt_file else None
    backend = load_llm_backend(
        llm,
        base_urls=base_url,
        api_key_env=api_key_env,
        timeout=timeout,
        max_attempts=max_attempts,
        device=device,
        batch_size=batch_size,
    )
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
        prompt=prompt,
        id_column=id_column,
        text_column=text_column,
        shard=(index, count),
        command=command_line(),
        progress=rich_progress(unit="replies"),
    )
    out.print(f"{summary.line()} -> {out_file}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="synth")
