"""The CLI's consoles: rich output, not cut to 80 columns when written to a file or pipe."""

from __future__ import annotations

import sys

from rich.console import Console

PIPE_WIDTH = 200  # tables (demo, gap report) are wider than rich's 80-column default for non-terminals


def console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else PIPE_WIDTH)
