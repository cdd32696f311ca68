"""Errors a user can act on. The CLI prints their message as one line and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class KshotError(Exception):
    """A failure with a message that says what went wrong and, where it can, what to do."""


class InputError(KshotError):
    """One input (an image, a label) is unusable; the rest of its batch goes on."""

    def __init__(self, source: str | Path, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")

    def __reduce__(self):  # rebuilt from both fields when sent from a worker process
        return (type(self), (self.source, self.reason))
