"""``modgap eval``: evaluation of trained models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from modgap.cli.common import OnBadOpt, err, out, quiet_transformers
from modgap.progress import rich_progress

app = typer.Typer(help="Evaluate models.", no_args_is_help=True)

# Options of the commands that generate with a trained model, written once.
ModelOpt = Annotated[Path, typer.Option("--model", help="Model directory (or a training run's --out).")]
PredictionsOpt = Annotated[Path | None, typer.Option("--out", help="Write metrics.json and predictions.jsonl here.")]
BaseLLMOpt = Annotated[str | None, typer.Option(help="New location of the base LM, if it moved.")]


@app.command(
    "caption",
    epilog="Example: modgap eval caption --model runs/sft --data test.jsonl "
    "--embeddings stores/test-images --out runs/sft/eval",
)
def eval_caption(
    model_dir: ModelOpt,
    data: Annotated[Path, typer.Option(help="Rows with id and reference caption(s) (JSON/JSONL).")],
    embeddings: Annotated[Path, typer.Option(help="Store holding the rows' embeddings (usually images).")],
    out_dir: PredictionsOpt = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N rows.")] = None,
    batch_size: Annotated[int, typer.Option()] = 32,
    max_new_tokens: Annotated[int, typer.Option()] = 48,
    num_beams: Annotated[int, typer.Option()] = 1,
    prompt: Annotated[str | None, typer.Option()] = None,
    base_llm: BaseLLMOpt = None,
    device: Annotated[str, typer.Option()] = "cpu",
    on_bad: OnBadOpt = "error",
) -> None:
    """Caption held-out embeddings and score BLEU-4 / CIDEr against the references (pycocoevalcap)."""
    from modgap.eval.caption import evaluate_captions
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
        on_bad=on_bad,
        progress=rich_progress(unit="rows"),
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
    )
    if result.missing:
        err.print(f"{len(result.missing)} rows skipped: id not in {embeddings} (e.g. {result.missing[:3]})")
    _report_bad(result.bad, out_dir)
    _print_figures(f"captions: {len(result.rows)} samples", result.metrics)
    _write_predictions(out_dir, result, "samples")


@app.command(
    "vqa",
    epilog="Example: modgap eval vqa --model runs/sft --data questions.jsonl --embeddings stores/test-images "
    "--out runs/sft/vqa",
)
def eval_vqa(
    model_dir: ModelOpt,
    data: Annotated[Path, typer.Option(help="Rows with id, image (its id in the store), question, answer or answers.")],
    embeddings: Annotated[Path, typer.Option(help="Store holding the images' embeddings.")],
    out_dir: PredictionsOpt = None,
    suffix: Annotated[
        str, typer.Option(help="Appended to every question, e.g. ' Answer with a single word or phrase.'")
    ] = "",
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N questions.")] = None,
    batch_size: Annotated[int, typer.Option()] = 32,
    max_new_tokens: Annotated[int, typer.Option()] = 16,
    base_llm: BaseLLMOpt = None,
    device: Annotated[str, typer.Option()] = "cpu",
    on_bad: OnBadOpt = "error",
) -> None:
    """Answer questions about stored images; VQAv2 accuracy (normalised answers, min(1, matches/3)) overall and
    per question type."""
    from modgap.eval.vqa import evaluate_vqa
    from modgap.mllm.infer import load_model

    quiet_transformers()
    model = load_model(model_dir, base_llm=base_llm, device=device)
    result = evaluate_vqa(model, data, embeddings, batch_size=batch_size, limit=limit, suffix=suffix, on_bad=on_bad,
                          progress=rich_progress(unit="questions"), max_new_tokens=max_new_tokens)  # fmt: skip
    if result.missing:
        err.print(f"{len(result.missing)} questions skipped: image not in {embeddings} (e.g. {result.missing[:3]})")
    _report_bad(result.bad, out_dir)
    _print_figures(f"VQA: {len(result.rows)} questions", result.metrics)
    _write_predictions(out_dir, result, "questions")


@app.command(
    "retrieval",
    epilog="Example: modgap eval retrieval --image stores/test-images --text stores/test-captions "
    "--pairs test_pairs.csv --json runs/eval/retrieval.json",
)
def eval_retrieval(
    image: Annotated[Path, typer.Option(help="Store of image embeddings.")],
    text: Annotated[Path, typer.Option(help="Store of caption embeddings (same space).")],
    pairs: Annotated[Path, typer.Option(help="text_id,image_id rows (CSV/TSV/JSONL), several captions per image.")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures (fractions) here.")] = None,
    k: Annotated[list[int] | None, typer.Option("--k", help="Recall@k cut-offs (repeatable; default 1 5 10).")] = None,
    metric: Annotated[str, typer.Option(help="cosine, dot or l2.")] = "cosine",
    block_rows: Annotated[int, typer.Option(help="Image queries scored per block (memory: block x chunk).")] = 4096,
    device: Annotated[str, typer.Option()] = "cpu",
) -> None:
    """Image→text and text→image Recall@k, exact and streamed (an image is right if any caption is in its top k)."""
    from modgap.eval.retrieval import DEFAULT_KS, retrieval_recall
    from modgap.files import read_pairs, write_json

    result = retrieval_recall(
        image,
        text,
        read_pairs(pairs),
        ks=tuple(k or DEFAULT_KS),
        metric=metric,
        block_rows=block_rows,
        device=device,
        progress=rich_progress(unit="images"),
    )
    _print_figures(f"retrieval: {result.metrics['images']} images, {result.metrics['texts']} captions", result.metrics)
    if json_out:
        write_json(json_out, result.metrics)
        out.print(f"wrote {json_out}")


@app.command(
    "compositional",
    epilog="Example: modgap eval compositional --image stores/img --text stores/captions --triples swaps.jsonl",
)
def eval_compositional(
    image: Annotated[Path, typer.Option(help="Store of image embeddings.")],
    text: Annotated[Path, typer.Option(help="Store holding the true and the negative captions' embeddings.")],
    triples: Annotated[
        Path, typer.Option(help="Rows with image_id, positive_id, negative_id and an optional category.")
    ],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the accuracies here.")] = None,
    metric: Annotated[str, typer.Option(help="cosine, dot or l2.")] = "cosine",
) -> None:
    """SugarCrepe-style accuracy per category: the true caption must score above its hard negative."""
    from modgap.eval.compositional import compositional_accuracy, read_triples
    from modgap.files import write_json

    acc = compositional_accuracy(image, text, read_triples(triples), metric=metric)
    _print_figures(f"compositional: {acc['triples']} triples", acc)
    if json_out:
        write_json(json_out, acc)
        out.print(f"wrote {json_out}")


@app.command(
    "mmeb",
    epilog="Example: modgap eval mmeb --model runs/tune --data MMEB-eval/ --image-root MMEB-eval/images "
    "--json runs/tune/mmeb.json",
)
def eval_mmeb(
    model_dir: Annotated[Path, typer.Option("--model", help="Embedder directory (or a training run's --out).")],
    data: Annotated[Path, typer.Option(help="Directory of task files (TASK.parquet / TASK.jsonl), or one file.")],
    image_root: Annotated[
        Path | None, typer.Option(help="Where the rows' image paths start (default: --data).")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write per-task and overall Precision@1 here.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N rows of each task.")] = None,
    batch_size: Annotated[int, typer.Option()] = 64,
    device: Annotated[str, typer.Option()] = "cpu",
    templates: Annotated[
        Path | None, typer.Option(help="Prompt templates of a stock multimodal LLM (see modgap embed --help).")
    ] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Run the model's own code.")] = False,
) -> None:
    """MMEB Precision@1 per task (the first candidate is the target) and overall (mean over tasks); --model is a
    modgap embedder or a stock multimodal LLM directory."""
    from modgap.embedder.encoder import load as load_embedder
    from modgap.eval.mmeb import evaluate_mmeb
    from modgap.files import write_json

    quiet_transformers()
    encoder = load_embedder(str(model_dir), device=device, batch_size=batch_size, templates=templates,
                            trust_remote_code=trust_remote_code)  # fmt: skip
    result = evaluate_mmeb(encoder, data, image_root, batch_size=batch_size, limit=limit,
                           progress=rich_progress(unit="tasks"))  # fmt: skip
    table = Table(title=f"MMEB: {len(result.tasks)} tasks")
    table.add_column("task")
    table.add_column("rows", justify="right")
    table.add_column("P@1", justify="right")
    for task, p1 in result.tasks.items():
        table.add_row(task, str(result.rows[task]), f"{p1:.4f}")
    for group, p1 in result.groups.items():  # the meta-task and IND/OOD means MMEB's papers report
        table.add_row(f"mean: {group}", "", f"{p1:.4f}")
    table.add_row("overall", str(sum(result.rows.values())), f"{result.overall:.4f}")
    out.print(table)
    if json_out:
        write_json(json_out, {"tasks": result.tasks, "rows": result.rows, "groups": result.groups,
                              "overall": result.overall})  # fmt: skip
        out.print(f"wrote {json_out}")


def _report_bad(bad: list[dict[str, str]], out_dir: Path | None) -> None:
    if bad:
        listed = f"; listed in {out_dir}/bad_rows.jsonl" if out_dir else ""
        err.print(f"{len(bad)} rows left out: NaN, Inf or zero embedding (e.g. {[r['id'] for r in bad[:3]]}){listed}")


def _write_predictions(out_dir: Path | None, result: Any, counted: str) -> None:
    """metrics.json (the figures, how many were scored and how many skipped) and predictions.jsonl."""
    from modgap.files import write_json, write_jsonl

    if out_dir:
        write_json(out_dir / "metrics.json", {**result.metrics, counted: len(result.rows),
                                              "missing": len(result.missing), "bad": len(result.bad)})  # fmt: skip
        write_jsonl(out_dir / "predictions.jsonl", result.rows)
        if result.bad:
            write_jsonl(out_dir / "bad_rows.jsonl", result.bad)
        out.print(f"wrote {out_dir}/metrics.json and predictions.jsonl")


def _print_figures(title: str, figures: dict[str, float]) -> None:
    table = Table(title=title)
    shown = {k: v for k, v in figures.items() if isinstance(v, float)}
    for key in shown:
        table.add_column(key, justify="right")
    table.add_row(*(f"{v:.4f}" for v in shown.values()))
    out.print(table)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="eval")
