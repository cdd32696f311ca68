"""Episodes as batches: ways, shots and queries, no image both support and query, and what
happens when the data cannot fill an episode."""

import logging

import pytest
import torch

from kshot.embedder.episodic_sampler import (
    EpisodicBatchSampler,
    episode_sizes,
    warn_about_small_classes,
)
from kshot.errors import KshotError


def test_each_episode_holds_ways_classes_of_shots_plus_queries_distinct_images():
    labels = torch.arange(6).repeat_interleave(7)  # 6 classes x 7 images
    sampler = EpisodicBatchSampler(labels, ways=4, shots=2, queries=3, episodes=10, seed=0)
    episodes = list(sampler)
    assert len(episodes) == len(sampler) == 10
    for batch in episodes:
        assert len(batch) == 4 * 5 and len(set(batch)) == 20  # no image twice
        batch_labels = labels[batch].tolist()
        assert len(set(batch_labels)) == 4
        for start in range(0, 20, 5):  # class by class: 2 support, then 3 queries
            assert len(set(batch_labels[start : start + 5])) == 1
    assert len({tuple(batch) for batch in episodes}) > 1  # the episodes differ


def test_the_same_seed_draws_the_same_episodes():
    labels = torch.arange(5).repeat_interleave(4)
    draw = lambda seed: list(EpisodicBatchSampler(labels, 3, 1, 2, episodes=4, seed=seed))  # noqa: E731
    assert draw(1) == draw(1) and draw(1) != draw(2)


def test_fewer_classes_than_ways_is_a_clear_error():
    labels = torch.arange(3).repeat_interleave(10)
    with pytest.raises(KshotError, match="episode of 5 ways needs 5 classes") as caught:
        EpisodicBatchSampler(labels, ways=5, shots=2, queries=2, episodes=1, seed=0)
    assert "lower --ways" in str(caught.value)


def test_a_class_smaller_than_shots_plus_queries_is_left_out_with_a_warning(caplog):
    labels = torch.tensor([0] * 5 + [1] * 5 + [2] * 3)  # class 2: 3 images, episodes need 4
    sampler = EpisodicBatchSampler(labels, ways=2, shots=2, queries=2, episodes=20, seed=0)
    assert all(2 not in labels[batch].tolist() for batch in sampler)
    with caplog.at_level(logging.WARNING, logger="kshot"):
        warn_about_small_classes(labels, shots=2, queries=2)
    assert "1 of the 3 training classes have fewer than 4 images" in caplog.text
    with pytest.raises(KshotError, match="2 of the 3 classes have that many"):
        EpisodicBatchSampler(labels, ways=3, shots=2, queries=2, episodes=1, seed=0)


# --- episode sizes where --ways, --shots or --queries are not given ---------------------------


def _labels(*sizes: int) -> torch.Tensor:
    return torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])


def test_large_enough_classes_get_the_defaults_and_no_warning(caplog):
    with caplog.at_level("WARNING", logger="kshot"):
        assert episode_sizes(_labels(*[12] * 10), None, None, None) == (8, 5, 5)
    assert caplog.text == ""


def test_fewer_classes_than_eight_make_fewer_ways_and_say_so(caplog):
    with caplog.at_level("WARNING", logger="kshot"):
        assert episode_sizes(_labels(10, 10, 10, 30), None, None, None) == (4, 5, 5)
    assert "episodes of 4 ways, 5 shots and 5 queries, smaller than the default 8" in caplog.text


def test_small_classes_split_the_middle_class_between_support_and_query(caplog):
    # middle class: 4 images -> 2 shots + 2 queries; the class of 3 is left out
    with caplog.at_level("WARNING", logger="kshot"):
        assert episode_sizes(_labels(20, 4, 4, 3), None, None, None) == (3, 2, 2)
    assert "3 training classes have 4 images or more" in caplog.text


def test_a_given_part_stays_and_the_rest_fits_around_it():
    assert episode_sizes(_labels(6, 6, 6), None, 1, None) == (3, 1, 5)
    assert episode_sizes(_labels(6, 6, 6), None, None, 2) == (3, 4, 2)


def test_given_sizes_the_classes_cannot_meet_are_a_clear_error():
    with pytest.raises(KshotError, match="needs 2 classes with at least 10"):
        episode_sizes(_labels(6, 6, 6), 2, 5, 5)
    with pytest.raises(KshotError, match="at least 2 training images"):
        episode_sizes(_labels(1, 1, 1), None, None, None)
