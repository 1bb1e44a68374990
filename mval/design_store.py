"""`mval design` on a store: estimate the MVAL problem from the log, solve it, report, save.

Contexts are the distinct context_id of the existing log, weighted by how often they occur
(all rows without context_id form one context, and the designed policy is then context-free).
Logger k's policy pi_k is its policy table (a policy named like the logger) or the mean of its
action_probs per context (its mean over all contexts where it never logged that context).

Reward moments per (context, action), shrunk toward the action's mean with SHRINK_ROWS pseudo-rows
(and the action's mean toward the global mean the same way):

    m(x,a)  = (sum_{rows x,a} r   + k m_a) / (n_xa + k),   m_a = (sum_{rows a} r + k m) / (n_a + k)
    s2(x,a) = (sum_{rows x,a} r^2 + k s_a) / (n_xa + k),   likewise for s_a,

with k = SHRINK_ROWS. IPS uses s = s2 = E[r^2]; DR (with reward model q = m) uses
s = s2 - m^2 = E[(r - m)^2] (>= 0 by Jensen: both are the same convex combination). Both are
computed from the moments of r - c, c the log's mean reward: the shrinkage is a weighted average,
so shifting is exact, and s2 - m^2 does not cancel when the rewards are large next to their spread.
A user table (context_id, action, s) replaces s; rows with empty context_id apply to every context.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from mval.design import MvalProblem, balanced_variance, solve_exact
from mval.design_cvxpy import solve_cvxpy
from mval.errors import MvalError
from mval.files import check_output_path, read_frame, write_output
from mval.policies import (check_logged_propensities, check_new_name, context_name, load_policy, policy_frame,
                           policy_names)
from mval.store import check_counted, load_sql, transaction

SHRINK_ROWS = 5.0
OBJECTIVES = ("average", "minimax", "difference")
ESTIMATORS = ("ips", "dr")
SOLVERS = ("auto", "exact", "cvxpy")
MAX_ROUNDS = 10**15  # rounds_needed beyond this is reported as never (inf)


@dataclass(frozen=True)
class LogEstimates:
    """The existing log as arrays: contexts, their weights, the loggers and the reward moments."""

    context_ids: np.ndarray | None  # sorted ids; None: one context without id
    weights: np.ndarray  # p(x)
    loggers: tuple[str, ...]
    counts: tuple[int, ...]  # n_k rows per logger
    logger_policies: tuple[np.ndarray, ...]  # pi_k (contexts, actions)
    mean: np.ndarray  # m(x, a)
    second: np.ndarray  # E[r^2 | x, a]
    spread: np.ndarray  # E[(r - m)^2 | x, a] = second - mean^2, computed without cancelling

    @property
    def rows(self) -> int:
        return sum(self.counts)

    @property
    def pi0(self) -> np.ndarray:
        """The existing log's mixture sum_k n_k pi_k / n0."""
        return sum(n * p for n, p in zip(self.counts, self.logger_policies)) / self.rows

    def expected_reward(self, policy: np.ndarray) -> float:
        """Expected reward per round of `policy` under the estimated rewards, sum_x p(x) sum_a policy(a|x) m(x, a)."""
        return float(self.weights @ (policy * self.mean).sum(axis=1))


@dataclass(frozen=True)
class Alternative:
    """Another way to spend the budget: its predicted std error and the rounds it needs to match MVAL."""

    name: str
    description: str
    std_error: float
    rounds_needed: float  # new rounds to reach MVAL's std error (inf: never)
    expected_reward: float  # per new round, by the reward model fitted on the log


@dataclass(frozen=True)
class DesignResult:
    """The designed logging policy pi1 and the predicted std errors of the final estimate."""

    policy: pl.DataFrame = field(repr=False)  # long format: context_id, action, prob
    targets: tuple[str, ...]
    objective: str
    estimator: str
    solver: str
    budget: int
    existing_rows: int
    contexts: int
    actions: int
    alpha: float
    std_error: float
    expected_reward: float  # of pi1 per new round: sum_x p(x) sum_a pi1(a|x) m(x, a), m fitted on the log
    alternatives: tuple[Alternative, ...]
    uniform_contexts: int  # contexts where every cost is 0: any pi1 is optimal, uniform returned

    def to_dict(self) -> dict:
        out = asdict(self)
        del out["policy"]
        out["targets"] = list(self.targets)
        out["alternatives"] = [asdict(a) for a in self.alternatives]
        return out

    def report(self) -> list[dict]:
        """One row per logging choice, MVAL first: std error, ratio to MVAL, rounds needed, expected reward."""
        rows = [Alternative("mval", "MVAL design (this policy)", self.std_error, float(self.budget),
                            self.expected_reward)]
        rows += self.alternatives
        return [
            {
                "logging": a.name,
                "std_error": a.std_error,
                "vs_mval": a.std_error / self.std_error if self.std_error > 0 else float("nan"),
                "rounds_needed": a.rounds_needed,
                "expected_reward": a.expected_reward,
                "description": a.description,
            }
            for a in rows
        ]


def design_logging_policy(
    con: duckdb.DuckDBPyConnection,
    targets: list[str],
    budget: int,
    objective: str = "average",
    estimator: str = "ips",
    floor: float = 0.0,
    cap: float = 1.0,
    min_reward_ratio: float | None = None,
    solver: str = "auto",
    loggers: list[str] | None = None,
    second_moment_table: str | Path | pl.DataFrame | None = None,
) -> DesignResult:
    """Design pi1 for `budget` new rounds so that old + new log evaluates the targets with least variance.

    objective: average (mean variance over targets), minimax (worst target; cvxpy), difference
    (variance of V(A) - V(B), exactly two targets). solver auto: exact, or cvxpy for minimax.
    min_reward_ratio R: pi1 must earn at least R x the value of the existing loggers' mixture pi0.
    """
    _check_arguments(targets, budget, objective, estimator, solver, min_reward_ratio)
    solver = solver if solver != "auto" else ("cvxpy" if objective == "minimax" else "exact")
    est = read_log(con, loggers, targets)
    k = est.mean.shape[1]
    target_pis = [_policy_rows(con, name, k, est.context_ids) for name in targets]
    s = _second_moments(est, estimator, second_moment_table, k, target_pis)
    if objective == "difference":
        signed = [target_pis[0] - target_pis[1]]
        costs = signed[0] ** 2 * s
    else:
        signed = target_pis
        costs = np.stack([pi**2 * s for pi in target_pis])
        costs = costs if objective == "minimax" else costs.mean(axis=0)
    _check_costs(costs, float(np.max(est.second)), estimator, second_moment_table is not None)
    alpha = est.rows / (est.rows + budget)
    reward = min_reward = None
    if min_reward_ratio is not None:
        reward = est.mean
        min_reward = min_reward_ratio * est.expected_reward(est.pi0)
    solve = solve_exact if solver == "exact" else solve_cvxpy

    def design(a: float) -> np.ndarray:
        return solve(MvalProblem(costs, est.pi0, a, est.weights, floor, cap, reward, min_reward))

    pi1 = design(alpha)

    def variance(policy: np.ndarray, rounds: float) -> float:
        return _aggregate_variance(est, signed, policy, rounds, objective, estimator, s)

    target = variance(pi1, budget)
    uniform = np.full_like(pi1, 1.0 / k)
    choices = [
        ("target", "collect with the target policy (their mean)", np.mean(target_pis, axis=0)),
        ("uniform", "uniform random logging", uniform),
        ("pi0", "keep running the existing logger(s)", est.pi0),
        ("ignore_log", "optimal proposal ignoring the existing log (alpha = 0)", design(0.0)),
    ]
    alternatives = tuple(
        Alternative(name, text, float(np.sqrt(variance(p, budget))), _rounds_needed(variance, p, target),
                    est.expected_reward(p))
        for name, text, p in choices
    )
    zero_cost = costs.sum(axis=0) if costs.ndim == 3 else costs
    return DesignResult(
        policy=policy_frame(est.context_ids, pi1),
        targets=tuple(targets),
        objective=objective,
        estimator=estimator,
        solver=solver,
        budget=int(budget),
        existing_rows=est.rows,
        contexts=len(est.weights),
        actions=k,
        alpha=alpha,
        std_error=float(np.sqrt(target)),
        expected_reward=est.expected_reward(pi1),
        alternatives=alternatives,
        uniform_contexts=int((zero_cost.sum(axis=1) == 0).sum()),
    )


def _check_arguments(targets: list[str], budget: int, objective: str, estimator: str, solver: str,
                     min_reward_ratio: float | None) -> None:
    if not targets:
        raise MvalError("--target: give at least one target policy name")
    if len(set(targets)) != len(targets):
        raise MvalError(f"--target {','.join(targets)}: a name appears twice; list each target once")
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget <= 0:
        raise MvalError(f"--budget {budget}: must be a positive whole number of new rounds")
    if objective not in OBJECTIVES:
        raise MvalError(f"--objective {objective}: unknown; use one of {', '.join(OBJECTIVES)}")
    if estimator not in ESTIMATORS:
        raise MvalError(f"--estimator {estimator}: unknown; use one of {', '.join(ESTIMATORS)}")
    if solver not in SOLVERS:
        raise MvalError(f"--solver {solver}: unknown; use one of {', '.join(SOLVERS)}")
    if objective == "difference" and len(targets) != 2:
        raise MvalError(f"--objective difference compares two policies, found {len(targets)}: give --target A,B")
    if objective == "minimax" and solver == "exact":
        raise MvalError("--objective minimax needs --solver cvxpy (the exact solver handles average and difference)")
    if min_reward_ratio is not None and not (np.isfinite(min_reward_ratio) and min_reward_ratio >= 0):
        raise MvalError(f"--min-reward-ratio {min_reward_ratio}: must be a number >= 0 (e.g. 0.95)")


def read_log(con: duckdb.DuckDBPyConnection, loggers: list[str] | None, targets: list[str] = ()) -> LogEstimates:
    """Contexts, weights, logger policies and shrunk reward moments of the existing log."""
    known = [r[0] for r in con.execute("SELECT DISTINCT logger FROM ingests ORDER BY 1").fetchall()]
    if not known:
        raise MvalError("the store has no events; ingest the existing log first (`mval ingest`)")
    loggers = known if loggers is None else list(loggers)
    unknown = [name for name in loggers if name not in known]
    if unknown:
        raise MvalError(f"--loggers: no events from {unknown[0]!r}; known loggers: {', '.join(known)}")
    params = {"loggers": loggers}
    summary = con.sql(load_sql("design_loggers"), params=params).pl()
    contexts = con.sql(load_sql("design_contexts"), params=params).pl()
    check_counted(int(summary["rows"].sum()), int(contexts["rows"].sum()))
    ids, weights = _context_index(contexts)
    k = _n_actions(con, summary, targets)
    policies = tuple(_logger_policy(con, row, k, ids) for row in summary.iter_rows(named=True))
    cells = con.sql(load_sql("design_cells"), params=params).pl()
    index = _positions(ids, cells["context_id"])
    mean, second, spread = _shrunk_moments(index, cells, len(weights), k)
    return LogEstimates(ids, weights, tuple(summary["logger"]), tuple(int(n) for n in summary["rows"]),
                        policies, mean, second, spread)


def _context_index(contexts: pl.DataFrame) -> tuple[np.ndarray | None, np.ndarray]:
    nulls = contexts["context_id"].null_count()
    if nulls and contexts.height > 1:
        raise MvalError(
            "events mix rows with and without context_id; give every row of these loggers a context_id "
            "(or none, for a context-free design), or pick loggers with --loggers"
        )
    weights = contexts["rows"].to_numpy().astype(float)
    if nulls:
        return None, np.ones(1)
    ids = contexts["context_id"].to_numpy().astype(str)
    order = np.argsort(ids)
    return ids[order], weights[order] / weights.sum()


def _positions(ids: np.ndarray | None, column: pl.Series) -> np.ndarray:
    """Row of each context_id in the sorted `ids` (all 0 for the single context without id)."""
    if ids is None:
        return np.zeros(len(column), dtype=np.int64)
    return np.searchsorted(ids, column.to_numpy().astype(str))


def _n_actions(con: duckdb.DuckDBPyConnection, summary: pl.DataFrame, targets: list[str]) -> int:
    k = int(summary["n_actions"].max())
    row = con.execute(
        "SELECT max(action) FILTER (WHERE prob > 0) + 1 FROM policies WHERE list_contains(?, policy)",  # as evaluate
        [list(summary["logger"]) + list(targets)]
    ).fetchall()[0][0]
    return max(k, int(row or 0))


def _logger_policy(con: duckdb.DuckDBPyConnection, row: dict, k: int, ids: np.ndarray | None) -> np.ndarray:
    name = row["logger"]
    if name in policy_names(con):
        table = _policy_rows(con, name, k, ids)
        cells = con.sql(load_sql("logged_propensities"), params={"logger": name}).pl()
        index, actions = _positions(ids, cells["context_id"]), cells["action"].to_numpy()
        why = check_logged_propensities(name, table[index, actions], cells["propensity"].to_numpy(), index, actions,
                                        lambda c: context_name(None if ids is None else str(ids[c])))
        if why:
            raise MvalError(why)
        return table
    if row["rows_with_probs"] == 0:
        raise MvalError(
            f"logger {name!r}: its events have no action_probs and the store has no policy named {name!r}; "
            f"add the logger's policy with `mval policy add STORE {name} FILE`"
        )
    probs = con.sql(load_sql("design_logger_probs"), params={"logger": name}).pl()
    index = _positions(ids, probs["context_id"])
    n = 1 if ids is None else len(ids)
    sums = np.zeros((n, k))
    rows = np.zeros(n)
    actions = probs["action"].to_numpy()
    np.add.at(sums, (index, actions), probs["prob_sum"].to_numpy())
    rows[index] = probs["rows"].to_numpy()
    overall = sums.sum(axis=0) / rows.sum()
    seen = rows > 0
    return np.where(seen[:, None], sums / np.where(seen, rows, 1.0)[:, None], overall)


def _policy_rows(con: duckdb.DuckDBPyConnection, name: str, k: int, ids: np.ndarray | None) -> np.ndarray:
    """pi(.|x) of store policy `name` for every context of the log, shape (contexts, k)."""
    table = load_policy(con, name, n_actions=k)
    if ids is None:
        if table.context_ids is not None:
            raise MvalError(
                f"policy {name!r} has a row per context_id but the log has no context_id; "
                "give a context-free policy (empty context_id) or log the contexts"
            )
        return table.probs.copy()
    return np.array(table.probs_for(ids))


def _shrunk_moments(index: np.ndarray, cells: pl.DataFrame, n: int,
                    k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """m, E[r^2] and E[(r - m)^2] per (context, action), shrunk as in the module docstring, from the sums
    of r - c and (r - c)^2 (c: `cells["shift"]`)."""
    actions = cells["action"].to_numpy()
    counts, r1, r2 = (np.zeros((n, k)) for _ in range(3))
    counts[index, actions] = cells["n"].to_numpy()
    r1[index, actions] = cells["r1"].to_numpy()
    r2[index, actions] = cells["r2"].to_numpy()
    total = counts.sum()
    per_action = [(r.sum(axis=0) + SHRINK_ROWS * r.sum() / total) / (counts.sum(axis=0) + SHRINK_ROWS)
                  for r in (r1, r2)]
    m1, m2 = ((r + SHRINK_ROWS * prior) / (counts + SHRINK_ROWS) for r, prior in zip((r1, r2), per_action))
    c = float(cells["shift"][0]) if cells.height else 0.0
    return m1 + c, m2 + 2 * c * m1 + c * c, np.maximum(m2 - m1 * m1, 0.0)


def _second_moments(est: LogEstimates, estimator: str, table: str | Path | pl.DataFrame | None, k: int,
                    target_pis: list[np.ndarray]) -> np.ndarray:
    if table is None:
        return est.second if estimator == "ips" else est.spread
    frame = table if isinstance(table, pl.DataFrame) else read_frame(table, text=("context_id",))
    where = str(table) if not isinstance(table, pl.DataFrame) else "second-moment table"
    missing = [c for c in ("context_id", "action", "s") if c not in frame.columns]
    if missing:
        raise MvalError(f"{where}: missing column(s) {', '.join(missing)}; it needs context_id, action, s")
    typed = frame.select(pl.col("context_id").cast(pl.Utf8), pl.col("action").cast(pl.Float64, strict=False),
                         pl.col("s").cast(pl.Float64, strict=False))
    fractional = typed["action"].is_not_null() & (typed["action"] != typed["action"].floor())
    typed = typed.with_columns(pl.when(fractional).then(None).otherwise(pl.col("action")).cast(pl.Int64).alias("action"))
    for column in ("action", "s"):
        bad = typed[column].is_null() & frame[column].is_not_null()
        if bad.any() or frame[column].is_null().any():
            row = int((bad | frame[column].is_null()).arg_max())
            raise MvalError(f"{where}: row {row + 1}, column {column}: must be a{'n integer' if column == 'action' else ' number'}"
                            f", found {frame[column][row]!r}; fill it in")
    repeated = typed.select("context_id", "action").is_duplicated()
    if repeated.any():
        row = int(repeated.arg_max())
        raise MvalError(f"{where}: context_id {typed['context_id'][row]!r}, action {typed['action'][row]} appears "
                        "more than once; keep one s per (context_id, action)")
    frame = typed
    values = frame["s"].to_numpy()
    actions = frame["action"].to_numpy()
    if not np.isfinite(values).all() or (values < 0).any() or (actions < 0).any() or (actions >= k).any():
        raise MvalError(f"{where}: s must be finite and >= 0 and action in 0..{k - 1}; fix the table")
    n = len(est.weights)
    s = np.full((n, k), np.nan)
    free = frame["context_id"].is_null().to_numpy()
    s[:, actions[free]] = values[free]
    if (~free).any():
        if est.context_ids is None:
            raise MvalError(f"{where}: rows name context_ids but the log has none; leave context_id empty")
        ids = frame["context_id"].to_numpy()[~free].astype(str)
        pos = np.clip(np.searchsorted(est.context_ids, ids), 0, n - 1)
        keep = est.context_ids[pos] == ids  # rows for contexts outside the log do not matter
        s[pos[keep], actions[~free][keep]] = values[~free][keep]
    needed = np.isnan(s) & (np.max(np.abs(target_pis), axis=0) > 0)
    if needed.any():
        x, a = np.argwhere(needed)[0]
        ctx = "(context-free)" if est.context_ids is None else repr(est.context_ids[x])
        raise MvalError(f"{where}: no s for context_id {ctx}, action {a}, where a target acts; add that row")
    return np.nan_to_num(s, nan=0.0)


def _check_costs(costs: np.ndarray, scale: float, estimator: str, from_table: bool) -> None:
    """Refuse a problem where every cost pi_t^2 s is 0 (to rounding, relative to `scale`, the largest E[r^2];
    DR's s, taken about the mean reward, rounds to about 1e-32 of it): every logging policy then predicts
    variance 0. Small rewards (in millions, say) are not refused."""
    if np.max(costs) > (1e-12 if estimator == "ips" else 1e-24) * scale:
        return
    why = ("the --second-moment table gives s = 0 wherever a target acts" if from_table
           else "every logged reward is 0" if estimator == "ips"
           else "the logged rewards never vary, so the reward model predicts each one exactly")
    raise MvalError(f"nothing to design: {why}, so every logging policy predicts a standard error of 0; "
                    "log rows with varying rewards first (any logging policy will do), or give --second-moment "
                    "with the reward variances you expect")


def _aggregate_variance(est: LogEstimates, signed: list[np.ndarray], pi1: np.ndarray, rounds: float,
                        objective: str, estimator: str, s: np.ndarray) -> float:
    """Predicted variance of the final estimate (mean over targets, worst target, or the difference)."""
    loggers = [*est.logger_policies, pi1]
    counts = [*est.counts, rounds]
    values = [balanced_variance(pi, loggers, counts, est.weights, s, est.mean, estimator) for pi in signed]
    return max(values) if objective == "minimax" else float(np.mean(values))


def _rounds_needed(variance, policy: np.ndarray, target: float) -> float:
    """Smallest n1 with variance(policy, n1) <= target, by bisection (inf when never)."""
    if variance(policy, 0) <= target:
        return 0.0
    if not variance(policy, MAX_ROUNDS) <= target:
        return float("inf")
    lo, hi = 0, MAX_ROUNDS
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if variance(policy, mid) <= target else (mid, hi)
    return float(hi)


def save_design(con: duckdb.DuckDBPyConnection, policy: pl.DataFrame, name: str, replace: bool = False,
                output: str | Path | None = None) -> int:
    """Write the designed policy into `policies` under `name`, and to the file `output` if given, in one
    transaction: if the file cannot be written, the store is left as it was. Returns rows."""
    con.register("designed_policy", policy)
    try:
        with transaction(con):
            check_new_name(con, name, replace, "another --save-as")
            con.execute("DELETE FROM policies WHERE policy = ?", [name])
            con.execute("INSERT INTO policies SELECT ?, context_id, action, prob FROM designed_policy", [name])
            if output is not None:
                write_policy_file(policy, output)
    finally:
        con.unregister("designed_policy")
    return policy.height


POLICY_WRITERS = {".csv": pl.DataFrame.write_csv, ".parquet": pl.DataFrame.write_parquet,
                  ".json": pl.DataFrame.write_json, ".jsonl": pl.DataFrame.write_ndjson,
                  ".ndjson": pl.DataFrame.write_ndjson}
POLICY_FILE_TYPES = tuple(POLICY_WRITERS)


def write_policy_file(policy: pl.DataFrame, path: str | Path) -> None:
    """The designed policy as CSV, Parquet or JSON (by extension), columns context_id, action, prob."""
    path = check_output_path(path, POLICY_FILE_TYPES)
    write_output(path, lambda buffer: POLICY_WRITERS[path.suffix.lower()](policy, buffer))
