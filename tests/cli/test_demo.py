"""``kshot demo``: the README's main job, offline."""

from __future__ import annotations

import re


def test_demo_trains_enrolls_and_queries(kshot, tmp_path):
    output = kshot("demo", "--workdir", tmp_path, "--epochs", "1").output
    accuracy = float(re.search(r"5-way 5-shot accuracy on unseen digits: ([\d.]+)%", output)[1])
    assert accuracy > 60  # chance is 20%; a full demo run reaches about 94%
    rows = kshot.json("classes", tmp_path / "library")
    assert rows == [{"label": n, "images": 5} for n in ("eight", "five", "nine", "seven", "six")]


def test_demo_hint_names_a_kshot_that_runs(kshot, tmp_path, monkeypatch):
    """Someone who followed the README has no ``kshot`` on PATH: the hint names the venv's."""
    import shutil
    from pathlib import Path

    from kshot.cli.demo import _kshot

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    command = _kshot()
    assert command == "kshot" and shutil.which("kshot") or Path(command).is_file()
