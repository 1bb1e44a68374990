"""Off-policy estimators on plain arrays: one small class per estimator (as in Open Bandit Pipeline).

Notation: rows i = 1..N logged as (x_i, a_i, r_i) by logger k_i, which drew a_i with propensity
p_i = pi_{k_i}(a_i|x_i); n_k rows come from logger k (fixed in advance: a stratified sample).
The target policy is pi, w_i = pi(a_i|x_i) / p_i its importance weight, q(x, a) a reward model,
q_pi(x) = sum_a pi(a|x) q(x, a), and pibar(a|x) = sum_k (n_k/N) pi_k(a|x) the mixture of loggers.

Every estimator is built from per-logger sums of a few per-row columns; the same `combine` gives
the estimate from all rows and, vectorised, from bootstrap resamples. Its standard error is the
stratified one, Var = (1/N^2) sum_k n_k s_k^2(z), with s_k^2 the sample variance within logger k
of the per-row (linearised, for ratio estimators) terms z_i, estimate ~ (1/N) sum_i z_i. With one
logger this is the usual sample std / sqrt(N).

Rows may carry a multiplicity `count` (identical rows stored once): every sum is count-weighted
and the bootstrap draws rows, not cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np
from scipy.stats import norm

from mval.errors import MvalError

BOOT_CHUNK_ELEMENTS = 1 << 22  # multinomial draws held in memory at once by the bootstrap


@dataclass(frozen=True)
class Estimate:
    """One estimator's answer: estimate, standard error, normal interval, ESS, rows used."""

    estimator: str
    estimate: float
    std_error: float
    ci_low: float
    ci_high: float
    ess: float
    n: int
    boot_low: float | None = None
    boot_high: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _vector(name: str, values, n: int | None = None, dtype=float) -> np.ndarray:
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim != 1:
        raise MvalError(f"`{name}` must be a 1-D array, found shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise MvalError(f"`{name}` must have {n} entries (one per row), found {arr.shape[0]}")
    return arr


@dataclass(frozen=True)
class LoggedData:
    """Logged rows, reduced to what the estimators read (each a (n,) array).

    reward r_i; propensity p_i (own logger, in (0, 1]); target_prob pi(a_i|x_i);
    logger k_i in 0..L-1 (None: one logger); pibar pibar(a_i|x_i) (balanced estimators);
    q_logged q(x_i, a_i) and q_target q_pi(x_i) (reward-model estimators);
    count: multiplicity of each row (None: 1). `from_full` builds it from pi and q as (n, K).
    """

    reward: np.ndarray
    propensity: np.ndarray
    target_prob: np.ndarray
    logger: np.ndarray | None = None
    pibar: np.ndarray | None = None
    q_logged: np.ndarray | None = None
    q_target: np.ndarray | None = None
    count: np.ndarray | None = None

    def __post_init__(self) -> None:
        reward = _vector("reward", self.reward)
        n = reward.shape[0]
        if n == 0:
            raise MvalError("no rows to evaluate: the selection is empty; check the logger names and positions")
        set_ = object.__setattr__
        set_(self, "reward", reward)
        for name in ("propensity", "target_prob", "pibar", "q_logged", "q_target"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, _vector(name, value, n))
        set_(self, "logger", np.zeros(n, dtype=np.int64) if self.logger is None
             else _vector("logger", self.logger, n, np.int64))
        set_(self, "count", np.ones(n) if self.count is None else _vector("count", self.count, n))
        if not np.isfinite(reward).all():
            raise MvalError(f"`reward` must be finite, found {reward[~np.isfinite(reward)][0]}")
        bad = ~((self.propensity > 0) & (self.propensity <= 1))
        if bad.any():
            raise MvalError(f"`propensity` must be in (0, 1], found {self.propensity[bad][0]} at row {np.argmax(bad)}")
        bad = ~((self.target_prob >= 0) & (self.target_prob <= 1))
        if bad.any():
            found = self.target_prob[bad][0]
            raise MvalError(f"`target_prob` must be in [0, 1], found {found} at row {np.argmax(bad)}")
        if self.pibar is not None and not (self.pibar > 0).all():
            raise MvalError(f"`pibar` must be positive on logged actions, found {self.pibar.min()}")
        if (self.logger < 0).any():
            raise MvalError(f"`logger` must be indices 0..L-1, found {self.logger.min()}")
        if not (self.count >= 1).all():
            raise MvalError(f"`count` must be >= 1, found {self.count.min()}")
        for name in ("q_logged", "q_target"):
            value = getattr(self, name)
            if value is not None and not np.isfinite(value).all():
                raise MvalError(f"`{name}` must be finite (reward model predictions)")

    @classmethod
    def from_full(
        cls,
        reward: np.ndarray,
        action: np.ndarray,
        pi: np.ndarray,
        propensity: np.ndarray,
        logger: np.ndarray | None = None,
        pibar: np.ndarray | None = None,
        q: np.ndarray | None = None,
        count: np.ndarray | None = None,
    ) -> LoggedData:
        """From the target's full distribution pi (n, K) and reward model q (n, K) at each row's context."""
        pi = np.asarray(pi, dtype=float)
        n = len(reward)
        if pi.ndim != 2 or pi.shape[0] != n:
            raise MvalError(f"`pi` must have shape (n, K) with n = {n} rows, found {pi.shape}")
        action = _vector("action", action, n, np.int64)
        if n and (action.min() < 0 or action.max() >= pi.shape[1]):
            bad = action[(action < 0) | (action >= pi.shape[1])][0]
            raise MvalError(f"`action` must be in 0..{pi.shape[1] - 1} (pi has {pi.shape[1]} actions), found {bad}")
        rows = np.arange(n)
        q_logged = q_target = None
        if q is not None:
            q = np.asarray(q, dtype=float)
            if q.shape != pi.shape:
                raise MvalError(f"`q` must have the shape of `pi` {pi.shape}, found {q.shape}")
            q_logged, q_target = q[rows, action], (pi * q).sum(axis=1)
        return cls(reward, propensity, pi[rows, action], logger, pibar, q_logged, q_target, count)

    @property
    def n(self) -> int:
        return int(self.count.sum())

    @cached_property
    def logger_sizes(self) -> np.ndarray:
        """n_k: rows per logger (count-weighted)."""
        return np.bincount(self.logger, weights=self.count)

    @cached_property
    def weight(self) -> np.ndarray:
        """w_i = pi(a_i|x_i) / p_i (own logger)."""
        return self.target_prob / self.propensity

    @cached_property
    def balanced_weight(self) -> np.ndarray:
        """pi(a_i|x_i) / pibar(a_i|x_i)."""
        if self.pibar is None:
            raise MvalError("balanced estimators need `pibar` (each logger's probability of the logged action)")
        return self.target_prob / self.pibar

    def require_model(self, estimator: str) -> None:
        if self.q_logged is None or self.q_target is None:
            raise MvalError(f"{estimator} needs reward model predictions (`q_logged`, `q_target`, or `q` in from_full)")

    def logger_spread(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per logger k: the mean of z and the sum of squared deviations from it (count-weighted). Two
        passes: sum z^2 - (sum z)^2 / n_k would cancel to nothing when the mean is 1e8 times the spread."""
        means = self.logger_sums(z[:, None])[:, 0] / self.logger_sizes
        return means, self.logger_sums(((z - means[self.logger]) ** 2)[:, None])[:, 0]

    def logger_sums(self, columns: np.ndarray) -> np.ndarray:
        """sum over rows of logger k of count * column: shape (L, m) for columns (n, m)."""
        size = self.logger_sizes.shape[0]
        return np.stack(
            [np.bincount(self.logger, weights=self.count * col, minlength=size) for col in columns.T], axis=-1
        )


def pibar_of_logged(probs_by_logger: np.ndarray, n_by_logger: Sequence[float]) -> np.ndarray:
    """pibar(a_i|x_i) = sum_k (n_k/N) pi_k(a_i|x_i) from probs_by_logger (L, n) = pi_k(a_i|x_i)."""
    n_k = np.asarray(n_by_logger, dtype=float)
    return n_k @ np.asarray(probs_by_logger, dtype=float) / n_k.sum()


def stratified_variance(data: LoggedData, z: np.ndarray) -> float:
    """Var of (1/N) sum_i z_i when n_k rows come from logger k: (1/N^2) sum_k n_k s_k^2(z).

    s_k^2 is the sample variance (ddof 1) of z within logger k; a logger with one row has none, so it
    gets the pooled sample variance of all rows (NaN when there is a single row in all).
    """
    n_k = data.logger_sizes
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # terms near 1e160 give inf: an SE of inf
        n = n_k.sum()
        _, ss = data.logger_spread(z)  # and the pooled variance likewise about the overall mean
        pooled = float(data.count @ (z - data.count @ z / n) ** 2) / (n - 1) if n > 1 else np.nan
        s2 = np.where(n_k > 1, ss / (n_k - 1), pooled)
    return float((n_k * s2).sum() / n ** 2)


def effective_sample_size(weights: np.ndarray, count: np.ndarray | None = None) -> float:
    """ESS = (sum w)^2 / sum w^2 (count-weighted; computed on w / max|w|, so huge weights do not overflow)."""
    c = np.ones_like(weights) if count is None else count
    top = float(np.max(np.abs(weights), initial=0.0))
    if not top > 0 or not np.isfinite(top):
        return 0.0
    w = weights / top
    return float((c * w).sum()) ** 2 / float((c * w * w).sum())


@dataclass(frozen=True)
class Estimator:
    """Base: an estimate = combine(per-logger sums of columns(data)); SE from influence terms."""

    name: ClassVar[str]

    def columns(self, data: LoggedData) -> np.ndarray:
        """Per-row columns (n, m) whose per-logger sums determine the estimate."""
        raise NotImplementedError

    def combine(self, sums: np.ndarray, n_k: np.ndarray) -> np.ndarray:
        """Estimate from per-logger sums (..., L, m); leading axes are bootstrap replicates."""
        return sums[..., 0].sum(axis=-1) / n_k.sum()

    def influence(self, data: LoggedData, value: float) -> np.ndarray:
        """z_i with estimate ~ (1/N) sum z_i: the per-row term (linearised for ratio estimators)."""
        return self.columns(data)[:, 0]

    def ess_weights(self, data: LoggedData) -> np.ndarray:
        return np.ones_like(data.reward)

    def value(self, data: LoggedData) -> float:
        """The estimate from all rows."""
        return float(self.combine(data.logger_sums(self.columns(data)), data.logger_sizes))

    def replicates(self, data: LoggedData, n_boot: int, seed: int, value: float) -> np.ndarray:
        """n_boot bootstrap estimates (`value`: the estimate from all rows)."""
        return bootstrap(self, data, n_boot, seed)

    def estimate(self, data: LoggedData, n_boot: int = 0, seed: int = 0, level: float = 0.95) -> Estimate:
        """Estimate, stratified standard error, normal interval and (n_boot > 0) percentile bootstrap."""
        value = self.value(data)
        se = float(np.sqrt(stratified_variance(data, self.influence(data, value))))
        z = float(norm.ppf(0.5 + level / 2))
        boot_low = boot_high = None
        if n_boot > 0:
            boots = self.replicates(data, n_boot, seed, value)
            boot_low, boot_high = (float(v) for v in np.nanquantile(boots, [(1 - level) / 2, (1 + level) / 2]))
        ess = effective_sample_size(self.ess_weights(data), data.count)
        return Estimate(self.name, value, se, value - z * se, value + z * se, ess, data.n, boot_low, boot_high)


def bootstrap(estimator: Estimator, data: LoggedData, n_boot: int, seed: int = 0) -> np.ndarray:
    """n_boot estimates from stratified resamples: n_k rows redrawn with replacement within each logger.

    Each replicate's row multiplicities are one multinomial draw; per-logger sums are then
    (draws @ columns), so the estimator runs once per chunk of replicates, not once per replicate.
    The reward model is held fixed.
    """
    if n_boot < 0:
        raise MvalError(f"--bootstrap must be >= 0, found {n_boot}")
    rng = np.random.default_rng(seed)
    columns = estimator.columns(data)
    n_k = data.logger_sizes
    groups = [np.flatnonzero(data.logger == k) for k in range(len(n_k))]
    chunk = max(1, min(n_boot, BOOT_CHUNK_ELEMENTS // max(len(g) for g in groups)))
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        sums = np.zeros((b, len(n_k), columns.shape[1]))
        for k, rows in enumerate(groups):
            if len(rows) == 0:
                continue
            draws = rng.multinomial(int(n_k[k]), data.count[rows] / n_k[k], size=b)
            sums[:, k] = draws @ columns[rows]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + b] = estimator.combine(sums, n_k)
    return out


# ---------------------------------------------------------------- importance sampling


@dataclass(frozen=True)
class IPS(Estimator):
    """IPS: V = (1/N) sum_i w_i r_i, w_i = pi(a_i|x_i) / p_i with each row's own logger's propensity."""

    name: ClassVar[str] = "ips"

    def weights(self, data: LoggedData) -> np.ndarray:
        return data.weight

    def columns(self, data: LoggedData) -> np.ndarray:
        return (self.weights(data) * data.reward)[:, None]

    def ess_weights(self, data: LoggedData) -> np.ndarray:
        return self.weights(data)


@dataclass(frozen=True)
class ClippedIPS(IPS):
    """Clipped IPS: V = (1/N) sum_i min(w_i, M) r_i (Ionides 2008); biased down when some w_i > M."""

    name: ClassVar[str] = "clipped-ips"
    max_weight: float = 10.0

    def __post_init__(self) -> None:
        if not self.max_weight > 0:
            raise MvalError(f"--clip (max weight M) must be > 0, found {self.max_weight}")

    def weights(self, data: LoggedData) -> np.ndarray:
        return np.minimum(data.weight, self.max_weight)


@dataclass(frozen=True)
class SNIPS(IPS):
    """Self-normalised IPS: V = sum_i w_i r_i / sum_i w_i (Swaminathan & Joachims 2015).

    SE by the delta method: z_i = w_i (r_i - V) / mean(w).
    """

    name: ClassVar[str] = "snips"

    def columns(self, data: LoggedData) -> np.ndarray:
        w = self.weights(data)
        return np.stack([w * data.reward, w], axis=-1)

    def combine(self, sums: np.ndarray, n_k: np.ndarray) -> np.ndarray:
        return sums[..., 0].sum(axis=-1) / sums[..., 1].sum(axis=-1)

    def influence(self, data: LoggedData, value: float) -> np.ndarray:
        w = self.weights(data)
        return w * (data.reward - value) / (data.count @ w / data.n)


@dataclass(frozen=True)
class BalancedIPS(IPS):
    """Balanced IPS: V = (1/N) sum_i pi(a_i|x_i) r_i / pibar(a_i|x_i), pibar = sum_k (n_k/N) pi_k.

    Unbiased for a stratified log; Var = (1/N^2) sum_k n_k Var_{pi_k}(w r) (Agarwal et al. 2017,
    Tucker & Joachims 2022); population form in `mval.design.balanced_variance`.
    """

    name: ClassVar[str] = "balanced-ips"

    def weights(self, data: LoggedData) -> np.ndarray:
        return data.balanced_weight


@dataclass(frozen=True)
class WeightedIPS(IPS):
    """Precision-weighted IPS: V = sum_k lam_k V_k, V_k the IPS estimate from logger k's rows alone,
    lam_k = (1/v_k) / sum_j (1/v_j), v_k = s_k^2(w r) / n_k; SE = (sum_k 1/v_k)^(-1/2).

    Not unbiased: the estimated lam_k correlate with the V_k (a logger whose rows happened to
    earn less looks more precise), a bias of order 1/n that vanishes with more rows; the SE treats
    lam as known and so runs low at small n_k (about 10% in variance at a few hundred rows per
    logger in tests/test_estimators.py); the bootstrap interval re-estimates lam in each replicate.
    """

    name: ClassVar[str] = "weighted-ips"

    def columns(self, data: LoggedData) -> np.ndarray:
        if (data.logger_sizes < 2).any():
            fewest = int(data.logger_sizes.min())
            raise MvalError(f"weighted-ips needs at least 2 rows from every logger, found {fewest}")
        t = self.weights(data) * data.reward
        # t - c with c its mean, so that the variances below do not cancel (see `stratified_variance`);
        # the third column carries c back into the means
        c = float(data.count @ t / data.n)
        columns = np.stack([t - c, (t - c) ** 2, np.full_like(t, c)], axis=-1)
        means, spread = data.logger_spread(t)
        if (spread <= data.logger_sizes * (1e-12 * means) ** 2).any():  # a spread below 1e-12 of the mean: rounding alone
            raise MvalError("weighted-ips: the weighted rewards of one logger's rows do not vary (e.g. all its rewards "
                            "are equal), so its precision is unknown; use ips or balanced-ips")
        return columns

    @staticmethod
    def _lambdas(sums: np.ndarray, n_k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        means = (sums[..., 0] + sums[..., 2]) / n_k  # sums of t - c and of c
        var_of_mean = (sums[..., 1] - sums[..., 0] ** 2 / n_k) / (n_k - 1) / n_k
        precision = 1.0 / np.maximum(var_of_mean, 1e-300)
        return means, precision / precision.sum(axis=-1, keepdims=True)

    def combine(self, sums: np.ndarray, n_k: np.ndarray) -> np.ndarray:
        means, lam = self._lambdas(sums, n_k)
        return (lam * means).sum(axis=-1)

    def _row_scale(self, data: LoggedData) -> np.ndarray:
        n_k = data.logger_sizes
        _, lam = self._lambdas(data.logger_sums(self.columns(data)), n_k)
        return (n_k.sum() * lam / n_k)[data.logger]

    def influence(self, data: LoggedData, value: float) -> np.ndarray:
        return self._row_scale(data) * self.weights(data) * data.reward

    def ess_weights(self, data: LoggedData) -> np.ndarray:
        return self._row_scale(data) * self.weights(data)


# ---------------------------------------------------------------- reward-model estimators


@dataclass(frozen=True)
class DM(Estimator):
    """Direct method: V = (1/N) sum_i q_pi(x_i), q_pi(x) = sum_a pi(a|x) q(x, a).

    Its SE and bootstrap are those of DR's per-row terms q_pi(x_i) + w_i (r_i - q(x_i, a_i)) (the
    bootstrap shifted to the DM value), with w_i = pi / pibar, the loggers' mixture, where `pibar` is
    given (balanced DR), else pi / p_i: the spread of q_pi alone holds the fitted model fixed and misses
    its fitting error, which is most of DM's. Context-action means pool every logger's rows, so DM is a
    per-cell self-normalised DR over the mixture, whose influence terms these are; with own-logger
    weights and several loggers the SE is too large (3x in a simulation with propensities 0.98 / 0.02).
    The SE misses the reward model's bias (cells shrunk towards action means where the loggers rarely
    take the target's actions: the 95% interval covered 0.23 at 200 rows with a 2% exploration floor),
    and rewards extrapolated to actions no logger takes add error that no SE from the log can count.
    """

    name: ClassVar[str] = "dm"

    def columns(self, data: LoggedData) -> np.ndarray:
        data.require_model(self.name)
        return data.q_target[:, None]

    @staticmethod
    def _spread(data: LoggedData) -> DR:
        """The DR whose per-row terms give DM's SE and bootstrap."""
        return BalancedDR() if data.pibar is not None else DR()

    def influence(self, data: LoggedData, value: float) -> np.ndarray:
        return self._spread(data).columns(data)[:, 0]

    def replicates(self, data: LoggedData, n_boot: int, seed: int, value: float) -> np.ndarray:
        dr = self._spread(data)
        return bootstrap(dr, data, n_boot, seed) + value - dr.value(data)


@dataclass(frozen=True)
class DR(Estimator):
    """Doubly robust: V = (1/N) sum_i [q_pi(x_i) + w_i (r_i - q(x_i, a_i))] (Dudik et al. 2011)."""

    name: ClassVar[str] = "dr"

    def weights(self, data: LoggedData) -> np.ndarray:
        return data.weight

    def columns(self, data: LoggedData) -> np.ndarray:
        data.require_model(self.name)
        return (data.q_target + self.weights(data) * (data.reward - data.q_logged))[:, None]

    def ess_weights(self, data: LoggedData) -> np.ndarray:
        return self.weights(data)


@dataclass(frozen=True)
class SNDR(DR):
    """Self-normalised DR: V = (1/N) sum_i q_pi(x_i) + sum_i w_i e_i / sum_i w_i, e_i = r_i - q(x_i, a_i).

    SE by the delta method: z_i = q_pi(x_i) + w_i (e_i - R) / mean(w), R = sum w e / sum w.
    """

    name: ClassVar[str] = "sndr"

    def columns(self, data: LoggedData) -> np.ndarray:
        data.require_model(self.name)
        w = self.weights(data)
        return np.stack([data.q_target, w * (data.reward - data.q_logged), w], axis=-1)

    def combine(self, sums: np.ndarray, n_k: np.ndarray) -> np.ndarray:
        return sums[..., 0].sum(axis=-1) / n_k.sum() + sums[..., 1].sum(axis=-1) / sums[..., 2].sum(axis=-1)

    def influence(self, data: LoggedData, value: float) -> np.ndarray:
        w = self.weights(data)
        e = data.reward - data.q_logged
        ratio = float(data.count @ (w * e)) / float(data.count @ w)
        return data.q_target + w * (e - ratio) / (data.count @ w / data.n)


@dataclass(frozen=True)
class SwitchDR(DR):
    """Switch-DR (Wang et al. 2017, as in OBP): V = (1/N) sum_i [q_pi(x_i) + 1{w_i <= tau} w_i (r_i - q(x_i, a_i))].

    tau = inf gives DR, tau = 0 gives DM.
    """

    name: ClassVar[str] = "switch-dr"
    tau: float = 10.0

    def __post_init__(self) -> None:
        if not self.tau >= 0:
            raise MvalError(f"--tau (switch threshold) must be >= 0, found {self.tau}")

    def weights(self, data: LoggedData) -> np.ndarray:
        return np.where(data.weight <= self.tau, data.weight, 0.0)


@dataclass(frozen=True)
class BalancedDR(DR):
    """Balanced DR: V = (1/N) sum_i [q_pi(x_i) + pi(a_i|x_i) (r_i - q(x_i, a_i)) / pibar(a_i|x_i)]."""

    name: ClassVar[str] = "balanced-dr"

    def weights(self, data: LoggedData) -> np.ndarray:
        return data.balanced_weight


ESTIMATORS: dict[str, type[Estimator]] = {
    cls.name: cls for cls in (IPS, SNIPS, ClippedIPS, DM, DR, SNDR, SwitchDR, BalancedIPS, BalancedDR, WeightedIPS)
}
BALANCED = ("balanced-ips", "balanced-dr")
NEEDS_MODEL = ("dm", "dr", "sndr", "switch-dr", "balanced-dr")


def make_estimator(name: str, clip: float = 10.0, tau: float = 10.0) -> Estimator:
    """The estimator called `name`; clip is clipped-ips' max weight, tau switch-dr's threshold."""
    if name not in ESTIMATORS:
        raise MvalError(f"unknown estimator {name!r}; choose from all, {', '.join(ESTIMATORS)}")
    if name == "clipped-ips":
        return ClippedIPS(max_weight=clip)
    if name == "switch-dr":
        return SwitchDR(tau=tau)
    return ESTIMATORS[name]()


def estimate(
    name: str, data: LoggedData, n_boot: int = 0, seed: int = 0, clip: float = 10.0, tau: float = 10.0,
    level: float = 0.95,
) -> Estimate:
    """Shorthand: make_estimator(name, clip, tau).estimate(data, n_boot, seed, level)."""
    return make_estimator(name, clip, tau).estimate(data, n_boot, seed, level)
