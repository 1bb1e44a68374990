"""The exact MVAL solver: hand-solved cases, an independent bisection solver, refusals, the variance formula."""

from __future__ import annotations

import numpy as np
import pytest

import mval.design as design
from mval.design import DesignInfeasibleError, MvalProblem, balanced_variance, solve_exact, solve_mval
from mval.errors import MvalError


def random_instance(rng, n=40, k=4, zero_c=0.3, zero_pi0=0.3):
    c = rng.random((n, k)) ** 2 * (rng.random((n, k)) > zero_c)
    pi0 = rng.dirichlet(np.ones(k), size=n) * (rng.random((n, k)) > zero_pi0) + 1e-300
    return c, pi0 / pi0.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("c", "pi0", "alpha", "floor", "cap", "expected"),
    [
        ([[1.0, 4.0]], [[0.5, 0.5]], 0.0, 0.0, 1.0, [[1 / 3, 2 / 3]]),  # pi1 ~ sqrt(c)
        ([[1.0, 1.0]], [[1.0, 0.0]], 0.5, 0.0, 1.0, [[0.0, 1.0]]),  # pibar = (0.5, 0.5)
        ([[1.0, 1.0]], [[1.0, 0.0]], 0.8, 0.0, 1.0, [[0.0, 1.0]]),  # pibar_0 >= 0.8 binds
        ([[1.0, 9.0]], [[0.0, 1.0]], 0.5, 0.0, 1.0, [[0.5, 0.5]]),  # pibar = (1/4, 3/4)
        ([[1.0, 1.0, 0.0]], [[1 / 3] * 3], 0.0, 0.0, 0.4, [[0.4, 0.4, 0.2]]),  # c = 0 takes what is left
        ([[1.0, 0.0, 0.0]], [[1 / 3] * 3], 0.0, 0.1, 1.0, [[0.8, 0.1, 0.1]]),  # floor
        ([[0.0, 0.0, 0.0]], [[1.0, 0.0, 0.0]], 0.5, 0.0, 1.0, [[1 / 3] * 3]),  # any pi1: uniform
        ([[2.0]], [[1.0]], 0.3, 0.0, 1.0, [[1.0]]),  # one action
    ],
)
def test_hand_solved(c, pi0, alpha, floor, cap, expected):
    np.testing.assert_allclose(solve_mval(np.array(c), np.array(pi0), alpha, floor, cap), expected, atol=1e-12)


def bisection_reference(problem: MvalProblem) -> np.ndarray:
    """The same KKT system solved by bisection on the multiplier (no sorting): an independent path."""
    beta = 1 - problem.alpha
    base = problem.alpha * problem.pi0
    low, high = base + beta * problem.floor, base + beta * problem.cap
    pibar = design._fill_at_price(problem.c, np.zeros_like(problem.c), low, high)
    return design._policy_from_pibar(pibar, base, beta, problem.floor, problem.cap)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    ("alpha", "floor", "cap"), [(0.0, 0.0, 1.0), (0.4, 0.05, 1.0), (0.9, 0.0, 0.35), (0.5, 0.1, 0.4)]
)
def test_matches_bisection_and_is_feasible(seed, alpha, floor, cap):
    rng = np.random.default_rng(seed)
    c, pi0 = random_instance(rng)
    problem = MvalProblem(c, pi0, alpha, floor=floor, cap=cap)
    pi1 = solve_exact(problem)
    assert np.allclose(pi1.sum(axis=1), 1, atol=1e-12)
    assert pi1.min() >= floor - 1e-12 and pi1.max() <= cap + 1e-12
    reference = problem.objective(bisection_reference(problem))
    assert problem.objective(pi1) <= reference * (1 + 1e-10)
    assert problem.objective(pi1) == pytest.approx(reference, rel=1e-8)


def test_no_local_improvement():
    """Moving mass between two actions of a context never lowers the objective (first-order optimality)."""
    rng = np.random.default_rng(7)
    c, pi0 = random_instance(rng, n=30, zero_c=0.0)
    problem = MvalProblem(c, pi0, 0.6)
    pi1 = solve_exact(problem)
    best = problem.objective(pi1)
    for a, b in [(0, 1), (1, 2), (3, 0)]:
        for step in (1e-4, -1e-4):
            moved = pi1.copy()
            moved[:, a] += step
            moved[:, b] -= step
            ok = (moved >= 0).all(axis=1)
            moved[~ok] = pi1[~ok]
            assert problem.objective(moved) >= best - 1e-12


def test_blocks_agree(monkeypatch):
    rng = np.random.default_rng(3)
    c, pi0 = random_instance(rng, n=500)
    problem = MvalProblem(c, pi0, 0.3, floor=0.02, cap=0.5)
    whole = solve_exact(problem)
    monkeypatch.setattr(design, "CHUNK_ELEMENTS", 12)
    np.testing.assert_array_equal(solve_exact(problem), whole)


def test_reward_constraint_binds_and_costs_variance():
    rng = np.random.default_rng(4)
    c, pi0 = random_instance(rng, zero_c=0.0)
    m = rng.random(c.shape)
    free = MvalProblem(c, pi0, 0.5)
    unconstrained = solve_exact(free)
    target = 0.5 * (free.weights @ (unconstrained * m).sum(axis=1)) + 0.5 * free.weights @ m.max(axis=1)
    problem = MvalProblem(c, pi0, 0.5, reward=m, min_reward=target)
    pi1 = solve_exact(problem)
    assert problem.expected_reward(pi1) == pytest.approx(target, rel=1e-9)
    assert problem.objective(pi1) > free.objective(unconstrained)
    slack = MvalProblem(c, pi0, 0.5, reward=m, min_reward=0.0)
    np.testing.assert_allclose(solve_exact(slack), unconstrained)


def test_reward_out_of_reach():
    problem = MvalProblem(np.ones((2, 2)), np.full((2, 2), 0.5), 0.5, reward=np.ones((2, 2)), min_reward=2.0)
    with pytest.raises(DesignInfeasibleError, match="out of reach"):
        solve_exact(problem)


GOOD = dict(c=np.ones((2, 3)), pi0=np.full((2, 3), 1 / 3), alpha=0.5)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"c": -np.ones((2, 3))}, "c must be finite and >= 0"),
        ({"c": np.full((2, 3), np.nan)}, "c must be finite"),
        ({"c": np.ones((2, 2))}, "shape"),
        ({"pi0": np.full((2, 3), 0.5)}, "rows must sum to 1"),
        ({"alpha": 1.0}, r"alpha = 1.0: must be in \[0, 1\)"),
        ({"floor": 0.5}, "no policy has that floor"),
        ({"cap": 0.2}, "no policy has that cap"),
        ({"floor": 0.3, "cap": 0.2}, "floor <= cap"),
        ({"weights": np.array([1.0, -1.0])}, "weights"),
        ({"min_reward": 1.0}, "both reward"),
        ({"c": np.ones((2, 2, 3))}, "minimax"),
    ],
)
def test_refusals(change, match):
    with pytest.raises(MvalError, match=match):
        solve_exact(MvalProblem(**{**GOOD, **change}))


def test_balanced_variance_matches_simulation():
    """Balanced IPS with n_k rows per logger, rewards Bernoulli(m): empirical variance vs the formula."""
    rng = np.random.default_rng(11)
    n_ctx, k = 3, 3
    p = np.array([0.5, 0.3, 0.2])
    m = rng.uniform(0.1, 0.9, size=(n_ctx, k))
    pi = rng.dirichlet(np.ones(k), size=n_ctx)
    loggers = [rng.dirichlet(np.ones(k), size=n_ctx), np.full((n_ctx, k), 1 / k)]
    counts = [60, 40]
    total = sum(counts)
    pibar = sum(n * q for n, q in zip(counts, loggers)) / total
    reps = 20000
    estimates = np.zeros(reps)
    for q, n in zip(loggers, counts):  # loop over the two loggers; rows and replications are vectorised
        x = rng.choice(n_ctx, p=p, size=(reps, n))
        a = (rng.random((reps, n, 1)) > np.cumsum(q[x], axis=2)).sum(axis=2)
        r = rng.random((reps, n)) < m[x, a]
        estimates += (pi[x, a] / pibar[x, a] * r).sum(axis=1) / total
    predicted = balanced_variance(pi, loggers, counts, p, m, m, "ips")  # Bernoulli: E[r^2] = m
    assert abs(estimates.mean() - (p @ (pi * m).sum(axis=1))) < 3 * np.sqrt(predicted / reps)
    assert estimates.var() == pytest.approx(predicted, rel=0.1)


def test_balanced_variance_uncovered_is_infinite():
    pi = np.array([[0.0, 1.0]])
    assert balanced_variance(pi, [np.array([[1.0, 0.0]])], [10], np.ones(1), np.ones((1, 2)), np.ones((1, 2))) == np.inf
