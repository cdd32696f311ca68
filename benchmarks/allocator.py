"""Batched CPU inference with and without kshot's malloc tuning (``runtime.tune_allocator``).

glibc's malloc hands large blocks back to the system after each forward pass, so the next pass
page-faults them in again. Each configuration runs in a fresh process (the setting cannot be
undone inside one), timing batch-32 forward passes of the backbone on a random tensor.

    python benchmarks/allocator.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = """
import json, resource, statistics, sys, time, torch
from kshot.embedder.model import EmbedderConfig, build_embedder
from kshot.embedder.runtime import tune_allocator
name, tuned, batch, repeats = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
if tuned:
    tune_allocator()
model = build_embedder(EmbedderConfig.for_backbone(name), pretrained=False).backbone.eval()
side = EmbedderConfig.for_backbone(name).preprocess.input_size
x = torch.randn(batch, 3, side, side)
runs = []
with torch.inference_mode():
    model(x)
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        runs.append(time.perf_counter() - start)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"img_s": batch / statistics.median(runs), "minor_faults": usage.ru_minflt,
                  "sys_s": usage.ru_stime, "user_s": usage.ru_utime}))
"""


def measure(name: str, tuned: bool, batch: int, repeats: int) -> dict:
    args = [sys.executable, "-c", CHILD, name, "1" if tuned else "0", str(batch), str(repeats)]
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="efficientnet_lite0,mobilenet_v2,efficientnet_b3")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| backbone | glibc default img/s (sys s) | tuned img/s (sys s) | speed-up |")
    print("|---|---:|---:|---:|")
    for name in args.backbones.split(","):
        start = time.perf_counter()
        plain = measure(name, False, args.batch, args.repeats)
        tuned = measure(name, True, args.batch, args.repeats)
        print(
            f"| {name} | {plain['img_s']:.1f} ({plain['sys_s']:.1f}) "
            f"| {tuned['img_s']:.1f} ({tuned['sys_s']:.1f}) "
            f"| {tuned['img_s'] / plain['img_s']:.2f}x |",
            flush=True,
        )
        print(f"  ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
