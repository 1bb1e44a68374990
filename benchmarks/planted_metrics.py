"""How well a score finds planted examples, and intervals over seeds: shared by the planted benchmarks."""

from __future__ import annotations

import numpy as np
from scipy.stats import t
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


def interval(values: list[float]) -> dict:
    """Mean, 95% t interval and the values themselves (over seeds or draws), as JSON."""
    mean, low, high = t_interval(values)
    return {"mean": mean, "ci_low": low, "ci_high": high, "per_seed": [float(x) for x in values]}


def p_below(values: list[float], reference: list[float]) -> float:
    """One-sided p that a removal's rates (`values`, over fine-tuning seeds) beat a *random* removal's:
    the t prediction test of mean(values) as one more draw from `reference` (rates of random removals),
    P(T_{m-1} <= (mean(values) - mean(ref)) / (sd(ref) sqrt(1 + 1/m))), m = len(reference).

    Not a test of the two means: each random draw removes different examples, so a single fixed random
    set beats the random mean half the time, and with enough seeds a two-mean test would call it
    significant. Conservative, since a mean over seeds varies less than one draw does."""
    ref = np.asarray(reference, float)
    m = len(ref)
    stat = (float(np.mean(values)) - ref.mean()) / (ref.std(ddof=1) * np.sqrt(1 + 1 / m))
    return float(t.cdf(stat, m - 1))
