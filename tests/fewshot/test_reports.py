"""Reports: the JSON is the report, the markdown shows it to people."""

from __future__ import annotations

import json

from kshot.fewshot.reports import (
    comparison_markdown,
    episodes_markdown,
    split_markdown,
    write_report,
)


def _report(label: str = "a|b", wrong: int = 0) -> dict:
    return {
        "queries": 4,
        "accuracy": 0.75,
        "top_k_accuracy": {"1": 0.75, "3": 1.0},
        "weighted": {"precision": 0.8, "recall": 0.75, "f1": 0.7},
        "retrieval": {
            "precision_at_1": 0.5,
            "r_precision": 0.25,
            "mean_average_precision_at_r": 0.125,
        },
        "seconds_per_image": 0.012,
        "per_class": {label: {"precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 2}},
        "misclassified": [
            {"image": f"{i}.png", "label": label, "predicted": "x", "score": 0.5}
            for i in range(wrong)
        ],
    }


def test_write_report_writes_json_and_markdown(tmp_path):
    report = {"label": "トマト"}
    paths = write_report(tmp_path / "out", "m", report, "# m\n")
    assert [p.name for p in paths] == ["m.json", "m.md"]
    assert json.loads(paths[0].read_text(encoding="utf-8")) == report
    assert "トマト" in paths[0].read_text(encoding="utf-8")  # not \\u escapes


def test_split_markdown_shows_the_numbers_and_escapes_pipes():
    text = split_markdown("model", _report())
    assert (
        "| model | 4 | 75.0% | 100.0% | 0.800 | 0.750 | 0.700 | 0.500 | 0.250 | 0.125 | - | - "
        "| 12.0 |" in text
    )
    assert "| a\\|b | 1.000 | 0.500 | 0.667 | 2 |" in text


def test_long_misclassified_lists_are_cut_in_markdown_only():
    text = split_markdown("model", _report(wrong=60))
    assert text.count(".png") == 50 and "and 10 more" in text


def test_comparison_has_a_row_per_model():
    text = comparison_markdown({"one": _report(), "two": _report()})
    assert text.count("| one |") == 1 and text.count("| two |") == 1
    assert "Speed and size" not in text


def test_comparison_adds_speed_and_size_where_measured():
    timed = _report()
    timed["speed"] = {
        "precision": "bf16",
        "ms_per_image_batch1": 12.345,
        "ms_per_image_batch32": 4.5,
        "parameters": 3_400_000,
        "megabytes": 13.61,
    }
    text = comparison_markdown({"one": _report(), "fast": timed})
    row = next(line for line in text.splitlines()[4:] if line.startswith("| fast | bf16"))
    assert "| 12.3 | 4.5 | 3.4M | 13.6 |" in row
    assert text.count("| one |") == 1  # not timed: no speed row


def test_open_set_section_states_the_balanced_threshold():
    report = _report()
    report["held_out_classes"] = ["z"]
    curve = [0.1 * i for i in range(11)]
    report["open_set"] = {
        "thresholds": curve,
        "unknown_rejected": curve,
        "known_rejected": curve,
        "known_accuracy": curve,
        "balanced": {
            "threshold": 0.42,
            "unknown_rejected": 0.9,
            "known_rejected": 0.1,
            "known_accuracy": 0.8,
        },
    }
    text = split_markdown("model", report)
    assert "Balanced threshold **0.420**" in text and "Held out of the library: z." in text


def test_episodes_markdown_gives_mean_and_interval():
    result = {"ways": 5, "shots": 1, "queries": 15, "episodes": 100, "seed": 0}
    text = episodes_markdown(
        "m",
        {
            "prototype": {**result, "mean_accuracy": 0.5, "ci95": 0.0125},
            "knn": {**result, "mean_accuracy": 0.25, "ci95": 0.01},
        },
    )
    assert "5-way 1-shot" in text and "| prototype | 50.00% | ± 1.25% |" in text
