"""Which of a library's photos an adaptation trains on."""

import numpy as np

from kshot.fewshot.adaptation import training_photos


def test_at_most_so_many_photos_of_each_class_the_same_for_a_seed():
    labels = ["rust"] * 3 + ["blight"] * 100 + ["rust"] * 2
    chosen, classes = training_photos(labels, most=50, seed=0)
    assert classes == ["blight", "rust"]
    picked = np.asarray(labels)[chosen]
    assert (picked == "rust").sum() == 5 and (picked == "blight").sum() == 50
    assert len(set(chosen.tolist())) == 55  # no photo twice
    again, _ = training_photos(labels, most=50, seed=0)
    other, _ = training_photos(labels, most=50, seed=1)
    assert np.array_equal(chosen, again) and not np.array_equal(chosen, other)
