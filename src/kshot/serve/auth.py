"""API keys: read-write and read-only, from the environment or a file, compared in constant time.

No key at all means an open server, which ``kshot serve`` only binds to a loopback address.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from kshot.errors import KshotError

READ, WRITE = "read", "write"
ENV_READ_WRITE, ENV_READ_ONLY = "KSHOT_API_KEY", "KSHOT_READ_API_KEY"
_FILE_LEVELS = {"rw": WRITE, "read-write": WRITE, "ro": READ, "read-only": READ}


@dataclass(frozen=True)
class Keys:
    read_write: tuple[str, ...] = ()
    read_only: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.read_write or self.read_only)

    def level(self, presented: str | None) -> str | None:
        """``WRITE``, ``READ`` or ``None`` (no key, or a wrong one) for a presented key. Every
        key is compared, each with ``hmac.compare_digest``, so the time taken does not tell how
        much of a key was right nor which key matched."""
        if not presented:
            return None
        given = presented.encode()
        found = None
        for level, keys in ((READ, self.read_only), (WRITE, self.read_write)):
            for key in keys:
                if hmac.compare_digest(given, key.encode()):
                    found = level
        return found

    @classmethod
    def load(cls, path: Path | None = None, environ: dict | None = None) -> Keys:
        """Keys from ``KSHOT_API_KEY`` (read-write) and ``KSHOT_READ_API_KEY`` (read-only), plus
        those of ``path``: a line per key, ``rw KEY`` or ``ro KEY``; ``#`` starts a comment."""
        environ = os.environ if environ is None else environ
        keys = {WRITE: [], READ: []}
        for name, level in ((ENV_READ_WRITE, WRITE), (ENV_READ_ONLY, READ)):
            if environ.get(name, "").strip():
                keys[level].append(environ[name].strip())
        if path is not None:
            try:
                lines = Path(path).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise KshotError(
                    f"{path}: cannot read the API keys file ({exc.strerror})"
                ) from None
            for number, line in enumerate(lines, 1):
                words = line.split("#", 1)[0].split()
                if not words:
                    continue
                if len(words) != 2 or words[0] not in _FILE_LEVELS:
                    raise KshotError(
                        f"{path}:{number}: expected 'rw KEY' or 'ro KEY' (one key per line)"
                    )
                keys[_FILE_LEVELS[words[0]]].append(words[1])
        return cls(tuple(keys[WRITE]), tuple(keys[READ]))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, keys: Keys) -> None:
    """Refuse to serve an open (keyless) API on anything but loopback."""
    if not keys.enabled and not is_loopback(host):
        raise KshotError(
            f"refusing to listen on {host} without an API key: set {ENV_READ_WRITE} (and "
            f"{ENV_READ_ONLY} for read-only clients) or pass --api-keys FILE, or listen on "
            "127.0.0.1"
        )
