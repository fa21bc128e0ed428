"""``modgap generate``: replies of a trained model for stored embeddings, image files or texts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modgap.cli.common import OnBadOpt, err, out, quiet_transformers
from modgap.errors import ModgapError

EXAMPLE = "Example: modgap generate --model runs/sft --image photo.jpg"


def generate(
    model_dir: Annotated[Path, typer.Option("--model", help="Model directory (or a training run's --out).")],
    embeddings: Annotated[Path | None, typer.Option(help="Caption embeddings from this store.")] = None,
    ids: Annotated[str | None, typer.Option(help="Comma-separated ids of --embeddings (default: all).")] = None,
    image: Annotated[
        list[Path] | None, typer.Option(help="Image file(s), encoded with the model's recorded encoder.")
    ] = None,
    text: Annotated[
        list[str] | None, typer.Option(help="Text(s) encoded and aligned: a quick check without images.")
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="Instruction (default: the model's captioning prompt).")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many rows of --embeddings.")] = None,
    batch_size: Annotated[int, typer.Option()] = 32,
    max_new_tokens: Annotated[int, typer.Option()] = 48,
    num_beams: Annotated[int, typer.Option(help="Beam search width (1: greedy).")] = 1,
    sample: Annotated[bool, typer.Option(help="Sample instead of greedy/beam decoding.")] = False,
    temperature: Annotated[float, typer.Option()] = 1.0,
    top_p: Annotated[float, typer.Option()] = 1.0,
    seed: Annotated[int, typer.Option()] = 0,
    encoder: Annotated[str | None, typer.Option(help="Encoder spec (default: the one the model records).")] = None,
    base_llm: Annotated[str | None, typer.Option(help="New location of the base LM, if it moved.")] = None,
    device: Annotated[str, typer.Option()] = "cpu",
    out_file: Annotated[Path | None, typer.Option("--out", help="Write JSONL here instead of printing.")] = None,
    on_bad: OnBadOpt = "error",
) -> None:
    """Generate replies from stored embeddings, image files or texts."""
    from modgap.files import write_jsonl
    from modgap.mllm.infer import StoreInputs, image_inputs, load_model, text_inputs

    if sum(x is not None and x != [] for x in (embeddings, image, text)) != 1:
        raise ModgapError("give exactly one of --embeddings, --image, --text")
    quiet_transformers()
    model = load_model(model_dir, base_llm=base_llm, device=device)
    if embeddings is not None:
        inputs = StoreInputs(model, embeddings, on_bad)
        keys = ids.split(",") if ids else inputs.store.ids()[:limit]
        rows = inputs.store.row_of(keys)
        keep = inputs.usable(rows)
        if not keep.all():
            shown = [r["id"] for r in inputs.bad.rows[:5]]
            err.print(f"{int((~keep).sum())} ids left out: NaN, Inf or zero embedding (e.g. {shown})")
        keys = [k for k, ok in zip(keys, keep, strict=True) if ok]
        if not keys:
            raise ModgapError(f"{embeddings}: no usable embedding among the ids asked for")
        visual = inputs.rows(rows[keep])
    elif image:
        keys, visual = [str(p) for p in image], image_inputs(model, image, encoder, device)
    else:
        keys, visual = list(text or []), text_inputs(model, text or [], encoder, device)
    replies = model.generate(
        visual,
        prompt,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        do_sample=sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )
    rows = [{"id": k, "reply": r} for k, r in zip(keys, replies, strict=True)]
    if out_file:
        write_jsonl(out_file, rows)
        out.print(f"wrote {len(rows)} replies to {out_file}")
    else:
        for r in rows:
            print(f"{r['id']}\t{r['reply']}")  # plain tab-separated lines, for pipes


def register(root: typer.Typer) -> None:
    root.command("generate", epilog=EXAMPLE)(generate)
