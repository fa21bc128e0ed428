"""The ``modgap`` command: a thin layer over the Python API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from modgap.cli.console import console
from modgap.errors import ModgapError
from modgap.progress import rich_progress

app = typer.Typer(
    name="modgap",
    help="Train multimodal models from unpaired data by closing the modality gap.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
store_app = typer.Typer(help="Embedding stores: import, export, inspect.", no_args_is_help=True)
align_app = typer.Typer(help="Fit and apply modality aligners.", no_args_is_help=True)
app.add_typer(store_app, name="store")
app.add_typer(align_app, name="align")

out = console()
err = console(stderr=True)

OnBadOpt = Annotated[
    str,
    typer.Option(
        "--on-bad",
        help="What to do with NaN/Inf/zero vectors: 'error' stops, 'skip' leaves them out and lists them in a report.",
    ),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace the output if it exists.")]
ChunkOpt = Annotated[
    int | None, typer.Option("--chunk-rows", help="Rows per streamed chunk (default: ~4 MiB of float32).")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="Torch device for the arithmetic (cpu, cuda, cuda:1).")]


def command_line() -> str:
    return " ".join(["modgap", *sys.argv[1:]])


# ---------------------------------------------------------------------------------------------
# store
# ---------------------------------------------------------------------------------------------
@store_app.command(
    "import",
    epilog="Example: modgap store import --format revision-pkl embeddings/text/ stores/text --modality text",
)
def store_import(
    src: Annotated[Path, typer.Argument(help="Source file or directory.")],
    dest: Annotated[Path, typer.Argument(help="Store directory to create.")],
    fmt: Annotated[str, typer.Option("--format", help="revision-pkl | npy | parquet")] = "revision-pkl",
    dtype: Annotated[
        str | None, typer.Option(help="float16 or float32 (default: keep the source's precision).")
    ] = None,
    modality: Annotated[str | None, typer.Option(help="text or image (recorded in the manifest).")] = None,
    ids: Annotated[
        Path | None, typer.Option("--ids", help="npy: ids file, one per line (default: ids.txt beside).")
    ] = None,
    id_column: Annotated[str, typer.Option(help="parquet: id column.")] = "id",
    embedding_column: Annotated[str, typer.Option(help="parquet: embedding column.")] = "embedding",
    on_bad: OnBadOpt = "error",
    bad_report: Annotated[Path | None, typer.Option(help="Where --on-bad skip lists skipped rows.")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Import embeddings (ReVision/Unicorn pickles, .npy + ids, Parquet) into a new store.

    Pickles are read with a restricted unpickler: a file that asks for anything but containers,
    strings, numbers and numeric arrays is refused, never executed.
    """
    from modgap.store import import_store

    with rich_progress()("import", None) as advance:
        store = import_store(
            fmt,
            src,
            dest,
            dtype=dtype,
            modality=modality,
            ids_file=ids,
            id_column=id_column,
            embedding_column=embedding_column,
            on_bad=on_bad,
            bad_report=bad_report,
            created_by=command_line(),
            overwrite=overwrite,
            progress=advance,
        )
    out.print(f"imported {len(store)} rows of dim {store.dim} into {dest}")


@store_app.command("export", epilog="Example: modgap store export --format npy stores/text out/text_npy")
def store_export(
    store_dir: Annotated[Path, typer.Argument(help="Store to export.")],
    out_dir: Annotated[Path, typer.Argument(help="Directory to create.")],
    fmt: Annotated[str, typer.Option("--format", help="npy | parquet | revision-pkl")] = "npy",
    overwrite: OverwriteOpt = False,
) -> None:
    """Export a store: npy (embeddings.npy float32 + ids.txt), parquet, or revision-pkl."""
    from modgap.store import EmbeddingStore, export_store

    store = EmbeddingStore.open(store_dir)
    with rich_progress()("export", len(store)) as advance:
        export_store(fmt, store, out_dir, overwrite=overwrite, progress=advance)
    out.print(f"exported {len(store)} rows to {out_dir} ({fmt})")


@store_app.command("info", epilog="Example: modgap store info stores/text --verify")
def store_info(
    store_dir: Annotated[Path, typer.Argument(help="Store directory.")],
    verify: Annotated[bool, typer.Option("--verify", help="Check every shard's checksum.")] = False,
    sample: Annotated[int, typer.Option(help="Rows sampled for the statistics.")] = 10000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a store's manifest and a few statistics (norms, mean vector length)."""
    import json

    import numpy as np

    from modgap.store import EmbeddingStore
    from modgap.store.checks import bad_row_mask, row_norms

    store = EmbeddingStore.open(store_dir, verify=verify)
    m = store.manifest
    norms, vecs = [], []
    for chunk in store.iter_chunks(chunk_rows=min(sample, 65536), exact=True, columns=()):
        norms.append(row_norms(chunk.embeddings))
        vecs.append(np.asarray(chunk.embeddings, dtype=np.float32))
        break
    n = np.concatenate(norms) if norms else np.zeros(0)
    usable = ~bad_row_mask(n)
    finite = n[usable]
    unit_mean = (np.concatenate(vecs)[usable] / finite[:, None]).mean(0) if len(finite) else None
    stats = {
        "rows_sampled": len(n),
        "norm_min": float(finite.min()) if len(finite) else None,
        "norm_mean": float(finite.mean()) if len(finite) else None,
        "norm_max": float(finite.max()) if len(finite) else None,
        "bad_rows_in_sample": int(len(n) - len(finite)),
        "unit_mean_length": float(np.linalg.norm(unit_mean)) if unit_mean is not None else None,
    }
    info = {**m.to_dict(), "path": str(store.path), "verified": verify, "stats": stats}
    if as_json:
        out.print_json(json.dumps(info))
        return
    table = Table(title=str(store.path), show_header=False)
    for key in ("count", "dim", "dtype", "normalized", "modality", "encoder", "created_by", "metadata_columns"):
        table.add_row(key, str(info[key]))
    table.add_row(
        "shards",
        f"{len(m.shards)} ({sum(s.bytes for s in m.shards) / 2**20:.1f} MiB)"
        + (", checksums verified" if verify else ""),
    )
    if m.extra:
        table.add_row("extra", json.dumps(m.extra)[:300])
    for key, val in stats.items():
        table.add_row(key, f"{val:.4f}" if isinstance(val, float) else str(val))
    out.print(table)


# ---------------------------------------------------------------------------------------------
# align
# ---------------------------------------------------------------------------------------------
MethodOpt = Annotated[
    str, typer.Option("--method", "-m", help="realign | gaussian-ot | c3 | mean-shift | noise | none")
]
SourceOpt = Annotated[Path, typer.Option(help="Store to be moved (text).")]
TargetOpt = Annotated[Path, typer.Option(help="Store whose distribution is the goal (images).")]
OutDtypeOpt = Annotated[str | None, typer.Option(help="Output dtype (default: the source's).")]
ParamOpt = Annotated[list[str] | None, typer.Option("--param", "-p", help="Method parameter KEY=VALUE (repeatable).")]


def _fit(
    method: str, params: list[str] | None, source: Path, target: Path, on_bad: str, chunk_rows: int, device: str
) -> tuple[Any, Any]:
    from modgap.align import fit, make_aligner, parse_params
    from modgap.store.checks import BadRows

    aligner = make_aligner(method, **parse_params(method, params or []))
    bad = BadRows(on_bad)
    fit(aligner, source, target, bad=bad, chunk_rows=chunk_rows, device=device, progress=rich_progress())
    return aligner, bad


@align_app.command(
    "fit",
    epilog="Example: modgap align fit --method realign --source stores/text --target stores/image "
    "--out aligners/realign",
)
def align_fit(
    source: SourceOpt,
    target: TargetOpt,
    out_dir: Annotated[Path, typer.Option("--out", help="Aligner directory to write.")],
    method: MethodOpt = "realign",
    param: ParamOpt = None,
    on_bad: OnBadOpt = "error",
    chunk_rows: ChunkOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Fit an aligner from unpaired source and target stores and save it (safetensors + JSON).

    Runs on many processes with torchrun: each rank reads a slice of the rows, statistics are merged.
    """
    from modgap.distributed import init_from_env, shutdown

    rank, _ = init_from_env()
    aligner, bad = _fit(method, param, source, target, on_bad, chunk_rows, device)
    if rank == 0:
        aligner.provenance["command"] = command_line()
        aligner.save(out_dir)
        if bad.rows:
            bad.write(out_dir / "bad_rows.jsonl")
        out.print(f"fitted {method} on {aligner.counts} vectors; saved to {out_dir}")
    shutdown()


@align_app.command(
    "apply",
    epilog="Example: modgap align apply --aligner aligners/realign --source stores/new_text "
    "--out stores/new_text_aligned",
)
def align_apply(
    aligner_dir: Annotated[Path, typer.Option("--aligner", help="Directory written by 'align fit'.")],
    source: Annotated[Path, typer.Option(help="Store to transform.")],
    out_store: Annotated[Path, typer.Option("--out", help="Aligned store to create.")],
    dtype: OutDtypeOpt = None,
    on_bad: OnBadOpt = "error",
    chunk_rows: ChunkOpt = None,
    device: DeviceOpt = "cpu",
    overwrite: OverwriteOpt = False,
) -> None:
    """Apply a saved aligner to a store; the output keeps ids, order and metadata."""
    from modgap.align import apply_to_store, load_aligner

    aligner = load_aligner(aligner_dir)
    store = apply_to_store(
        aligner,
        source,
        out_store,
        on_bad=on_bad,
        dtype=dtype,
        chunk_rows=chunk_rows,
        device=device,
        overwrite=overwrite,
        created_by=command_line(),
        aligner_path=str(aligner_dir),
        progress=rich_progress(),
    )
    out.print(f"wrote {len(store)} aligned rows to {out_store}")


@align_app.command(
    "run",
    epilog="Example: modgap align run --method realign --source stores/text --target stores/image "
    "--out stores/text_realign --save-aligner aligners/realign",
)
def align_run(
    source: SourceOpt,
    target: TargetOpt,
    out_store: Annotated[Path, typer.Option("--out", help="Aligned store to create.")],
    method: MethodOpt = "realign",
    param: ParamOpt = None,
    save_aligner: Annotated[Path | None, typer.Option(help="Also save the fitted aligner here.")] = None,
    dtype: OutDtypeOpt = None,
    on_bad: OnBadOpt = "error",
    chunk_rows: ChunkOpt = None,
    device: DeviceOpt = "cpu",
    overwrite: OverwriteOpt = False,
) -> None:
    """Fit on source + target and write the aligned source store, in one command."""
    from modgap.align import apply_to_store
    from modgap.distributed import barrier, init_from_env, shutdown

    rank, _ = init_from_env()
    if out_store.exists() and not overwrite:
        raise ModgapError(f"{out_store}: already exists (pass --overwrite to replace it)")
    aligner, bad = _fit(method, param, source, target, on_bad, chunk_rows, device)
    if rank == 0:
        aligner.provenance["command"] = command_line()
        if save_aligner:
            aligner.save(save_aligner)
        store = apply_to_store(
            aligner,
            source,
            out_store,
            bad=bad,
            dtype=dtype,
            chunk_rows=chunk_rows,
            device=device,
            overwrite=overwrite,
            created_by=command_line(),
            aligner_path=str(save_aligner) if save_aligner else None,
            progress=rich_progress(),
        )
        out.print(f"{method}: wrote {len(store)} aligned rows to {out_store}")
    barrier()
    shutdown()


# ---------------------------------------------------------------------------------------------
# embed
# ---------------------------------------------------------------------------------------------
@app.command(
    "embed",
    epilog="Example: modgap embed --encoder hf:/models/clip-vit-b32 --data dataset.json --image-root images/ "
    "--modality both --out-image stores/image --out-text stores/text",
)
def embed(
    encoder_spec: Annotated[
        str,
        typer.Option("--encoder", help="hf:PATH (CLIP, SigLIP, any get_*_features model) or llm2clip:VISION,LLM2VEC."),
    ],
    data: Annotated[
        Path, typer.Option(help="dataset.json, .jsonl, .csv, .parquet, an image folder, or a saved 🤗 dataset.")
    ],
    modality: Annotated[str, typer.Option(help="image, text or both.")] = "both",
    out_image: Annotated[Path | None, typer.Option(help="Image store (created or resumed).")] = None,
    out_text: Annotated[Path | None, typer.Option(help="Text store (created or resumed).")] = None,
    image_root: Annotated[Path | None, typer.Option(help="Directory that relative image paths start from.")] = None,
    id_column: Annotated[str, typer.Option(help="Id column of tabular inputs.")] = "id",
    text_column: Annotated[str, typer.Option(help="Text column of tabular inputs.")] = "text",
    image_column: Annotated[str, typer.Option(help="Image column of tabular inputs.")] = "image",
    batch_size: Annotated[int, typer.Option(help="Items per forward pass.")] = 64,
    num_workers: Annotated[
        int | None, typer.Option(help="DataLoader worker processes (decoding, tokenising); default: half the cores.")
    ] = None,
    dtype: Annotated[str, typer.Option(help="Storage dtype: float16 or float32.")] = "float16",
    shard_rows: Annotated[int | None, typer.Option(help="Rows per shard (default: ~256 MiB).")] = None,
    max_text_length: Annotated[int | None, typer.Option(help="Truncate texts to this many tokens.")] = None,
    device: DeviceOpt = "cpu",
    online: Annotated[bool, typer.Option("--online", help="Allow downloads from the 🤗 Hub.")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Run the model's own code.")] = False,
) -> None:
    """Embed unpaired images and texts into stores. Rerun the same command to resume after a crash.

    Under torchrun / accelerate launch each process takes a block of the input; one store results.
    """
    import os

    if not online:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from modgap.distributed import init_from_env, shutdown
    from modgap.embed import Columns, EmbedOptions, embed_modality, read_inputs
    from modgap.encoders import IMAGE, TEXT, load_encoder

    wanted = {"both": [IMAGE, TEXT], IMAGE: [IMAGE], TEXT: [TEXT]}.get(modality)
    if wanted is None:
        raise ModgapError(f"--modality must be image, text or both, got {modality!r}")
    outs = {IMAGE: out_image, TEXT: out_text}
    for m in wanted:
        if outs[m] is None:
            raise ModgapError(f"--out-{m} is required for --modality {modality}")
    inputs = read_inputs(data, image_root, Columns(id_column, text_column, image_column))
    rank, _ = init_from_env()
    if device == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    encoder = load_encoder(
        encoder_spec, device=device, online=online, trust_remote_code=trust_remote_code, max_text_length=max_text_length
    )
    options = EmbedOptions(batch_size=batch_size, dtype=dtype, shard_rows=shard_rows)
    if num_workers is not None:
        options.num_workers = num_workers
    for m in wanted:
        summary = embed_modality(
            encoder, m, inputs, outs[m], options, created_by=command_line(), progress=rich_progress(unit="items")
        )
        if rank == 0:
            out.print(summary.line())
    shutdown()


# ---------------------------------------------------------------------------------------------
# gap
# ---------------------------------------------------------------------------------------------
@app.command(
    "gap",
    epilog="Example: modgap gap stores/text stores/image --aligner aligners/realign --pairs pairs.csv --html gap.html",
)
def gap(
    text_store: Annotated[Path, typer.Argument(help="Text embedding store.")],
    image_store: Annotated[Path, typer.Argument(help="Image embedding store.")],
    pairs: Annotated[Path | None, typer.Option(help="CSV/TSV/JSONL of text_id,image_id pairs.")] = None,
    aligner_dir: Annotated[
        Path | None, typer.Option("--aligner", help="Also report figures after this aligner.")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures as JSON.")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML report.")] = None,
    sample: Annotated[int, typer.Option(help="Rows per modality for classifier/k-NN/MMD figures.")] = 2000,
    spectrum_rows: Annotated[int, typer.Option(help="Rows per modality for covariance spectra.")] = 20000,
    k: Annotated[int, typer.Option(help="Neighbours for k-NN figures.")] = 10,
    energy: Annotated[float, typer.Option(help="Energy share that defines the fixed frame.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    on_bad: OnBadOpt = "error",
) -> None:
    """Measure the modality gap between a text and an image store (and what an aligner does to it)."""
    from modgap.align import load_aligner
    from modgap.atomic import write_text
    from modgap.gap import gap_report, read_pairs, report_html, report_json, report_rows

    aligner = load_aligner(aligner_dir) if aligner_dir else None
    report = gap_report(
        text_store,
        image_store,
        aligner=aligner,
        pairs=read_pairs(pairs) if pairs else None,
        sample=sample,
        spectrum_rows=spectrum_rows,
        k=k,
        energy=energy,
        seed=seed,
        on_bad=on_bad,
        progress=rich_progress(),
    )
    table = Table(title=f"modality gap: {text_store} vs {image_store}")
    table.add_column("figure")
    table.add_column("before", justify="right")
    if aligner:
        table.add_column(f"after {aligner.method}", justify="right")
    for key, before, after in report_rows(report):
        table.add_row(key, before, *([after] if aligner else []))
    out.print(table)
    for path, text in (
        (json_out, report_json(report) if json_out else None),
        (html_out, report_html(report) if html_out else None),
    ):
        if path and text is not None:
            write_text(path, text)
            out.print(f"wrote {path}")


from modgap.cli.mllm import register as _register_mllm  # noqa: E402
from modgap.cli.world import register as _register_world  # noqa: E402

_register_mllm(app)
_register_world(app)


def main() -> None:
    try:
        app()
    except ModgapError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
