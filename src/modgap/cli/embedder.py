"""``modgap embedder distill|tune``: universal embedders (UniME); options generated from EmbedderTrainConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from modgap.cli.common import out, quiet_transformers
from modgap.cli.options import report_training, settings_command
from modgap.progress import rich_progress

app = typer.Typer(
    help="Train a universal multimodal embedder from a vision-language model (UniME: distill, then tune).",
    no_args_is_help=True,
)

DISTILL_EXAMPLE = (
    "Example: modgap embed --encoder text:models/all-MiniLM-L6-v2 --modality text --data texts.jsonl "
    "--out-text stores/teacher && modgap embedder distill --init runs/sft/model --data texts.jsonl "
    "--teacher-embeddings stores/teacher --out runs/distill"
)
TUNE_EXAMPLE = (
    "Example: modgap embedder tune --init runs/distill/model --data mmeb_train.jsonl --embeddings stores/images "
    "--hard-negatives 8 --fn-margin 0.1 --temperature 0.02 --out runs/tune && modgap embed --encoder "
    "embedder:runs/tune --modality image --data images.jsonl --out-image stores/tuned"
)


def _command(stage: str) -> Any:
    from modgap.embedder.config import EmbedderTrainConfig

    def run(given: dict[str, Any], config_file: Path | None) -> None:
        from modgap.embedder.train import train
        from modgap.files import load_dataclass

        quiet_transformers()
        cfg = load_dataclass(EmbedderTrainConfig, config_file, given, stage=stage)
        result = train(cfg, progress=rich_progress(unit="steps"))
        report_training(
            result,
            cfg.out,
            f"{result.samples_per_second:,.1f} samples/s; embedder in {result.model_dir} "
            f"(use it as --encoder embedder:{result.model_dir})",
        )

    return settings_command(EmbedderTrainConfig, ("stage",), run)


app.command(
    "distill",
    epilog=DISTILL_EXAMPLE,
    help="Stage 1: text only; the LM's in-batch similarities learn the teacher's (KL divergence).",
)(_command("distill"))
app.command(
    "tune",
    epilog=TUNE_EXAMPLE,
    help="Stage 2: InfoNCE on query/positive pairs with false-negative filtering and hard negatives.",
)(_command("tune"))


@app.command(
    "mine",
    epilog="Example: modgap embedder mine --data train.jsonl --images stores/images --texts captions.jsonl "
    "--text-embeddings stores/captions --out train_mined.jsonl",
)
def mine(
    data: Annotated[Path, typer.Option(help="Training rows in MMEB's layout (image queries, positive texts).")],
    images: Annotated[Path, typer.Option(help="Store of the queries' image embeddings, by qry_image_path.")],
    texts: Annotated[Path, typer.Option(help="The candidate pool: id and text rows (positives included).")],
    text_embeddings: Annotated[Path, typer.Option(help="Store of the pool's embeddings, by id.")],
    out_file: Annotated[Path, typer.Option("--out", help="The rows with neg_text set (written whole).")],
    fn_margin: Annotated[
        float, typer.Option(help="Skip candidates above sim(q, pos) + margin (false negatives).")
    ] = 0.1,
    depth: Annotated[int, typer.Option(help="Nearest candidates searched per query.")] = 32,
    index: Annotated[
        str, typer.Option(help="exact (top-k over the whole pool) or faiss (approximate; pip install modgap[faiss]).")
    ] = "exact",
    index_path: Annotated[
        Path | None,
        typer.Option(help="With --index faiss: keep the index here and reuse it while the store is unchanged."),
    ] = None,
    factory: Annotated[
        str, typer.Option(help="With --index faiss: a faiss index factory string (auto: IVF with ~4√N lists, Flat).")
    ] = "auto",
    nprobe: Annotated[
        int | None, typer.Option(help="With --index faiss: IVF lists visited per query (default 16).")
    ] = None,
) -> None:
    """Mine one hard negative per row from the whole pool (exact top-k or a faiss index), false negatives
    filtered."""
    from modgap.embedder.mine import mine_negatives

    summary = mine_negatives(
        data, images, texts, text_embeddings, out_file, fn_margin=fn_margin, depth=depth, index=index,
        index_path=index_path, factory=factory, nprobe=nprobe, progress=rich_progress(),
    )  # fmt: skip
    out.print(f"{summary.line()}; wrote {out_file}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="embedder")
