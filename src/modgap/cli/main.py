"""The ``modgap`` command: builds the app and registers one module per command group.

Command modules are thin: they parse options and print; the work is in the library, imported inside
each command so that ``modgap --help`` does not load torch. A command line naming a group builds the app
with that group alone (building every group's commands costs ~0.2 s of start-up); anything else, the whole.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

import typer

from modgap.cli.common import err
from modgap.errors import ModgapError

HELP = "Train multimodal models from unpaired data by closing the modality gap."
GROUPS = ("store", "align", "embed", "gap", "train", "generate", "embedder", "synth", "eval", "world")
# The command names on the command line, and the module that registers each.
COMMAND_MODULES = {**{g: g for g in GROUPS}, "demo": "world"}


def build_app(modules: Sequence[str] = GROUPS) -> typer.Typer:
    """The ``modgap`` app with the command groups of ``modules`` (all by default)."""
    root = typer.Typer(
        name="modgap",
        help=HELP,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    root.callback(help=HELP)(lambda: None)  # a group even with one command registered: it keeps its name
    for name in modules:
        importlib.import_module(f"modgap.cli.{name}").register(root)
    return root


def app_for(argv: Sequence[str]) -> typer.Typer:
    """The app a command line needs: its group alone when it names one, the whole app otherwise."""
    first = argv[0] if argv else None
    if first in COMMAND_MODULES:
        return build_app([COMMAND_MODULES[first]])
    return build_app()


def __getattr__(name: str) -> Any:
    if name == "app":  # the whole app, built on first use (tests and tools read its commands)
        return build_app()
    raise AttributeError(name)


def run(argv: Sequence[str] | None = None) -> int:
    """Run one command line (``sys.argv[1:]`` when None) and return its exit status; errors are one line."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        app_for(args)(args=args, prog_name="modgap")
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
