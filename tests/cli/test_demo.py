"""``kshot demo``: the README's main job, offline."""

from __future__ import annotations

import re


def test_demo_trains_enrolls_and_queries(kshot, tmp_path):
    output = kshot("demo", "--workdir", tmp_path, "--epochs", "1").output
    accuracy = float(re.search(r"5-way 5-shot accuracy on unseen digits: ([\d.]+)%", output)[1])
    assert accuracy > 60  # chance is 20%; a full demo run reaches about 94%
    rows = kshot.json("classes", tmp_path / "library")
    assert rows == [{"label": n, "images": 5} for n in ("eight", "five", "nine", "seven", "six")]
