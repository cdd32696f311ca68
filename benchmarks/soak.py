"""A bounded crash-and-concurrency soak of one library.

1. ``--kills`` times: a writer process enrolls the soak's photos two at a time (the index saved
   every 5 changes, so kills land in saves too) and is killed with SIGKILL at a random moment.
   After each kill the library must open, its index must hold exactly the catalogue's ids, its
   per-class sums must be those of its rows, no image may be there twice, and every commit the
   writer reported must still be there.
2. For ``--seconds``: two writers (enrolling pairs of photos and forgetting single ones, at
   random) and three readers (kNN and prototype queries) on the library at once. Every operation
   must succeed; the library is then checked as above.
3. A last writer enrolls every photo: the library must hold each exactly once.

Prints the counts: kills, operations, corrupted libraries, lost and duplicated images. The
photos are made here (small PNGs, four classes); the model is an untrained conv4.

    nice python benchmarks/soak.py --kills 20 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WRITER = """
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
from kshot.fewshot import index_cache, library

index_cache.FOLD_AFTER, library.ENROLL_BATCH = 5, 2
lib = library.Library.open(Path(sys.argv[1]), device="cpu")
files = [Path(p) for p in sys.argv[2:]]
print("ready", flush=True)
for start in range(0, len(files), 2):
    lib.enroll([(p, p.parent.name) for p in files[start : start + 2]])
    print("committed", len(lib.catalogue), flush=True)
"""

MIXED = """
import json, random, sys, time
from pathlib import Path

import torch

torch.set_num_threads(1)
from kshot.fewshot import index_cache, library

index_cache.FOLD_AFTER = 5
role, root, seconds, seed = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
files = [Path(p) for p in sys.argv[5:]]
rng = random.Random(seed)
lib = library.Library.open(root, device="cpu")
counts = {"ok": 0, "failed": 0, "errors": []}
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        if role == "writer" and rng.random() < 0.7:
            pair = rng.sample(files, 2)
            lib.enroll([(p, p.parent.name) for p in pair])
        elif role == "writer":
            lib.forget_images([str(rng.choice(files).resolve())])
        elif lib.classes():
            lib.query([rng.choice(files)], method=rng.choice(["knn", "prototype"]))
        counts["ok"] += 1
    except Exception as exc:  # counted and named: the soak's result
        counts["failed"] += 1
        counts["errors"].append(f"{type(exc).__name__}: {exc}"[:200])
print(json.dumps(counts), flush=True)
"""


def make_photos(root: Path, per_class: int) -> list[Path]:
    from PIL import Image

    photos = []
    for c, label in enumerate(("bars", "blob", "corner", "dots")):
        for i in range(per_class):
            rng = np.random.default_rng(1000 * c + i)
            base = np.kron(np.random.default_rng(c).integers(0, 256, (4, 4)), np.ones((8, 8)))
            pixels = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
            path = root / label / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, "L").save(path)
            photos.append(path)
    return photos


def sums_match_rows(lib) -> bool:
    """Whether the per-class sums the catalogue keeps are those of its rows."""
    labels, counts, sums = lib.catalogue.class_sums()
    entries = lib.catalogue.entries()
    held = np.asarray(entries.labels)
    if labels != sorted(set(entries.labels)):
        return False
    for label, count, total in zip(labels, counts, sums, strict=True):
        rows = entries.vectors[held == label].astype(np.float64)
        if count != len(rows) or not np.allclose(total, rows.sum(axis=0), atol=1e-6):
            return False
    return True


def check(root: Path, committed: int = 0, exactly: list[Path] | None = None) -> dict:
    """What is wrong with the library at ``root`` (empty when nothing)."""
    from kshot.fewshot.library import Library

    try:
        lib = Library.open(root, device="cpu")
        ids = lib.catalogue.ids().tolist()
        indexed = lib.index.ids().tolist()
        rows = lib.catalogue._query("SELECT label, sha256, source FROM images")
    except Exception as exc:  # a library that cannot be read is the failure counted here
        return {"corrupted": 1, "reason": str(exc)}
    problems = {}
    if sorted(indexed) != ids or not sums_match_rows(lib):
        problems["corrupted"] = 1
    duplicated = len(rows) - len({(label, sha) for label, sha, _ in rows})
    duplicated += len(indexed) - len(set(indexed))
    if duplicated:
        problems["duplicated"] = duplicated
    if len(ids) < committed:
        problems["lost"] = committed - len(ids)
    if exactly is not None:
        expected = {str(p.resolve()) for p in exactly}
        held = {source for _, _, source in rows}
        if expected - held:
            problems["lost"] = problems.get("lost", 0) + len(expected - held)
        if held - expected:
            problems["duplicated"] = problems.get("duplicated", 0) + len(held - expected)
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--per-class", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch

    from kshot.embedder.model import EmbedderConfig, build_embedder
    from kshot.fewshot.library import Library
    from kshot.index.vector_index import IndexSpec

    torch.set_num_threads(1)
    started, rng = time.monotonic(), random.Random(args.seed)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    work = Path(tempfile.mkdtemp(prefix="kshot-soak-"))
    photos = make_photos(work / "photos", args.per_class)
    torch.manual_seed(0)
    embedder = build_embedder(EmbedderConfig.for_backbone("conv4", embedding_dim=32), False)
    root = work / "lib"
    Library.create(root, embedder, {}, IndexSpec(use_gpu=False), device="cpu")
    totals = {"kills": 0, "operations": 0, "corrupted": 0, "lost": 0, "duplicated": 0}
    problems = []

    def record(found: dict) -> None:
        for key in ("corrupted", "lost", "duplicated"):
            totals[key] += found.get(key, 0)
        if found:
            problems.append(found)

    for _ in range(args.kills):
        order = photos[:]
        rng.shuffle(order)
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), *map(str, order)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        process.stdout.readline()  # "ready": the library is open
        time.sleep(rng.uniform(0.0, 1.5))
        process.send_signal(signal.SIGKILL)
        out, _ = process.communicate(timeout=120)
        commits = [int(line.split()[1]) for line in out.splitlines() if line.startswith("commit")]
        totals["kills"] += 1
        totals["operations"] += len(commits)
        record(check(root, max(commits, default=0)))
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", MIXED, role, str(root), str(args.seconds), str(seed)]
            + [str(p) for p in photos],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for seed, role in enumerate(["writer", "writer", "reader", "reader", "reader"])
    ]
    failures = []
    for process in processes:
        out, err = process.communicate(timeout=args.seconds + 300)
        counts = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"failed": 1}
        totals["operations"] += counts.get("ok", 0)
        failures += counts.get("errors", []) or ([err[-300:]] if process.returncode else [])
    totals["failed_operations"] = len(failures)
    record(check(root))
    final = subprocess.run(
        [sys.executable, "-c", WRITER, str(root), *map(str, photos)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    record(check(root, exactly=photos) if final.returncode == 0 else {"corrupted": 1})
    totals["seconds"] = round(time.monotonic() - started)
    totals["load"] = round(os.getloadavg()[0], 1)
    print(json.dumps(totals))
    for problem in problems + [{"failed": f} for f in failures[:10]]:
        print(json.dumps(problem))


if __name__ == "__main__":
    main()
