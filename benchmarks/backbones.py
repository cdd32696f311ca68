"""Every listed backbone's speed in fp32 and bf16 on this CPU, against its measured matmul peak.

One thread, timed in CPU seconds of this process (``time.process_time``): on a machine shared
with other work, wall time measures the neighbours. For each backbone, fp32 and bf16 passes
alternate after a warm-up of each, as kshot embeds: channels-last weights, bf16 under autocast.
Columns: ms/image at batch 1 (best of 2) and at batch 32 (one pass; 8 above ``--heavy``
GFLOPs/image: a bounded run on a shared 2-core machine, and less memory for EfficientNet-B7's
600-pixel activations);
the bf16/fp32 speed-up; the effective GFLOP/s at the large batch as a share of this CPU's
one-thread peak (a 2048-square ``torch.matmul`` in the same precision, measured in the same run,
at its start and its end); the mean cosine between the fp32 and bf16 embeddings of the same two
(random) images. GFLOPs per image are counted by torch's FlopCounterMode on the meta device (a
multiply-add counts 2).

Weights are random (only EfficientNet-Lite0's ImageNet weights are on this machine): speed does
not depend on them. Where weights are present, ``--plantvillage`` adds the few-shot accuracy of
benchmarks/plantvillage.py (15 new classes, 1 and 5 shots) in fp32 and in bf16.

    nice python benchmarks/backbones.py --out /tmp/backbones.json [--only NAME ...]
    python benchmarks/backbones.py --out /tmp/backbones.json --table   # the markdown again
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from kshot.embedder.backbone_info import describe, listed_backbones
from kshot.embedder.inference import embed_batch
from kshot.embedder.model import EmbedderConfig, build_embedder
from kshot.embedder.precision import cpu_bf16_flags, mean_cosine
from kshot.embedder.runtime import tune_allocator
from kshot.embedder.speed import ms_per_image

CPU = torch.device("cpu")
# One thread, timed in CPU seconds of this process: on a machine shared with other work, wall
# time measures the neighbours; one thread's CPU time measures the model.
CLOCK = time.process_time
TIMM_BENCHMARKED = (
    "timm:vit_small_patch14_dinov2.lvd142m",
    "timm:convnext_small.fb_in22k",
    "timm:vit_base_patch16_clip_224.openai",
    "timm:vit_base_patch16_siglip_224.v2_webli",
    "timm:resnetv2_50x1_bit.goog_in21k",
)


def matmul_peak(dtype: torch.dtype, side: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s (per CPU second) of the best of ``repeats`` ``side``-square matrix products in
    ``dtype``."""
    a = torch.randn(side, side).to(dtype)
    b = torch.randn(side, side).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = CLOCK()
        torch.matmul(a, b)
        best = min(best, CLOCK() - start)
    return 2 * side**3 / best / 1e9


def _alternating(embedder, batch: int, rounds: int) -> dict:
    """Best ms/image per precision over ``rounds`` rounds of one fp32 then one bf16 pass: on a
    shared machine the load drifts, and alternating exposes both precisions to the same drift."""
    best = {"fp32": float("inf"), "bf16": float("inf")}
    for _ in range(rounds):
        for precision in best:
            embedder.precision = precision
            ms = ms_per_image(embedder, batch, warmup=False, clock=CLOCK)
            best[precision] = min(best[precision], ms)
    return best


def bench(name: str, peaks: dict, heavy: float) -> dict:
    info = describe(name, details=True)
    torch.manual_seed(0)
    config = EmbedderConfig.for_backbone(name)
    embedder = build_embedder(config, pretrained=False).for_inference(CPU)
    # The batch the large-batch columns use: 32, or fewer for heavy models (a bounded run).
    batch = 32 if info.gflops <= heavy else 8
    row = {"name": name, "gflops": info.gflops, "parameters": info.parameters, "batch": batch}
    side, channels = config.preprocess.input_size, config.preprocess.channels
    images = torch.randn(2, channels, side, side, generator=torch.Generator().manual_seed(1))
    vectors = {}
    for precision in ("fp32", "bf16"):  # warm-up, and the embeddings compared
        embedder.precision = precision
        vectors[precision] = embed_batch(embedder, images)
    b1 = _alternating(embedder, 1, rounds=2)
    large = _alternating(embedder, batch, rounds=1)
    for precision in ("fp32", "bf16"):
        row[f"{precision}_ms_b1"] = b1[precision]
        row[f"{precision}_ms_batch"] = large[precision]
        row[f"{precision}_gflops_per_s"] = info.gflops / (large[precision] / 1000)
        row[f"{precision}_of_peak"] = row[f"{precision}_gflops_per_s"] / peaks[precision]
    row["speedup_b1"] = row["fp32_ms_b1"] / row["bf16_ms_b1"]
    row["speedup_batch"] = row["fp32_ms_batch"] / row["bf16_ms_batch"]
    row["cosine"], row["lowest_cosine"] = mean_cosine(vectors["fp32"], vectors["bf16"])
    return row


def plantvillage(name: str) -> dict:
    """Few-shot accuracy with the pretrained weights, in fp32 and bf16."""
    sys.path.insert(0, str(Path(__file__).parent))
    from plantvillage import DATA, few_shot_accuracy, split_classes

    embedder = build_embedder(EmbedderConfig.for_backbone(name), pretrained=True)
    embedder = embedder.for_inference(CPU)
    _, new = split_classes(DATA)
    result = {}
    for precision in ("fp32", "bf16"):
        embedder.precision = precision
        start = time.perf_counter()
        result[precision] = few_shot_accuracy(embedder, new)
        result[precision]["seconds"] = time.perf_counter() - start
    return result


def markdown(results: dict) -> str:
    """The table of BENCHMARKS.md."""
    lines = [
        "| backbone | GFLOPs | params | batch | b1 fp32 ms | b1 bf16 ms | b1 bf16 speed-up "
        "| batch fp32 ms/img | batch bf16 ms/img | batch bf16 speed-up | fp32 % of peak "
        "| bf16 % of peak | fp32-bf16 cosine |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["backbones"]:
        lines.append(
            f"| {r['name']} | {r['gflops']:.1f} | {r['parameters'] / 1e6:.1f}M | {r['batch']} "
            f"| {r['fp32_ms_b1']:.0f} | {r['bf16_ms_b1']:.0f} | {r['speedup_b1']:.2f}x "
            f"| {r['fp32_ms_batch']:.0f} | {r['bf16_ms_batch']:.0f} | {r['speedup_batch']:.2f}x "
            f"| {100 * r['fp32_of_peak']:.0f}% | {100 * r['bf16_of_peak']:.0f}% "
            f"| {r['cosine']:.5f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file of the results")
    parser.add_argument("--only", action="append", help="benchmark only these backbones")
    parser.add_argument("--heavy", type=float, default=20.0, help="GFLOPs above which batch 8")
    parser.add_argument("--plantvillage", action="store_true")
    parser.add_argument("--table", action="store_true", help="print the table of --out, only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.table:
        print(markdown(json.loads(args.out.read_text())))
        return
    tune_allocator()
    names = args.only or [n for n in listed_backbones() if not n.startswith("timm:")]
    if not args.only:
        names = [n for n in names if n != "conv4"] + list(TIMM_BENCHMARKED)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    results = {
        "threads": torch.get_num_threads(),
        "bf16_flags": sorted(cpu_bf16_flags()),
        "load_before": os.getloadavg(),
        "peak_gflops_per_s": peaks,
        "backbones": [],
    }
    print(f"matmul peak: fp32 {peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f} GFLOP/s", flush=True)
    for name in names:
        start = time.perf_counter()
        row = bench(name, peaks, args.heavy)
        row["seconds"] = time.perf_counter() - start
        results["backbones"].append(row)
        print(json.dumps(row), flush=True)
        args.out.write_text(json.dumps(results, indent=1))
    if args.plantvillage:
        results["plantvillage"] = {"efficientnet_lite0": plantvillage("efficientnet_lite0")}
        print(json.dumps(results["plantvillage"]), flush=True)
    print(markdown(results))
    results["load_after"] = os.getloadavg()
    results["peak_gflops_per_s_after"] = {
        "fp32": matmul_peak(torch.float32),
        "bf16": matmul_peak(torch.bfloat16),
    }
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
