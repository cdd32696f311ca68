"""Evaluation through a real library: the split, the report's numbers, held-out classes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from kshot.fewshot.evaluation import evaluate_episodes, evaluate_split, split_items
from tests.cli.conftest import make_image


def _items(per_class: dict[str, int]) -> list[tuple[Path, str]]:
    return [(Path(f"{label}/{i}.png"), label) for label, n in per_class.items() for i in range(n)]


def test_split_takes_shots_per_class_and_the_rest_as_queries():
    items = _items({"a": 7, "b": 5, "c": 3})
    support, queries, held_out = split_items(items, shots=3, seed=1)
    assert Counter(label for _, label in support) == {"a": 3, "b": 3, "c": 3}
    assert Counter(label for _, label in queries) == {"a": 4, "b": 2}
    assert held_out == [] and not {p for p, _ in support} & {p for p, _ in queries}


def test_split_is_seeded():
    items = _items({"a": 9, "b": 9})
    assert split_items(items, 2, seed=3) == split_items(items, 2, seed=3)
    assert split_items(items, 2, seed=3)[0] != split_items(items, 2, seed=4)[0]


def test_held_out_classes_have_no_support():
    items = _items({"a": 4, "b": 4, "c": 4, "d": 4})
    support, queries, held_out = split_items(items, shots=2, unknown_classes=2, seed=0)
    assert len(held_out) == 2
    assert not {label for _, label in support} & set(held_out)
    assert Counter(label for _, label in queries)[held_out[0]] == 4


@pytest.fixture
def folder_items(tmp_path):
    from tests.cli.conftest import PATTERNS

    return [
        (make_image(tmp_path / name / f"{i}.png", name, i), name)
        for name in PATTERNS
        for i in range(6)
    ]


def test_evaluate_split_reports_what_a_query_decides(folder_items, tmp_path, conv4_embedder):
    support, queries, _ = split_items(folder_items, shots=2, seed=0)
    reports = evaluate_split(
        conv4_embedder, {}, support, queries, tmp_path / "lib", methods=["logistic", None]
    )
    assert reports["logistic"]["method"] == "logistic"
    report = reports[None]
    assert report["method"] == "prototype" and report["centre"] == "whiten"  # the default
    assert 0.0 <= report["roc_auc"] <= 1.0
    assert report["queries"] == len(queries) == 12 and report["classes"] == 3
    wrong = len(report["misclassified"])
    assert report["accuracy"] == pytest.approx(1 - wrong / 12)
    assert set(report["per_class"]) == {"bars", "blob", "corner"}
    assert 0 <= report["retrieval"]["precision_at_1"] <= 1
    assert report["seconds_per_image"] > 0 and report["unreadable"] == []


def test_evaluate_split_with_held_out_classes_reports_the_open_set(
    folder_items, tmp_path, conv4_embedder
):
    support, queries, held_out = split_items(folder_items, shots=2, unknown_classes=1, seed=0)
    (report,) = evaluate_split(
        conv4_embedder, {}, support, queries, tmp_path / "lib", held_out=held_out
    ).values()
    assert report["held_out_classes"] == held_out and report["classes"] == 2
    assert report["queries"] == 8  # held-out queries are not counted as known ones
    assert 0.0 <= report["open_set"]["auroc"] <= 1.0
    balanced = report["open_set"]["balanced"]
    assert 0 <= balanced["unknown_rejected"] <= 1 and 0 <= balanced["known_rejected"] <= 1


def test_episodes_are_repeatable(folder_items, conv4_embedder):
    first = evaluate_episodes(conv4_embedder, folder_items, ways=3, shots=1, queries=2, episodes=4)
    again = evaluate_episodes(conv4_embedder, folder_items, ways=3, shots=1, queries=2, episodes=4)
    assert first == again and set(first) == {"prototype", "knn", "logistic"}
    assert len(first["prototype"]["accuracies"]) == 4
