"""The command line as a new user meets it: folders where images are expected, paths that do not
exist, exit codes, two-level labels, relabelling, single images forgotten, ``info``, start-up
without torch, ``--version``, ``--threads``, failures as one line."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from tests.cli.conftest import make_image


def test_a_folder_given_for_images_means_the_images_in_it(kshot, library, images):
    folder = images["bars"][0].parent
    (report,) = kshot.json("enroll", library, "--label", "bars", folder)
    assert sorted(a["image"] for a in report["added"]) == sorted(map(str, images["bars"]))
    rows = kshot.json("query", library, folder)
    assert [r["image"] for r in rows] == [str(p) for p in sorted(images["bars"])]
    assert {r["label"] for r in rows} == {"bars"}


def test_a_missing_path_says_it_does_not_exist(kshot, library, tmp_path):
    result = kshot("enroll", library, tmp_path / "nosuchdir", code=1)
    assert "nosuchdir: does not exist" in result.output


def test_nothing_done_exits_1_part_done_exits_3(kshot, library, images, tmp_path):
    missing = tmp_path / "missing.png"
    kshot("enroll", library, "--label", "bars", missing, code=1)
    kshot("enroll", library, "--label", "bars", missing, images["bars"][0], code=3)
    kshot("query", library, missing, code=1)
    kshot("query", library, missing, images["bars"][1], code=3)
    kshot("enroll", library, "--label", "bars", images["bars"][0])  # already there: done, 0


def test_nested_folders_enroll_as_two_level_labels(kshot, library, tmp_path):
    root = tmp_path / "crops"
    for crop, disease, pattern in [
        ("Tomato", "Late blight", "bars"),
        ("Potato", "healthy", "blob"),
    ]:
        for i in range(2):
            make_image(root / crop / disease / f"{i}.png", pattern, i)
    make_image(root / "Potato" / "healthy" / "deeper" / "x.png", "corner", 0)
    result = kshot("enroll", library, root, code=3)
    assert "third folder level" in result.output
    assert kshot.json("classes", library) == [
        {"label": "Potato/healthy", "images": 2},
        {"label": "Tomato/Late blight", "images": 2},
    ]


def test_the_same_bytes_under_a_second_label_are_refused_unless_asked(kshot, enrolled, images):
    image = images["bars"][0]
    (report,) = kshot.json("enroll", enrolled, "--label", "blob", image, code=1)
    assert "already enrolled as 'bars'" in report["errors"][0]["error"]
    kshot("enroll", enrolled, "--label", "blob", "--allow-relabel", image)
    assert {"label": "blob", "images": 4} in kshot.json("classes", enrolled)


def test_forget_single_images_by_path_or_sha256(kshot, enrolled, images):
    sha = hashlib.sha256(images["blob"][1].read_bytes()).hexdigest()
    result = kshot("forget", enrolled, "--image", images["bars"][0], "--image", sha)
    assert result.output.count("forgot ") == 2
    counts = {row["label"]: row["images"] for row in kshot.json("classes", enrolled)}
    assert counts == {"bars": 2, "blob": 2, "corner": 3}
    kshot("forget", enrolled, "--image", images["bars"][0], code=1)  # no longer there
    kshot("forget", enrolled, code=1)  # neither a class nor --image
    rows = kshot.json("query", enrolled, images["bars"][0], "--method", "knn")
    assert rows[0]["label"] == "bars"  # the others of its class answer


def test_info_tells_what_a_library_holds(kshot, enrolled):
    output = kshot("info", enrolled).output
    assert "conv4" in output and "64 dimensions" in output and "flat" in output
    assert "9 image(s) in 3 class(es)" in output
    (details,) = kshot.json("info", enrolled)
    assert details["images"] == 9 and details["embedding_dim"] == 64
    assert set(details["disk_bytes"]) >= {"catalogue.sqlite", "model.kshot", "index.faiss"}


def test_classes_forget_and_info_start_without_torch_or_faiss(enrolled):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from kshot.cli.app import app\n"
        "lib = sys.argv[1]\n"
        "for args in (['classes', lib], ['info', lib], ['forget', lib, 'corner']):\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "print(sorted({'torch', 'faiss'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(enrolled)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_version(kshot):
    from importlib.metadata import version

    assert kshot("--version").output.strip() == f"kshot {version('kshot')}"


def test_threads_sets_torchs_thread_count(kshot, enrolled, monkeypatch):
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    try:
        kshot("--threads", "2", "classes", enrolled)
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("KSHOT_THREADS", "3")
        kshot("classes", enrolled)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(1)


def test_an_os_error_is_one_line_naming_the_file(kshot, enrolled, monkeypatch):
    from kshot.fewshot.store import LibraryStore

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self.root / "catalogue.sqlite"))

    monkeypatch.setattr(LibraryStore, "classes", denied)
    result = kshot("classes", enrolled, code=1)
    assert result.output.strip() == (
        f"kshot: error: {enrolled / 'catalogue.sqlite'}: permission denied; ask its owner for "
        "access, or run as a user who has it"
    )


def test_an_interrupted_enrollment_says_what_was_kept(kshot, library, images, monkeypatch):
    from kshot.fewshot import library as library_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(library_module, "embed_files", interrupted)
    result = kshot("enroll", library, "--label", "bars", *images["bars"], code=130)
    assert "interrupted" in result.output and "run the same command again" in result.output


def test_compact_saves_the_index(kshot, enrolled):
    assert "9 vector(s)" in kshot("compact", enrolled).output
    from kshot.index.header import header_of

    assert header_of(enrolled / "index.faiss")["last_id"] == 9


def test_compact_can_change_the_index_kind(kshot, enrolled, images):
    expected = kshot.json("query", enrolled, images["blob"][3], "--method", "knn")
    assert "hnsw index: 9 vector(s)" in kshot("compact", enrolled, "--index", "hnsw").output
    (details,) = kshot.json("info", enrolled)
    assert details["index"]["kind"] == "hnsw" and details["index"]["current"]
    assert kshot.json("query", enrolled, images["blob"][3], "--method", "knn") == expected


def test_classes_and_info_report_a_stale_decision_without_fitting_it(kshot, enrolled, monkeypatch):
    """Commands that only report never fit the decision: at a million images that takes minutes."""
    from kshot.fewshot.decider import Decider

    (enrolled / "decision.npz").unlink()  # as after an enrollment cut short before its refit

    def refuse(*args, **kwargs):
        raise AssertionError("a reporting command fitted the decision")

    monkeypatch.setattr(Decider, "fit", refuse)
    listed = kshot("classes", enrolled)
    assert listed.exit_code == 0 and "not fitted on the library as it is now" in listed.output
    (details,) = kshot.json("info", enrolled)
    assert details["decision"]["fitted"] is False and "threshold" not in details["decision"]
    assert "not fitted" in kshot("info", enrolled).output


def test_only_a_flat_index_chosen_at_init_stays_flat_when_large(kshot, tmp_path):
    import json

    for name, extra in [("default", []), ("chosen", ["--index", "flat"])]:
        kshot("init", tmp_path / name, "--backbone", "conv4", "--no-pretrained", *extra)
    default, chosen = (
        json.loads((tmp_path / name / "manifest.json").read_text())["index"]
        for name in ("default", "chosen")
    )
    assert (default["kind"], default["graph_from"]) == ("flat", 200_000)
    assert (chosen["kind"], chosen["graph_from"]) == ("flat", 0)
