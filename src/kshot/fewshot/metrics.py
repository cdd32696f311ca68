"""Evaluation metrics for a labelled test set: classification quality and retrieval quality.

Classification metrics score the decisions kshot makes (the best class, or "unknown", and the
ranked classes after it); retrieval metrics score the embedding itself, by whether an image's
nearest neighbours share its class. Both return plain floats, ints, lists and dicts with string
keys, so that they can be written straight into a JSON report.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from kshot.fewshot.labels import UNKNOWN

RETRIEVAL_METRICS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")


def classification_metrics(
    true: Sequence[str], ranked: Sequence[Sequence[str]], ks: Sequence[int] = (1, 3, 5)
) -> dict:
    """Accuracy, top-k accuracy, precision / recall / F1 and the confusion matrix.

    ``true`` holds the n queries' classes; ``ranked[i]`` query i's labels best first, where
    ``ranked[i][0]`` is the decision and may be ``"unknown"``, which is always wrong. Top-k counts
    query i as right if its class is among ``ranked[i][:k]``. Precision, recall and F1 are taken
    over the true classes (``"unknown"`` is not a class: answering it lowers recall only).
    The confusion matrix has rows for true and columns for predicted labels: every class seen
    (sorted), then ``"unknown"`` last if it was ever answered.
    """
    true, predicted = _check_ranked(true, ranked)
    classes = sorted(set(true))
    precision, recall, f1, _ = precision_recall_fscore_support(
        true, predicted, labels=classes, average="weighted", zero_division=0
    )
    per_class = precision_recall_fscore_support(
        true, predicted, labels=classes, average=None, zero_division=0
    )
    # Classes predicted but absent from the test set get a column, so each row sums to support.
    columns = sorted(set(classes) | (set(predicted) - {UNKNOWN}))
    if UNKNOWN in predicted:
        columns.append(UNKNOWN)
    return {
        "queries": len(true),
        "accuracy": float(accuracy_score(true, predicted)),
        "top_k_accuracy": {str(k): _top_k_accuracy(true, ranked, k) for k in ks},
        "weighted": {"precision": float(precision), "recall": float(recall), "f1": float(f1)},
        "per_class": {
            label: {
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(s),
            }
            for label, p, r, f, s in zip(classes, *per_class, strict=True)
        },
        "confusion": {
            "labels": columns,
            "matrix": confusion_matrix(true, predicted, labels=columns).tolist(),
        },
    }


def _check_ranked(
    true: Sequence[str], ranked: Sequence[Sequence[str]]
) -> tuple[list[str], list[str]]:
    """``true`` as a list and the decisions ``ranked[i][0]``, or ``ValueError``."""
    if len(true) != len(ranked):
        raise ValueError(f"{len(true)} true labels but {len(ranked)} ranked lists")
    if len(true) == 0:
        raise ValueError("no queries to score")
    if any(len(labels) == 0 for labels in ranked):
        raise ValueError("every query needs at least one ranked label (its decision)")
    return list(true), [labels[0] for labels in ranked]


def _top_k_accuracy(true: Sequence[str], ranked: Sequence[Sequence[str]], k: int) -> float:
    """Share of queries whose class is among their first ``k`` ranked labels.

    Written by hand: sklearn's top_k_accuracy_score needs a score for every class, and kshot's
    ranked lists are short, may start with "unknown", and already fix the order of ties.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    hits = [label in labels[:k] for label, labels in zip(true, ranked, strict=True)]
    return float(np.mean(hits))


def retrieval_metrics(
    query_vectors: np.ndarray,
    query_labels: Sequence[str],
    reference_vectors: np.ndarray,
    reference_labels: Sequence[str],
    same_set: bool = False,
) -> dict:
    """Precision@1, R-precision and MAP@R of cosine nearest-neighbour retrieval.

    ``query_vectors (m, d)`` search ``reference_vectors (n, d)``; R is the number of reference
    images of the query's class (Musgrave et al. 2020, "A Metric Learning Reality Check").
    ``same_set=True`` says the two sets are the same images (pass the same arrays): each query
    is then left out of its own neighbours. Queries whose class has no other reference image
    cannot be scored and are left out; ``"queries"`` says how many were scored.
    Computed by pytorch-metric-learning's AccuracyCalculator, on the CPU.
    """
    import torch

    # Importing pytorch_metric_learning imports faiss.contrib.torch_utils, which patches faiss
    # so that searches given torch tensors return tensors; numpy inputs (all the rest of kshot)
    # take the unpatched path, and nothing else in kshot depends on the patch.
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    if len(query_vectors) != len(query_labels):
        raise ValueError(f"{len(query_vectors)} query vectors but {len(query_labels)} labels")
    if len(reference_vectors) != len(reference_labels):
        raise ValueError(
            f"{len(reference_vectors)} reference vectors but {len(reference_labels)} labels"
        )
    # AccuracyCalculator wants tensors with numeric labels: the same integer code for a label
    # in both sets (it turns them into float32, exact for codes below 2**24).
    names = np.asarray(list(query_labels) + list(reference_labels), dtype=object)
    _, codes = np.unique(names, return_inverse=True)
    q_codes, r_codes = codes[: len(query_labels)], codes[len(query_labels) :]
    counted = np.isin(q_codes, r_codes)
    if same_set:
        counted &= np.bincount(r_codes)[q_codes] > 1
    if not counted.any():
        raise ValueError("no query has another image of its class among the references")
    calculator = AccuracyCalculator(
        include=RETRIEVAL_METRICS,
        k="max_bin_count",  # R for the largest class: enough neighbours for R-precision, MAP@R
        device=torch.device("cpu"),
        # exact, on kshot's similarity; 256 queries at a time bounds memory to 256 x n scores
        knn_func=CustomKNN(CosineSimilarity(), batch_size=256),
    )
    result = calculator.get_accuracy(
        torch.from_numpy(np.array(query_vectors, dtype=np.float32)),  # a copy: may be read-only
        torch.as_tensor(q_codes),
        torch.from_numpy(np.array(reference_vectors, dtype=np.float32)),  # a copy: may be read-only
        torch.as_tensor(r_codes),
        ref_includes_query=same_set,
    )
    return {"queries": int(counted.sum())} | {
        name: float(result[name]) for name in RETRIEVAL_METRICS
    }


def class_roc_auc(
    true: Sequence[str], confidences: np.ndarray, classes: Sequence[str]
) -> float | None:
    """One-vs-rest ROC-AUC of ``confidences (n, C)`` over ``classes``, macro-averaged over the
    classes that occur in ``true`` (scikit-learn); None when fewer than two occur."""
    present = sorted(set(true))
    if len(present) < 2:
        return None
    columns = [list(classes).index(label) for label in present]
    truth = np.array([[label == c for c in present] for label in true], dtype=int)
    return float(roc_auc_score(truth, np.asarray(confidences)[:, columns], average="macro"))


def known_unknown_auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """ROC-AUC of telling queries of enrolled classes (``known`` confidences) from queries of
    classes the library lacks (``unknown``): 1 separates them perfectly, 0.5 is chance."""
    labels = np.concatenate([np.ones(len(known)), np.zeros(len(unknown))])
    return float(roc_auc_score(labels, np.concatenate([known, unknown])))
