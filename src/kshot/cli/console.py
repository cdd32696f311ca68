"""Terminal plumbing shared by the commands: notices, progress bars, failures."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer

from kshot.errors import (  # the commands take them from here
    EXIT_FAILED,
    EXIT_INTERRUPTED,  # noqa: F401
    EXIT_SOME_INPUTS_FAILED,
)


def outcome(done: int, failed: int) -> int:
    """The exit code of a run over inputs: 0 all done, 3 some failed, 1 none could be done."""
    if not failed:
        return 0
    return EXIT_SOME_INPUTS_FAILED if done else EXIT_FAILED


def failure_message(exc: BaseException) -> str | None:
    """The one line a failure is told in, naming the file and what to do; ``None`` for a bug
    (which keeps its traceback)."""
    import sqlite3

    from kshot.errors import KshotError, os_error_message

    if isinstance(exc, KshotError):
        return str(exc)
    if isinstance(exc, OSError):
        return os_error_message(exc)
    if isinstance(exc, sqlite3.Error):
        return f"the library's catalogue failed ({exc}); run the command again"
    return None


def set_thread_count(threads: int) -> None:
    """Use ``threads`` CPU threads in torch and FAISS (OpenMP): set before either is imported,
    and set in torch if it already is."""
    import os
    import sys

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(threads)


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
