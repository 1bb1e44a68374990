"""Bandit environments with a known truth, for `mval simulate`.

Every environment is a finite pool of contexts x (drawn uniformly), K actions, the expected reward
m(x, a), a logging policy pi0 and a target pi, all as (contexts, actions) matrices, so the true
value V(pi) = mean_x sum_a pi(a|x) m(x, a) is exact.

The reward models fitted inside an experiment see at most the first 10 principal components of
the features (cheap to fit thousands of times; the policies were built from all features).

- supervised: a labelled data set becomes a bandit (Dudik et al. 2011): action = predicted class,
  reward ~ Bernoulli(m), m(x, a) = 1 - noise if a is the label, else noise. pi0 and pi are softmax
  policies of two logistic regressions (pi0 fitted on few rows, so it is weak) at temperatures;
  pi0 keeps a 5% uniform share (a logger that explores), so every action has some overlap.
- synthetic: x ~ N(0, I), m(x, a) = sigmoid(x . theta_a); pi = softmax(score / temperature),
  pi0 = softmax of a score that agrees with the true one only as much as `overlap` says.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
from scipy.special import expit, softmax
from sklearn import datasets
from sklearn.linear_model import LogisticRegression
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from mval.errors import MvalError
from mval.files import read_frame
from mval.store import load_sql

REWARD_FEATURES = 10  # reward models in experiments see the first principal components only

SKLEARN_DATASETS = {
    "digits": datasets.load_digits,
    "wine": datasets.load_wine,
    "breast_cancer": datasets.load_breast_cancer,
    "iris": datasets.load_iris,
}


@dataclass(frozen=True)
class BanditEnv:
    """A contextual bandit with a finite context pool and known expected rewards."""

    name: str
    features: np.ndarray  # (P, d): what reward models see (at most REWARD_FEATURES dimensions)
    mean_reward: np.ndarray  # (P, K): m(x, a) in [0, 1], rewards are Bernoulli(m)
    logger: np.ndarray  # (P, K): pi0
    target: np.ndarray  # (P, K): pi
    context_weights: np.ndarray | None = None  # (P,): p(x); None = uniform

    @property
    def weights(self) -> np.ndarray:
        """p(x), normalised."""
        if self.context_weights is None:
            return np.full(self.n_contexts, 1.0 / self.n_contexts)
        return self.context_weights / self.context_weights.sum()

    @property
    def n_contexts(self) -> int:
        return self.mean_reward.shape[0]

    @property
    def n_actions(self) -> int:
        return self.mean_reward.shape[1]

    @property
    def support(self) -> np.ndarray:
        """(P, K) bool: the cells a policy may use (all of them here)."""
        return np.ones(self.mean_reward.shape, dtype=bool)

    def restrict(self, policy: np.ndarray) -> np.ndarray:
        """`policy` with no mass outside `support`, renormalised per context."""
        policy = np.where(self.support, policy, 0.0)
        return policy / policy.sum(axis=1, keepdims=True)

    @property
    def true_value(self) -> float:
        """V(pi) = sum_x p(x) sum_a pi(a|x) m(x, a)."""
        return float(self.weights @ (self.target * self.mean_reward).sum(axis=1))

    def draw(self, policy: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n rounds under `policy` (P, K): context index, action and Bernoulli reward per round."""
        ctx = rng.choice(self.n_contexts, size=n, p=self.weights)
        cdf = np.cumsum(policy[ctx], axis=1)
        action = np.minimum((rng.random(n)[:, None] * cdf[:, -1:] > cdf).sum(axis=1), self.n_actions - 1)
        reward = (rng.random(n) < self.mean_reward[ctx, action]).astype(float)
        return ctx, action, reward


@dataclass(frozen=True)
class ReplayEnv(BanditEnv):
    """Rows logged by a uniform-random logger, replayed: any policy is sampled by rejection.

    Drawing under pi1 takes rows at random (with replacement) and keeps row i with probability
    proportional to pi1(a_i|x_i) / f(a_i|x_i), f the share of context x's rows that show action a
    (1/K in expectation for a uniform logger; the realised share makes it exact): kept rows are
    distributed as x ~ p(x), a ~ pi1(.|x), r ~ the logged reward of (x, a), with no simulator. The truth is that same empirical world: m(x, a) = the mean
    logged reward of the cell, p(x) = the share of rows in context x; policies only use cells with rows.
    """

    rows_context: np.ndarray | None = None  # (N,) context index of each logged row
    rows_action: np.ndarray | None = None
    rows_reward: np.ndarray | None = None
    logged_share: np.ndarray | None = None  # (P, K): f(a|x), share of context x's rows with action a

    @property
    def support(self) -> np.ndarray:
        return self.logged_share > 0

    def draw(self, policy: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n rows distributed as p(x) policy(a|x); `policy` must keep to the logged cells (`restrict`):
        rejection cannot draw a cell with no rows, and would silently renormalise instead."""
        outside = np.where(self.support, 0.0, policy).sum(axis=1).max()
        if outside > 1e-9:
            raise ValueError(f"policy puts {outside:.3g} of a context's mass on cells with no logged rows; restrict it first")
        accept = (policy / np.where(self.support, self.logged_share, 1.0))[self.rows_context, self.rows_action]
        accept = accept / accept.max()
        rate = float(accept.mean())
        chosen: list[np.ndarray] = []
        needed = n
        while needed > 0:  # a few vectorised rounds: each proposes enough rows for the expected rate
            proposal = rng.integers(len(accept), size=int(needed / rate * 1.2) + 16)
            kept = proposal[rng.random(len(proposal)) < accept[proposal]][:needed]
            chosen.append(kept)
            needed -= len(kept)
        rows = np.concatenate(chosen)
        return self.rows_context[rows], self.rows_action[rows], self.rows_reward[rows]


def _softmax_policy(logits: np.ndarray, temperature: float) -> np.ndarray:
    if temperature <= 0:
        raise MvalError(f"temperature {temperature}: must be > 0")
    return softmax(logits / temperature, axis=1)


def _explore(policy: np.ndarray, floor: float) -> np.ndarray:
    """(1 - floor) policy + floor / K: a logger that explores every action a little."""
    return (1 - floor) * policy + floor / policy.shape[1]


def supervised_env(
    x: np.ndarray, y: np.ndarray, name: str, noise: float = 0.1, logger_rows: float = 0.05,
    logger_temperature: float = 1.0, target_temperature: float = 0.3, logger_floor: float = 0.05, seed: int = 0,
) -> BanditEnv:
    """Supervised-to-bandit conversion of features `x` and integer labels `y` (0..K-1)."""
    if not 0.0 <= noise < 0.5:
        raise MvalError(f"--noise {noise}: must be in [0, 0.5) (probability that a reward is flipped)")
    classes, y = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise MvalError(f"{name}: the label has {len(classes)} distinct value(s); need at least 2 classes")
    if len(y) < 10 * len(classes):
        raise MvalError(f"{name}: {len(y)} rows for {len(classes)} classes; give at least 10 rows per class "
                        "on average")
    rng = np.random.default_rng(seed)
    x = StandardScaler().fit_transform(np.asarray(x, dtype=float))
    k = len(classes)
    # the logger learns from a few rows (weak), the target from half the pool (strong)
    few = rng.permutation(len(y))[: max(2 * k, int(logger_rows * len(y)))]
    half = rng.permutation(len(y))[: len(y) // 2]
    weak = LogisticRegression(C=0.05, max_iter=500).fit(x[few], y[few])
    strong = LogisticRegression(C=1.0, max_iter=2000).fit(x[half], y[half])

    def logits(model: LogisticRegression) -> np.ndarray:
        out = np.full((len(y), k), -50.0)  # a class the model never saw gets (almost) no mass
        out[:, model.classes_] = model.predict_log_proba(x)
        return out

    correct = np.eye(k)[y]
    return BanditEnv(
        name=name,
        features=PCA(min(REWARD_FEATURES, x.shape[1]), random_state=seed).fit_transform(x),
        mean_reward=correct * (1 - noise) + (1 - correct) * noise,
        logger=_explore(_softmax_policy(logits(weak), logger_temperature), logger_floor),
        target=_softmax_policy(logits(strong), target_temperature),
    )


def sklearn_env(dataset: str, **kwargs) -> BanditEnv:
    if dataset not in SKLEARN_DATASETS:
        raise MvalError(f"--env {dataset}: unknown; use synthetic, {', '.join(SKLEARN_DATASETS)} or --data FILE")
    bunch = SKLEARN_DATASETS[dataset]()
    return supervised_env(bunch.data, bunch.target, dataset, **kwargs)


def file_env(path: str | Path, label: str, **kwargs) -> BanditEnv:
    """Supervised-to-bandit from a CSV/Parquet/JSON lines file: every other column is a numeric feature, `label` the class."""
    path = Path(path)
    frame = read_frame(path)  # refused as `mval ingest` refuses a file; each column typed by all its values
    if frame.height == 0:
        raise MvalError(f"{path}: the file has no rows")
    if label not in frame.columns:
        raise MvalError(f"{path}: no column {label!r} for --label; columns are {', '.join(frame.columns)}")
    features = frame.drop(label).with_columns(pl.col(pl.Boolean).cast(pl.Float64))  # a true/false feature is 1/0
    text = [c for c in features.columns if not features[c].dtype.is_numeric()]
    if text:  # a feature with one stray "N/A" reads as text: dropping it silently would change the problem
        column = features[text[0]]
        bad = column.is_not_null() & column.cast(pl.Float64, strict=False).is_null()
        row = int(bad.arg_max()) if bad.any() else 0
        raise MvalError(f"{path}: row {row + 1}, column {text[0]!r}: not a number ({column[row]!r}); every column "
                        f"but --label {label!r} is a feature: drop the column from the file or fix its values")
    if features.width == 0:
        raise MvalError(f"{path}: no numeric feature columns besides the label {label!r}")
    if features.null_count().sum_horizontal()[0] > 0 or frame[label].null_count():
        raise MvalError(f"{path}: missing values in the features or label; fill or drop those rows")
    finite = np.isfinite(features.to_numpy().astype(float))
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise MvalError(f"{path}: row {row + 1}, column {features.columns[col]}: not a finite number; fix or drop it")
    return supervised_env(features.to_numpy(), frame[label].to_numpy(), path.stem, **kwargs)


def synthetic_env(
    contexts: int = 500, actions: int = 10, dim: int = 5, overlap: float = 0.3,
    target_temperature: float = 0.5, logger_temperature: float = 1.0, seed: int = 0,
) -> BanditEnv:
    """Logistic rewards; pi0's score = overlap * true score + (1 - overlap) * an unrelated score."""
    if not 0.0 <= overlap <= 1.0:
        raise MvalError(f"--overlap {overlap}: must be in [0, 1]")
    if actions < 2 or contexts < 1 or dim < 1:
        raise MvalError("synthetic environment needs actions >= 2, contexts >= 1, dim >= 1")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(contexts, dim))
    score = x @ rng.normal(size=(dim, actions))
    unrelated = x @ rng.normal(size=(dim, actions))
    return BanditEnv(
        name="synthetic",
        features=x,
        mean_reward=expit(score - 1.0),
        logger=_explore(_softmax_policy(overlap * score + (1 - overlap) * unrelated, logger_temperature), 0.05),
        target=_softmax_policy(score, target_temperature),
    )


REPLAY_CONTEXTS = ("context_id", "position", "none")


def replay_from_store(con, logger: str, context: str = "context_id", **kwargs) -> ReplayEnv:
    """A replay environment from the store's rows of a uniform-random `logger` with 0/1 rewards."""
    if context not in REPLAY_CONTEXTS:
        raise MvalError(f"--replay-context {context}: unknown; use one of {', '.join(REPLAY_CONTEXTS)}")
    rows = con.sql(load_sql("replay_rows"), params={"context": context, "logger": logger}).pl()
    if rows.height == 0:
        raise MvalError(f"no rows of logger {logger!r} in the store; list loggers with `mval query STORE \"SELECT * FROM logger_summary\"`")
    reward = rows["reward"].to_numpy()
    if not np.isin(reward, (0.0, 1.0)).all():
        raise MvalError(f"replay needs 0/1 rewards (clicks); logger {logger!r} has reward {reward[~np.isin(reward, (0.0, 1.0))][0]}")
    _, codes = np.unique(rows["context_key"].to_numpy(), return_inverse=True)
    return replay_env(codes, rows["action"].to_numpy(), reward, rows["propensity"].to_numpy(),
                      name=f"replay:{logger}", **kwargs)


def replay_env(
    context: np.ndarray, action: np.ndarray, reward: np.ndarray, propensity: np.ndarray, name: str = "replay",
    target_temperature: float = 0.5, overlap: float = 0.5, seed: int = 0,
) -> ReplayEnv:
    """A replay environment from uniformly logged rows (context codes 0..P-1, actions 0..K-1).

    pi scores each cell by its mean reward (shrunk to the action's mean, in standard units) at
    `target_temperature`; pi0 mixes that score with noise (`overlap`) and keeps a 5% uniform share.
    """
    # the logged propensity 1/K counts an action that never came up, which action.max() would miss
    k = max(int(action.max()) + 1, int(round(1.0 / float(np.median(propensity)))))
    if not np.allclose(propensity, 1.0 / k, rtol=1e-6):
        bad = propensity[~np.isclose(propensity, 1.0 / k, rtol=1e-6)][0]
        raise MvalError(
            f"replay needs rows from a uniform-random logger over {k} actions (propensity {1 / k:.6g}), "
            f"found propensity {bad}; choose a uniformly logged logger"
        )
    n_ctx = int(context.max()) + 1
    cell = context * k + action
    counts = np.bincount(cell, minlength=n_ctx * k).reshape(n_ctx, k)
    sums = np.bincount(cell, weights=reward, minlength=n_ctx * k).reshape(n_ctx, k)
    mean = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    action_mean = sums.sum(axis=0) / np.maximum(counts.sum(axis=0), 1)
    shrunk = (sums + 10 * action_mean) / (counts + 10)
    score = (shrunk - shrunk.mean()) / (shrunk.std() + 1e-12)
    rng = np.random.default_rng(seed)
    noisy = overlap * score + (1 - overlap) * rng.normal(size=score.shape)
    env = ReplayEnv(
        name=name,
        features=np.eye(n_ctx) if n_ctx <= 64 else PCA(REWARD_FEATURES, random_state=seed).fit_transform(np.eye(n_ctx)),
        mean_reward=mean,
        logger=_explore(_softmax_policy(noisy, 1.0), 0.05),
        target=_softmax_policy(score, target_temperature),
        context_weights=counts.sum(axis=1).astype(float),
        rows_context=context, rows_action=action, rows_reward=reward,
        logged_share=counts / counts.sum(axis=1, keepdims=True),
    )
    return replace(env, logger=env.restrict(env.logger), target=env.restrict(env.target))
