"""The MVAL problems in cvxpy (DPP): the reference for `solve_exact`, and the minimax objective.

The model is built once per shape and cached; a new instance only sets Parameter values and
re-solves. Separable problems (one cost, no reward constraint) are solved in blocks of contexts
with one DPP-compiled block model; coupled ones (minimax, reward constraint) in one model over
every context, limited to COUPLED_LIMIT context-action-target triples, and compiled with `ignore_dpp`
(the Parameters as constants): DPP's tensors grow with parameters x variables, so 60 x 80 pairs
took 22 s and 6.5 GB to compile (240 x 80 ran out of memory), against 1.1 s and 0.2 GB; 240 x 80
now takes 4 s, 1,000 x 80 23 s and 1 GB.

DPP and zero costs: the cost enters as the Parameter sqrt(c) >= 0 in the rotated cone
t >= c / pibar, i.e. ||(2 sqrt(c), t - pibar)|| <= t + pibar, with pibar an auxiliary variable
(no Parameter inside a nonlinear atom). With c = 0 the cone only says t, pibar >= 0, whereas
sum(multiply(c, inv_pos(pibar))) would still force pibar > 0 there and stall the solver.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from mval.design import DesignInfeasibleError, MvalProblem
from mval.errors import MvalError

BLOCK_PAIRS = 2000  # context-action pairs per block of a separable problem
COUPLED_LIMIT = 200_000  # context x action x target triples for minimax / reward-constrained problems


class DesignUnboundedError(MvalError):
    """The solver reports an unbounded problem (costs must be non-negative)."""


class DesignSolverError(MvalError):
    """The solver stopped without a usable answer (numerical trouble) or the problem is too large."""


@dataclass(frozen=True)
class MvalModel:
    """A compiled problem and the handles to fill it in."""

    problem: cp.Problem
    pi1: cp.Variable
    sqrt_cost: list[cp.Parameter]
    base: cp.Parameter
    beta: cp.Parameter
    floor: cp.Parameter
    cap: cp.Parameter
    weighted_reward: cp.Parameter | None
    min_reward: cp.Parameter | None


def mval_model(n: int, k: int, targets: int = 1, with_reward: bool = False) -> MvalModel:
    """minimise  max_j sum_{x,a} t_j(x,a)
    over pi1 with floor <= pi1 <= cap, sum_a pi1(a|x) = 1,
    where  pibar = alpha pi0 + beta pi1  (base = alpha pi0, beta = 1 - alpha)
    and    t_j >= c_j / pibar            (rotated cone, elementwise)
    [and   sum_{x,a} p(x) m(x,a) pi1(a|x) >= min_reward].
    """
    pi1 = cp.Variable((n, k), nonneg=True)
    pibar = cp.Variable((n, k), nonneg=True)
    sqrt_cost = [cp.Parameter((n, k), nonneg=True) for _ in range(targets)]
    t = [cp.Variable((n, k), nonneg=True) for _ in range(targets)]
    base = cp.Parameter((n, k), nonneg=True)
    beta = cp.Parameter(nonneg=True)
    floor = cp.Parameter(nonneg=True)
    cap = cp.Parameter(nonneg=True)
    constraints = [
        pibar == base + beta * pi1,
        cp.sum(pi1, axis=1) == 1,
        pi1 >= floor,
        pi1 <= cap,
    ]
    for q, tj in zip(sqrt_cost, t):
        cone = cp.vstack([2 * cp.vec(q, order="F"), cp.vec(tj - pibar, order="F")])
        constraints.append(cp.SOC(cp.vec(tj + pibar, order="F"), cone, axis=0))
    weighted_reward = min_reward = None
    if with_reward:
        weighted_reward = cp.Parameter((n, k))
        min_reward = cp.Parameter()
        constraints.append(cp.sum(cp.multiply(weighted_reward, pi1)) >= min_reward)
    variances = [cp.sum(tj) for tj in t]
    objective = cp.Minimize(variances[0] if targets == 1 else cp.maximum(*variances))
    problem = cp.Problem(objective, constraints)
    if not problem.is_dcp(dpp=True):
        raise RuntimeError("the MVAL cvxpy model is not DPP: a Parameter ended up inside a nonlinear atom")
    return MvalModel(problem, pi1, sqrt_cost, base, beta, floor, cap, weighted_reward, min_reward)


_MODELS: dict[tuple[int, int, int, bool], MvalModel] = {}


def _cached_model(n: int, k: int, targets: int, with_reward: bool) -> MvalModel:
    key = (n, k, targets, with_reward)
    if key not in _MODELS:
        _MODELS[key] = mval_model(*key)
    return _MODELS[key]


def solve_cvxpy(problem: MvalProblem, solver: str = "CLARABEL", **options) -> np.ndarray:
    """pi1 for `problem` (2-D c: sum objective; 3-D c: minimax over targets), reusing compiled models."""
    n, k = problem.shape
    costs = problem.c if problem.c.ndim == 3 else problem.c[None]
    if costs.shape[0] == 1 and problem.reward is None:
        return _solve_blocks(problem, costs[0], solver, options)
    if n * k * costs.shape[0] > COUPLED_LIMIT:
        raise DesignSolverError(
            f"{n} contexts x {k} actions x {costs.shape[0]} target(s) is too large for the coupled cvxpy model "
            f"(limit {COUPLED_LIMIT} context-action-target triples); "
            "use --solver exact (reward constraint) or fewer contexts"
        )
    weighted = problem.weights[None, :, None] * costs
    weighted /= max(weighted.sum(axis=(1, 2)).max(), 1e-300)
    model = _cached_model(n, k, costs.shape[0], problem.reward is not None)
    if problem.reward is not None:
        model.weighted_reward.value = problem.weights[:, None] * problem.reward
        model.min_reward.value = problem.min_reward
    return _solve_model(model, np.sqrt(weighted), problem.alpha * problem.pi0, problem, solver,
                        {"ignore_dpp": True, **options})


def _solve_blocks(problem: MvalProblem, c: np.ndarray, solver: str, options: dict) -> np.ndarray:
    """Separable: each context's cost scaled to sum 1 (same argmin), blocks padded to one compiled size."""
    n, k = problem.shape
    rows = max(1, min(n, BLOCK_PAIRS // k))
    model = _cached_model(rows, k, 1, False)
    totals = c.sum(axis=1, keepdims=True)
    sqrt_c = np.sqrt(np.divide(c, totals, out=np.zeros_like(c), where=totals > 0))
    base = problem.alpha * problem.pi0
    pi1 = np.empty((n, k))
    for start in range(0, n, rows):
        block = slice(start, min(start + rows, n))
        size = block.stop - block.start
        pad = rows - size
        q = np.pad(sqrt_c[block], ((0, pad), (0, 0)))[None]
        b = np.pad(base[block], ((0, pad), (0, 0)), constant_values=problem.alpha / k)
        pi1[block] = _solve_model(model, q, b, problem, solver, options)[:size]
    return pi1


def _solve_model(model: MvalModel, sqrt_costs: np.ndarray, base: np.ndarray, problem: MvalProblem,
                 solver: str, options: dict) -> np.ndarray:
    for param, q in zip(model.sqrt_cost, sqrt_costs):
        param.value = q
    model.base.value = base
    model.beta.value = 1.0 - problem.alpha
    model.floor.value = problem.floor
    model.cap.value = problem.cap
    try:
        model.problem.solve(solver=solver, **options)
    except cp.SolverError as e:
        raise DesignSolverError(f"cvxpy solver {solver} failed ({e}); use --solver exact where possible") from e
    _check_status(model.problem.status)
    pi1 = np.clip(model.pi1.value, 0.0, None)
    return pi1 / pi1.sum(axis=1, keepdims=True)


def _check_status(status: str) -> None:
    if status == cp.OPTIMAL:
        return
    if status == cp.OPTIMAL_INACCURATE:
        warnings.warn("cvxpy: solution is inaccurate; compare with --solver exact", stacklevel=3)
        return
    if status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
        raise DesignInfeasibleError(
            "no logging policy meets the constraints; lower --min-reward-ratio or --floor, or raise --cap"
        )
    if status in (cp.UNBOUNDED, cp.UNBOUNDED_INACCURATE):
        raise DesignUnboundedError("the design problem is unbounded; the second moments s must be >= 0")
    raise DesignSolverError(f"cvxpy stopped with status {status!r}; rescale the rewards or use --solver exact")
