"""``modgap align``: fit aligners on unpaired stores and apply them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modgap.cli.common import BackendOpt, ChunkOpt, DeviceOpt, OnBadOpt, OverwriteOpt, command_line, out
from modgap.progress import rich_progress

app = typer.Typer(help="Fit and apply modality aligners.", no_args_is_help=True)


@app.command("methods", epilog="Example: modgap align methods")
def list_methods() -> None:
    """List the registered alignment methods: name, kind, parameters (--param KEY=VALUE) and what each does."""
    from rich.table import Table

    from modgap.align import REGISTRY, method_help

    summaries = method_help()
    table = Table(title="alignment methods (--method)")
    for column in ("method", "kind", "unit-norm output", "parameters", "what it does"):
        table.add_column(column)
    for name, cls in REGISTRY.items():
        params = ", ".join(f"{k}={v!r}" for k, v in cls().params().items()) or "-"
        table.add_row(name, cls.kind, str(cls().output_normalized), params, summaries[name])
    out.print(table)


# The method list lives in the aligner registry; importing it loads torch, which `--help` should not.
MethodOpt = Annotated[
    str,
    typer.Option("--method", "-m", help="Alignment method; 'modgap align methods' lists them with their parameters."),
]
SourceOpt = Annotated[Path, typer.Option(help="Store to be moved (text).")]
TargetOpt = Annotated[Path, typer.Option(help="Store whose distribution is the goal (images).")]
OutDtypeOpt = Annotated[str | None, typer.Option(help="Output dtype (default: the source's).")]
ParamOpt = Annotated[list[str] | None, typer.Option("--param", "-p", help="Method parameter KEY=VALUE (repeatable).")]
ReadAllOpt = Annotated[
    bool,
    typer.Option(
        "--read-all",
        help="Read every row in the first pass even where the stores' kept sums of unit vectors stand for it "
        "(same fit up to float64 rounding; slower).",
    ),
]


@app.command(
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
    backend: BackendOpt = None,
    read_all: ReadAllOpt = False,
) -> None:
    """Fit an aligner from unpaired source and target stores and save it (safetensors + JSON).

    Runs on many processes with torchrun: each rank reads a slice of the rows, statistics are merged.
    """
    from modgap.align import fit_and_save, parse_params
    from modgap.distributed import init_from_env, shutdown

    rank, _ = init_from_env()
    aligner = fit_and_save(
        method,
        source,
        target,
        out_dir,
        params=parse_params(method, param or []),
        on_bad=on_bad,
        chunk_rows=chunk_rows,
        device=device,
        backend=backend,
        store_sums=not read_all,
        command=command_line(),
        progress=rich_progress(),
    )
    if rank == 0:
        out.print(f"fitted {method} on {aligner.counts} vectors; saved to {out_dir}")
    shutdown()


@app.command(
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
    backend: BackendOpt = None,
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
        backend=backend,
        overwrite=overwrite,
        created_by=command_line(),
        aligner_path=str(aligner_dir),
        progress=rich_progress(),
    )
    out.print(f"wrote {len(store)} aligned rows to {out_store}")


@app.command(
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
    backend: BackendOpt = None,
    overwrite: OverwriteOpt = False,
    read_all: ReadAllOpt = False,
) -> None:
    """Fit on source + target and write the aligned source store, in one command."""
    from modgap.align import fit_and_apply, parse_params
    from modgap.distributed import init_from_env, shutdown

    rank, _ = init_from_env()
    store = fit_and_apply(
        method,
        source,
        target,
        out_store,
        params=parse_params(method, param or []),
        save_aligner=save_aligner,
        on_bad=on_bad,
        dtype=dtype,
        chunk_rows=chunk_rows,
        device=device,
        backend=backend,
        overwrite=overwrite,
        store_sums=not read_all,
        command=command_line(),
        progress=rich_progress(),
    )
    if rank == 0 and store is not None:
        out.print(f"{method}: wrote {len(store)} aligned rows to {out_store}")
    shutdown()


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="align")
