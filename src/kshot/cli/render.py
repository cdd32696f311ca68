"""What the commands print: JSON for scripts (one object per line), plain lines for people."""

from __future__ import annotations

import json
from collections.abc import Sequence

import typer

from kshot.cli.console import say
from kshot.fewshot.labels import UNKNOWN


def _json_line(data: dict) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False))


def query_result_json(result) -> dict:
    """One query's answer as JSON: ``image`` (as given), then either ``error``, or ``label`` (a
    class or "unknown"), ``score`` (its confidence, 0-1) and ``top_k`` (``{"label", "score"}``
    best first); with grouped labels (``crop/disease``) also ``group`` and ``groups``."""
    if result.error is not None:
        return {"image": result.image, "error": result.error.reason}
    decision = result.decision
    data = {
        "image": result.image,
        "label": decision.label,
        "score": round(decision.score, 6),
        "top_k": [{"label": label, "score": round(score, 6)} for label, score in decision.top_k],
    }
    if decision.group is not None:
        data["group"] = decision.group
        data["groups"] = [
            {"group": group, "score": round(score, 6)} for group, score in decision.groups
        ]
    return data


def query_results(results: Sequence, as_json: bool) -> None:
    """One line per image, from :func:`query_result_json`."""
    query_result_lines([query_result_json(result) for result in results], as_json)


def query_result_lines(results: Sequence[dict], as_json: bool) -> None:
    """One line per image's JSON answer (a local one, or a server's): the JSON object itself,
    or for people the answer, its confidence and the next classes (an error on stderr)."""
    for result in results:
        if as_json:
            _json_line(result)
        elif "error" in result:
            say(f"kshot: {result['image']}: {result['error']}")
        else:
            top = result["top_k"]
            others = ", ".join(f"{t['label']} {t['score']:.3f}" for t in top[1:])
            answer = result["label"]
            if answer == UNKNOWN and top:
                answer += f" (nearest: {top[0]['label']})"
            if result.get("group") is not None:
                answer = f"{result['group']}: {answer}"
            line = f"{result['image']}\t{answer}\t{result['score']:.3f}"
            typer.echo(line + (f"\t(then: {others})" if others else ""))


def enroll_report_json(report) -> dict:
    """The JSON object of an enrollment, for ``kshot enroll --json`` and the server alike."""
    return {
        "added": [{"image": image, "label": label} for image, label in report.added],
        "duplicates": [{"image": image, "label": label} for image, label in report.duplicates],
        "errors": [{"image": e.source, "error": e.reason} for e in report.errors],
    }


def decision_summary(decider) -> None:
    """How the library decides, and its own "unknown" threshold with what it costs
    (``decider`` None: not fitted on the library as it is now)."""
    if decider is None:
        say(
            "decisions: not fitted on the library as it is now (another process changed it, or "
            "an enrollment stopped): a query fits them in memory, the next enroll or forget "
            "saves them"
        )
        return
    settings, calibration = decider.settings, decider.calibration
    seen = {"none": "", "library": " on centred embeddings", "whiten": " on whitened embeddings"}
    rule = settings.method + seen[settings.centre]
    if calibration.threshold is None:
        say(
            f"decisions: {rule}; no threshold of its own (it needs three classes, some with two "
            "images or more): every query gets a class unless --threshold is given"
        )
        return
    say(
        f"decisions: {rule}; unknown below confidence {calibration.threshold:.3f}, chosen on "
        f"{calibration.images} held-out enrolled images: {calibration.known_rejected:.0%} of "
        f"them rejected, {calibration.unknown_accepted:.0%} of those standing in for an unknown "
        "class accepted"
    )


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
