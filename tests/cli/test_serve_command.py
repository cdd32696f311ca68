"""``kshot serve``'s checks before it starts serving (serving itself: tests/serve)."""

from __future__ import annotations

import subprocess
import sys


def test_serve_refuses_a_public_bind_without_a_key(kshot, library, monkeypatch):
    monkeypatch.delenv("KSHOT_API_KEY", raising=False)
    monkeypatch.delenv("KSHOT_READ_API_KEY", raising=False)
    output = kshot("serve", library, "--host", "0.0.0.0", code=1).output
    assert "refusing to listen on 0.0.0.0 without an API key" in output


def test_serve_refuses_what_is_not_a_library_or_a_bad_keys_file(kshot, library, tmp_path):
    assert "not a kshot library" in kshot("serve", tmp_path, code=1).output
    keys = tmp_path / "keys"
    keys.write_text("admin secret\n")
    output = kshot("serve", library, "--api-keys", keys, code=1).output
    assert "expected 'rw KEY' or 'ro KEY'" in output


def test_the_cli_starts_without_importing_the_server():
    probe = (
        "import sys, kshot.cli.app; print(any(m in sys.modules for m in ('fastapi', 'uvicorn')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
