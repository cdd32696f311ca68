"""Terminal plumbing shared by the commands: notices, progress bars, failures."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer

# Exit codes: 0 done; 1 failed (one-line reason on stderr); 2 bad command line (typer/click);
# 3 done, but some inputs were unusable (each reported on stderr or in the JSON output).
EXIT_FAILED = 1
EXIT_SOME_INPUTS_FAILED = 3


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(self.format(record), err=True)


def setup_logging() -> None:
    """kshot's notices (one line each, e.g. an index rebuilt) go to stderr."""
    logger = logging.getLogger("kshot")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("kshot: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def say(message: str) -> None:
    """A line for people, on stderr, so that stdout stays clean for ``--json``."""
    typer.echo(message, err=True)


@contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (only drawn on a terminal); yields ``advance(n)``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    console = Console(stderr=True)
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(
        *columns, console=console, transient=True, disable=not console.is_terminal
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
