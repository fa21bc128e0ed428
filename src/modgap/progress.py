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
    def __call__(self, n: int) -> None: ...


class ProgressFactory(Protocol):
    def __call__(self, description: str, total: int | None) -> contextlib.AbstractContextManager[Tracker]: ...


@contextlib.contextmanager
def silent(description: str, total: int | None) -> Iterator[Tracker]:
    yield lambda n: None


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
    def track(description: str, total: int | None) -> Iterator[Tracker]:
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            RateColumn(unit),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)

    return track
