"""``NAME=NUMBER`` command-line options."""

from __future__ import annotations

import pytest

from kshot.assignments import parse_assignments
from kshot.errors import KshotError


def test_names_take_underscores_for_dashes_and_values_become_floats():
    parsed = parse_assignments(["neg-margin=0.8", " margin1 =2"], "loss option", "margin=0.2")
    assert parsed == {"neg_margin": 0.8, "margin1": 2.0}


@pytest.mark.parametrize("option", ["margin", "margin=", "margin=wide"])
def test_an_option_without_a_number_says_how_to_write_one(option):
    with pytest.raises(KshotError, match="is not a number; write NAME=NUMBER, e.g. margin=0.2"):
        parse_assignments([option], "loss option", "margin=0.2")


def test_names_outside_the_known_ones_are_refused_with_the_known_ones():
    with pytest.raises(KshotError, match=r"unknown option 'spin=3'; known: hflip, vflip"):
        parse_assignments(["spin=3"], "option", "hflip=1", {"vflip", "hflip"})
