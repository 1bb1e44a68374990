"""The built-in example: a small contextual bandit log with a known logger and a target policy.

20 contexts with 3 features, 5 actions, expected reward m(x, a) = sigmoid(theta_a . x). The logger
pi0 is a noisy softmax that favours the wrong actions (with a 5% uniform floor, so every action
has some probability); the target pi is a softmax of the true score, so it puts much of its mass
where pi0 rarely looks: the case MVAL is for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

N_CONTEXTS, N_ACTIONS, N_FEATURES = 20, 5, 3


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class ExampleProblem:
    context_ids: np.ndarray  # (C,)
    features: np.ndarray  # (C, F)
    mean_reward: np.ndarray  # (C, K): m(x, a)
    logger: np.ndarray  # (C, K): pi0
    target: np.ndarray  # (C, K): pi

    @property
    def true_value(self) -> float:
        """V(pi) = mean over (uniform) contexts of sum_a pi(a|x) m(x, a)."""
        return float((self.target * self.mean_reward).sum(axis=1).mean())


def example_problem(seed: int = 0) -> ExampleProblem:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N_CONTEXTS, N_FEATURES))
    score = x @ rng.normal(size=(N_ACTIONS, N_FEATURES)).T
    pi0 = 0.95 * _softmax(-0.5 * score + rng.normal(size=score.shape)) + 0.05 / N_ACTIONS
    return ExampleProblem(
        context_ids=np.array([f"c{i:02d}" for i in range(N_CONTEXTS)]),
        features=x,
        mean_reward=1 / (1 + np.exp(-score)),
        logger=pi0,
        target=_softmax(score),
    )


def policy_frame(context_ids: np.ndarray, probs: np.ndarray) -> pl.DataFrame:
    """A (contexts x actions) matrix in the long format of the `policies` table."""
    k = probs.shape[1]
    return pl.DataFrame({
        "context_id": np.repeat(context_ids, k),
        "action": np.tile(np.arange(k), len(context_ids)),
        "prob": probs.ravel(),
    })


def write_example(folder: str | Path, rows: int = 5000, seed: int = 0) -> dict[str, Path]:
    """Write example_log.parquet (logged by pi0), logger_policy.csv and target_policy.csv."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    problem = example_problem(seed)
    rng = np.random.default_rng(seed + 1)
    ctx = rng.integers(N_CONTEXTS, size=rows)
    cdf = np.cumsum(problem.logger[ctx], axis=1)
    action = np.minimum((rng.random(rows)[:, None] > cdf).sum(axis=1), N_ACTIONS - 1)
    reward = (rng.random(rows) < problem.mean_reward[ctx, action]).astype(float)
    paths = {
        "log": folder / "example_log.parquet",
        "logger_policy": folder / "logger_policy.csv",
        "target_policy": folder / "target_policy.csv",
    }
    pl.DataFrame({
        "context_id": problem.context_ids[ctx],
        "features": problem.features[ctx].tolist(),
        "action": action,
        "propensity": problem.logger[ctx, action],
        "reward": reward,
    }).write_parquet(paths["log"])
    policy_frame(problem.context_ids, problem.logger).write_csv(paths["logger_policy"])
    policy_frame(problem.context_ids, problem.target).write_csv(paths["target_policy"])
    return paths
