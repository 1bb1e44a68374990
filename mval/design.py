"""MVAL: the logging policy pi1 that makes the combined log evaluate a target with minimum variance.

Minimum Variance Augmentation Logging (Tucker & Joachims, arXiv 2202.01721). An existing log of
n0 rows from pi0 gets n1 new rows from pi1; with N = n0 + n1, alpha = n0 / N and
pibar = alpha pi0 + (1 - alpha) pi1, the Balanced IPS variance is

    Var = (1/N) sum_x p(x) sum_a c(x,a) / pibar(a|x)  -  (1/N^2) sum_k n_k mu_k^2,
    c = pi^2 s,  s(x,a) = E[r^2 | x,a]   (Balanced DR: s = E[(r - q)^2 | x,a]),
    mu_k = sum_x p(x) sum_a pi_k(a|x) pi(a|x) m(x,a) / pibar(a|x),  m = E[r | x,a].

MVAL minimises the first term over pi1(.|x) in the simplex, optionally with a floor and a cap on
pi1 and a reward constraint sum_x p(x) sum_a pi1 m >= min_reward. Without the reward constraint
the problem separates by context and the KKT conditions give a water-filling:

    pibar(a|x) = clip(t_x sqrt(c(x,a)), low, high),  low = alpha pi0 + (1-alpha) floor,
                                                    high = alpha pi0 + (1-alpha) cap,

with t_x set so that pibar sums to 1; `solve_exact` finds every t_x at once by sorting the
breakpoints low/sqrt(c) (no loop over contexts). Actions with c = 0 stay at their lower bound and
take only the mass nobody else can (all other actions capped): it is spread evenly over them. A
context where every c is 0 has objective 0 for any pi1; it gets the uniform policy.

The reward constraint adds one multiplier nu shared by all contexts: for fixed nu each context
solves min sum_a c/pibar - nu sum_a m pibar, i.e. pibar = clip(sqrt(c / (lam_x - nu m)), low, high),
with lam_x found by a vectorised bisection; nu itself by a 1-D search on the constraint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mval.errors import MvalError

CHUNK_ELEMENTS = 1 << 14  # contexts x actions handled per block: keeps temporaries in cache
_SUM_TOL = 1e-6


class DesignInfeasibleError(MvalError):
    """No pi1 satisfies the constraints (floor, cap, minimum reward)."""


@dataclass(frozen=True)
class MvalProblem:
    """One MVAL instance on plain arrays (n contexts, K actions).

    c: (n, K) costs pi^2 s >= 0, or (J, n, K) for J targets under the minimax objective (cvxpy only).
    pi0: (n, K) existing logging policy, rows sum to 1 (any rows when alpha = 0).
    alpha: n0 / (n0 + n1) in [0, 1).
    weights: (n,) context frequencies p(x) (normalised here); None = equal.
    floor, cap: bounds on every pi1(a|x).
    reward, min_reward: m(x, a) and the constraint sum_x p(x) sum_a pi1(a|x) m(x,a) >= min_reward.
    """

    c: np.ndarray
    pi0: np.ndarray
    alpha: float
    weights: np.ndarray | None = None
    floor: float = 0.0
    cap: float = 1.0
    reward: np.ndarray | None = None
    min_reward: float | None = None

    def __post_init__(self) -> None:
        c = np.asarray(self.c, dtype=float)
        pi0 = np.asarray(self.pi0, dtype=float)
        if c.ndim not in (2, 3) or c.shape[-2:] != pi0.shape or pi0.ndim != 2:
            raise MvalError(
                f"c has shape {c.shape} and pi0 {pi0.shape}; give c as (contexts, actions) "
                "or (targets, contexts, actions) and pi0 as (contexts, actions)"
            )
        n, k = pi0.shape
        if n == 0 or k == 0:
            raise MvalError(f"c has shape {c.shape}: need at least one context and one action")
        if not (np.isfinite(c).all() and (c >= 0).all()):
            raise MvalError("c must be finite and >= 0 (c = pi^2 s); check the second moments s")
        if not 0.0 <= self.alpha < 1.0:
            raise MvalError(f"alpha = {self.alpha}: must be in [0, 1) (alpha = n0 / (n0 + n1), with n1 > 0)")
        if self.alpha > 0:
            if not (np.isfinite(pi0).all() and (pi0 >= 0).all()):
                raise MvalError("pi0 must be finite and >= 0")
            worst = np.abs(pi0.sum(axis=1) - 1).max()
            if worst > _SUM_TOL:
                raise MvalError(f"pi0 rows must sum to 1, one is off by {worst:.3g}; normalise the logging policy")
        if not 0.0 <= self.floor <= self.cap <= 1.0:
            raise MvalError(f"floor {self.floor} and cap {self.cap}: need 0 <= floor <= cap <= 1")
        if self.floor * k > 1 + 1e-12:
            raise MvalError(f"floor {self.floor} x {k} actions > 1: no policy has that floor; use floor <= {1 / k:.6g}")
        if self.cap * k < 1 - 1e-12:
            raise MvalError(f"cap {self.cap} x {k} actions < 1: no policy has that cap; use cap >= {1 / k:.6g}")
        weights = np.full(n, 1.0 / n) if self.weights is None else np.asarray(self.weights, dtype=float)
        if weights.shape != (n,) or not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise MvalError(f"weights must be {n} non-negative numbers with a positive sum (context frequencies)")
        if (self.reward is None) != (self.min_reward is None):
            raise MvalError("give both reward (m) and min_reward for the reward constraint, or neither")
        if self.reward is not None:
            reward = np.asarray(self.reward, dtype=float)
            if reward.shape != pi0.shape or not np.isfinite(reward).all():
                raise MvalError(f"reward must be finite with shape {pi0.shape}, found {reward.shape}")
            object.__setattr__(self, "reward", reward)
        object.__setattr__(self, "c", c)
        object.__setattr__(self, "pi0", pi0)
        object.__setattr__(self, "weights", weights / weights.sum())

    @property
    def shape(self) -> tuple[int, int]:
        return self.pi0.shape

    def pibar(self, pi1: np.ndarray) -> np.ndarray:
        return self.alpha * self.pi0 + (1 - self.alpha) * pi1

    def objective(self, pi1: np.ndarray) -> np.ndarray | float:
        """sum_x p(x) sum_a c/pibar (0 where c = 0; inf where c > 0 = pibar); one value per target if c is 3-D."""
        return self.weights @ np.moveaxis(cost_over_coverage(self.c, self.pibar(pi1)).sum(axis=-1), -1, 0)

    def expected_reward(self, pi1: np.ndarray) -> float:
        return float(self.weights @ (pi1 * self.reward).sum(axis=1))


def cost_over_coverage(c: np.ndarray, pibar: np.ndarray) -> np.ndarray:
    """c / pibar elementwise with 0/0 = 0 and c/0 = inf."""
    out = np.where(c > 0, np.inf, 0.0)
    np.divide(c, pibar, out=out, where=pibar > 0)
    return out


def solve_mval(
    c: np.ndarray,
    pi0: np.ndarray,
    alpha: float,
    floor: float = 0.0,
    cap: float = 1.0,
    weights: np.ndarray | None = None,
    reward: np.ndarray | None = None,
    min_reward: float | None = None,
) -> np.ndarray:
    """pi1 (n, K) minimising sum_x p(x) sum_a c/pibar: the exact solver on plain arrays."""
    return solve_exact(MvalProblem(c, pi0, alpha, weights, floor, cap, reward, min_reward))


def solve_exact(problem: MvalProblem) -> np.ndarray:
    """The exact vectorised solver (water-filling; multiplier search for the reward constraint)."""
    if problem.c.ndim == 3:
        if problem.c.shape[0] != 1:
            raise MvalError("the minimax objective over several targets needs the cvxpy solver (--solver cvxpy)")
        problem = MvalProblem(problem.c[0], problem.pi0, problem.alpha, problem.weights, problem.floor,
                              problem.cap, problem.reward, problem.min_reward)
    if problem.reward is None:
        return _water_fill_policy(problem)
    return _solve_with_reward(problem)


# ---------------------------------------------------------------- separable case: water-filling


def _rows_per_chunk(k: int) -> int:
    return max(1, CHUNK_ELEMENTS // k)


def _water_fill_policy(problem: MvalProblem) -> np.ndarray:
    n, k = problem.shape
    caps_bind = problem.cap < 1 - (k - 1) * problem.floor  # else sum(pibar) = 1 keeps every pi1 <= cap
    pi1 = np.empty((n, k))
    step = _rows_per_chunk(k)
    for start in range(0, n, step):
        rows = slice(start, start + step)
        pi1[rows] = _water_fill_block(problem.c[rows], problem.pi0[rows], problem.alpha,
                                      problem.floor, problem.cap, caps_bind)
    return pi1


def _threshold(r: np.ndarray, low: np.ndarray, mass: np.ndarray | float) -> np.ndarray:
    """t per row with sum_a max(low_a, t r_a) = mass, by sorting the breakpoints low_a / r_a.

    At breakpoint j (sorted), the actions before j are active (t r_a) and the rest sit at low_a, so
    g_j = start_j * (r of earlier actions) + (low of the others) is increasing in j; the actions with
    g_j <= mass are the active set, and t follows in closed form. Rows without r > 0 get t = 0.
    """
    n, k = r.shape
    starts = np.full_like(r, np.inf)
    np.divide(low, r, out=starts, where=r > 0)
    flat = np.argsort(starts, axis=1)
    flat += (np.arange(n) * k)[:, None]
    flat = flat.ravel()
    starts = starts.ravel()[flat].reshape(n, k)
    r_sorted = r.ravel()[flat].reshape(n, k)
    low_sorted = low.ravel()[flat].reshape(n, k)
    r_cum = np.cumsum(r_sorted, axis=1)
    low_cum = np.cumsum(low_sorted, axis=1)
    low_total = low_cum[:, -1:]
    g = np.subtract(r_cum, r_sorted, out=r_sorted)  # r of the earlier actions
    with np.errstate(invalid="ignore"):  # inf * 0 before any action is active: never counted
        g *= starts
    g += low_total
    g -= low_cum
    g += low_sorted  # + low of the actions from j on
    active = np.count_nonzero(g <= np.reshape(mass, (-1, 1)), axis=1)
    last = np.maximum(active - 1, 0)[:, None]
    r_active = np.take_along_axis(r_cum, last, axis=1)[:, 0]
    low_free = low_total[:, 0] - np.take_along_axis(low_cum, last, axis=1)[:, 0]
    t = np.zeros(n)
    np.divide(mass - low_free, r_active, out=t, where=(active > 0) & (r_active > 0))
    return np.maximum(t, 0.0, out=t)


def _water_fill_block(c: np.ndarray, pi0: np.ndarray, alpha: float, floor: float, cap: float,
                      caps_bind: bool) -> np.ndarray:
    """pi1 for a block of contexts: pibar = clip(t sqrt(c), low, high), sum pibar = 1."""
    beta = 1.0 - alpha
    r = np.sqrt(c)
    base = alpha * pi0
    low = base + beta * floor if floor > 0 else base
    pibar = _threshold(r, low, 1.0)[:, None] * r
    np.maximum(pibar, low, out=pibar)
    capped = np.zeros(r.shape, dtype=bool)
    if caps_bind:
        # An action above its cap at t stays above it at the final t (which can only grow):
        # fix it at the cap and refill the others with the mass left; at most K rounds.
        high = base + beta * cap
        todo = np.flatnonzero((pibar > high).any(axis=1))
        while todo.size:
            fixed = capped[todo] | (pibar[todo] > high[todo])
            capped[todo] = fixed
            r_free = np.where(fixed, 0.0, r[todo])
            low_free = np.where(fixed, 0.0, low[todo])
            mass = 1.0 - np.where(fixed, high[todo], 0.0).sum(axis=1)
            t = _threshold(r_free, low_free, mass)
            pibar[todo] = np.where(fixed, high[todo], np.maximum(low[todo], t[:, None] * r_free))
            todo = todo[(pibar[todo] > high[todo] * (1 + 1e-12)).any(axis=1)]
    # Mass that no action with c > 0 can take (all capped, or none): spread over the c = 0 actions.
    rows = np.flatnonzero((c == 0).any(axis=1))
    stuck = rows[~((r[rows] > 0) & ~capped[rows]).any(axis=1)]
    if stuck.size:
        zero = c[stuck] == 0
        leftover = 1.0 - pibar[stuck].sum(axis=1)
        pibar[stuck] += zero * (leftover / zero.sum(axis=1))[:, None]
    return _policy_from_pibar(pibar, base, beta, floor, cap)


def _policy_from_pibar(pibar: np.ndarray, base: np.ndarray, beta: float, floor: float, cap: float) -> np.ndarray:
    """pi1 = (pibar - alpha pi0) / beta, clipped to [floor, cap] against rounding, rows summing to 1."""
    pi1 = np.subtract(pibar, base, out=pibar)
    pi1 /= beta
    np.clip(pi1, floor, cap, out=pi1)
    pi1 /= pi1.sum(axis=1, keepdims=True)
    return pi1


# ---------------------------------------------------------------- reward constraint: one multiplier


def _pibar_at_price(c: np.ndarray, price: np.ndarray, low: np.ndarray, high: np.ndarray,
                    lam: np.ndarray) -> np.ndarray:
    """argmin over [low, high] of c/y - price y + lam y: sqrt(c / (lam - price)) clipped."""
    d = lam[:, None] - price
    inner = np.zeros_like(c)
    np.divide(c, d, out=inner, where=d > 0)
    free = np.clip(np.sqrt(inner), low, high)
    return np.where(d > 0, free, np.where((d < 0) | (c > 0), high, low))


def _fill_at_price(c: np.ndarray, price: np.ndarray, low: np.ndarray, high: np.ndarray,
                   iterations: int = 200) -> np.ndarray:
    """pibar per row minimising sum c/y - price y on {low <= y <= high, sum y = 1}, by bisection on lam.

    sum_a y_a(lam) falls from sum(high) >= 1 (lam below every price) to sum(low) <= 1 (lam above
    max price + (sum sqrt c / (1 - sum low))^2); the two final brackets are blended to sum exactly to 1
    (this also splits mass between tied actions with c = 0).
    """
    lo = price.min(axis=1) - 1.0 - np.abs(price.min(axis=1))
    spare = np.maximum(1.0 - low.sum(axis=1), 1e-300)
    hi = price.max(axis=1) + (np.sqrt(c).sum(axis=1) / spare) ** 2
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if not ((mid > lo) & (mid < hi)).any():
            break
        over = _pibar_at_price(c, price, low, high, mid).sum(axis=1) > 1.0
        lo = np.where(over, mid, lo)
        hi = np.where(over, hi, mid)
    y_lo = _pibar_at_price(c, price, low, high, lo)
    y_hi = _pibar_at_price(c, price, low, high, hi)
    s_lo, s_hi = y_lo.sum(axis=1), y_hi.sum(axis=1)
    gap = s_lo - s_hi
    w = np.divide(1.0 - s_hi, gap, out=np.zeros_like(gap), where=gap > 0)
    return y_hi + np.clip(w, 0.0, 1.0)[:, None] * (y_lo - y_hi)


def _policy_at_price(problem: MvalProblem, nu: float) -> np.ndarray:
    beta = 1.0 - problem.alpha
    base = problem.alpha * problem.pi0
    pibar = _fill_at_price(problem.c, nu * problem.reward, base + beta * problem.floor, base + beta * problem.cap)
    return _policy_from_pibar(pibar, base, beta, problem.floor, problem.cap)


def _solve_with_reward(problem: MvalProblem, iterations: int = 100) -> np.ndarray:
    """Search the multiplier nu of the reward constraint; blend the two bracketing policies to meet it."""
    target = problem.min_reward
    pi1 = _water_fill_policy(problem)
    if problem.expected_reward(pi1) >= target:
        return pi1
    scale = float(problem.weights @ problem.c.sum(axis=1)) * problem.shape[1] ** 2
    scale /= max(float(problem.weights @ np.abs(problem.reward).sum(axis=1)), 1e-300)
    greedy = _policy_at_price(problem, 1e12 * max(scale, 1e-300))
    best = problem.expected_reward(greedy)
    if best < target - 1e-9 * max(abs(target), 1e-300):
        raise DesignInfeasibleError(
            f"minimum reward {target:.6g} is out of reach: the best pi1 within the floor/cap earns {best:.6g}; "
            "lower --min-reward-ratio (or the floor)"
        )
    nu_lo, pi_lo, nu_hi, pi_hi = 0.0, pi1, max(scale, 1e-300), None
    while True:
        pi_hi = _policy_at_price(problem, nu_hi)
        if problem.expected_reward(pi_hi) >= target or nu_hi > 1e12 * scale:
            break
        nu_lo, pi_lo, nu_hi = nu_hi, pi_hi, nu_hi * 8
    if problem.expected_reward(pi_hi) < target:
        nu_hi, pi_hi = 1e12 * scale, greedy
    for _ in range(iterations):
        nu = np.sqrt(nu_lo * nu_hi) if nu_lo > 0 else nu_hi / 8
        if not nu_lo < nu < nu_hi:
            break
        pi_mid = _policy_at_price(problem, nu)
        if problem.expected_reward(pi_mid) >= target:
            nu_hi, pi_hi = nu, pi_mid
        else:
            nu_lo, pi_lo = nu, pi_mid
        if nu_hi - nu_lo <= 1e-10 * nu_hi:
            break
    r_lo, r_hi = problem.expected_reward(pi_lo), problem.expected_reward(pi_hi)
    w = (r_hi - target) / (r_hi - r_lo) if r_hi > r_lo else 0.0
    return w * pi_lo + (1 - w) * pi_hi


# ---------------------------------------------------------------- predicted variance of the final estimate


def balanced_variance(
    pi: np.ndarray,
    loggers: list[np.ndarray],
    counts: list[float],
    weights: np.ndarray,
    s: np.ndarray,
    m: np.ndarray,
    estimator: str = "ips",
) -> float:
    """Variance of the Balanced IPS/DR estimate from sum(counts) rows, n_k rows drawn from logger k.

    pi may be signed (a difference of two policies). IPS (s = E[r^2|x,a]):
        Var = (1/N) sum_x p sum_a pi^2 s / pibar - (1/N^2) sum_k n_k mu_k^2,
        mu_k = sum_x p sum_a pi_k pi m / pibar.
    DR with the reward model q = m (s = E[(r - m)^2|x,a], so every mu_k is the policy value):
        Var = (1/N) [sum_x p sum_a pi^2 s / pibar + Var_x(sum_a pi m)].
    inf where pibar = 0 on an action with pi^2 s > 0.
    """
    total = float(sum(counts))
    pibar = sum(n * p for n, p in zip(counts, loggers)) / total
    first = float(weights @ cost_over_coverage(pi**2 * s, pibar).sum(axis=1))
    if not np.isfinite(first):
        return np.inf
    if estimator == "dr":
        direct = (pi * m).sum(axis=1)
        spread = float(weights @ (direct - weights @ direct / weights.sum()) ** 2)  # about the mean: no cancelling
        return (first + spread) / total
    ratio = np.divide(pi * m, pibar, out=np.zeros_like(pibar), where=pibar > 0)
    mus = np.array([float(weights @ (p * ratio).sum(axis=1)) for p in loggers])
    return first / total - float(np.asarray(counts) @ mus**2) / total**2
