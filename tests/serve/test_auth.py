"""API keys: where they come from, what each may do, and the refusal of an open public bind."""

from __future__ import annotations

import os

import pytest

from kshot.errors import KshotError
from kshot.serve.auth import READ, WRITE, Keys, check_bind
from kshot.serve.settings import Settings
from tests.serve.conftest import png_bytes


def test_keys_from_the_environment_and_a_file(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# service keys\nrw writer-key\nro  reader-key  # the app\n\n")
    keys = Keys.load(keys_file, {"KSHOT_API_KEY": "env-rw", "KSHOT_READ_API_KEY": "env-ro"})
    assert keys.read_write == ("env-rw", "writer-key")
    assert keys.read_only == ("env-ro", "reader-key")
    assert [keys.level(k) for k in ("writer-key", "env-ro", "writer-ke", "", None)] == [
        WRITE,
        READ,
        None,
        None,
        None,
    ]
    assert not Keys.load(None, {}).enabled
    keys_file.write_text("rw a b\n")
    with pytest.raises(KshotError, match=r"keys:1: expected 'rw KEY'"):
        Keys.load(keys_file, {})
    with pytest.raises(KshotError, match="cannot read the API keys file"):
        Keys.load(tmp_path / "missing", {})


def test_an_open_server_listens_on_loopback_only():
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_bind(host, Keys())
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.org"):
        with pytest.raises(KshotError, match="refusing to listen"):
            check_bind(host, Keys())
        check_bind(host, Keys(read_only=("k",)))


def test_what_each_key_may_do(library, make_client):
    keys = Keys(read_write=("rw-secret",), read_only=("ro-secret",))
    client = make_client(Settings(libraries=(library,), keys=keys, device="cpu"))
    image = [("images", ("a.png", png_bytes("bars", 5), "image/png"))]
    query, enroll = "/v1/libraries/leaves/query", "/v1/libraries/leaves/classes/new/images"

    def call(method, path, key=None, **kwargs):
        headers = {"X-API-Key": key} if key is not None else {}
        return client.request(method, path, headers=headers, **kwargs)

    for key, status in ((None, 401), ("wrong", 401), ("ro-secret", 200), ("rw-secret", 200)):
        response = call("POST", query, key, files=image)
        assert response.status_code == status
        assert call("GET", "/v1/libraries/leaves/classes", key).status_code == status
    missing = call("POST", query, files=image).json()["error"]
    assert missing["code"] == "unauthorized" and "X-API-Key" in missing["message"]
    read_only = call("POST", enroll, "ro-secret", files=image)
    assert read_only.status_code == 403 and "read-only" in read_only.json()["error"]["message"]
    assert call("DELETE", "/v1/libraries/leaves/classes/bars", "ro-secret").status_code == 403
    assert call("POST", enroll, "wrong", files=image).status_code == 401
    assert call("POST", enroll, "rw-secret", files=image).status_code == 200
    assert call("DELETE", "/v1/libraries/leaves/classes/new", "rw-secret").status_code == 200
    for open_path in ("/livez", "/readyz", "/metrics", "/"):
        assert call("GET", open_path).status_code == 200


def test_a_library_on_read_only_storage_is_served_read_only(library, make_client, monkeypatch):
    from kshot.serve import libraries

    # The check is os.access(LIB, W_OK); as root it is always true, so say what storage says.
    writable = libraries.os.access
    monkeypatch.setattr(
        libraries.os, "access", lambda p, mode: mode != os.W_OK and writable(p, mode)
    )
    client = make_client(Settings(libraries=(library,), device="cpu"))
    image = [("images", ("a.png", png_bytes("bars", 5), "image/png"))]
    assert client.get("/v1/libraries/leaves").json()["read_only"] is True
    assert client.post("/v1/libraries/leaves/query", files=image).status_code == 200
    for refused in (
        client.post("/v1/libraries/leaves/classes/x/images", files=image),
        client.delete("/v1/libraries/leaves/classes/bars"),
    ):
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "read_only_library"
