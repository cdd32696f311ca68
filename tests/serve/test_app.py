"""The API in-process (FastAPI's test client): every endpoint, the answers and the refusals."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
from PIL import Image

from kshot.cli.render import query_result_json
from kshot.fewshot.library import Library
from kshot.serve.settings import Limits, Settings
from tests.cli.conftest import make_bomb
from tests.serve.conftest import CLASSES, png_bytes

QUERY = "/v1/libraries/leaves/query"


def files(*named: tuple[str, bytes]):
    return [("images", (name, data, "application/octet-stream")) for name, data in named]


@pytest.fixture
def client(library, make_client):
    return make_client(Settings(libraries=(library,), device="cpu"))


def test_query_answers_as_the_library_does_with_id_model_and_latency(client, library, tmp_path):
    queries = {f"{name}.png": png_bytes(name, 50 + i) for i, name in enumerate(CLASSES)}
    for name, data in queries.items():
        (tmp_path / name).write_bytes(data)
    response = client.post(QUERY, params={"top_k": 2}, files=files(*queries.items()))
    assert response.status_code == 200
    results = response.json()["results"]
    expected = Library.open(library, device="cpu").query(
        [tmp_path / name for name in queries], top_k=2
    )
    model = client.get("/v1/libraries/leaves").json()["model"]
    for result, local, name in zip(results, expected, queries, strict=True):
        assert {k: result[k] for k in ("label", "top_k")} == {
            k: v for k, v in query_result_json(local).items() if k in ("label", "top_k")
        }
        assert result["image"] == name and result["label"] == name.removesuffix(".png")
        assert result["score"] == pytest.approx(local.decision.score, abs=1e-5)
        assert result["request_id"] == response.headers["x-request-id"]
        assert result["model"] == model and len(model) == 64 and result["latency_ms"] > 0
        # the nearest enrolled images: ids of the catalogue, the best one of the answered class
        assert result["nearest"][0]["label"] == result["label"] and len(result["nearest"]) == 3


@pytest.mark.parametrize("tta", [("hflip",), ("full", "vflip")])
def test_a_library_with_tta_views_answers_as_it_does_locally(tmp_path, make_client, tta):
    from tests.serve.conftest import build_library

    root = build_library(tmp_path / "views", tta=tta)
    client = make_client(Settings(libraries=(root,), device="cpu"))
    (tmp_path / "q.png").write_bytes(png_bytes("corner", 61, size=40))
    served = client.post(
        "/v1/libraries/views/query",
        params={"threshold": 0},
        files=files(("q.png", png_bytes("corner", 61, size=40))),
    ).json()["results"][0]
    (local,) = Library.open(root, device="cpu").query([tmp_path / "q.png"], threshold=0)
    assert served["label"] == local.decision.label == "corner"
    assert served["score"] == pytest.approx(local.decision.score, abs=1e-5)


def test_query_parameters_pass_through(client):
    image = files(("q.png", png_bytes("bars", 60)))
    knn = client.post(QUERY, params={"method": "knn", "neighbours": 3}, files=image).json()
    assert knn["results"][0]["label"] == "bars"
    # noise: "unknown" under the library's own threshold, a class with threshold 0
    unsure = files(("q.png", png_bytes("noise", 60)))
    own = client.post(QUERY, params={"top_k": 1}, files=unsure).json()
    assert own["results"][0]["label"] == "unknown" and len(own["results"][0]["top_k"]) == 1
    never = client.post(QUERY, params={"threshold": 0}, files=unsure).json()
    assert never["results"][0]["label"] in CLASSES
    bad = client.post(QUERY, params={"method": "svm", "top_k": 0}, files=image)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
    assert "method" in bad.json()["error"]["message"] and "top_k" in bad.json()["error"]["message"]
    for threshold in ("nan", "1.01", "-0.1"):  # confidences lie in [0, 1]
        assert client.post(QUERY, params={"threshold": threshold}, files=image).status_code == 422


def test_base64_json_gives_the_multipart_answer(client):
    data = png_bytes("corner", 61)
    multipart = client.post(QUERY, files=files(("c.png", data))).json()["results"][0]
    body = {"images": [{"name": "c.png", "data": base64.b64encode(data).decode()}]}
    as_json = client.post(QUERY, json=body).json()["results"][0]
    drop = ("request_id", "latency_ms")
    assert {k: v for k, v in as_json.items() if k not in drop} == {
        k: v for k, v in multipart.items() if k not in drop
    }
    plain = client.post(QUERY, json={"images": [base64.b64encode(data).decode()]}).json()
    assert plain["results"][0]["image"] == "image 1"
    bad = client.post(QUERY, json={"images": [{"name": "x", "data": "@@@"}]})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_base64"


def _truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buffer, "JPEG"
    )
    return buffer.getvalue()[:400]


def test_bad_images_are_named_and_the_rest_answered(client, tmp_path):
    bomb = make_bomb(tmp_path / "bomb.png").read_bytes()
    mixed = client.post(
        QUERY,
        files=files(
            ("good.png", png_bytes("blob", 62)),
            ("notes.png", b"not an image at all"),
            ("cut.jpg", _truncated_jpeg()),
            ("bomb.png", bomb),
        ),
    )
    assert mixed.status_code == 200
    good, notes, cut, bombed = mixed.json()["results"]
    assert good["label"] == "blob"
    assert notes["image"] == "notes.png" and "not an image" in notes["error"]
    assert cut["image"] == "cut.jpg" and "truncated" in cut["error"].lower()
    assert "decompression bomb" in bombed["error"]
    # When no image at all can be used, the request is refused with the first one's reason.
    for data, status, code in (
        (b"GIF89a nonsense", 415, "not_an_image"),
        (_truncated_jpeg(), 415, "not_an_image"),
        (bomb, 413, "image_too_large"),
        (b"", 415, "not_an_image"),
    ):
        response = client.post(QUERY, files=files(("x", data)))
        assert response.status_code == status and response.json()["error"]["code"] == code


def test_requests_that_are_not_image_uploads_are_refused(client):
    cases = [
        (dict(content=b"raw bytes", headers={"content-type": "image/png"}), 415),
        (dict(files=[("other", ("a.png", png_bytes("bars", 1), "image/png"))]), 422),
        (dict(json={"pictures": []}), 422),
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400),
    ]
    for kwargs, status in cases:
        response = client.post(QUERY, **kwargs)
        assert response.status_code == status, response.text
        assert set(response.json()["error"]) == {"code", "message"}
    missing = client.post("/v1/libraries/nowhere/query", files=files(("a", b"")))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "library_not_found"
    assert client.get("/v2/nothing").json()["error"]["code"] == "not_found"


def test_limits_on_size_and_count(library, make_client):
    limits = Limits(max_request_bytes=20_000, max_images=3, max_pixels=40 * 40)
    client = make_client(Settings(libraries=(library,), limits=limits, device="cpu"))
    image = png_bytes("bars", 1)
    big = client.post(QUERY, files=files(("big.bin", b"x" * 30_000)))
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted as it arrives
        yield from [b"x" * 8_000] * 4

    chunked = client.post(QUERY, content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "request_too_large"
    many = client.post(QUERY, files=files(*[(f"{i}.png", image) for i in range(4)]))
    assert many.status_code == 413 and many.json()["error"]["code"] == "too_many_images"
    many_json = client.post(QUERY, json={"images": ["AA=="] * 4})
    assert many_json.status_code == 413
    large = client.post(QUERY, files=files(("large.png", png_bytes("bars", 1, size=48))))
    assert large.status_code == 413 and large.json()["error"]["code"] == "image_too_large"
    assert client.post(QUERY, files=files(*[("ok.png", image)] * 3)).status_code == 200


def test_a_full_queue_answers_429_with_retry_after(library, make_client):
    client = make_client(Settings(libraries=(library,), limits=Limits(max_queue=1), device="cpu"))
    image = png_bytes("bars", 1)
    response = client.post(QUERY, files=files(("a.png", image), ("b.png", image)))
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "overloaded"


def test_enroll_browse_thumbnail_and_forget(client, library):
    images = files(("one.png", png_bytes("bars", 70, 40)), ("two.png", png_bytes("bars", 71, 40)))
    enrolled = client.post("/v1/libraries/leaves/classes/Tomato leaf curl/images", files=images)
    assert enrolled.status_code == 200
    assert [a["image"] for a in enrolled.json()["added"]] == ["one.png", "two.png"]
    again = client.post("/v1/libraries/leaves/classes/Tomato leaf curl/images", files=images[:1])
    assert again.json()["duplicates"] == [{"image": "one.png", "label": "Tomato leaf curl"}]
    counts = {
        c["label"]: c["images"]
        for c in client.get("/v1/libraries/leaves/classes").json()["classes"]
    }
    assert counts == {"bars": 3, "blob": 3, "corner": 3, "Tomato leaf curl": 2}
    info = client.get("/v1/libraries/leaves").json()
    assert (info["classes"], info["images"], info["read_only"]) == (4, 11, False)
    ids = [
        i["id"]
        for i in client.get("/v1/libraries/leaves/classes/Tomato leaf curl").json()["images"]
    ]
    assert len(ids) == 2
    thumb = client.get(f"/v1/libraries/leaves/images/{ids[0]}/thumbnail")
    assert thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (40, 40)
    cli_enrolled = client.get("/v1/libraries/leaves/images/1/thumbnail")  # enrolled from a path
    assert cli_enrolled.status_code == 200
    assert client.get("/v1/libraries/leaves/images/999/thumbnail").status_code == 404
    # the uploaded bytes are kept in the library, named by their content
    kept = sorted(p.name for p in (library / "uploads").iterdir())
    assert len(kept) == 2 and all(len(name) == 64 + 4 for name in kept)
    # the same photo for another class is refused by name, and its file stays for the first
    other = client.post("/v1/libraries/leaves/classes/Second/images", files=images[1:]).json()
    assert other["added"] == [] and other["errors"][0]["image"] == "two.png"
    assert "already enrolled" in other["errors"][0]["error"]
    assert len(list((library / "uploads").iterdir())) == 2
    forgot = client.delete("/v1/libraries/leaves/classes/Tomato leaf curl")
    assert forgot.json()["removed"] == 2
    assert not list((library / "uploads").iterdir())  # forgotten with the class
    assert client.delete("/v1/libraries/leaves/classes/Tomato leaf curl").status_code == 404
    assert client.get("/v1/libraries/leaves/classes/Tomato leaf curl").status_code == 404


def test_labels_are_checked_and_never_become_paths(client, library, tmp_path):
    image = files(("a.png", png_bytes("corner", 80)))
    for label, reason in (("bad%09tab", "tab"), ("unknown", "reserved"), ("%20padded", "white")):
        response = client.post(f"/v1/libraries/leaves/classes/{label}/images", files=image)
        assert response.status_code == 422 and reason in response.json()["error"]["message"]
    three = client.post("/v1/libraries/leaves/classes/..%2F..%2Fescape/images", files=image)
    assert three.status_code == 422 and "levels" in three.json()["error"]["message"]
    before = set(tmp_path.rglob("*"))
    label = "../escape"  # a group "..", a class "escape": text, never a path
    response = client.post("/v1/libraries/leaves/classes/..%2Fescape/images", files=image)
    assert response.status_code == 200 and response.json()["added"][0]["label"] == label
    created = sorted(str(p.relative_to(library)) for p in set(tmp_path.rglob("*")) - before)
    assert len(created) == 2 and created[0] == "uploads"  # the upload, named by its content
    assert created[1].startswith("uploads/") and created[1].endswith(".png")
    assert label in {
        c["label"] for c in client.get("/v1/libraries/leaves/classes").json()["classes"]
    }


def test_embed_gives_the_library_models_unit_vectors(client, library, tmp_path):
    data = png_bytes("blob", 90)
    (tmp_path / "q.png").write_bytes(data)
    response = client.post("/v1/libraries/leaves/embed", files=files(("q.png", data), ("x", b"?")))
    first, second = response.json()["embeddings"]
    vector = np.array(first["vector"])
    from kshot.embedder.inference import embed_files

    expected = embed_files(Library.open(library, device="cpu").embedder, [tmp_path / "q.png"])
    assert vector.shape == (64,) and np.allclose(vector, expected.vectors[0], atol=1e-5)
    assert "error" in second


def test_health_metrics_docs_and_page(client):
    assert client.get("/livez").json() == {"status": "alive"}
    assert client.get("/readyz").json() == {"status": "ready", "libraries": {"leaves": "ready"}}
    client.post(QUERY, files=files(("a.png", png_bytes("bars", 1))))
    metrics = client.get("/metrics").text
    assert (
        'kshot_requests_total{method="POST",route="/v1/libraries/{name}/query",status="200"}'
        in metrics
    )
    assert 'kshot_library_images{library="leaves"} 9.0' in metrics
    assert "kshot_batch_images_count" in metrics and "kshot_queue_images" in metrics
    assert "/v1/libraries/{name}/query" in client.get("/openapi.json").json()["paths"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "https://" not in docs.text  # no CDN: often offline
    redoc = client.get("/redoc")
    assert redoc.status_code == 200 and "https://" not in redoc.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/docs-assets/{asset}" in docs.text
        assert len(client.get(f"/docs-assets/{asset}").content) > 10_000
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html") and "kshot" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere


def test_unready_libraries_answer_503(library, tmp_path, make_client, monkeypatch):
    from kshot.serve import libraries

    release = threading.Event()
    opened = libraries.ServedLibrary._open
    monkeypatch.setattr(
        libraries.ServedLibrary, "_open", lambda self: release.wait(10) and opened(self)
    )
    from fastapi.testclient import TestClient

    from kshot.serve.app import create_app

    with TestClient(create_app(Settings(libraries=(library,), device="cpu"))) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
        loading = client.post(QUERY, files=files(("a.png", png_bytes("bars", 1))))
        assert loading.status_code == 503 and loading.json()["error"]["code"] == "loading"
        assert client.get("/livez").status_code == 200
        release.set()
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("manifest.json", "catalogue.sqlite", "index.faiss"):
        (broken / name).write_bytes((library / name).read_bytes())
    (broken / "model.kshot").write_bytes(b"garbage")
    monkeypatch.setattr(libraries.ServedLibrary, "_open", opened)
    with TestClient(create_app(Settings(libraries=(broken,), device="cpu"))) as client:
        for _ in range(200):
            if client.get("/v1/libraries/broken").json()["error"]["code"] != "loading":
                break
            threading.Event().wait(0.05)
        failed = client.get("/v1/libraries/broken")
        assert failed.status_code == 503 and failed.json()["error"]["code"] == "unavailable"
        assert client.get("/readyz").status_code == 503


def test_a_library_deleted_while_served_fails_cleanly(client, library):
    import shutil

    shutil.rmtree(library)
    image = files(("a.png", png_bytes("bars", 3)))
    # what is already loaded still answers; a change cannot be stored, and says so
    assert client.post(QUERY, files=image).status_code == 200
    enroll = client.post("/v1/libraries/leaves/classes/new/images", files=image)
    assert enroll.status_code == 503 and enroll.json()["error"]["code"] == "cannot_write"
    forget = client.delete("/v1/libraries/leaves/classes/bars")
    assert forget.status_code == 503 and forget.json()["error"]["code"] == "cannot_write"
    assert client.get("/livez").status_code == 200


def test_a_library_without_classes_says_so(client):
    for label in CLASSES:
        assert client.delete(f"/v1/libraries/leaves/classes/{label}").status_code == 200
    response = client.post(QUERY, files=files(("a.png", png_bytes("bars", 3))))
    assert (
        response.status_code == 409 and "no enrolled images" in response.json()["error"]["message"]
    )


def test_a_request_over_the_time_limit_is_answered_503(library, make_client, monkeypatch):
    import time

    from kshot.serve import libraries

    forward = libraries.ServedLibrary._forward

    def slow(self, pixels):
        time.sleep(1.0)
        return forward(self, pixels)

    monkeypatch.setattr(libraries.ServedLibrary, "_forward", slow)
    limits = Limits(request_seconds=0.3)
    client = make_client(Settings(libraries=(library,), limits=limits, device="cpu"))
    response = client.post(QUERY, files=files(("a.png", png_bytes("bars", 3))))
    assert response.status_code == 503 and response.json()["error"]["code"] == "timeout"
    assert "0.3 s" in response.json()["error"]["message"]
    assert client.get("/livez").status_code == 200


def test_decoding_threads_prepare_tensors_on_one_thread(client):
    """The forward pass's OpenMP team must stay the only one (embedder/runtime.py)."""
    import torch

    decoding = client.app.state.decoding
    assert decoding.submit(torch.get_num_threads).result() == 1


def test_writes_run_on_the_writers_thread_and_queries_see_them(client, monkeypatch):
    """A write's disk syncs and refit never hold up the reader's queue of forward passes."""
    import threading

    from kshot.fewshot.library import Library

    threads = {}
    for method in ("enroll", "forget"):
        original = getattr(Library, method)

        def spy(self, *args, _original=original, _name=method, **kwargs):
            threads.setdefault(_name, threading.current_thread().name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Library, method, spy)
    enroll = "/v1/libraries/leaves/classes/writer-class/images"
    assert client.post(enroll, files=files(("w.png", png_bytes("noise", 9)))).status_code == 200
    answer = client.post(QUERY, files=files(("w.png", png_bytes("noise", 9)))).json()["results"]
    assert answer[0]["label"] == "writer-class"  # the reader sees the writer's commit at once
    assert client.delete("/v1/libraries/leaves/classes/writer-class").status_code == 200
    assert threads["enroll"].startswith("kshot-leaves-writer")
    assert threads["forget"].startswith("kshot-leaves-writer")
    assert "writer-class" not in {
        c["label"] for c in client.get("/v1/libraries/leaves/classes").json()["classes"]
    }
