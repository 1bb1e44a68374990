"""Semi-synthetic experiments with a known truth: does MVAL's design shrink the final error?

One replication (`run_replication`): draw the existing log (n0 rows from pi0), fit a reward model
m_hat on it, and for each budget n1 and each design pi1
    mval      argmin_pi1 sum_x sum_a pi^2 s_hat / (alpha pi0 + (1-alpha) pi1)   (alpha = n0/(n0+n1))
    proposal  the same with alpha = 0 (the optimal proposal that ignores the existing log)
    target    pi itself;  uniform;  pi0 (keep running the old logger)
draw n1 new rows from pi1 and estimate V(pi) on the pooled log with Balanced IPS and Balanced DR.
s_hat = m_hat for IPS (Bernoulli rewards: E[r^2] = E[r]) and m_hat (1 - m_hat) for DR.
`summarise` turns the errors of many replications into RMSE, bias, empirical std, the predicted
std (the design's own variance formula, from m_hat) and a paired bootstrap interval on the ratio
RMSE(design) / RMSE(mval).
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from mval.design import balanced_variance, solve_mval
from mval.environments import BanditEnv
from mval.estimators import LoggedData, estimate
from mval.progress import progress
from mval.reward_model import cross_fit_rewards, fit_predict, standardised

DESIGNS = ("mval", "target", "uniform", "pi0", "proposal")
ESTIMATORS = {"balanced-ips": "ips", "balanced-dr": "dr"}


@dataclass(frozen=True)
class DesignSummary:
    """Errors of one design at one budget, over all replications."""

    env: str
    design: str
    budget: int
    estimator: str
    reps: int
    rmse: float
    bias: float
    empirical_std: float
    predicted_std: float  # the design's variance formula with the reward model fitted on the old log
    oracle_std: float  # the same formula with the true m(x, a)
    rmse_ratio_vs_mval: float
    ratio_ci_low: float
    ratio_ci_high: float
    rounds_to_match_mval: float  # rounds this design needs to reach MVAL's (true) std at this budget

    def to_dict(self) -> dict:
        return asdict(self)


def fit_reward_model(env: BanditEnv, ctx: np.ndarray, action: np.ndarray, reward: np.ndarray, seed: int):
    """The existing log's reward model: cross-fitted q at its own rows (n0, K), and m_hat on the pool (P, K).

    Logistic regression on [x, one-hot(a), x * one-hot(a)] (the default of `mval.reward_model`), on the
    features scaled as the cross-fitted models scale them: Balanced DR's model terms cancel only when the
    old and new rows' q come from alike models (m_hat on raw features biased DR by up to a third of its SE,
    differently for each design).
    """
    x = env.features[ctx]
    q_rows = cross_fit_rewards(action, reward, env.n_actions, features=x, seed=seed)
    m_hat = fit_predict(standardised(x), action, reward, standardised(env.features, like=x), env.n_actions,
                        binary=True)
    return q_rows, m_hat


def design_policies(env: BanditEnv, s_hat: np.ndarray, n0: int, budget: int) -> dict[str, np.ndarray]:
    """pi1 for every design, as (contexts, actions) matrices, each kept to the cells the environment can
    draw (`env.restrict`: a replayed log has no rows for some cells; "uniform" is uniform over the rest)."""
    c = env.target**2 * s_hat
    designs = {
        "mval": solve_mval(c, env.logger, n0 / (n0 + budget), weights=env.weights),
        "target": env.target,
        "uniform": np.full_like(env.target, 1.0 / env.n_actions),
        "pi0": env.logger,
        "proposal": solve_mval(c, env.logger, 0.0, weights=env.weights),
    }
    return {name: env.restrict(pi1) for name, pi1 in designs.items()}


def run_replication(env: BanditEnv, n0: int, budgets: list[int], seed: np.random.SeedSequence) -> list[dict]:
    """One replication: error and predicted variance for every (budget, design, estimator)."""
    with threadpool_limits(1):  # parallelism is across replications; BLAS threads would oversubscribe
        return _replication(env, n0, budgets, seed)


def _replication(env: BanditEnv, n0: int, budgets: list[int], seed: np.random.SeedSequence) -> list[dict]:
    rng = np.random.default_rng(seed)
    ctx0, a0, r0 = env.draw(env.logger, n0, rng)
    q_rows0, m_hat = fit_reward_model(env, ctx0, a0, r0, seed=int(rng.integers(2**31)))
    p = env.weights
    s_hat_of = {"ips": m_hat, "dr": m_hat * (1 - m_hat)}
    out = []
    for budget in budgets:
        alpha = n0 / (n0 + budget)
        # one design per estimator: MVAL and the proposal depend on which variance is minimised
        for estimator, kind in ESTIMATORS.items():
            s_hat = s_hat_of[kind]
            for design, pi1 in design_policies(env, s_hat, n0, budget).items():
                ctx1, a1, r1 = env.draw(pi1, budget, rng)
                ctx, action = np.concatenate([ctx0, ctx1]), np.concatenate([a0, a1])
                pibar = alpha * env.logger + (1 - alpha) * pi1
                # q at the old rows is cross-fitted on the old log; new rows use the old log's model
                data = LoggedData.from_full(
                    reward=np.concatenate([r0, r1]), action=action, pi=env.target[ctx],
                    propensity=np.concatenate([env.logger[ctx0, a0], pi1[ctx1, a1]]),
                    logger=np.repeat([0, 1], [n0, budget]), pibar=pibar[ctx, action],
                    q=np.concatenate([q_rows0, m_hat[ctx1]]),
                )
                loggers, counts = [env.logger, pi1], [n0, budget]
                out.append({
                    "design": design, "budget": budget, "estimator": estimator,
                    "error": estimate(estimator, data).estimate - env.true_value,
                    "predicted_var": balanced_variance(env.target, loggers, counts, p, s_hat, m_hat, kind),
                    "oracle_var": true_variance(env, n0, budget, pi1, kind),
                })
    return out


def true_second_moment(env: BanditEnv, kind: str) -> np.ndarray:
    """s(x, a) for Bernoulli rewards: E[r^2] = m for IPS, E[(r - m)^2] = m (1 - m) for DR."""
    m = env.mean_reward
    return m if kind == "ips" else m * (1 - m)


def true_variance(env: BanditEnv, n0: int, n1: float, pi1: np.ndarray, kind: str) -> float:
    """Variance of the balanced estimate from n0 rows of pi0 and n1 rows of pi1, with the true m."""
    return balanced_variance(env.target, [env.logger, pi1], [n0, n1], env.weights, true_second_moment(env, kind),
                             env.mean_reward, kind)


def rounds_to_match(env: BanditEnv, n0: int, pi1: np.ndarray, variance: float, kind: str) -> float:
    """Rounds n1 that logging with `pi1` needs for the true variance to fall to `variance` (inf if never)."""
    low, high = 1.0, 1.0
    while true_variance(env, n0, high, pi1, kind) > variance:
        high *= 2
        if high > 1e9:
            return float("inf")
    for _ in range(50):  # bisection (geometric) on a decreasing function of n1
        mid = np.sqrt(low * high)
        low, high = (mid, high) if true_variance(env, n0, mid, pi1, kind) > variance else (low, mid)
    return float(high)


def _paired_ratio_interval(errors: np.ndarray, reference: np.ndarray, n_boot: int, rng: np.random.Generator):
    """Bootstrap (over replications, paired) 95% interval of RMSE(errors) / RMSE(reference)."""
    idx = rng.integers(len(errors), size=(n_boot, len(errors)))
    ratios = np.sqrt((errors[idx] ** 2).mean(axis=1) / (reference[idx] ** 2).mean(axis=1))
    return np.quantile(ratios, [0.025, 0.975])


def summarise(env: BanditEnv, n0: int, records: list[dict], n_boot: int = 2000, seed: int = 0) -> list[DesignSummary]:
    """One summary per (budget, estimator, design) from the records of all replications.

    `rounds_to_match_mval` is analytic: with the true m(x, a), the rounds each design (itself
    designed with the true m) needs to reach the variance of MVAL's design at this budget.
    """
    rng = np.random.default_rng(seed)
    frame = pl.DataFrame(records)
    out = []
    for (budget, estimator), group in frame.group_by(["budget", "estimator"], maintain_order=True):
        kind = ESTIMATORS[estimator]
        errors = {d: g["error"].to_numpy() for (d,), g in group.group_by("design", maintain_order=True)}
        stats = group.group_by("design", maintain_order=True).agg(
            rmse=(pl.col("error") ** 2).mean().sqrt(), bias=pl.col("error").mean(),
            empirical_std=pl.col("error").std(), predicted_std=pl.col("predicted_var").mean().sqrt(),
            oracle_std=pl.col("oracle_var").mean().sqrt(), reps=pl.len(),
        )
        mval_rmse = stats.filter(pl.col("design") == "mval")["rmse"][0]
        oracle = design_policies(env, true_second_moment(env, kind), n0, budget)
        goal = true_variance(env, n0, budget, oracle["mval"], kind)
        for row in stats.iter_rows(named=True):
            low, high = _paired_ratio_interval(errors[row["design"]], errors["mval"], n_boot, rng)
            out.append(DesignSummary(
                env=env.name, budget=budget, estimator=estimator, rmse_ratio_vs_mval=row["rmse"] / mval_rmse,
                ratio_ci_low=float(low), ratio_ci_high=float(high),
                rounds_to_match_mval=rounds_to_match(env, n0, oracle[row["design"]], goal, kind), **row,
            ))
    return out


def run_experiment(
    env: BanditEnv, n0: int, budgets: list[int], reps: int, seed: int = 0, workers: int | None = None,
) -> list[dict]:
    """All replications' records, on `workers` processes (default: every core)."""
    seeds = np.random.SeedSequence(seed).spawn(reps)
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        batches = (run_replication(env, n0, budgets, s) for s in seeds)
        return [r for batch in progress(batches, "replications", reps) for r in batch]
    with ProcessPoolExecutor(workers) as pool:
        jobs = pool.map(run_replication, [env] * reps, [n0] * reps, [budgets] * reps, seeds, chunksize=max(1, reps // (8 * workers)))
        return [r for batch in progress(jobs, "replications", reps) for r in batch]
