"""The process's own limit on open files, raised for a burst of connections."""

from __future__ import annotations

import resource

import pytest

from kshot.serve.limits import raise_open_file_limit


@pytest.fixture
def low_file_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 600:
        pytest.skip(f"the hard limit on open files is only {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    yield hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_soft_limit_is_raised_to_what_is_wanted(low_file_limit):
    assert raise_open_file_limit(600) == 600
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 600


def test_the_limit_never_passes_the_hard_limit(low_file_limit):
    if low_file_limit == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on open files here")
    assert raise_open_file_limit(low_file_limit * 2) == low_file_limit


def test_a_higher_soft_limit_is_left_alone(low_file_limit):
    resource.setrlimit(resource.RLIMIT_NOFILE, (500, low_file_limit))
    assert raise_open_file_limit(300) == 500
