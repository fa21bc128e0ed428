"""Commands whose options are generated from settings dataclasses (``modgap train``, ``embedder``, ``synth``).

Each field is one option: its metadata holds the help text and, where it differs from ``--field-name``,
the flag (see :func:`modgap.files.setting`). ``--config FILE`` takes the same settings from JSON/YAML;
options given on the command line win.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

CONFIG_OPTION = "config"


def _cli_type(tp: Any) -> Any:
    """The type Typer parses: paths stay strings, lists of strings are repeatable options."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is list:
        return list[str] | None
    if args and len(args) == 1:
        return args[0] | None
    return tp


def option_fields(cls: type, skip: tuple[str, ...]) -> list[dataclasses.Field]:
    """The options of ``cls``: its own fields first, then those it inherits (the run settings every recipe has)."""
    inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)}
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
    return [f for f in fields if f.name not in inherited] + [f for f in fields if f.name in inherited]


def given_on_command_line(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was set by the user (command line or environment), not left at its default.

    Compared by name: typer bundles its own click, whose ``ParameterSource`` is not the ``click`` package's
    (comparing the enums made every option look given, so a ``--config`` file was ignored)."""
    source = ctx.get_parameter_source(name)
    return source is not None and getattr(source, "name", str(source)) not in ("DEFAULT", "DEFAULT_MAP")


def setting_params(cls: type, skip: tuple[str, ...] = (), *, required: bool = True) -> list[inspect.Parameter]:
    """One keyword-only parameter per field of ``cls`` (except ``skip``), annotated as its Typer option: the
    field's help, its flag (``--field-name`` unless the field names another), ``--x/--no-x`` for a bool
    (a field may name both flags); a field without default is a required option unless ``required`` is
    False (a ``--config`` file may give it)."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in option_fields(cls, skip):
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        if hints[f.name] is bool and "/" not in flag:  # a flag a config file turned on can be turned off here
            flag = f"{flag}/--no-{flag[2:]}"
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = None if f.default_factory is not dataclasses.MISSING or not required else inspect.Parameter.empty
        annotation = Annotated[_cli_type(hints[f.name]), typer.Option(flag, help=f.metadata.get("help"))]
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))
    return params


def settings_from_options(cls: type, options: dict[str, Any], skip: tuple[str, ...] = ()) -> Any:
    """``cls`` built from the parsed options its :func:`setting_params` made (removed from ``options``); an
    option list left empty is the field's empty list."""
    return cls(
        **_lists_filled(cls, {f.name: options.pop(f.name) for f in dataclasses.fields(cls) if f.name not in skip})
    )


def _lists_filled(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each list setting a list (Typer gives None for a repeatable option never given)."""
    hints = typing.get_type_hints(cls)
    return {k: list(v or []) if typing.get_origin(hints[k]) is list else v for k, v in values.items()}


def with_signature(command: Callable[..., None], params: list[inspect.Parameter]) -> Callable[..., None]:
    """``command`` presented to Typer with the parameters ``params`` (it receives them as keywords)."""
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def settings_command(cls: type, skip: tuple[str, ...], run: Callable[[dict[str, Any], Path | None], None]) -> Any:
    """A Typer command with one option per field of ``cls`` (except ``skip``) plus ``--config``; it calls
    ``run(given, config_file)`` with the options the user set (all of them when there is no config file)."""

    def command(ctx: typer.Context, **options: Any) -> None:
        config_file = options.pop(CONFIG_OPTION)
        given = {
            name: value
            for name, value in options.items()
            if given_on_command_line(ctx, name) or not config_file  # without a file, defaults come from here too
        }
        run(_lists_filled(cls, given), config_file)

    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    params += setting_params(cls, skip, required=False)
    config_help = "JSON/YAML file of these settings (options given here win)."
    params.append(
        inspect.Parameter(
            CONFIG_OPTION,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[Path | None, typer.Option("--config", help=config_help)],
        )
    )
    return with_signature(command, params)


def report_training(result: Any, run_dir: str | None, finished: str) -> None:
    """The line a training command ends with: how to continue a run stopped early, or what was trained
    (``finished`` follows the step count and the final loss)."""
    from modgap.cli.common import out

    if result.stopped_early:
        out.print(f"stopped after step {result.steps} (checkpoint in {run_dir}/checkpoints; --resume continues)")
    else:
        out.print(f"trained {result.steps} steps, final loss {result.final_loss:.4f}, {finished}")
