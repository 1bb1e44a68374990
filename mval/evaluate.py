"""`mval evaluate`: off-policy estimates of a target policy from the store's logs.

The chosen loggers' rows come out of DuckDB in one query as cells, identical rows merged into one
cell with a count (lossless for every estimator, the bootstrap included), read from `event_cells`
(counted at ingest) unless a reward model needs the features. Policies are dense (contexts x
actions) matrices; each row looks up its context. A logger's policy is known when `policies` holds
a policy named like the logger, or else its rows carry `action_probs`.

Positions (slates): `pooled` ignores them; `per-position` gives one estimate per position; `context`
makes the position part of the context, key `context_id|position` (just the position when
context_id is NULL; sql/context_key.sql), so policies must be given for those keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import duckdb
import numpy as np
import polars as pl

from mval.errors import MvalError
from mval.estimators import BALANCED, ESTIMATORS, NEEDS_MODEL, Estimate, LoggedData, make_estimator
from mval.policies import PolicyTable, check_logged_propensities, context_name, load_policy, policy_names
from mval.progress import progress
from mval.reward_model import check_folds, cross_fit_means, cross_fit_model
from mval.store import check_counted, load_sql

POSITIONS = ("pooled", "per-position", "context")
OWN_WEIGHT = ("ips", "snips", "clipped-ips", "dr", "sndr", "switch-dr", "weighted-ips")


@dataclass(frozen=True)
class Evaluation:
    """Estimates of one policy; `estimates` pairs each with its position (None unless per-position)."""

    policy: str
    loggers: tuple[str, ...]
    positions: str
    reward_model: str | None
    estimates: tuple[tuple[int | None, Estimate], ...]
    skipped: dict[str, str] = field(default_factory=dict)  # estimator -> why (only with 'all')

    def records(self) -> list[dict]:
        """One dict per estimate: Estimate.to_dict() plus `position` and the `positions` mode."""
        return [{**e.to_dict(), "position": pos, "positions": self.positions} for pos, e in self.estimates]


def parse_estimators(names: Sequence[str]) -> tuple[list[str], bool]:
    """Estimator names in order (comma lists allowed); 'all' -> every estimator, flagged as such."""
    chosen = [n.strip() for name in names for n in name.split(",") if n.strip()]
    if not chosen:
        raise MvalError("--estimator: no estimator given; use all or a comma list such as ips,snips,dr")
    if "all" in chosen:
        return list(ESTIMATORS), True
    for name in chosen:
        if name not in ESTIMATORS:
            raise MvalError(f"--estimator {name}: unknown estimator; choose from all, {', '.join(ESTIMATORS)}")
    return list(dict.fromkeys(chosen)), False


@dataclass(frozen=True)
class _Log:
    """The selected rows as cells (arrays of equal length), with context codes 0..C-1."""

    loggers: tuple[str, ...]
    n_actions: int
    keys: np.ndarray  # (C,) context key of each code; None for a NULL key (last)
    cells: dict[str, np.ndarray]
    features: np.ndarray | None


def _query_cells(con: duckdb.DuckDBPyConnection, ingests: _Ingests, positions: str, with_features: bool,
                 folds: int, seed: int) -> pl.DataFrame:
    """Cells per logger, sorted: SQL reads them per ingest; a logger's ingests merge here (a few thousand
    cells, not the rows), so estimates do not depend on how its rows were split over files."""
    cells = con.sql(load_sql("evaluate_rows"), params={
        **ingests.params, "position_in_context": positions == "context", "by_position": positions != "pooled",
        "with_features": with_features,
    }).pl()
    cells = cells.with_columns(logger=pl.col("ingest_id").replace_strict(ingests.logger_of, default=None,
                                                                         return_dtype=pl.String))
    if cells["logger"].null_count():
        orphan = cells.filter(pl.col("logger").is_null())["ingest_id"][0]
        raise MvalError(f"the store's events of ingest {orphan} have no row in `ingests`: they were not added by "
                        "`mval ingest`; re-ingest those rows with `mval ingest` into a new store")
    keys = ["logger", *(c for c in cells.columns if c not in ("ingest_id", "logger", "count"))]
    if len(set(ingests.logger_of.values())) < len(ingests.logger_of):
        cells = cells.group_by(keys).agg(pl.col("count").sum())
    return _deal_folds(cells.select(*keys, "count").sort(keys, nulls_last=True), folds, seed)


def deal_folds(counts: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(cells, folds) fold sizes: each cell's count split Multinomial(count, 1/folds), drawn as
    conditional binomials (fold j gets Binomial(left, 1/(folds - j)) of what the earlier folds left),
    one vectorised draw per fold. Identical rows are exchangeable, so this is a random fold per row."""
    rng = np.random.default_rng(seed)
    left = counts.astype(np.int64)
    sizes = np.empty((left.size, folds), dtype=np.int64)
    for j in range(folds - 1):
        sizes[:, j] = rng.binomial(left, 1.0 / (folds - j))
        left = left - sizes[:, j]
    sizes[:, -1] = left
    return sizes


def _deal_folds(cells: pl.DataFrame, folds: int, seed: int) -> pl.DataFrame:
    """The cells split by cross-fitting fold (`deal_folds`), one output row per non-empty (cell, fold)."""
    sizes = deal_folds(cells["count"].to_numpy(), folds, seed)
    group, fold = np.nonzero(sizes)
    return cells[group].with_columns(
        fold=pl.Series(fold, dtype=pl.Int64), count=pl.Series(sizes[group, fold], dtype=pl.Float64)
    )


@dataclass(frozen=True)
class _Ingests:
    """The chosen loggers (in order: as given, else sorted) and the ingests that hold their rows."""

    loggers: tuple[str, ...]
    logger_of: dict[int, str]  # ingest_id -> logger, for the chosen ingests
    everything: bool  # every ingest is chosen: no filter needed

    @property
    def params(self) -> dict:
        return {"all_ingests": self.everything, "ingest_ids": sorted(self.logger_of)}


def _choose_ingests(con: duckdb.DuckDBPyConnection, loggers: Sequence[str] | None) -> _Ingests:
    """Refuse an empty store or unknown logger names; each ingest holds one logger's rows."""
    if loggers is not None and not loggers:
        raise MvalError("--loggers: empty list; name at least one logger or leave the option out")
    logger_of = dict(con.execute("SELECT ingest_id, logger FROM ingests").fetchall())
    found = sorted(set(logger_of.values()))
    if loggers is None:
        if not found:
            raise MvalError("the store has no events: nothing to evaluate; ingest a log first with `mval ingest`")
        return _Ingests(tuple(found), logger_of, True)
    unknown = [name for name in loggers if name not in found]
    if unknown:
        raise MvalError(f"--loggers: no rows from logger {unknown[0]!r} (known: {', '.join(found) or 'none'})")
    chosen = {i: name for i, name in logger_of.items() if name in loggers}
    return _Ingests(tuple(dict.fromkeys(loggers)), chosen, len(chosen) == len(logger_of))


def _n_actions(con: duckdb.DuckDBPyConnection, df: pl.DataFrame, shapes: dict, loggers: tuple[str, ...],
               policy: str) -> int:
    """K agreed by rows, action_probs and logger policies; refuse when the target needs more actions."""
    low, high = shapes["action_probs_min"], shapes["action_probs_max"]
    if low != high:
        raise MvalError(f"action_probs have different lengths ({low} and {high}) across the "
                        "chosen loggers' rows; every row must list all actions")
    policy_k = dict(con.execute(
        "SELECT policy, max(action) FILTER (WHERE prob > 0) + 1 FROM policies "
        "WHERE list_contains(?, policy) GROUP BY policy",
        [[*loggers, policy]],
    ).fetchall())
    if policy not in policy_k:
        known = ", ".join(policy_names(con)) or "none"
        raise MvalError(f"no policy named {policy!r} in the store (known: {known}); add it with `mval policy add`")
    k_log = max([int(df["action"].max()) + 1, int(high or 0), *(policy_k.get(n, 0) for n in loggers)])
    if policy_k[policy] > k_log:
        raise MvalError(
            f"policy {policy!r} has {policy_k[policy]} actions (0..{policy_k[policy] - 1}) but the log has "
            f"{k_log} (0..{k_log - 1}); rows and policy must number actions the same way"
        )
    return k_log


def _shapes(con: duckdb.DuckDBPyConnection, ingests: _Ingests) -> dict:
    """What the chosen rows carry (evaluate_shapes.sql); list lengths only when some row has a list."""
    query = load_sql("evaluate_shapes")
    shapes = con.sql(query, params={**ingests.params, "lengths": False}).pl().row(0, named=True)
    if shapes["rows_with_action_probs"] or shapes["rows_with_features"]:
        shapes = con.sql(query, params={**ingests.params, "lengths": True}).pl().row(0, named=True)
    return shapes


def _read_log(
    con: duckdb.DuckDBPyConnection, policy: str, loggers: Sequence[str] | None, positions: str, needs_model: bool,
    folds: int, seed: int,
) -> _Log:
    """The cells in one grouped scan, what the rows carry (list lengths) in a cheap ungrouped one, and
    the cells again with their features only when a reward model will use them.

    Features are used when every chosen row has a vector, all of one length.
    """
    ingests = _choose_ingests(con, loggers)
    df = _query_cells(con, ingests, positions, False, folds, seed)
    if positions != "pooled" and df["position"].null_count() == df.height:
        raise MvalError(f"--positions {positions}: the chosen rows have no position; use --positions pooled")
    if positions == "per-position" and df["position"].null_count():
        missing = int(df.filter(pl.col("position").is_null())["count"].sum())
        raise MvalError(f"--positions per-position: {missing} of the chosen rows have no position; give every row "
                        "a position (or use --positions context or pooled)")
    shapes = _shapes(con, ingests)
    check_counted(shapes["rows"], df["count"].sum())
    n_actions = _n_actions(con, df, shapes, ingests.loggers, policy)
    width = shapes["features_max"]
    features = None
    if (needs_model and shapes["rows_with_features"] == shapes["rows"] and width
            and shapes["features_min"] == width):
        df = _query_cells(con, ingests, positions, True, folds, seed)
        features = df["features"].list.to_array(int(width)).to_numpy()
    keys = df["context_key"].unique().sort(nulls_last=True)
    context = (df["context_key"].rank("dense").cast(pl.Int64) - 1).fill_null(keys.len() - 1)
    index = {name: i for i, name in enumerate(ingests.loggers)}
    cells = {name: df[name].to_numpy() for name in ("action", "propensity", "reward", "fold", "count")}
    cells["logger_index"] = df["logger"].replace_strict(index, return_dtype=pl.Int64).to_numpy()
    cells["context"] = context.to_numpy()
    cells["position"] = df["position"].to_numpy() if positions == "per-position" else np.zeros(df.height)
    return _Log(ingests.loggers, n_actions, keys.to_numpy(), cells, features)


def _policy_matrix(table: PolicyTable, keys: np.ndarray) -> np.ndarray:
    """(C, K) rows of `table` for the context keys; NaN rows where the table does not cover a key."""
    if table.context_ids is None:
        return np.broadcast_to(table.probs[0], (len(keys), table.n_actions)).copy()
    out = np.full((len(keys), table.n_actions), np.nan)
    present = np.array([k is not None for k in keys], dtype=bool)
    found = present.copy()
    found[present] = np.isin(keys[present].astype(str), table.context_ids)
    out[found] = table.probs_for(keys[found].astype(str))
    return out


def _target_matrix(con: duckdb.DuckDBPyConnection, policy: str, log: _Log) -> np.ndarray:
    table = load_policy(con, policy, n_actions=log.n_actions)
    probs = _policy_matrix(table, log.keys)
    missing = np.isnan(probs[:, 0])
    if missing.any():
        key = log.keys[missing][0]
        what = "rows with no context_id" if key is None else f"context_id {key!r}"
        raise MvalError(f"policy {policy!r} gives no probabilities for {what}; add those contexts to the policy "
                        "(or give a context-free policy with an empty context_id)")
    return probs


def _logger_matrix(con: duckdb.DuckDBPyConnection, logger: str, log: _Log, positions: str) -> np.ndarray | str:
    """pi_k as (C, K) with NaN rows where unknown; when the logger's policy is unknown, why (a phrase)."""
    if con.execute("SELECT count(*) FROM policies WHERE policy = ?", [logger]).fetchall()[0][0]:
        return _policy_matrix(load_policy(con, logger, n_actions=log.n_actions), log.keys)
    df = con.sql(load_sql("evaluate_logger_probs"), params={
        "logger": logger, "position_in_context": positions == "context"}).pl()
    if df.height == 0:
        return "has no known policy"
    if df["variants"].max() > 1:
        return ("logs action_probs that differ between rows of one context (its policy depends on more than "
                "context_id), so its probabilities at other rows are unknown")
    table_keys = df["context_key"].to_numpy()
    probs = np.array(df["probs"].to_list(), dtype=float)
    if probs.shape[1] != log.n_actions:
        raise MvalError(f"logger {logger!r}: action_probs list {probs.shape[1]} actions but the log has "
                        f"{log.n_actions}; rows and policies must number actions the same way")
    if df["context_key"].null_count():
        if df.height > 1:
            return "logs action_probs on rows with and without context_id, not one policy"
        return np.broadcast_to(probs[0], (len(log.keys), log.n_actions)).copy()
    return _policy_matrix(PolicyTable(logger, table_keys.astype(str), probs), log.keys)


def _overlap_problem(target: np.ndarray, cover: np.ndarray, contexts: np.ndarray, keys: np.ndarray) -> str | None:
    """'action a at context c' where target > 0 but cover == 0, on the given contexts; None if overlap holds."""
    t, c = target[contexts], cover[contexts]
    bad = (t > 0) & (c == 0)
    if not bad.any():
        return None
    row, action = np.argwhere(bad)[0]
    return f"gives probability {t[row, action]:.3g} to action {action} at {context_name(keys[contexts[row]])}"


def evaluate_policy(
    con: duckdb.DuckDBPyConnection,
    policy: str,
    loggers: Sequence[str] | None = None,
    estimators: Sequence[str] = ("all",),
    n_boot: int = 0,
    seed: int = 0,
    positions: str = "pooled",
    clip: float = 10.0,
    tau: float = 10.0,
    folds: int = 5,
    reward_model: Callable[[], object] | None = None,
    level: float = 0.95,
) -> Evaluation:
    """Estimate the value of `policy` from the rows of `loggers` (None: all) with each named estimator.

    'all' runs every estimator that applies and lists the others in `skipped`; a name asked for
    explicitly that cannot run (no overlap, unknown logger policy) is refused with MvalError.
    reward_model: a factory of objects with fit/predict used on features (default: see reward_model.py).
    """
    if positions not in POSITIONS:
        raise MvalError(f"--positions {positions}: unknown; use {', '.join(POSITIONS)}")
    names, everything = parse_estimators(estimators)
    for name in names:  # refuse bad clip/tau before reading anything
        make_estimator(name, clip, tau)
    fewest = int(np.ceil(2 / (1 - level) - 1e-9))  # below this, one tail of the interval is the extreme replicate
    if n_boot < 0 or 0 < n_boot < fewest:
        raise MvalError(f"--bootstrap {n_boot}: a {level:.0%} percentile interval needs at least {fewest} replicates "
                        "(1000 is usual); 0 skips it")
    check_folds(folds)
    needs_model = any(n in NEEDS_MODEL for n in names)
    con.execute(load_sql("context_key"))  # read by evaluate_rows.sql and evaluate_logger_probs.sql
    log = _read_log(con, policy, loggers, positions, needs_model, folds, seed)
    if reward_model is not None and needs_model and log.features is None:
        raise MvalError("a reward model was given but the rows have no features; drop it to use context means")
    target = _target_matrix(con, policy, log)
    logger_probs = [_logger_matrix(con, name, log, positions) for name in log.loggers]

    skipped: dict[str, str] = {}
    cells = log.cells
    groups = np.unique(cells["position"]) if positions == "per-position" else [None]
    results: list[tuple[int | None, Estimate]] = []
    model_name = None
    for group in groups:
        rows = np.flatnonzero(cells["position"] == group) if group is not None else np.arange(len(cells["count"]))
        sub = {k: v[rows] for k, v in cells.items()}
        present, logger_index = np.unique(sub["logger_index"], return_inverse=True)
        n_k = np.bincount(logger_index, weights=sub["count"])

        def cannot_run(unable: Sequence[str], why: str) -> None:
            """Estimators that cannot run on these rows: refused when named, listed in `skipped` under 'all'."""
            if not everything:
                raise MvalError(f"--estimator {unable[0]}: {why}")
            for name in unable:
                skipped.setdefault(name, why if group is None else f"position {group}: {why}")

        blocked, pibar = _check_support(names, policy, target, logger_probs, log, sub, present, logger_index, n_k)
        for name, why in blocked.items():
            cannot_run([name], why)
        run = [n for n in names if n not in blocked]
        q_logged = q_target = None
        if any(n in NEEDS_MODEL for n in run):
            try:
                q_logged, q_target, model_name = _reward_model(log, sub, rows, target, folds, reward_model, seed)
            except MvalError as e:  # e.g. too few rows to cross-fit: the model-based estimators cannot run
                cannot_run([n for n in run if n in NEEDS_MODEL], str(e))
                run = [n for n in run if n not in NEEDS_MODEL]
        context, action = sub["context"], sub["action"]
        data = LoggedData(
            reward=sub["reward"], propensity=sub["propensity"], target_prob=target[context, action],
            logger=logger_index, pibar=None if pibar is None else pibar[context, action],
            q_logged=q_logged, q_target=q_target, count=sub["count"],
        )
        for name in progress(run, desc=f"evaluate {policy}"):
            try:
                results.append((group, make_estimator(name, clip, tau).estimate(data, n_boot, seed, level)))
            except MvalError as e:  # this estimator cannot run on these rows (e.g. too few per logger)
                cannot_run([name], str(e))
    return Evaluation(policy, log.loggers, positions, model_name, tuple(results), skipped)


def _check_support(
    names: list[str], policy: str, target: np.ndarray, logger_probs: list[np.ndarray | str], log: _Log,
    sub: dict[str, np.ndarray], present: np.ndarray, logger_index: np.ndarray, n_k: np.ndarray,
) -> tuple[dict[str, str], np.ndarray | None]:
    """Estimators that cannot run on these rows (name -> why), and pibar (C, K) when balanced ones (or dm's
    standard error) can use it.

    Own-weight estimators need every known logger to cover the target on the contexts it logged;
    balanced ones need every logger's policy at every context, and the mixture to cover the target.
    """
    blocked: dict[str, str] = {}
    for j, k in enumerate(present):
        if isinstance(logger_probs[k], str):
            continue
        problem = _overlap_problem(target, logger_probs[k], np.unique(sub["context"][logger_index == j]), log.keys)
        if problem:
            why = (f"no overlap: policy {policy!r} {problem} but logger {log.loggers[k]!r} never takes it; "
                   "use balanced-ips/balanced-dr with a logger that does, or dm")
            blocked.update({n: why for n in names if n in OWN_WEIGHT and n not in blocked})
    balanced = [n for n in names if n in BALANCED]
    if not balanced and "dm" not in names:  # dm's SE uses the mixture too where it is known (see estimators.DM)
        return blocked, None
    contexts = np.unique(sub["context"])
    unknown = [k for k in present if isinstance(logger_probs[k], str)]
    partial = [k for k in present if not isinstance(logger_probs[k], str) and np.isnan(logger_probs[k][contexts]).any()]
    if unknown or partial:
        k = (unknown or partial)[0]
        who, problem = log.loggers[k], logger_probs[k] if unknown else "has no known policy at every context"
        fix = "or use ips, snips or dr" if "action_probs" in problem else "or log action_probs"
        why = f"logger {who!r} {problem}; add its policy with `mval policy add STORE {who} FILE` (named like the logger) {fix}"
        return {**blocked, **{n: why for n in balanced}}, None
    for j, k in enumerate(present):
        mine = logger_index == j
        said = logger_probs[k][sub["context"][mine], sub["action"][mine]]
        if (said <= 0).any():
            row = np.argmax(said <= 0)
            where = context_name(log.keys[sub["context"][mine][row]])
            why = (f"logger {log.loggers[k]!r}'s policy gives probability 0 to action {sub['action'][mine][row]} at "
                   f"{where}, which its rows took; fix that logger's policy (`mval policy add --replace`)")
            return {**blocked, **{n: why for n in balanced}}, None
        why = check_logged_propensities(log.loggers[k], said, sub["propensity"][mine], sub["context"][mine],
                                        sub["action"][mine], lambda c: context_name(log.keys[c]))
        if why:
            return {**blocked, **{n: why for n in balanced}}, None
    pibar = sum(n * logger_probs[k] for n, k in zip(n_k, present)) / n_k.sum()
    problem = _overlap_problem(target, pibar, contexts, log.keys)
    if problem:
        why = f"no overlap: policy {policy!r} {problem} but no chosen logger takes it"
        return {**blocked, **{n: why for n in balanced}}, None
    return blocked, pibar


def _reward_model(
    log: _Log, sub: dict[str, np.ndarray], rows: np.ndarray, target: np.ndarray, folds: int,
    factory: Callable[[], object] | None, seed: int,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Cross-fitted q at the logged action and q_pi = sum_a pi q, for the cells `rows`."""
    context, action, fold = sub["context"], sub["action"], sub["fold"]
    if log.features is not None:
        q = cross_fit_model(log.features[rows], action, sub["reward"], log.n_actions, fold, folds, factory,
                            sub["count"], seed=seed)
        name = "cross-fitted model on features" if factory else "cross-fitted linear/logistic on features"
        return q[np.arange(len(action)), action], (q * target[context]).sum(axis=1), name
    table = cross_fit_means(context, action, sub["reward"], fold, len(log.keys), log.n_actions, folds, sub["count"])
    expected = (table * target[None]).sum(axis=-1)  # (folds, C)
    return table[fold, context, action], expected[fold, context], "cross-fitted context-action means"
