"""The cvxpy DPP model agrees with the exact solver, including degenerate instances; minimax; statuses."""

from __future__ import annotations

import numpy as np
import pytest

from mval.design import DesignInfeasibleError, MvalProblem, solve_exact
from mval.design_cvxpy import _MODELS, mval_model, solve_cvxpy


def instance(rng, n, k, zero_c, zero_pi0):
    c = rng.random((n, k)) ** 2 * (rng.random((n, k)) > zero_c)
    pi0 = rng.dirichlet(np.ones(k), size=n) * (rng.random((n, k)) > zero_pi0) + 1e-300
    return c, pi0 / pi0.sum(axis=1, keepdims=True)


CASES = [  # (k, zero_c, zero_pi0, alpha, floor, cap, reward ratio)
    (4, 0.0, 0.0, 0.5, 0.0, 1.0, None),
    (4, 0.4, 0.3, 0.0, 0.0, 1.0, None),  # c = 0 actions, n0 = 0
    (4, 0.4, 0.4, 0.9, 0.0, 1.0, None),  # pi0 = 0 actions
    (3, 0.3, 0.0, 0.3, 0.05, 0.5, None),  # floor and cap
    (1, 0.0, 0.0, 0.5, 0.0, 1.0, None),  # one action
    (3, 1.0, 0.0, 0.5, 0.0, 1.0, None),  # every c = 0
    (4, 0.2, 0.2, 0.5, 0.02, 1.0, 0.7),  # reward constraint
    (3, 0.0, 0.0, 0.0, 0.0, 0.6, 0.8),
]


@pytest.mark.parametrize("case", CASES)
def test_agrees_with_exact(case):
    k, zero_c, zero_pi0, alpha, floor, cap, ratio = case
    rng = np.random.default_rng(k + int(10 * alpha))
    c, pi0 = instance(rng, 25, k, zero_c, zero_pi0)
    weights = rng.random(25)
    extra = {}
    if ratio is not None:
        m = rng.random((25, k))
        w = weights / weights.sum()
        extra = dict(reward=m, min_reward=ratio * float(w @ m.max(axis=1)))
    problem = MvalProblem(c, pi0, alpha, weights, floor, cap, **extra)
    exact, reference = solve_exact(problem), solve_cvxpy(problem)
    for pi1 in (exact, reference):
        assert np.allclose(pi1.sum(axis=1), 1) and pi1.min() >= floor - 1e-7 and pi1.max() <= cap + 1e-7
    f_exact, f_ref = problem.objective(exact), problem.objective(reference)
    assert f_exact == pytest.approx(f_ref, rel=1e-6, abs=1e-12)
    if zero_c == 0 and ratio is None:  # strictly convex in pibar: the policy itself is unique
        np.testing.assert_allclose(exact, reference, atol=1e-4)


def test_model_is_reused_across_instances():
    rng = np.random.default_rng(0)
    first = MvalProblem(*instance(rng, 7, 3, 0.0, 0.0), 0.5)
    second = MvalProblem(*instance(rng, 7, 3, 0.0, 0.0), 0.2)
    solve_cvxpy(first)
    models = dict(_MODELS)
    solve_cvxpy(second)
    assert _MODELS == models  # same shape: parameters refilled, nothing recompiled
    assert mval_model(7, 3).problem.is_dcp(dpp=True)


def test_minimax_is_no_worse_than_average_on_the_worst_target():
    rng = np.random.default_rng(5)
    c1, pi0 = instance(rng, 10, 3, 0.0, 0.0)
    c2 = rng.random((10, 3)) ** 4
    costs = np.stack([c1, c2])
    minimax = MvalProblem(costs, pi0, 0.4)
    pi_mm = solve_cvxpy(minimax)
    pi_avg = solve_exact(MvalProblem(costs.mean(axis=0), pi0, 0.4))
    assert minimax.objective(pi_mm).max() <= minimax.objective(pi_avg).max() * (1 + 1e-6)
    for j in range(2):  # and no better than each target's own optimum
        alone = MvalProblem(costs[j], pi0, 0.4)
        assert minimax.objective(pi_mm).max() >= alone.objective(solve_exact(alone)) * (1 - 1e-6)


def test_infeasible_reward_is_a_typed_error():
    problem = MvalProblem(np.ones((2, 2)), np.full((2, 2), 0.5), 0.5, reward=np.ones((2, 2)), min_reward=2.0)
    with pytest.raises(DesignInfeasibleError, match="min-reward-ratio"):
        solve_cvxpy(problem)
