"""Evaluation reports: JSON for scripts, markdown for people, side by side in one folder."""

from __future__ import annotations

import json
from pathlib import Path

from kshot.atomic import write_text_atomic

MAX_LISTED = 50  # misclassified images listed in the markdown (the JSON has them all)


def write_report(out: Path, name: str, report: dict, markdown: str) -> list[Path]:
    """``out/name.json`` and ``out/name.md``; returns their paths."""
    out = Path(out)
    paths = [out / f"{name}.json", out / f"{name}.md"]
    write_text_atomic(paths[0], json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(paths[1], markdown)
    return paths


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _summary_row(name: str, r: dict) -> str:
    top = r["top_k_accuracy"]
    top5 = top.get("5", top[max(top, key=int)])
    retrieval = r["retrieval"]
    return (
        f"| {_cell(name)} | {r['queries']} | {r['accuracy']:.1%} | {top5:.1%} "
        f"| {r['weighted']['precision']:.3f} | {r['weighted']['recall']:.3f} "
        f"| {r['weighted']['f1']:.3f} | {retrieval['precision_at_1']:.3f} "
        f"| {retrieval['r_precision']:.3f} | {retrieval['mean_average_precision_at_r']:.3f} "
        f"| {_number(r.get('roc_auc'))} | {_number(r.get('open_set', {}).get('auroc'))} "
        f"| {1000 * r['seconds_per_image']:.1f} |"
    )


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


SUMMARY_HEADER = (
    "| model | queries | accuracy | top-5 | precision (w) | recall (w) | F1 (w) | P@1 "
    "| R-precision | MAP@R | ROC-AUC | unknown AUROC | ms/image |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def comparison_markdown(rows: dict[str, dict]) -> str:
    """One row per model: ``rows`` maps a model's name to its split report; a second table
    of speed and size for the reports that measured them (``speed``)."""
    lines = ["# Model comparison", "", SUMMARY_HEADER]
    lines += [_summary_row(name, report) for name, report in rows.items()]
    timed = {name: report for name, report in rows.items() if "speed" in report}
    if timed:
        lines += ["", "## Speed and size", "", SPEED_HEADER]
        lines += [_speed_row(name, report) for name, report in timed.items()]
    return "\n".join(lines) + "\n"


SPEED_HEADER = (
    "| model | precision | accuracy | ms/image, batch 1 | ms/image, batch 32 | parameters "
    "| size (MB) |\n|---|---|---:|---:|---:|---:|---:|"
)


def _speed_row(name: str, r: dict) -> str:
    s = r["speed"]
    return (
        f"| {_cell(name)} | {s['precision']} | {r['accuracy']:.1%} "
        f"| {s['ms_per_image_batch1']:.1f} | {s['ms_per_image_batch32']:.1f} "
        f"| {s['parameters'] / 1e6:.1f}M | {s['megabytes']:.1f} |"
    )


def split_markdown(name: str, report: dict) -> str:
    lines = [f"# Evaluation of {name}", "", SUMMARY_HEADER, _summary_row(name, report), ""]
    lines += ["## Per class", "", "| class | precision | recall | F1 | queries |"]
    lines.append("|---|---:|---:|---:|---:|")
    for label, m in report["per_class"].items():
        lines.append(
            f"| {_cell(label)} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} "
            f"| {m['support']} |"
        )
    wrong = report["misclassified"]
    lines += ["", f"## Misclassified ({len(wrong)})", ""]
    lines += [
        f"- {_cell(w['image'])}: {_cell(w['label'])} taken for {_cell(w['predicted'])} "
        f"({w['score']:.3f})"
        for w in wrong[:MAX_LISTED]
    ]
    if len(wrong) > MAX_LISTED:
        lines.append(f"- ... and {len(wrong) - MAX_LISTED} more (see the JSON report)")
    if "open_set" in report:
        lines += ["", *open_set_markdown(report)]
    return "\n".join(lines) + "\n"


def open_set_markdown(report: dict) -> list[str]:
    curve, best = report["open_set"], report["open_set"]["balanced"]
    lines = [
        "## Unknown classes",
        "",
        f"Held out of the library: {', '.join(report['held_out_classes'])}.",
        f"Balanced threshold **{best['threshold']:.3f}**: {best['unknown_rejected']:.1%} of the "
        f"held-out classes' queries answered unknown, {best['known_rejected']:.1%} of the known "
        f"classes' queries wrongly rejected, known-class accuracy {best['known_accuracy']:.1%}.",
        "",
    ]
    own = curve.get("at_library_threshold")
    if own is not None:
        lines += [
            f"At the library's own threshold **{own['threshold']:.3f}** (chosen from its enrolled "
            f"images alone): {own['known_rejected']:.1%} of the known classes' queries rejected, "
            f"{own['unknown_accepted']:.1%} of the held-out classes' queries given a class. "
            f"Known-vs-unknown ROC-AUC {curve['auroc']:.3f}.",
        ]
    lines += [
        "",
        "| threshold | unknown answered unknown | known wrongly rejected | known accuracy |",
        "|---:|---:|---:|---:|",
    ]
    count = len(curve["thresholds"])
    for i in sorted({round(k * (count - 1) / 10) for k in range(11)}):
        lines.append(
            f"| {curve['thresholds'][i]:.3f} | {curve['unknown_rejected'][i]:.1%} "
            f"| {curve['known_rejected'][i]:.1%} | {curve['known_accuracy'][i]:.1%} |"
        )
    return lines


def episodes_markdown(name: str, report: dict) -> str:
    first = next(iter(report.values()))
    lines = [
        f"# Episodes: {name}",
        "",
        f"{first['ways']}-way {first['shots']}-shot, {first['queries']} queries per class, "
        f"{first['episodes']} episodes, seed {first['seed']}.",
        "",
        "| decision | mean accuracy | 95% interval |",
        "|---|---:|---:|",
    ]
    for method, r in report.items():
        lines.append(f"| {method} | {r['mean_accuracy']:.2%} | ± {r['ci95']:.2%} |")
    return "\n".join(lines) + "\n"
