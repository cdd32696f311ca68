"""One class folder of 100,000 photos, enrolled as a user would: ``kshot enroll LIB --label X
FOLDER``, interrupted with Ctrl-C (SIGINT) and killed with SIGKILL at random moments, then run
again until it finishes.

Checks after every stop that the library opens and holds each committed photo once, and at the
end that it holds every photo exactly once; prints how long listing and hashing took, photos per
second, and how many photos each rerun skipped because they were already committed. The photos
are made here: distinct 24x24 PNGs (noise over one of four patterns); the model is an untrained
conv4 (the cost measured is kshot's, not a backbone's).

    nice python benchmarks/many_files.py --photos 100000 --interrupts 2 --kills 2
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KSHOT = [sys.executable, "-m", "kshot"]


def make_photos(folder: Path, count: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = np.indices((24, 24)).sum(0)
    for i in range(count):
        pattern = (base * (i % 4 + 1) % 7 * 36).astype(np.uint8)
        noise = rng.integers(0, 32, size=(24, 24), dtype=np.uint8)
        Image.fromarray(np.stack([pattern + noise] * 3, axis=-1)).save(folder / f"{i:06d}.png")


def held(library: Path) -> tuple[int, int]:
    """``(rows, distinct photos)`` in the catalogue, read directly (no kshot involved)."""
    with sqlite3.connect(library / "catalogue.sqlite") as db:
        return db.execute("SELECT COUNT(*), COUNT(DISTINCT sha256) FROM images").fetchone()


def enroll(library: Path, folder: Path, stop: str | None, after: float) -> dict:
    """One ``kshot enroll`` run, stopped by ``stop`` (INT or KILL) after ``after`` s if given."""
    before = held(library)[0]
    started = time.perf_counter()
    command = [*KSHOT, "--threads", "1", "enroll", str(library), "--label", "x", str(folder)]
    run = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as at a terminal: a benchmark started in the background (``&``) would pass
        # its ignored SIGINT on to the command, which would then never see one.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    if stop is not None:
        try:
            run.wait(timeout=after)
        except subprocess.TimeoutExpired:
            run.send_signal(signal.SIGINT if stop == "INT" else signal.SIGKILL)
    out, err = run.communicate()
    rows, distinct = held(library)
    opened = subprocess.run([*KSHOT, "info", str(library)], capture_output=True, text=True)
    return {
        "stop": stop or "none",
        "seconds": time.perf_counter() - started,
        "exit": run.returncode,
        "added": rows - before,
        "rows": rows,
        "duplicates": rows - distinct,
        "opens": opened.returncode == 0,
        "said": ((out + err).strip().splitlines() or [""])[-1][:160],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=100_000)
    parser.add_argument("--interrupts", type=int, default=2)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kshot-many-"))
    started = time.perf_counter()
    make_photos(work / "photos", args.photos)
    print(f"{args.photos} photos made in {time.perf_counter() - started:.0f} s", flush=True)
    library = work / "lib"
    init = [*KSHOT, "init", str(library), "--backbone", "conv4", "--no-pretrained"]
    subprocess.run(init, check=True, capture_output=True)
    stops = ["INT"] * args.interrupts + ["KILL"] * args.kills
    random.Random(args.seed).shuffle(stops)
    rng = random.Random(args.seed + 1)
    print("| run | stopped by | after s | exit | photos added | held | duplicates | opens |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for n, stop in enumerate([*stops, None, None]):
        row = enroll(library, work / "photos", stop, rng.uniform(3, 15))
        print(
            f"| {n + 1} | {row['stop']} | {row['seconds']:.0f} | {row['exit']} | {row['added']:,} "
            f"| {row['rows']:,} | {row['duplicates']} | {row['opens']} |",
            flush=True,
        )
        print(f"  its last line: {row['said']!r}", flush=True)
    rows, distinct = held(library)
    verdict = "every photo held exactly once" if rows == distinct == args.photos else "MISMATCH"
    print(f"{verdict}: {rows:,} rows, {distinct:,} distinct; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
