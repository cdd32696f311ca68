"""Episodic N-way K-shot evaluation over precomputed embeddings.

An episode draws N classes, K support images and Q query images of each, enrols the support
images and classifies the queries among those N classes only: the few-shot literature's
protocol (Vinyals et al. 2016), reported as the mean accuracy over many episodes with a 95%
confidence interval. Every image is embedded once beforehand; episodes only index into the
array of unit vectors, so thousands of episodes take seconds. Classification reuses kshot's own
decision rules (kshot.fewshot.rules), so the numbers describe what ``kshot query`` does.
"""

from __future__ import annotations

import numpy as np

from kshot.errors import KshotError
from kshot.fewshot.decider import Decider, DecisionSettings


def sample_episode(
    rng: np.random.Generator, labels: np.ndarray, ways: int, shots: int, queries: int
) -> tuple[np.ndarray, np.ndarray]:
    """Support indices ``(ways * shots,)`` and query indices ``(ways * queries,)`` into
    ``labels (n,)`` (class codes or names), grouped by class in the same class order.

    The ``ways`` classes are drawn among those with at least ``shots + queries`` images; each
    class's support and query images are drawn without replacement, so the two never overlap.
    """
    return _sample(rng, _members(labels), ways, shots, queries)


def _members(labels: np.ndarray) -> list[np.ndarray]:
    """The indices of each class's images, classes in sorted order (so draws are repeatable)."""
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    if len(codes) == 0:
        return []
    order = np.argsort(codes, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)


def _sample(
    rng: np.random.Generator, members: list[np.ndarray], ways: int, shots: int, queries: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sample_episode` given each class's image indices."""
    for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, not {value}")
    eligible = [m for m in members if len(m) >= shots + queries]
    if len(eligible) < ways:
        raise ValueError(
            f"a {ways}-way {shots}-shot episode with {queries} queries per class needs {ways} "
            f"classes of at least {shots + queries} images; only {len(eligible)} of the "
            f"{len(members)} classes have that many"
        )
    support, query = [], []
    for c in rng.choice(len(eligible), size=ways, replace=False):
        drawn = rng.choice(eligible[c], size=shots + queries, replace=False)
        support.append(drawn[:shots])
        query.append(drawn[shots:])
    return np.concatenate(support).astype(np.intp), np.concatenate(query).astype(np.intp)


def episode_accuracy(
    vectors: np.ndarray,
    labels: np.ndarray,
    support: np.ndarray,
    query: np.ndarray,
    method: str = "prototype",
    neighbours: int = 10,
    centre: str = "none",
) -> float:
    """Share of the ``query`` images classified right when only the ``support`` images are
    enrolled. ``vectors (n, d)`` are unit vectors, ``labels (n,)`` their classes, ``support``
    and ``query`` indices into them; ``method``, ``neighbours`` and ``centre`` as a library's
    decision settings (kshot.fewshot.decider), fitted on the support images alone."""
    settings = _settings(method, neighbours, centre)
    labels = np.asarray(labels)
    names = labels[support].astype(str)  # rules key classes by their names
    decider = Decider.fit(settings, vectors[support], names, calibrated=False)
    best = decider.scores(vectors[query]).argmax(axis=1)  # ties: the first class by name
    return float(np.mean(np.asarray(decider.classes)[best] == labels[query].astype(str)))


def _settings(method: str, neighbours: int, centre: str) -> DecisionSettings:
    """Decision settings, a bad one being a ``ValueError`` as for the episodes' other inputs."""
    try:
        return DecisionSettings(method, neighbours, centre)
    except KshotError as exc:
        raise ValueError(str(exc)) from None


def mean_ci95(values) -> tuple[float, float]:
    """Mean of ``values`` and the half-width of its 95% confidence interval,
    1.96 * sample standard deviation / sqrt(n): the normal approximation the few-shot
    literature reports (0 for a single value).

    Written by hand: neither scikit-learn nor pytorch-metric-learning has it.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError("need a non-empty list of values")
    if len(values) == 1:
        return float(values[0]), 0.0
    return float(values.mean()), float(1.96 * values.std(ddof=1) / np.sqrt(len(values)))


def run_episodes(
    vectors: np.ndarray,
    labels: np.ndarray,
    ways: int,
    shots: int,
    queries: int,
    episodes: int,
    seed: int = 0,
    method: str = "prototype",
    neighbours: int = 10,
) -> dict:
    """Accuracy over ``episodes`` random ``ways``-way ``shots``-shot episodes with ``queries``
    queries per class, on unit ``vectors (n, d)`` labelled ``labels (n,)``. The same seed draws
    the same episodes and gives the same result."""
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, not {episodes}")
    _settings(method, neighbours, "none")
    rng, labels = np.random.default_rng(seed), np.asarray(labels)
    members = _members(labels)
    accuracies = []
    for _ in range(episodes):
        support, query = _sample(rng, members, ways, shots, queries)
        accuracies.append(episode_accuracy(vectors, labels, support, query, method, neighbours))
    mean, ci95 = mean_ci95(accuracies)
    result = {"ways": ways, "shots": shots, "queries": queries, "episodes": episodes}
    result |= {"method": method, "seed": seed}
    if method == "knn":
        result["neighbours"] = neighbours
    return result | {"mean_accuracy": mean, "ci95": ci95, "accuracies": accuracies}


def run_library_episodes(
    vectors: np.ndarray,
    labels: np.ndarray,
    known_vectors: np.ndarray,
    known_labels: np.ndarray,
    shots: int,
    queries: int,
    episodes: int,
    seed: int = 0,
) -> dict:
    """New classes' accuracy in a library that already holds other classes: each episode
    enrols ``shots`` images of every class of ``labels (n,)`` beside all of ``known_vectors
    (m, d)`` (classes ``known_labels (m,)``, none of them in ``labels``), and classifies
    ``queries`` other images of each new class among ALL the classes, by prototypes.

    What a user sees after ``kshot enroll`` of a new class into a trained library, and harder
    than :func:`run_episodes` among the new classes alone: a new class's photo can also be
    taken for a known class, which is how training that overfits its own classes fails
    (photos of the new classes drawn into the clusters of the known ones)."""
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, not {episodes}")
    labels, known_labels = np.asarray(labels), np.asarray(known_labels)
    shared = np.intersect1d(labels, known_labels)
    if len(shared):
        raise ValueError(f"classes both new and known: {', '.join(map(str, shared[:5]))}")
    members = _members(labels)
    all_vectors = np.concatenate([vectors, known_vectors])
    all_labels = np.concatenate([labels, known_labels])
    known = np.arange(len(vectors), len(all_vectors))
    rng, accuracies = np.random.default_rng(seed), []
    for _ in range(episodes):
        support, query = _sample(rng, members, len(members), shots, queries)
        support = np.concatenate([support, known])
        accuracies.append(episode_accuracy(all_vectors, all_labels, support, query))
    mean, ci95 = mean_ci95(accuracies)
    classes = len(members) + len(np.unique(known_labels))
    result = {"ways": classes, "shots": shots, "queries": queries, "episodes": episodes}
    return result | {"seed": seed, "mean_accuracy": mean, "ci95": ci95, "accuracies": accuracies}
