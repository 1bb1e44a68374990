"""How well a score finds planted examples, and intervals over seeds: shared by the planted benchmarks."""

from __future__ import annotations

import numpy as np
from scipy.stats import t, ttest_ind
from sklearn.metrics import roc_auc_score


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores (ties: earlier first)."""
    return np.argsort(-scores, kind="stable")[:k]


def auroc(scores: np.ndarray, planted: np.ndarray) -> float:
    """P(a planted example scores above an unplanted one), ties counted half."""
    return float(roc_auc_score(planted, scores))


def precision_at_k(scores: np.ndarray, planted: np.ndarray, k: int) -> float:
    """Share of planted examples among the k top-scored."""
    return float(planted[top_k(scores, k)].mean())


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and its 95% t interval (NaN bounds from a single value)."""
    v = np.asarray(values, float)
    half = float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def p_below(values: list[float], reference: list[float]) -> float:
    """One-sided Welch t-test p-value of mean(values) < mean(reference) (unequal variances)."""
    return float(ttest_ind(values, reference, equal_var=False, alternative="less").pvalue)
