"""The decision end to end through the command line: rules, the library's own threshold,
grouped labels, evaluate side by side."""

from __future__ import annotations

import json

from tests.cli.conftest import make_image


def test_init_chooses_the_rule_and_classes_shows_the_threshold(kshot, tmp_path, images):
    lib = tmp_path / "lib"
    args = ("--backbone", "conv4", "--no-pretrained", "--method", "prototype")
    assert "prototype decisions" in kshot("init", lib, *args).output
    for name, paths in images.items():
        kshot("enroll", lib, "--label", name, *paths[:3])
    output = kshot("classes", lib).output
    assert "decisions: prototype" in output and "unknown below confidence" in output
    info = kshot.json("info", lib)[0]
    assert info["decision"]["method"] == "prototype"
    assert 0.0 < info["decision"]["threshold"] < 1.0


def test_query_answers_with_confidences_and_another_rule_on_request(kshot, enrolled, images):
    rows = kshot.json("query", enrolled, images["blob"][3], "--threshold", "0", "--top-k", "3")
    (row,) = rows
    assert row["label"] == "blob"
    assert 0.0 < row["score"] <= 1.0 and len(row["top_k"]) == 3
    assert sum(entry["score"] for entry in row["top_k"]) <= 1.0 + 1e-6
    for method in ("prototype", "knn", "logistic"):
        args = ("query", enrolled, images["corner"][3], "--method", method, "--threshold", "0")
        assert kshot.json(*args)[0]["label"] == "corner"


def test_grouped_labels_answer_the_group_too(kshot, library, tmp_path):
    tree = tmp_path / "crops"
    for group, names in {"Tomato": ["bars", "blob"], "Potato": ["corner"]}.items():
        for name in names:
            for i in range(3):
                make_image(tree / group / name / f"{i}.png", name, i)
    kshot("enroll", library, tree)
    classes = {row["label"] for row in kshot.json("classes", library)}
    assert classes == {"Tomato/bars", "Tomato/blob", "Potato/corner"}
    query = make_image(tmp_path / "q.png", "blob", 9)
    (row,) = kshot.json("query", library, query, "--threshold", "0")
    assert row["label"] == "Tomato/blob" and row["group"] == "Tomato"
    assert [g["group"] for g in row["groups"]] == ["Tomato", "Potato"]
    assert "Tomato: Tomato/blob" in kshot("query", library, query, "--threshold", "0").stdout


def test_evaluate_puts_rules_side_by_side(kshot, library, tmp_path, images):
    out = tmp_path / "report"
    model = library / "model.kshot"
    args = ("evaluate", tmp_path / "images", "--model", model, "--shots", "2", "--out", out)
    result = kshot(*args, "--method", "prototype", "--method", "logistic")
    comparison = json.loads((out / "comparison.json").read_text())
    assert set(comparison) == {"model-prototype", "model-logistic"}
    for report in comparison.values():
        assert 0.0 <= report["roc_auc"] <= 1.0
    assert "model-logistic" in result.stdout


def test_set_decision_changes_the_rule_and_keeps_the_library(kshot, enrolled, images):
    before = kshot.json("classes", enrolled)
    assert kshot.json("info", enrolled)[0]["decision"]["centre"] == "whiten"  # the default
    output = kshot("set-decision", enrolled, "--method", "logistic", "--centre", "library").output
    assert "logistic (centring: library) from now on" in output
    assert "decisions: logistic on centred embeddings" in output
    decision = kshot.json("info", enrolled)[0]["decision"]
    assert (decision["method"], decision["centre"], decision["fitted"]) == (
        "logistic",
        "library",
        True,
    )
    assert kshot.json("classes", enrolled) == before
    kshot("set-decision", enrolled, "--method", "prototype")  # the centring stays
    assert kshot.json("info", enrolled)[0]["decision"]["centre"] == "library"
    row = kshot.json("query", enrolled, images["corner"][3], "--threshold", "0")[0]
    assert row["label"] == "corner"


def test_set_decision_refuses_a_folder_that_is_not_a_library(kshot, tmp_path):
    result = kshot("set-decision", tmp_path, "--method", "logistic", code=1)
    assert f"{tmp_path} is not a kshot library" in result.output
