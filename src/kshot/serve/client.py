"""A client of ``kshot serve`` for scripts, on the standard library alone (urllib).

from kshot.serve.client import Client
client = Client("http://127.0.0.1:8000", api_key=os.environ.get("KSHOT_API_KEY"))
for result in client.query("leaves", ["field-photo.jpg"], top_k=3):
    print(result["image"], result["label"], result["score"])
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path

from kshot.errors import KshotError

Image = str | Path | tuple[str, bytes]  # a file, or (name, bytes)


class ServerError(KshotError):
    """The server's JSON error: HTTP ``status``, ``code`` and its message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"server answered {status} {code}: {message}")
        self.status = status
        self.code = code


def multipart_body(images: Sequence[Image]) -> tuple[bytes, str]:
    """A multipart/form-data body with each image in the field ``images`` (the standard library
    has no multipart encoder, so this one is written here)."""
    boundary = uuid.uuid4().hex
    parts = []
    for image in images:
        name, data = image if isinstance(image, tuple) else (str(image), Path(image).read_bytes())
        # The name as given (UTF-8, as browsers send it); quotes and line breaks escaped.
        quoted = name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
            f'filename="{quoted}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class Client:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> dict:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        request = urllib.request.Request(self.url + path, body, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read())["error"]
                raise ServerError(exc.code, error["code"], error["message"]) from None
            except (ValueError, KeyError, TypeError):
                raise ServerError(exc.code, "http_error", str(exc.reason)) from None
        except urllib.error.URLError as exc:
            raise KshotError(f"cannot reach {self.url}: {exc.reason}") from None

    @staticmethod
    def _library(name: str) -> str:
        return "/v1/libraries/" + urllib.parse.quote(name, safe="")

    def query(
        self,
        library: str,
        images: Sequence[Image],
        top_k: int = 5,
        threshold: float | None = None,
        method: str | None = None,
        neighbours: int = 10,
    ) -> list[dict]:
        """One result per image, in order: the fields of ``kshot query --json`` and more;
        ``method`` and ``threshold`` None: the library's own."""
        params = {"top_k": top_k, "neighbours": neighbours}
        if method is not None:
            params["method"] = method
        if threshold is not None:
            params["threshold"] = threshold
        path = f"{self._library(library)}/query?{urllib.parse.urlencode(params)}"
        return self.request("POST", path, *multipart_body(images))["results"]

    def embed(self, library: str, images: Sequence[Image]) -> list[dict]:
        return self.request("POST", f"{self._library(library)}/embed", *multipart_body(images))[
            "embeddings"
        ]

    def enroll(self, library: str, label: str, images: Sequence[Image]) -> dict:
        path = f"{self._library(library)}/classes/{urllib.parse.quote(label, safe='')}/images"
        return self.request("POST", path, *multipart_body(images))

    def forget(self, library: str, label: str) -> dict:
        path = f"{self._library(library)}/classes/{urllib.parse.quote(label, safe='')}"
        return self.request("DELETE", path)

    def classes(self, library: str) -> list[dict]:
        return self.request("GET", f"{self._library(library)}/classes")["classes"]

    def info(self, library: str) -> dict:
        return self.request("GET", self._library(library))
