"""Per-class metrics from a confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["per_class_report", "safe_name"]


def safe_name(class_name: str) -> str:
    """A class name as a metric-key part: ``"T-shirt/top"`` -> ``"t-shirt_top"``."""
    return class_name.lower().replace("/", "_").replace(" ", "_")


def per_class_report(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Precision, recall, F1 and support per class from a confusion matrix.

    Args:
        confusion: int array (C, C); row = true class, column = predicted class.
        class_names: C names in class-index order.

    Returns:
        ``{"classes": {name: {precision, recall, f1, support}}, "accuracy": ...,
        "macro_f1": ...}``; a class never predicted (or absent) gets precision (or recall) 0.
    """
    counts = np.asarray(confusion, dtype=np.float64)
    true_positives = np.diag(counts)
    predicted, support = counts.sum(axis=0), counts.sum(axis=1)
    precision = np.divide(true_positives, predicted, out=np.zeros_like(predicted),
                          where=predicted > 0)
    recall = np.divide(true_positives, support, out=np.zeros_like(support), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(both), where=both > 0)
    classes = {name: {"precision": float(p), "recall": float(r), "f1": float(f),
                      "support": int(s)}
               for name, p, r, f, s in zip(class_names, precision, recall, f1, support)}
    return {"classes": classes, "accuracy": float(true_positives.sum() / counts.sum()),
            "macro_f1": float(f1.mean())}
