"""Errors a user can act on. The CLI prints their message as one line and exits non-zero."""

from __future__ import annotations

import errno
from pathlib import Path

# Exit codes: 0 done; 1 failed, or not one input could be used (one-line reasons on stderr); 2 bad
# command line (typer/click); 3 done, but some inputs were unusable (each reported on stderr or in
# the JSON output); 130 interrupted (Ctrl-C), what was committed kept.
EXIT_FAILED = 1
EXIT_SOME_INPUTS_FAILED = 3
EXIT_INTERRUPTED = 130


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


# What to do about each kind of OS failure, by errno: the message names the file and this advice.
_OS_ADVICE = {
    errno.EACCES: "permission denied; ask its owner for access, or run as a user who has it",
    errno.EPERM: "operation not permitted; ask its owner for access, or run as a user who has it",
    errno.ENOSPC: "no space left on the device; free some space and run the command again "
    "(what was already committed is kept)",
    errno.EDQUOT: "disk quota exceeded; free some space and run the command again "
    "(what was already committed is kept)",
    errno.EFBIG: "file size limit reached (see `ulimit -f`); raise it and run the command again "
    "(what was already committed is kept)",
    errno.EROFS: "read-only storage; a library there can be queried but not changed: copy it "
    "to writable storage to change it",
    errno.EIO: "input/output error from the storage; check the disk, then run the command again",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EISDIR: "is a directory",
}


def os_error_reason(exc: OSError) -> str:
    """What went wrong in ``exc`` and what to do, without the file name."""
    return _OS_ADVICE.get(exc.errno) or (exc.strerror or str(exc)).rstrip(".").lower()


def os_error_message(exc: OSError, path: str | Path | None = None) -> str:
    """One line for ``exc``: the file it concerns and what to do."""
    where = path if path is not None else exc.filename
    return f"{where}: {os_error_reason(exc)}" if where is not None else os_error_reason(exc)


class StorageError(KshotError):
    """The storage failed or refused (permissions, space, read-only): nothing half-written."""

    @classmethod
    def from_os(cls, exc: OSError, path: str | Path | None = None) -> StorageError:
        return cls(os_error_message(exc, path))
