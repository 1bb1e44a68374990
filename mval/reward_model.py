"""Cross-fitted reward models q(x, a) for DM and DR: every row is predicted by a model that did not see it.

Rows are split into `folds` folds; the model for fold f is fitted on the other folds. Defaults:
- with features: logistic regression (binary rewards) or ridge regression (otherwise), both
  L2-regularised, on [x, one-hot(a), x * one-hot(a)] with x standardised; fitted on at most
  `max_fit_rows` rows per fold (a random subsample), so large logs stay cheap; the design matrix is
  sparse (2d + 1 entries per row, not d (K + 1) + K) and q for all K actions comes from the
  coefficients in one product (benchmarks/reward_model.py);
- without features: per-(context, action) means shrunk towards per-action means, which are
  shrunk towards the global mean (`prior` pseudo-rows each); one context = per-action means.
Any object with `fit(X, y)` and `predict(X)` (or `predict_proba`) can replace the default: pass a
factory that returns a fresh one; it sees the same design matrix.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.sparse import csr_matrix
from scipy.special import expit
from sklearn.linear_model import LogisticRegression, Ridge

from mval.errors import MvalError

MAX_FIT_ROWS = 200_000
PRIOR_ROWS = 1.0


def fold_ids(n: int, folds: int = 5, seed: int = 0) -> np.ndarray:
    """A balanced random fold 0..folds-1 for each of n rows."""
    check_folds(folds)
    return np.random.default_rng(seed).permutation(n) % folds


def check_folds(folds: int) -> None:
    if folds < 2:
        raise MvalError(f"cross-fitting needs at least 2 folds, found {folds}")


def check_rows_outside_each_fold(rows_per_fold: np.ndarray) -> None:
    """Refuse when every row fell into one fold: its reward model would have no rows to learn from."""
    if np.count_nonzero(rows_per_fold) < 2:
        raise MvalError(f"cross-fitting: all {rows_per_fold.sum():.0f} rows fell into one of the {rows_per_fold.size} "
                        "folds, so the reward model of dm/dr has no other rows to learn from; the log is too small "
                        "for them (use ips or snips), or try another --seed")


def cross_fit_means(
    context: np.ndarray,
    action: np.ndarray,
    reward: np.ndarray,
    fold: np.ndarray,
    n_contexts: int,
    n_actions: int,
    folds: int,
    count: np.ndarray | None = None,
    prior: float = PRIOR_ROWS,
) -> np.ndarray:
    """Out-of-fold means as a table T (folds, C, K): q for row i is T[fold_i, context_i, :].

    g = global mean, m_a = (S_a + prior g) / (N_a + prior), T[x, a] = (S_xa + prior m_a) / (N_xa + prior),
    with S, N the reward sums and row counts of the other folds.
    """
    check_folds(folds)
    c = np.ones_like(reward, dtype=float) if count is None else count
    cell = (fold * n_contexts + context) * n_actions + action
    size = folds * n_contexts * n_actions
    shape = (folds, n_contexts, n_actions)
    rows_in = np.bincount(cell, weights=c, minlength=size).reshape(shape)
    sums_in = np.bincount(cell, weights=c * reward, minlength=size).reshape(shape)
    check_rows_outside_each_fold(rows_in.sum(axis=(1, 2)))
    rows_out = rows_in.sum(axis=0) - rows_in  # (folds, C, K): the other folds
    sums_out = sums_in.sum(axis=0) - sums_in
    total_rows, total_sums = rows_out.sum(axis=(1, 2)), sums_out.sum(axis=(1, 2))
    global_mean = np.divide(total_sums, total_rows, out=np.zeros(folds), where=total_rows > 0)
    action_mean = (sums_out.sum(axis=1) + prior * global_mean[:, None]) / (rows_out.sum(axis=1) + prior)
    return (sums_out + prior * action_mean[:, None, :]) / (rows_out + prior)


def design_matrix(x: np.ndarray, action: np.ndarray, n_actions: int, sparse: bool = False) -> np.ndarray | csr_matrix:
    """[x, one-hot(a), x * one-hot(a)]: a linear model with a separate slope per action; column d + K + i K + a
    holds x_i [a]. Dense, or with `sparse` a CSR matrix of the 2d + 1 entries a row can have (d features)."""
    n, d = x.shape
    slopes = d + n_actions + np.arange(d)[None, :] * n_actions + action[:, None]
    columns = np.hstack([np.broadcast_to(np.arange(d), (n, d)), d + action[:, None], slopes])
    values = np.hstack([x, np.ones((n, 1)), x])
    matrix = csr_matrix((values.ravel(), columns.ravel(), np.arange(n + 1) * (2 * d + 1)),
                        shape=(n, d + n_actions + d * n_actions))
    return matrix if sparse else matrix.toarray()


def default_factory(binary: bool) -> Callable[[], object]:
    """Logistic regression (C = 1) for 0/1 rewards, ridge (alpha = 1) otherwise (tol 1e-10: on a sparse
    design matrix sklearn solves ridge iteratively, and its default tolerance leaves errors of 1e-4)."""
    if binary:
        return lambda: LogisticRegression(C=1.0, max_iter=1000)
    return lambda: Ridge(alpha=1.0, tol=1e-10)


def _predict(model: object, x: np.ndarray, binary: bool) -> np.ndarray:
    """P(r = 1) from classifiers on 0/1 rewards, else predict()."""
    if binary and hasattr(model, "predict_proba"):
        return model.predict_proba(x)[:, list(model.classes_).index(1.0)]
    return np.asarray(model.predict(x), dtype=float)


def linear_q(model: LogisticRegression | Ridge, x: np.ndarray, n_actions: int) -> np.ndarray:
    """q (n, K) of a default model for every action at once, from its coefficients (no design matrix):
    s(x, a) = b + w_x . x + w_a + sum_i x_i W[i, a], q = sigmoid(s) (logistic) or s (ridge)."""
    d = x.shape[1]
    w, b = np.ravel(model.coef_), float(np.ravel(model.intercept_)[0])
    score = b + (x @ w[:d])[:, None] + w[d : d + n_actions][None, :] + x @ w[d + n_actions :].reshape(d, n_actions)
    return expit(score) if isinstance(model, LogisticRegression) else score


def fit_predict(x_fit: np.ndarray, action: np.ndarray, y: np.ndarray, x_new: np.ndarray, n_actions: int,
                binary: bool, factory: Callable[[], object] | None = None) -> np.ndarray:
    """Fit a reward model on (x_fit, action) -> y and predict q (len(x_new), K) for every action.

    The default (logistic or ridge, `default_factory`) fits on the sparse design matrix and predicts from its
    coefficients; a `factory`'s model sees the dense design matrix, once per action."""
    if binary and np.unique(y).size < 2:
        return np.full((len(x_new), n_actions), y.mean())  # nothing to learn from: a constant
    if factory is None:
        model = default_factory(binary)().fit(design_matrix(x_fit, action, n_actions, sparse=True), y)
        return linear_q(model, x_new, n_actions)
    model = factory()
    model.fit(design_matrix(x_fit, action, n_actions), y)
    return np.column_stack([_predict(model, design_matrix(x_new, np.full(len(x_new), a), n_actions), binary)
                            for a in range(n_actions)])


def standardised(features: np.ndarray, count: np.ndarray | None = None,
                 like: np.ndarray | None = None) -> np.ndarray:
    """`features` scaled to mean 0 and standard deviation 1 per column over the rows of `like` (default:
    `features` itself), each row counted `count` times (a merged row weighs as the rows it stands for);
    constant columns are only centred. The reward models fit on scaled features: their L2 penalty then
    shrinks every column alike, and one scaling serves every model fitted on the same rows."""
    like = features if like is None else like
    w = np.ones(len(like)) if count is None else np.asarray(count, dtype=float)
    mean = w @ like / w.sum()
    scale = np.sqrt(w @ (like - mean) ** 2 / w.sum())
    return (features - mean) / np.where(scale > 0, scale, 1.0)


def cross_fit_model(
    features: np.ndarray,
    action: np.ndarray,
    reward: np.ndarray,
    n_actions: int,
    fold: np.ndarray,
    folds: int,
    factory: Callable[[], object] | None = None,
    count: np.ndarray | None = None,
    max_fit_rows: int = MAX_FIT_ROWS,
    seed: int = 0,
) -> np.ndarray:
    """q (n, K) from a model on the design matrix, fitted once per fold on the other folds' rows."""
    check_folds(folds)
    features = np.asarray(features, dtype=float)
    binary = bool(np.isin(reward, (0.0, 1.0)).all())
    x = standardised(features, count)
    reps = np.ones(len(reward), dtype=np.int64) if count is None else np.asarray(count).astype(np.int64)
    check_rows_outside_each_fold(np.bincount(fold, weights=reps, minlength=folds))
    rng = np.random.default_rng(seed)
    q = np.empty((len(reward), n_actions))
    for f in range(folds):
        train = np.repeat(np.flatnonzero(fold != f), reps[fold != f])
        test = np.flatnonzero(fold == f)
        if len(test) == 0:
            continue
        if len(train) > max_fit_rows:
            train = rng.choice(train, size=max_fit_rows, replace=False)
        q[test] = fit_predict(x[train], action[train], reward[train], x[test], n_actions, binary, factory)
    return q


def cross_fit_rewards(
    action: np.ndarray,
    reward: np.ndarray,
    n_actions: int,
    features: np.ndarray | None = None,
    context: np.ndarray | None = None,
    folds: int = 5,
    factory: Callable[[], object] | None = None,
    count: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Cross-fitted q (n, K): a model on features if given, else out-of-fold (context, action) means.

    context: integer codes 0..C-1 (None: one context, i.e. per-action means).
    """
    action = np.asarray(action, dtype=np.int64)
    reward = np.asarray(reward, dtype=float)
    fold = fold_ids(len(reward), folds, seed)
    if features is not None:
        return cross_fit_model(features, action, reward, n_actions, fold, folds, factory, count, seed=seed)
    if factory is not None:
        raise MvalError("a reward model factory needs features; pass `features` or drop the factory")
    ctx = np.zeros(len(reward), dtype=np.int64) if context is None else np.asarray(context, dtype=np.int64)
    table = cross_fit_means(ctx, action, reward, fold, int(ctx.max()) + 1, n_actions, folds, count)
    return table[fold, ctx]
