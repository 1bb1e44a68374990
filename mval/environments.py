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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from scipy.special import expit, softmax
from sklearn import datasets
from sklearn.linear_model import LogisticRegression
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from mval.errors import MvalError

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

    @property
    def n_contexts(self) -> int:
        return self.mean_reward.shape[0]

    @property
    def n_actions(self) -> int:
        return self.mean_reward.shape[1]

    @property
    def true_value(self) -> float:
        """V(pi) = mean_x sum_a pi(a|x) m(x, a)."""
        return float((self.target * self.mean_reward).sum(axis=1).mean())

    def draw(self, policy: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n rounds under `policy` (P, K): context index, action and Bernoulli reward per round."""
        ctx = rng.integers(self.n_contexts, size=n)
        cdf = np.cumsum(policy[ctx], axis=1)
        action = np.minimum((rng.random(n)[:, None] * cdf[:, -1:] > cdf).sum(axis=1), self.n_actions - 1)
        reward = (rng.random(n) < self.mean_reward[ctx, action]).astype(float)
        return ctx, action, reward


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
    """Supervised-to-bandit from a CSV/Parquet file: numeric columns are features, `label` the class."""
    path = Path(path)
    if not path.is_file():
        raise MvalError(f"{path}: no such file")
    try:
        frame = pl.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pl.read_csv(path)
    except Exception as e:  # polars raises many types for unreadable files
        raise MvalError(f"{path}: cannot read ({str(e).splitlines()[0]}); give a CSV or Parquet file") from e
    if label not in frame.columns:
        raise MvalError(f"{path}: no column {label!r} for --label; columns are {', '.join(frame.columns)}")
    features = frame.drop(label).select(pl.selectors.numeric())
    if features.width == 0:
        raise MvalError(f"{path}: no numeric feature columns besides the label {label!r}")
    if features.null_count().sum_horizontal()[0] > 0 or frame[label].null_count():
        raise MvalError(f"{path}: missing values in the features or label; fill or drop those rows")
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
