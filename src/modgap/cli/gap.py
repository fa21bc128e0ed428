"""``modgap gap``: modality-gap diagnostics of a text and an image store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modgap.cli.common import OnBadOpt, out
from modgap.progress import rich_progress

EXAMPLE = "Example: modgap gap stores/text stores/image --aligner aligners/realign --pairs pairs.csv --html gap.html"


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
    from modgap.files import write_text
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


def register(root: typer.Typer) -> None:
    root.command("gap", epilog=EXAMPLE)(gap)
