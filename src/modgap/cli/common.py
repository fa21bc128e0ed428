"""What every command module shares: the consoles, the recorded command line, options used by several groups."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from modgap.cli.console import console

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
    int | None, typer.Option("--chunk-rows", help="Rows per streamed chunk (default: ~1 MiB of float32).")
]
BackendOpt = Annotated[
    str | None, typer.Option("--backend", help="On the CPU: numpy (the default; torch is never loaded) or torch.")
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="Device for the arithmetic: cpu, or a torch device (cuda, cuda:1).")
]


def command_line() -> str:
    """The command as the user typed it, recorded in manifests and aligner provenance."""
    return " ".join(["modgap", *sys.argv[1:]])


def quiet_transformers() -> None:
    """No 🤗 download bars or load chatter in the middle of modgap's own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
