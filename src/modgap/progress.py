"""Progress reporting: library code calls a :class:`Progress`; the CLI passes one that draws rich bars."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class Tracker(Protocol):
    """Advance by ``n`` items; ``info`` replaces the bar's status text (a training loss, tokens/s)."""

    def __call__(self, n: int, info: str | None = None) -> None: ...


class ProgressFactory(Protocol):
    """``with progress(description, total, completed) as advance: ...``; ``completed`` counts work done before
    (a resumed run starts its bar there)."""

    def __call__(
        self, description: str, total: int | None, completed: int = 0
    ) -> contextlib.AbstractContextManager[Tracker]: ...


@contextlib.contextmanager
def silent(description: str, total: int | None, completed: int = 0) -> Iterator[Tracker]:
    yield lambda n, info=None: None


class RateColumn(ProgressColumn):
    """Items per second."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} {self.unit}/s", style="progress.data.speed")


def rich_progress(console: Console | None = None, unit: str = "rows") -> ProgressFactory:
    """A factory of rich progress bars (rows/s and ETA) printed to stderr."""
    console = console or Console(stderr=True)

    @contextlib.contextmanager
    def track(description: str, total: int | None, completed: int = 0) -> Iterator[Tracker]:
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            RateColumn(unit),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        ]
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(description, total=total, completed=completed, info="")

            def advance(n: int, info: str | None = None) -> None:
                if info is None:
                    bar.advance(task, n)
                else:
                    bar.update(task, advance=n, info=info)

            yield advance

    return track
