"""``kshot adapt``: a new library on a fine-tuned model, the library it came from untouched."""

import hashlib

from kshot.embedder.checkpoint import load_checkpoint, model_hash
from kshot.fewshot.evaluation import evaluate_library
from kshot.fewshot.library import Library


def _digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_adapting_writes_a_new_library_and_leaves_the_old_one(kshot, tmp_path, enrolled, images):
    before = _digests(enrolled)
    out = tmp_path / "adapted"
    output = kshot("adapt", enrolled, "--out", out, "--steps", "3", "--batch-size", "6").output
    assert "trained on 9 photos" in output and f"wrote {out}" in output
    assert _digests(enrolled) == before  # not a byte changed
    old, new = Library.open(enrolled, device="cpu"), Library.open(out, device="cpu")
    assert new.classes() == old.classes() == [("bars", 3), ("blob", 3), ("corner", 3)]
    assert new.settings == old.settings and new.manifest.index == old.manifest.index
    adapted, info = load_checkpoint(out / "model.kshot")
    assert model_hash(adapted) != old.manifest.model_sha256
    assert info["adapted"]["from"] == enrolled.name and info["adapted"]["steps"] == 3
    assert "adapted from lib on 9 photos" in kshot("info", out).output
    assert "adapted" not in kshot("info", enrolled).output
    (row,) = kshot.json("query", out, images["blob"][3], "--method", "knn")
    assert row["label"] == "blob"


def test_a_photo_that_moved_is_named_and_the_rest_goes_on(kshot, tmp_path, enrolled, images):
    moved = images["bars"][0]
    moved.rename(tmp_path / "elsewhere.png")
    out = tmp_path / "adapted"
    output = kshot("adapt", enrolled, "--out", out, "--steps", "2", "--batch-size", "4", code=3)
    assert str(moved) in output.output and "trained on 8 photos" in output.output
    assert dict(Library.open(out, device="cpu").classes())["bars"] == 2


def test_an_existing_folder_is_not_overwritten(kshot, tmp_path, enrolled):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    output = kshot("adapt", enrolled, "--out", out, "--steps", "1", code=1).output
    assert "kshot: error:" in output and str(out) in output
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_a_library_of_one_class_has_nothing_to_adapt_to(kshot, tmp_path, library, images):
    kshot("enroll", library, "--label", "bars", *images["bars"])
    out = tmp_path / "adapted"
    output = kshot("adapt", library, "--out", out, code=1).output
    assert "at least 2 classes" in output and not out.exists()


def test_a_class_with_no_readable_photo_stops_before_any_write(kshot, tmp_path, enrolled, images):
    for path in images["corner"][:3]:
        path.unlink()
    out = tmp_path / "adapted"
    output = kshot("adapt", enrolled, "--out", out, "--steps", "1", code=1).output
    assert "no photo of corner could be read" in output and "corner/0.png" in output
    assert not out.exists()


def test_bytes_the_library_held_under_two_labels_stay_under_both(kshot, tmp_path, enrolled, images):
    kshot("enroll", enrolled, "--label", "blob", images["bars"][0], "--allow-relabel")
    out = tmp_path / "adapted"
    kshot("adapt", enrolled, "--out", out, "--steps", "1", "--batch-size", "4")
    assert dict(Library.open(out, device="cpu").classes()) == {"bars": 3, "blob": 4, "corner": 3}


def test_a_photo_replaced_by_other_bytes_is_named_and_left_out(kshot, tmp_path, enrolled, images):
    replaced = images["bars"][0]
    replaced.write_bytes(images["blob"][3].read_bytes())  # another photo under the same name
    out = tmp_path / "adapted"
    output = kshot("adapt", enrolled, "--out", out, "--steps", "2", "--batch-size", "4", code=3)
    assert f"{replaced}: is no longer the photo enrolled as 'bars'" in output.output
    assert "trained on 8 photos" in output.output
    assert Library.open(out, device="cpu").classes() == [("bars", 2), ("blob", 3), ("corner", 3)]


def test_a_class_whose_photos_all_changed_stops_before_any_write(kshot, tmp_path, enrolled, images):
    for path in images["corner"][:3]:
        path.write_bytes(images["blob"][3].read_bytes())
    out = tmp_path / "adapted"
    output = kshot("adapt", enrolled, "--out", out, "--steps", "1", code=1).output
    assert (
        "no photo of corner could be read, unchanged" in output and "no longer the photo" in output
    )
    assert not out.exists()


def test_check_asks_both_libraries_the_photos_neither_holds(kshot, tmp_path, enrolled, images):
    out = tmp_path / "adapted"
    args = ("adapt", enrolled, "--out", out, "--steps", "2", "--batch-size", "4")
    output = kshot(*args, "--check", tmp_path / "images").output
    assert "9 of the photos in" in output and "left out of the check" in output
    old, new = Library.open(enrolled, device="cpu"), Library.open(out, device="cpu")
    unseen = [(paths[3], name) for name, paths in images.items()]
    before = evaluate_library(old, unseen)["accuracy"]
    after = evaluate_library(new, unseen)["accuracy"]
    assert f"on 3 photos of {tmp_path / 'images'}" in output
    assert f"{old.root} {before:.1%}, {new.root} {after:.1%}" in output
    assert ("adapting lowered the accuracy" in output) == (after < before)


def test_check_with_only_enrolled_photos_stops_before_training(kshot, tmp_path, enrolled, images):
    folder = tmp_path / "enrolled-again"
    for name, paths in images.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "copy.png").write_bytes(paths[0].read_bytes())
    out = tmp_path / "adapted"
    output = kshot("adapt", enrolled, "--out", out, "--check", folder, code=1).output
    assert "3 of the photos in" in output and "is enrolled: check with photos neither" in output
    assert not out.exists()
