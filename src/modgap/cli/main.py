"""The ``modgap`` command: builds the app and registers one module per command group.

Command modules are thin: they parse options and print; the work is in the library, imported inside
each command so that ``modgap --help`` does not load torch.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from modgap.cli import align, embed, embedder, eval, gap, generate, store, synth, train, world
from modgap.cli.common import err
from modgap.errors import ModgapError

app = typer.Typer(
    name="modgap",
    help="Train multimodal models from unpaired data by closing the modality gap.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
GROUPS = (store, align, embed, gap, train, generate, embedder, synth, eval, world)
for group in GROUPS:
    group.register(app)


def run(argv: Sequence[str] | None = None) -> int:
    """Run one command line (``sys.argv[1:]`` when None) and return its exit status; errors are one line."""
    try:
        app(args=None if argv is None else list(argv), prog_name="modgap")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        err.print(str(e.code), highlight=False, soft_wrap=True)
        return 1
    except ModgapError as e:
        from rich.markup import escape

        # The message is the user's text (paths, templates like "[INST] ... [/INST]"), never rich markup.
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
