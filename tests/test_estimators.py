"""Estimators on arrays: hand-computed cases, simulation with known truth, refusals."""

import numpy as np
import pytest

from mval.design import balanced_variance
from mval.errors import MvalError
from mval.estimators import (
    ESTIMATORS,
    IPS,
    BalancedIPS,
    LoggedData,
    WeightedIPS,
    bootstrap,
    effective_sample_size,
    estimate,
    make_estimator,
    pibar_of_logged,
)
from mval.reward_model import cross_fit_means, cross_fit_rewards, fold_ids

# ---------------------------------------------------------------- a 4-row case worked by hand
#   w = pi(a|x)/p = [1.6, 0.4, 2.4, 1.0],   w r = [1.6, 0, 2.4, 0.5]
#   q(x, a_i) = [0.5, 0.2, 0.9, 0.4],       q_pi = [0.46, 0.52, 0.62, 0.40],  e = r - q(x, a) = [0.5, -0.2, 0.1, 0.1]
#   pibar = [0.5, 0.4, 0.5, 0.8] -> pi/pibar = [1.6, 0.5, 1.2, 0.625]; loggers [0, 0, 1, 1]
R = [1.0, 0.0, 1.0, 0.5]
A = [0, 1, 1, 0]
PI = [[0.8, 0.2], [0.8, 0.2], [0.4, 0.6], [0.5, 0.5]]
P = [0.5, 0.5, 0.25, 0.5]
Q = [[0.5, 0.3], [0.6, 0.2], [0.2, 0.9], [0.4, 0.4]]
PIBAR = [0.5, 0.4, 0.5, 0.8]
LOGGER = [0, 0, 1, 1]


def hand_data(logger=None) -> LoggedData:
    return LoggedData.from_full(R, A, PI, P, logger=logger, pibar=PIBAR, q=Q)


def strat_var(terms, logger):
    """(1/N^2) sum_k n_k s_k^2 written out for two loggers of two rows each."""
    t = np.asarray(terms)
    s2 = [(t[2 * k] - t[2 * k + 1]) ** 2 / 2 for k in (0, 1)]
    return (2 * s2[0] + 2 * s2[1]) / 16 if logger else np.var(t, ddof=1) / 4


@pytest.mark.parametrize("logger", [None, LOGGER])
@pytest.mark.parametrize(
    "name, value, terms",
    [
        ("ips", 4.5 / 4, [1.6, 0.0, 2.4, 0.5]),
        ("clipped-ips", 4.1 / 4, [1.6, 0.0, 2.0, 0.5]),  # M = 2
        ("dm", 2.0 / 4, [0.46 + 0.8, 0.52 - 0.1, 0.62 + 0.12, 0.40 + 0.0625]),  # balanced DR's terms (pibar given)
        ("dr", (2.0 + 1.06) / 4, [0.46 + 0.8, 0.52 - 0.08, 0.62 + 0.24, 0.40 + 0.1]),
        ("switch-dr", (2.0 + 0.82) / 4, [0.46 + 0.8, 0.52 - 0.08, 0.62, 0.40 + 0.1]),  # tau = 2 drops w = 2.4
        ("balanced-ips", 3.1125 / 4, [1.6, 0.0, 1.2, 0.3125]),
        ("balanced-dr", (2.0 + 0.8825) / 4, [0.46 + 0.8, 0.52 - 0.1, 0.62 + 0.12, 0.40 + 0.0625]),
    ],
)
def test_linear_estimators_by_hand(name, value, terms, logger):
    est = estimate(name, hand_data(logger), clip=2.0, tau=2.0)
    assert est.estimate == pytest.approx(value)
    assert est.std_error == pytest.approx(np.sqrt(strat_var(terms, logger)))
    assert est.ci_low == pytest.approx(value - 1.959964 * est.std_error)
    assert est.ci_high == pytest.approx(value + 1.959964 * est.std_error)
    assert est.n == 4


def test_ratio_estimators_by_hand():
    data = hand_data()
    w, r, e = np.array([1.6, 0.4, 2.4, 1.0]), np.array(R), np.array([0.5, -0.2, 0.1, 0.1])
    snips = estimate("snips", data)
    assert snips.estimate == pytest.approx(4.5 / 5.4)
    z = w * (r - 4.5 / 5.4) / (5.4 / 4)  # delta method
    assert snips.std_error == pytest.approx(np.std(z, ddof=1) / 2)
    sndr = estimate("sndr", data)
    assert sndr.estimate == pytest.approx(0.5 + 1.06 / 5.4)
    z = np.array([0.46, 0.52, 0.62, 0.40]) + w * (e - 1.06 / 5.4) / (5.4 / 4)
    assert sndr.std_error == pytest.approx(np.std(z, ddof=1) / 2)
    assert snips.ess == pytest.approx(5.4**2 / 9.48)


def test_weighted_ips_by_hand():
    est = estimate("weighted-ips", hand_data(LOGGER))
    v = np.array([0.8, 1.45])  # per-logger IPS
    var = np.array([1.6**2 / 2 / 2, 1.9**2 / 2 / 2])  # s_k^2 / n_k
    lam = (1 / var) / (1 / var).sum()
    assert est.estimate == pytest.approx(lam @ v)
    assert est.std_error == pytest.approx(np.sqrt(1 / (1 / var).sum()))


def test_counts_equal_repeated_rows():
    data = hand_data(LOGGER)
    repeat = np.array([1, 3, 2, 1])
    rows = np.repeat(np.arange(4), repeat)
    expanded = LoggedData(data.reward[rows], data.propensity[rows], data.target_prob[rows], data.logger[rows],
                          data.pibar[rows], data.q_logged[rows], data.q_target[rows])
    compact = LoggedData(data.reward, data.propensity, data.target_prob, data.logger, data.pibar,
                         data.q_logged, data.q_target, count=repeat)
    for name in ESTIMATORS:
        a, b = estimate(name, expanded), estimate(name, compact)
        assert (a.estimate, a.std_error, a.ess, a.n) == pytest.approx((b.estimate, b.std_error, b.ess, b.n)), name


def test_pibar_of_logged():
    probs = np.array([[0.5, 0.2], [0.1, 0.7]])  # logger k's probability of each row's logged action
    np.testing.assert_allclose(pibar_of_logged(probs, [300, 100]), [0.75 * 0.5 + 0.25 * 0.1, 0.75 * 0.2 + 0.25 * 0.7])


# ---------------------------------------------------------------- simulation with known truth

N_CONTEXTS, N_ACTIONS = 6, 4


def problem(seed=1):
    rng = np.random.default_rng(seed)
    m = rng.uniform(0.05, 0.6, size=(N_CONTEXTS, N_ACTIONS))
    pi0 = rng.dirichlet(np.full(N_ACTIONS, 3.0), size=N_CONTEXTS)
    pi1 = rng.dirichlet(np.full(N_ACTIONS, 1.0), size=N_CONTEXTS) * 0.9 + 0.1 / N_ACTIONS
    target = rng.dirichlet(np.full(N_ACTIONS, 0.7), size=N_CONTEXTS)
    q = np.clip(m + rng.normal(0, 0.1, size=m.shape), 0, 1)  # a fixed, wrong reward model
    return m, [pi0, pi1], target, q


def draw(rng, loggers, sizes, m):
    """One stratified log: sizes[k] rows from logger k, uniform contexts, Bernoulli(m) rewards."""
    k = np.repeat(np.arange(len(sizes)), sizes)
    x = rng.integers(N_CONTEXTS, size=len(k))
    probs = np.stack(loggers)[k, x]
    a = (rng.random(len(k))[:, None] > probs.cumsum(axis=1)).sum(axis=1).clip(max=N_ACTIONS - 1)
    r = (rng.random(len(k)) < m[x, a]).astype(float)
    return k, x, a, r


def expected(name, m, loggers, sizes, target, q, clip, tau):
    """Population value: V for the consistent estimators (dm: with q fixed, E[q_pi]); E[terms] for clipped/switch."""
    v = float((target * m).sum(axis=1).mean())
    if name == "dm":
        return float((target * q).sum(axis=1).mean())
    total = sum(sizes)
    if name == "clipped-ips":
        return sum(n * (pk * np.minimum(target / pk, clip) * m).sum(axis=1).mean() for n, pk in zip(sizes, loggers)) / total
    if name == "switch-dr":
        q_pi = (target * q).sum(axis=1)
        return sum(n * (q_pi + (pk * np.where(target / pk <= tau, target / pk, 0) * (m - q)).sum(axis=1)).mean()
                   for n, pk in zip(sizes, loggers)) / total
    return v


@pytest.fixture(scope="module")
def simulation():
    """2,000 replications of a two-logger log (300 + 200 rows); every estimator on each."""
    m, loggers, target, q = problem()
    sizes, reps, clip, tau = [300, 200], 2000, 3.0, 3.0
    rng = np.random.default_rng(7)
    estimators = {name: make_estimator(name, clip, tau) for name in ESTIMATORS}
    out = {name: np.empty((reps, 2)) for name in ESTIMATORS}
    pibar = sum(n * pk for n, pk in zip(sizes, loggers)) / sum(sizes)
    for i in range(reps):
        k, x, a, r = draw(rng, loggers, sizes, m)
        data = LoggedData(r, np.stack(loggers)[k, x, a], target[x, a], k, pibar[x, a],
                          q[x, a], (target * q).sum(axis=1)[x])
        for name, est in estimators.items():
            e = est.estimate(data)
            out[name][i] = e.estimate, e.std_error
    truth = {name: expected(name, m, loggers, sizes, target, q, clip, tau) for name in ESTIMATORS}
    return out, truth, (m, loggers, target, sizes, pibar)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_unbiased_and_standard_error_by_simulation(simulation, name):
    out, truth, _ = simulation
    values, ses = out[name][:, 0], out[name][:, 1]
    spread = values.std(ddof=1)
    if name == "weighted-ips":
        # estimated precision weights correlate with the per-logger estimates: a small bias, and an SE
        # that treats the weights as known understates the spread (both vanish as n grows)
        assert abs(values.mean() - truth[name]) < 0.03 * truth[name]
        assert 0.8 * spread**2 < np.mean(ses**2) < spread**2
        return
    assert abs(values.mean() - truth[name]) < 3 * spread / np.sqrt(len(values)), (values.mean(), truth[name])
    if name == "dm":  # with q fixed, DM's only spread is over contexts; its SE is for a fitted q (next test)
        return
    assert np.mean(ses**2) == pytest.approx(spread**2, rel=0.10)


@pytest.mark.parametrize("two_loggers", [False, True])
def test_dm_standard_error_counts_the_fitting_error_of_its_reward_model(two_loggers):
    """DM with q cross-fitted on each log (context-action means over 5 folds, as `mval evaluate` does without
    features): its SE matches the spread of the estimates over 1,000 logs and its 95% intervals cover the truth;
    with two loggers pibar (their mixture) weighs the terms, as the pooled means do."""
    m, loggers, target, _ = problem()
    sizes = [600, 400] if two_loggers else [1000]
    rng = np.random.default_rng(11)
    values, ses, boot_covers = np.empty(1000), np.empty(1000), []
    truth = float((target * m).sum(axis=1).mean())
    pibar = sum(n * pk for n, pk in zip(sizes, loggers)) / sum(sizes)
    for i in range(len(values)):
        k, x, a, r = draw(rng, loggers[: len(sizes)], sizes, m)
        fold = fold_ids(len(r), 5, seed=i)
        q = cross_fit_means(x, a, r, fold, N_CONTEXTS, N_ACTIONS, 5)[fold, x]  # (n, K): out-of-fold q(x_i, .)
        data = LoggedData(r, np.stack(loggers)[k, x, a], target[x, a], k if two_loggers else None,
                          pibar[x, a] if two_loggers else None, q[np.arange(len(a)), a], (target[x] * q).sum(axis=1))
        e = make_estimator("dm").estimate(data, n_boot=200 if i < 200 else 0, seed=i)
        values[i], ses[i] = e.estimate, e.std_error
        if i < 200:
            boot_covers.append(e.boot_low <= truth <= e.boot_high)
    spread = values.std(ddof=1)
    assert abs(values.mean() - truth) < 0.2 * spread  # the means are shrunk towards per-action means: a small bias
    assert np.mean(ses**2) == pytest.approx(spread**2, rel=0.15)  # 1,000 logs: the spread's own error is ~4.5%
    assert 0.92 <= np.mean(np.abs(values - truth) <= 1.959964 * ses) <= 0.98
    assert 0.90 <= np.mean(boot_covers) <= 0.99  # 200 logs: binomial sd of the share 0.015


def test_balanced_variance_formula_matches_simulation(simulation):
    out, _, (m, loggers, target, sizes, pibar) = simulation
    uniform = np.full(target.shape[0], 1 / target.shape[0])
    formula = balanced_variance(target, loggers, sizes, uniform, s=m, m=m)  # Bernoulli: E[r^2] = E[r]
    assert out["balanced-ips"][:, 0].var(ddof=1) == pytest.approx(formula, rel=0.10)
    # the same number as (1/N^2) sum_k n_k Var_k(w r), written out per logger
    w = target / pibar
    per_logger = [(pk * w**2 * m).sum(axis=1).mean() - (pk * w * m).sum(axis=1).mean() ** 2 for pk in loggers]
    assert formula == pytest.approx(np.dot(sizes, per_logger) / sum(sizes) ** 2)


def test_bootstrap_matches_standard_error_and_is_seeded():
    m, loggers, target, _ = problem()
    k, x, a, r = draw(np.random.default_rng(3), loggers, [1500, 1000], m)
    pibar = (1500 * loggers[0] + 1000 * loggers[1]) / 2500
    data = LoggedData(r, np.stack(loggers)[k, x, a], target[x, a], k, pibar[x, a])
    for name in ("balanced-ips", "snips", "weighted-ips"):
        est = make_estimator(name)
        boots = bootstrap(est, data, 2000, seed=1)
        assert boots.std(ddof=1) == pytest.approx(est.estimate(data).std_error, rel=0.10), name
    first, again = (make_estimator("ips").estimate(data, n_boot=200, seed=5) for _ in range(2))
    assert (first.boot_low, first.boot_high) == (again.boot_low, again.boot_high)
    assert first.boot_low < first.estimate < first.boot_high


# ---------------------------------------------------------------- reward model


def test_cross_fit_means_by_brute_force():
    rng = np.random.default_rng(0)
    n, contexts, actions, folds = 60, 3, 2, 3
    ctx, act, r = rng.integers(contexts, size=n), rng.integers(actions, size=n), rng.random(n)
    fold = fold_ids(n, folds, seed=0)
    table = cross_fit_means(ctx, act, r, fold, contexts, actions, folds)
    for f in range(folds):
        out = fold != f
        g = r[out].mean()
        for a in range(actions):
            sel = out & (act == a)
            m_a = (r[sel].sum() + g) / (sel.sum() + 1)
            for c in range(contexts):
                cell = sel & (ctx == c)
                assert table[f, c, a] == pytest.approx((r[cell].sum() + m_a) / (cell.sum() + 1))


def test_cross_fitted_predictions_never_see_their_row():
    rng = np.random.default_rng(0)
    n = 200
    x, a = rng.normal(size=(n, 2)), rng.integers(3, size=n)
    r = (rng.random(n) < 0.3 + 0.2 * (x[:, 0] > 0)).astype(float)
    for features in (None, x):
        q = cross_fit_rewards(a, r, 3, features=features, context=(x[:, 0] > 0).astype(int), seed=4)
        flipped = r.copy()
        flipped[0] = 1 - r[0]
        q2 = cross_fit_rewards(a, flipped, 3, features=features, context=(x[:, 0] > 0).astype(int), seed=4)
        assert q.shape == (n, 3)
        assert q[0] == pytest.approx(q2[0])  # row 0's own reward does not move its prediction
        assert not np.allclose(q, q2)  # but it moves other folds'


@pytest.mark.parametrize("binary", [True, False])
def test_default_reward_model_predicts_as_sklearn_does_on_the_dense_design(binary):
    """The default model's shortcut (sparse design matrix, q for all actions from the coefficients) against
    the same sklearn model fitted on the dense matrix and asked once per action."""
    from mval.reward_model import cross_fit_model, default_factory

    rng = np.random.default_rng(3)
    n, d, k = 600, 4, 5
    x, a = rng.normal(size=(n, d)), rng.integers(k, size=n)
    signal = x[:, 0] * (a == 2) - 0.5 * x[:, 1] + 0.3 * a
    r = (rng.random(n) < 1 / (1 + np.exp(-signal))).astype(float) if binary else signal + rng.normal(size=n)
    fold = fold_ids(n, 5, seed=1)
    fast = cross_fit_model(x, a, r, k, fold, 5)
    dense = cross_fit_model(x, a, r, k, fold, 5, factory=default_factory(binary))  # the generic path
    assert np.abs(fast - dense).max() < 1e-7
    assert fast.std(axis=1).mean() > 0.05  # the actions' slopes matter: a column mix-up would show


def test_custom_reward_model_factory():
    from sklearn.tree import DecisionTreeRegressor

    rng = np.random.default_rng(0)
    x, a = rng.normal(size=(100, 2)), rng.integers(2, size=100)
    r = x[:, 0] + a
    q = cross_fit_rewards(a, r, 2, features=x, factory=lambda: DecisionTreeRegressor(max_depth=3))
    assert np.corrcoef(q[np.arange(100), a], r)[0, 1] > 0.8


# ---------------------------------------------------------------- refusals


def base(**change):
    fields = dict(reward=[1.0, 0.0, 1.0], propensity=[0.5, 0.5, 0.5], target_prob=[0.2, 0.3, 0.4])
    fields.update(change)
    return fields


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: LoggedData(**base(reward=[], propensity=[], target_prob=[])), "no rows to evaluate"),
        (lambda: LoggedData(**base(propensity=[0.5, 0.0, 0.5])), r"`propensity` must be in \(0, 1\], found 0.0 at row 1"),
        (lambda: LoggedData(**base(propensity=[0.5, 1.5, 0.5])), r"`propensity` must be in \(0, 1\], found 1.5"),
        (lambda: LoggedData(**base(reward=[1.0, np.nan, 0.0])), "`reward` must be finite, found nan"),
        (lambda: LoggedData(**base(target_prob=[0.2, 0.3])), "`target_prob` must have 3 entries"),
        (lambda: LoggedData(**base(target_prob=[0.2, 1.3, 0.1])), r"`target_prob` must be in \[0, 1\], found 1.3"),
        (lambda: LoggedData(**base(logger=[0, -1, 0])), "`logger` must be indices"),
        (lambda: LoggedData(**base(count=[1, 0, 1])), "`count` must be >= 1"),
        (lambda: LoggedData.from_full([1.0], [2], [[0.5, 0.5]], [0.5]), r"`action` must be in 0..1 .*found 2"),
        (lambda: LoggedData.from_full([1.0], [0], [0.5, 0.5], [0.5]), r"`pi` must have shape \(n, K\)"),
        (lambda: LoggedData.from_full([1.0], [0], [[0.5, 0.5]], [0.5], q=[[1.0]]), "`q` must have the shape"),
        (lambda: estimate("balanced-ips", LoggedData(**base())), "balanced estimators need `pibar`"),
        (lambda: estimate("dr", LoggedData(**base())), "dr needs reward model predictions"),
        (lambda: estimate("dm", LoggedData(**base())), "dm needs reward model predictions"),
        (lambda: estimate("weighted-ips", LoggedData(**base(logger=[0, 0, 1]))), "at least 2 rows from every logger"),
        (lambda: make_estimator("ipw"), "unknown estimator 'ipw'"),
        (lambda: make_estimator("clipped-ips", clip=0.0), "--clip .* must be > 0, found 0.0"),
        (lambda: make_estimator("switch-dr", tau=-1.0), "--tau .* must be >= 0, found -1.0"),
        (lambda: bootstrap(make_estimator("ips"), LoggedData(**base()), -1), "--bootstrap must be >= 0"),
        (lambda: fold_ids(10, 1), "at least 2 folds"),
    ],
)
def test_refusals(build, match):
    with pytest.raises(MvalError, match=match):
        build()


def test_weighted_ips_refuses_a_logger_whose_terms_do_not_vary():
    """All-zero rewards in one logger would make its precision infinite and the estimate that logger's 0."""
    data = LoggedData(reward=np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]), propensity=np.full(7, 0.5),
                      target_prob=np.full(7, 0.5), logger=np.array([0, 0, 0, 0, 1, 1, 1]))
    with pytest.raises(MvalError, match="weighted-ips: the weighted rewards of one logger's rows do not vary"):
        make_estimator("weighted-ips").estimate(data)
    assert make_estimator("ips").estimate(data).estimate == pytest.approx(3 / 7)


def test_a_single_row_has_no_standard_error():
    data = LoggedData(reward=np.array([1.0]), propensity=np.array([0.5]), target_prob=np.array([1.0]),
                      logger=np.array([0]))
    est = make_estimator("ips").estimate(data)
    assert est.estimate == 2.0 and np.isnan(est.std_error)


def test_effective_sample_size_by_hand_and_without_overflow():
    assert effective_sample_size(np.array([1.0, 2.0, 3.0])) == pytest.approx(36 / 14)
    assert effective_sample_size(np.array([1.0, 2.0]), np.array([2.0, 1.0])) == pytest.approx(16 / 6)
    assert effective_sample_size(np.array([1.0, 1e200])) == pytest.approx(1.0)  # (sum w)^2 overflowed a float
    tiny = LoggedData(np.array([1.0, 0.0, 1.0]), np.array([0.5, 0.5, 1e-160]), np.array([0.5, 0.5, 0.5]))
    assert make_estimator("ips").estimate(tiny).ess == pytest.approx(1.0)
    assert effective_sample_size(np.zeros(3)) == 0.0


@pytest.mark.parametrize("offset", [0.0, 1e8, 1e9])
def test_standard_errors_survive_a_reward_offset_a_billion_times_their_spread(offset):
    """sum z^2 - (sum z)^2 / n cancelled to an SE of 0 at offset 1e8 and 140x too large at 1e9."""
    rng = np.random.default_rng(5)
    n, k = 4000, np.repeat([0, 1], [2500, 1500])
    noise = rng.normal(size=n) * np.where(k == 0, 1.0, 3.0)
    data = LoggedData(offset + noise, np.full(n, 0.5), np.full(n, 0.5), k, pibar=np.full(n, 0.5))
    sizes = np.array([2500, 1500])
    spread = np.array([noise[k == j].std(ddof=1) for j in (0, 1)])  # numpy's two-pass variance
    expected = np.sqrt((sizes * spread**2).sum()) / n
    assert IPS().estimate(data).std_error == pytest.approx(expected, rel=1e-6)
    assert BalancedIPS().estimate(data).std_error == pytest.approx(expected, rel=1e-6)
    weighted = WeightedIPS().estimate(data)
    precision = sizes / spread**2
    assert weighted.std_error == pytest.approx(precision.sum() ** -0.5, rel=1e-6)
    means = np.array([noise[k == j].mean() for j in (0, 1)])
    # the means themselves are sums of n values near the offset: rounding of order n * 2e-16 * offset
    assert weighted.estimate - offset == pytest.approx(precision @ means / precision.sum(), abs=1e-6 + 1e-12 * offset)


def test_merged_rows_fit_the_same_feature_model_as_the_rows_they_stand_for():
    """The features were scaled over distinct rows, not weighted by their counts: q differed by up to 0.05."""
    from mval.reward_model import cross_fit_model

    rng = np.random.default_rng(0)
    n, k = 50, 4
    x = rng.normal(size=(n, 3)) * [1, 5, 30]
    a, r, fold = rng.integers(k, size=n), (rng.random(n) < 0.4).astype(float), rng.integers(5, size=n)
    count = rng.integers(1, 20, size=n)
    rows = np.repeat(np.arange(n), count)
    merged = cross_fit_model(x, a, r, k, fold, 5, count=count)
    expanded = cross_fit_model(x[rows], a[rows], r[rows], k, fold[rows], 5)
    np.testing.assert_allclose(merged[rows], expanded, atol=1e-6)
