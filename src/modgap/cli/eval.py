"""``modgap eval``: evaluation of trained models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modgap.cli.common import err, out, quiet_transformers
from modgap.progress import rich_progress

app = typer.Typer(help="Evaluate models.", no_args_is_help=True)


@app.command(
    "caption",
    epilog="Example: modgap eval caption --model runs/sft --data test.jsonl "
    "--embeddings stores/test-images --out runs/sft/eval",
)
def eval_caption(
    model_dir: Annotated[Path, typer.Option("--model", help="Model directory (or a training run's --out).")],
    data: Annotated[Path, typer.Option(help="Rows with id and reference caption(s) (JSON/JSONL).")],
    embeddings: Annotated[Path, typer.Option(help="Store holding the rows' embeddings (usually images).")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write metrics.json and predictions.jsonl here.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N rows.")] = None,
    batch_size: Annotated[int, typer.Option()] = 32,
    max_new_tokens: Annotated[int, typer.Option()] = 48,
    num_beams: Annotated[int, typer.Option()] = 1,
    prompt: Annotated[str | None, typer.Option()] = None,
    base_llm: Annotated[str | None, typer.Option(help="New location of the base LM, if it moved.")] = None,
    device: Annotated[str, typer.Option()] = "cpu",
) -> None:
    """Caption held-out embeddings and score BLEU-4 / CIDEr against the references (pycocoevalcap)."""
    from modgap.eval.caption import evaluate_captions
    from modgap.files import write_json, write_jsonl
    from modgap.mllm.infer import load_model

    quiet_transformers()
    model = load_model(model_dir, base_llm=base_llm, device=device)
    result = evaluate_captions(
        model,
        data,
        embeddings,
        batch_size=batch_size,
        limit=limit,
        prompt=prompt,
        progress=rich_progress(unit="rows"),
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
    )
    if result.missing:
        err.print(f"{len(result.missing)} rows skipped: id not in {embeddings} (e.g. {result.missing[:3]})")
    table = Table(title=f"captions: {len(result.rows)} samples")
    for k in result.metrics:
        table.add_column(k, justify="right")
    table.add_row(*(f"{v:.4f}" for v in result.metrics.values()))
    out.print(table)
    if out_dir:
        write_json(
            out_dir / "metrics.json", {**result.metrics, "samples": len(result.rows), "missing": len(result.missing)}
        )
        write_jsonl(out_dir / "predictions.jsonl", result.rows)
        out.print(f"wrote {out_dir}/metrics.json and predictions.jsonl")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="eval")
