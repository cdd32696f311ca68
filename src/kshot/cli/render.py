"""What the commands print: JSON for scripts (one object per line), plain lines for people."""

from __future__ import annotations

import json
from collections.abc import Sequence

import typer

from kshot.cli.console import say


def _json_line(data: dict) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False))


def query_result_json(result) -> dict:
    """The JSON object of one query result, for ``kshot query --json`` and the server alike:
    ``image`` (as given), then either ``label``, ``score`` and ``top_k`` (a list of
    ``{"label", "score"}``), or ``error``."""
    if result.error is not None:
        return {"image": result.image, "error": result.error.reason}
    decision = result.decision
    return {
        "image": result.image,
        "label": decision.label,
        "score": round(decision.score, 6),
        "top_k": [{"label": label, "score": round(score, 6)} for label, score in decision.top_k],
    }


def query_results(results: Sequence, as_json: bool) -> None:
    """One line per image, from :func:`query_result_json`."""
    query_result_lines([query_result_json(result) for result in results], as_json)


def query_result_lines(results: Sequence[dict], as_json: bool) -> None:
    """One line per image's JSON result (a local one, or a server's): the JSON itself, or for
    people a tab-separated line, an error on stderr."""
    for result in results:
        if as_json:
            _json_line(result)
        elif "error" in result:
            say(f"kshot: {result['image']}: {result['error']}")
        else:
            others = ", ".join(f"{t['label']} {t['score']:.3f}" for t in result["top_k"][1:])
            line = f"{result['image']}\t{result['label']}\t{result['score']:.3f}"
            typer.echo(line + (f"\t(then: {others})" if others else ""))


def enroll_report_json(report) -> dict:
    """The JSON object of an enrollment, for ``kshot enroll --json`` and the server alike."""
    return {
        "added": [{"image": image, "label": label} for image, label in report.added],
        "duplicates": [{"image": image, "label": label} for image, label in report.duplicates],
        "errors": [{"image": e.source, "error": e.reason} for e in report.errors],
    }


def enroll_report(report, as_json: bool) -> None:
    if as_json:
        _json_line(enroll_report_json(report))
        return
    for error in report.errors:
        say(f"kshot: {error}")
    labels = sorted({label for _, label in report.added})
    typer.echo(
        f"enrolled {len(report.added)} image(s) in {len(labels)} class(es)"
        + (f"; {len(report.duplicates)} already enrolled" if report.duplicates else "")
        + (f"; {len(report.errors)} failed" if report.errors else "")
    )


def class_counts(counts: Sequence[tuple[str, int]], as_json: bool) -> None:
    if as_json:
        for label, count in counts:
            _json_line({"label": label, "images": count})
        return
    if not counts:
        say("no classes enrolled yet")
    width = max((len(label) for label, _ in counts), default=0)
    for label, count in counts:
        typer.echo(f"{label:<{width}}  {count}")
