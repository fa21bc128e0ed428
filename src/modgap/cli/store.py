"""``modgap store``: import, export and inspect embedding stores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modgap.cli.common import OnBadOpt, OverwriteOpt, command_line, out
from modgap.progress import rich_progress

app = typer.Typer(help="Embedding stores: import, export, inspect.", no_args_is_help=True)


@app.command(
    "import",
    epilog="Example: modgap store import --format revision-pkl embeddings/text/ stores/text --modality text",
)
def import_command(
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


@app.command("export", epilog="Example: modgap store export --format npy stores/text out/text_npy")
def export_command(
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


@app.command("info", epilog="Example: modgap store info stores/text --verify")
def info_command(
    store_dir: Annotated[Path, typer.Argument(help="Store directory.")],
    verify: Annotated[bool, typer.Option("--verify", help="Check every shard's checksum.")] = False,
    sample: Annotated[int, typer.Option(help="Rows sampled for the statistics.")] = 10000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a store's manifest and a few statistics (norms, mean vector length)."""
    import json

    from modgap.store import EmbeddingStore, store_info

    store = EmbeddingStore.open(store_dir, verify=verify)
    m = store.manifest
    info = store_info(store, sample, verified=verify)
    stats = info["stats"]
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


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="store")
