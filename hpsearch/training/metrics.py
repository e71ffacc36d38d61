"""Metrics from a confusion matrix: per class, and the two that weigh every class alike
(balanced accuracy, macro F1), with scikit-learn's definitions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["balanced_accuracy", "macro_f1", "per_class_report"]


def _scores(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                             np.ndarray]:
    """(precision, recall, F1, support, predicted) per class of a confusion matrix; 0 where
    a class is never predicted (precision) or absent (recall)."""
    counts = np.asarray(confusion, dtype=np.float64)
    true_positives = np.diag(counts)
    predicted, support = counts.sum(axis=0), counts.sum(axis=1)
    precision = np.divide(true_positives, predicted, out=np.zeros_like(predicted),
                          where=predicted > 0)
    recall = np.divide(true_positives, support, out=np.zeros_like(support), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(both), where=both > 0)
    return precision, recall, f1, support, predicted


def balanced_accuracy(confusion: np.ndarray) -> float:
    """The mean recall over the classes that have images (scikit-learn's
    ``balanced_accuracy_score``): every class counts alike, however rare.

    Args:
        confusion: int array (C, C); row = true class, column = predicted class.

    Returns:
        A value in [0, 1]; NaN for an empty matrix.
    """
    _, recall, _, support, _ = _scores(confusion)
    present = support > 0
    return float(recall[present].mean()) if present.any() else float("nan")


def macro_f1(confusion: np.ndarray) -> float:
    """The mean F1 over the classes that are true or predicted at least once (scikit-learn's
    ``f1_score(average="macro")``).

    Args:
        confusion: int array (C, C); row = true class, column = predicted class.

    Returns:
        A value in [0, 1]; NaN for an empty matrix.
    """
    _, _, f1, support, predicted = _scores(confusion)
    seen = (support > 0) | (predicted > 0)
    return float(f1[seen].mean()) if seen.any() else float("nan")


def per_class_report(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Precision, recall, F1 and support per class from a confusion matrix.

    Args:
        confusion: int array (C, C); row = true class, column = predicted class.
        class_names: C names in class-index order.

    Returns:
        ``{"classes": {name: {precision, recall, f1, support}}, "accuracy": ...,
        "balanced_accuracy": ..., "macro_f1": ...}``; a class never predicted (or absent)
        gets precision (or recall) 0.
    """
    counts = np.asarray(confusion, dtype=np.float64)
    precision, recall, f1, support, _ = _scores(counts)
    classes = {name: {"precision": float(p), "recall": float(r), "f1": float(f),
                      "support": int(s)}
               for name, p, r, f, s in zip(class_names, precision, recall, f1, support)}
    return {"classes": classes, "accuracy": float(np.trace(counts) / counts.sum()),
            "balanced_accuracy": balanced_accuracy(counts), "macro_f1": macro_f1(counts)}
