"""``kshot distill``: a student model file that a library uses like any other."""

from kshot.embedder.checkpoint import load_checkpoint, model_hash


def test_a_distilled_student_serves_a_library(kshot, tmp_path, images):
    teacher = tmp_path / "teacher.kshot"
    kshot(
        "train", tmp_path / "images", "--out", teacher, "--backbone", "conv4",
        "--head-epochs", "0", "--epochs", "2", "--batch-size", "12", "--embedding-dim", "16",
    )  # fmt: skip
    student = tmp_path / "student.kshot"
    output = kshot(
        "distill", tmp_path / "images", "--teacher", teacher, "--backbone", "conv4",
        "--image-size", "32", "--out", student, "--epochs", "3", "--batch-size", "4",
    ).output  # fmt: skip
    assert "distilling" in output and "into conv4 on 12 images" in output
    assert "nothing held out (too few images)" in output
    assert "epoch 3/3" in output and f"wrote {student}" in output
    (learnt, info), (taught, _) = load_checkpoint(student), load_checkpoint(teacher)
    assert info["distilled"] and info["teacher_model"] == model_hash(taught)
    assert len(info["history"]) == 3  # the last epoch's weights, its loss the one reported
    assert info["loss_after"] == info["history"][-1]["eval_loss"]
    # its own preprocessing (32 pixels) and its own features (conv4's 256 at 32 pixels), not
    # the teacher's 16: the projection onto those was the loss's
    assert learnt.config.preprocess.input_size == 32 != taught.config.preprocess.input_size
    assert learnt.embedding_dim == 256 and learnt.config.embedding_dim is None
    assert info["teacher"] == "teacher.kshot" and info["data"] == "images"  # names, not paths
    kshot("init", tmp_path / "lib", "--model", student)
    kshot("enroll", tmp_path / "lib", tmp_path / "images")
    (row,) = kshot.json("query", tmp_path / "lib", images["blob"][0], "--method", "knn")
    assert row["label"] == "blob"


def test_a_teacher_that_is_not_a_model_file_is_a_clear_error(kshot, tmp_path, images):
    fake = tmp_path / "teacher.kshot"
    fake.write_text("not a model")
    output = kshot(
        "distill", tmp_path / "images", "--teacher", fake, "--backbone", "conv4",
        "--out", tmp_path / "s.kshot", code=1,
    ).output  # fmt: skip
    assert "kshot: error:" in output and str(fake) in output
    assert not (tmp_path / "s.kshot").exists()


def test_a_warning_when_the_held_out_classes_scored_worse(kshot, tmp_path, images, monkeypatch):
    from kshot.embedder import distill

    teacher = tmp_path / "teacher.kshot"
    kshot(
        "train", tmp_path / "images", "--out", teacher, "--backbone", "conv4",
        "--head-epochs", "0", "--epochs", "1", "--batch-size", "12",
    )  # fmt: skip
    worse = distill.DistillResult(
        0.5, 0.4, [], 0, {"library_accuracy": 0.6}, {"library_accuracy": 0.3}, ["ant", "bee"]
    )
    monkeypatch.setattr(distill, "distill", lambda *args, **kwargs: worse)
    output = kshot(
        "distill", tmp_path / "images", "--teacher", teacher, "--backbone", "conv4",
        "--out", tmp_path / "s.kshot", "--epochs", "1",
    ).output  # fmt: skip
    assert "lower on the 2 held-out classes (ant, bee)" in output and "60.0% -> 30.0%" in output
    assert (tmp_path / "s.kshot").exists()  # a warning, not a failure
    worse.scores_after["library_accuracy"] = 0.7
    output = kshot(
        "distill", tmp_path / "images", "--teacher", teacher, "--backbone", "conv4",
        "--out", tmp_path / "s2.kshot", "--epochs", "1",
    ).output  # fmt: skip
    assert "scores lower" not in output
