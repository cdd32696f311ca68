"""Decision rules, centring, test-time augmentation and backbone ensembles on PlantVillage, with
zero training: what ``kshot init`` and ``kshot query`` should do by default.

Closed set (the PlantVillage split of ``benchmarks/plantvillage.py``): the 15 Tomato, Potato and
Pepper classes of ``../shared/data/plantvillage-leaf38`` are enrolled from 1 or 5 photos each,
every other photo of theirs is a query; 15-way accuracy, the mean of 5 seeded draws of the
enrolled photos. Every embedder (backbone or ensemble, with or without TTA) embeds each photo
once, timed (ms/image, batch 32); every rule and centring then decides from those embeddings,
fitted on the enrolled photos only, exactly as a library fits them (``kshot.fewshot.decider``).
The first row of the table, Lite0 prototypes, is the baseline of the same run.

In a library (``--known``, 20): the same draws enrolled beside the next 20 photos of each of the
23 other crops' classes (after the ``--others`` far unknowns), as a user's library holds known
classes when new ones arrive; the new classes' queries are answered among all 38 classes.

Open set, 5 shots, each embedder with each rule, calibrated on the enrolled photos only (the
library's own threshold): *near*, 5 of the 15 classes held out of the library (other diseases of
the same crops; 5 seeded draws); *far*, the 23 classes of the other crops held out (the first 10
photos of each, ``--others``). Reported: ROC-AUC of known against unknown queries on the
confidence, and at the library's own threshold the share of known queries rejected and of
unknown queries given a class.

    python benchmarks/decisions.py --json /tmp/decisions.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from kshot.embedder.checkpoint import load_checkpoint
from kshot.embedder.inference import embed_files
from kshot.embedder.model import EmbedderConfig, build_embedder
from kshot.fewshot.decider import Decider, DecisionSettings
from kshot.fewshot.metrics import known_unknown_auroc

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "plantvillage-leaf38"
NEW_CROPS = ("Tomato", "Potato", "Pepper")
DRAWS = 5
RULES = (("prototype", "none"), ("prototype", "library"), ("prototype", "whiten"))
RULES += (("knn", "none"), ("logistic", "none"), ("logistic", "library"), ("logistic", "whiten"))


def photos(data: Path, others: int, known: int) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Every photo of the new classes; of each other class, the first ``others`` (far unknowns)
    then ``known`` more (a library's known classes), marked True in the third array."""
    paths, labels, in_library = [], [], []
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        kept = sorted(folder.iterdir())
        marks = [False] * len(kept)
        if not folder.name.startswith(NEW_CROPS):
            kept = kept[: others + known]
            marks = [i >= others for i in range(len(kept))]
        paths += kept
        labels += [folder.name] * len(kept)
        in_library += marks
    return paths, np.asarray(labels), np.asarray(in_library)


def embed(backbone: str, tta: tuple[str, ...], paths: list[Path]) -> tuple[np.ndarray, float]:
    """Unit embeddings of ``paths`` by ``backbone`` (a name, or a model file of ``kshot train``)
    and the ms per image it took (batch 32)."""
    if backbone.endswith(".kshot"):
        embedder = load_checkpoint(Path(backbone))[0].eval()
    else:
        embedder = build_embedder(EmbedderConfig.for_backbone(backbone)).eval()
    embedder = embedder.for_inference(torch.device("cpu"))
    kwargs = {"tta": tta} if tta else {}
    embed_files(embedder, paths[:32], **kwargs)  # warm-up
    start = time.perf_counter()
    embedded = embed_files(embedder, paths, **kwargs)
    milliseconds = 1000 * (time.perf_counter() - start) / len(paths)
    if embedded.errors:
        raise SystemExit(f"unreadable: {embedded.errors[:3]}")
    return embedded.vectors, milliseconds


def draw(labels: np.ndarray, classes, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Support and query indices: every other photo of each class a query, ``shots`` of the rest
    enrolled (seeded)."""
    rng = np.random.default_rng(seed)
    support, query = [], []
    for name in classes:
        members = np.flatnonzero(labels == name)
        query.extend(members[1::2])
        support.extend(rng.choice(members[0::2], size=shots, replace=False))
    return np.asarray(support), np.asarray(query)


def closed_set(vectors, labels, new, settings: DecisionSettings, shots: int, known=None) -> float:
    """New-class accuracy; ``known`` (indices), enrolled too: answered among all classes."""
    accuracies = []
    for seed in range(DRAWS):
        support, query = draw(labels, new, shots, seed)
        if known is not None:
            support = np.concatenate([support, known])
        decider = Decider.fit(settings, vectors[support], labels[support], calibrated=False)
        best = np.asarray(decider.classes)[decider.scores(vectors[query]).argmax(axis=1)]
        accuracies.append(float(np.mean(best == labels[query])))
    return float(np.mean(accuracies))


def open_set(vectors, labels, known, unknown, settings, seed) -> dict:
    """Known classes enrolled (5 shots); queries of known and unknown classes."""
    support, query = draw(labels, known, 5, seed)
    unknown_queries = np.flatnonzero(np.isin(labels, unknown))
    decider = Decider.fit(settings, vectors[support], labels[support])
    k = decider.confidences(decider.scores(vectors[query]), vectors[query]).max(axis=1)
    unknown = vectors[unknown_queries]
    u = decider.confidences(decider.scores(unknown), unknown).max(axis=1)
    threshold = decider.calibration.threshold
    return {
        "auroc": known_unknown_auroc(k, u),
        "known_rejected": float(np.mean(k < threshold)),
        "unknown_accepted": float(np.mean(u >= threshold)),
    }


def open_sets(vectors, labels, new, others, settings) -> dict:
    near = []
    for seed in range(DRAWS):
        held = np.random.default_rng(100 + seed).choice(new, size=5, replace=False)
        known = [c for c in new if c not in held]
        near.append(open_set(vectors, labels, known, held, settings, seed))
    far = open_set(vectors, labels, new, others, settings, 0)
    mean = {key: float(np.mean([r[key] for r in near])) for key in near[0]}
    return {"near": mean, "far": far}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument(
        "--embedder",
        action="append",
        help="BACKBONE or BACKBONE:VIEW+VIEW (TTA), or a model file (.kshot); repeatable. "
        "Default: efficientnet_lite0.",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--others", type=int, default=10, help="photos per far-unknown class")
    parser.add_argument("--known", type=int, default=20, help="photos per known library class")
    args = parser.parse_args()
    paths, labels, in_library = photos(args.data, args.others, args.known)
    classes = sorted(set(labels))
    new = [c for c in classes if c.startswith(NEW_CROPS)]
    known = np.flatnonzero(in_library)
    others = [c for c in classes if c not in new]
    vectors_of = np.flatnonzero(~in_library)  # the known classes' photos: only in the library
    rows = []
    for spec in args.embedder or ["efficientnet_lite0"]:
        backbone, _, views = spec.partition(":")
        tta = tuple(v for v in views.split("+") if v)
        every, ms = embed(backbone, tta, paths)
        vectors, alone = every[vectors_of], labels[vectors_of]
        for method, centre in RULES:
            settings = DecisionSettings(method, 10, centre)
            row = {"embedder": spec, "method": method, "centre": centre, "ms_per_image": ms}
            row |= {f"{s}shot": closed_set(vectors, alone, new, settings, s) for s in (1, 5)}
            row |= {
                f"{s}shot_library": closed_set(every, labels, new, settings, s, known)
                for s in (1, 5)
            }
            if method != "knn":
                row["open_set"] = open_sets(vectors, alone, new, others, settings)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    base = rows[0]
    print(
        "| embedder | rule | centring | ms/image | 1-shot | 5-shot | vs first row (5-shot) "
        "| in a library: 1-shot | 5-shot "
        "| near AUROC | near rejected / accepted | far AUROC | far rejected / accepted |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        o = r.get("open_set")
        near = far = ["-", "-", "-"]
        if o:
            near = [
                f"{o['near']['auroc']:.3f}",
                f"{o['near']['known_rejected']:.0%}",
                f"{o['near']['unknown_accepted']:.0%}",
            ]
            far = [
                f"{o['far']['auroc']:.3f}",
                f"{o['far']['known_rejected']:.0%}",
                f"{o['far']['unknown_accepted']:.0%}",
            ]
        print(
            f"| {r['embedder']} | {r['method']} | {r['centre']} | {r['ms_per_image']:.1f} "
            f"| {r['1shot']:.1%} | {r['5shot']:.1%} | {r['5shot'] - base['5shot']:+.1%} "
            f"| {r['1shot_library']:.1%} | {r['5shot_library']:.1%} "
            f"| {near[0]} | {near[1]} / {near[2]} | {far[0]} | {far[1]} / {far[2]} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
