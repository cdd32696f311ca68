"""kill -9 of the server while it enrolls through the API: the library still opens and answers."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np

from kshot.fewshot.library import Library
from kshot.serve.client import Client
from tests.cli.conftest import make_image
from tests.serve.conftest import Server, build_library, png_bytes


def test_kill_9_during_api_enrollment_leaves_a_library_that_answers(tmp_path):
    root = build_library(tmp_path / "crash")
    server = Server(root).wait_ready()
    client = Client(server.url, timeout=5)
    stop = threading.Event()
    sent = []

    def enroll_until_killed():
        for i in range(10_000):
            if stop.is_set():
                return
            images = [(f"{i}-{j}.png", png_bytes("blob", 5000 + 4 * i + j, 48)) for j in range(4)]
            try:
                client.enroll("crash", f"batch-{i % 3}", images)
                sent.append(i)
            except Exception:
                return

    thread = threading.Thread(target=enroll_until_killed)
    thread.start()
    deadline = time.monotonic() + 20
    while len(sent) < 3 and time.monotonic() < deadline:  # enrolling in earnest
        time.sleep(0.02)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    stop.set()
    thread.join(10)
    server.stop()
    assert len(sent) >= 3

    library = Library.open(root, device="cpu")
    counts = dict(library.classes())
    assert counts["bars"] == 3 and sum(counts.values()) >= 9 + 4 * len(sent)
    assert np.array_equal(np.sort(library.index.ids()), library.catalogue.ids())
    query = make_image(tmp_path / "q.png", "corner", 77)
    (answer,) = library.query([query], top_k=3)
    assert answer.decision.label == "corner"
