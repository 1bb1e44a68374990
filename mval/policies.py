"""Policies in the store: long format (policy, context_id, action, prob), read as dense matrices.

A policy with `context_id` NULL is context-free: the same distribution for every context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from mval.errors import MvalError
from mval.files import FLOAT_ID, bad_rows, file_reader, key_text_sql, read_error, relation_for_file
from mval.store import load_sql, transaction

POLICY_COLUMNS = ("context_id", "action", "prob")


@dataclass(frozen=True)
class PolicyTable:
    """pi(a | x) as a dense matrix: `probs[i, a]` for context `context_ids[i]` (None: context-free)."""

    name: str
    context_ids: np.ndarray | None
    probs: np.ndarray

    @property
    def n_actions(self) -> int:
        return self.probs.shape[1]

    def probs_for(self, context_ids: np.ndarray) -> np.ndarray:
        """Rows of pi for the given contexts, shape (len(context_ids), n_actions)."""
        if self.context_ids is None:
            return np.broadcast_to(self.probs[0], (len(context_ids), self.n_actions))
        order = np.argsort(self.context_ids)
        sorted_ids = self.context_ids[order]
        pos = np.searchsorted(sorted_ids, context_ids)
        pos = np.clip(pos, 0, len(sorted_ids) - 1)
        found = sorted_ids[pos] == context_ids
        if not found.all():
            missing = str(context_ids[~found][0])
            raise MvalError(
                f"policy {self.name!r} has no row for context_id {missing!r}; "
                "add that context to the policy file (or give a context-free policy with an empty context_id)"
            )
        return self.probs[order[pos]]



def policy_frame(context_ids: np.ndarray | None, probs: np.ndarray) -> pl.DataFrame:
    """A (contexts x actions) matrix in the long format of the `policies` table: context_id (null:
    the same distribution in every context), action, prob."""
    n, k = probs.shape
    ids = pl.Series("context_id", [None] * n if context_ids is None else context_ids, dtype=pl.Utf8)
    return pl.DataFrame({
        "context_id": ids.gather(np.repeat(np.arange(n), k)),
        "action": np.tile(np.arange(k, dtype=np.int32), n),
        "prob": probs.ravel(),
    })


def add_policy(con: duckdb.DuckDBPyConnection, name: str, path: str | Path, replace: bool = False) -> int:
    """Validate and store a policy file (CSV/Parquet/JSON with context_id, action, prob); returns rows."""
    if not name.strip():
        raise MvalError("a policy needs a non-empty NAME (e.g. `mval policy add STORE new-ranker FILE`)")
    rel = relation_for_file(con, path, as_text=True)
    missing = [c for c in POLICY_COLUMNS if c not in rel.columns]
    if missing:
        cased = [c for c in rel.columns if c.lower() in missing]
        hint = f" (names are case-sensitive: rename {', '.join(map(repr, cased))})" if cased else ""
        raise MvalError(f"{path}: missing column(s) {', '.join(missing)}; a policy file has columns context_id, "
                        f"action, prob{hint}")
    context = key_text_sql(path, "context_id", str(rel.types[rel.columns.index("context_id")]))
    con.register("staged_policy_raw", rel)
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE staged_policy AS SELECT nullif({context}, '') AS context_id, "
            "TRY_CAST(action AS DOUBLE) AS action, TRY_CAST(prob AS DOUBLE) AS prob, "
            "row_number() OVER () AS _row, nullif(trim(CAST(action AS TEXT)), '') AS _action_text, "
            "nullif(trim(CAST(prob AS TEXT)), '') AS _prob_text FROM staged_policy_raw"
        )
    except duckdb.Error as e:
        raise read_error(path, e, "cannot read policy") from e
    finally:
        con.unregister("staged_policy_raw")
    if file_reader(path) != "read_parquet":  # CSV/JSON ids are the file's text: pandas writes 1 as 1.0
        con.execute(load_sql("float_ids"))
        row, value, count = con.execute("SELECT min(_row), arg_min(context_id, _row), count(*) FROM staged_policy "
                                        "WHERE float_written_id(context_id)").fetchall()[0]
        if count:
            must_be, fix = FLOAT_ID
            raise bad_rows(path, row, "context_id", must_be, value, count, fix.format(column="context_id"))
    problems = con.execute(load_sql("policy_validate")).fetchall()
    if problems:
        problem, context_id, found = problems[0]
        where = "" if context_id is None else f"context_id {context_id!r}: "
        raise MvalError(f"{path}: {where}{problem}, found {found}; fix the file and retry")
    with transaction(con):
        check_new_name(con, name, replace, "another name")
        con.execute("DELETE FROM policies WHERE policy = ?", [name])
        con.execute(
            "INSERT INTO policies SELECT ?, context_id, CAST(action AS INTEGER), prob FROM staged_policy", [name]
        )
        rows = con.execute("SELECT count(*) FROM staged_policy").fetchall()[0][0]
    con.execute("DROP TABLE staged_policy")
    return rows


def check_new_name(con: duckdb.DuckDBPyConnection, name: str, replace: bool, pick: str) -> None:
    """Refuse to overwrite policy `name` unless `replace`; `pick` says how to give another name."""
    if not replace and name in policy_names(con):
        raise MvalError(f"policy {name!r} already exists in the store; pick {pick} or pass --replace")


def policy_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("SELECT DISTINCT policy FROM policies ORDER BY 1").fetchall()]


def load_policy(con: duckdb.DuckDBPyConnection, name: str, n_actions: int | None = None) -> PolicyTable:
    """Read policy `name` into a dense matrix; missing (context, action) pairs get probability 0."""
    df = con.sql(
        "SELECT context_id, action, prob FROM policies WHERE policy = ? ORDER BY context_id, action",
        params=[name],
    ).pl()
    if df.height == 0:
        known = ", ".join(policy_names(con)) or "none"
        raise MvalError(f"no policy named {name!r} in the store (known: {known}); add it with `mval policy add`")
    if n_actions is not None:  # actions the log never has may be listed, with probability 0
        df = df.filter((pl.col("action") < n_actions) | (pl.col("prob") > 0))
    k = int(df["action"].max()) + 1
    if n_actions is not None:
        if k > n_actions:
            raise MvalError(f"policy {name!r} uses action {k - 1} but the log has {n_actions} actions (0..{n_actions - 1})")
        k = n_actions
    if df["context_id"].null_count() == df.height:
        probs = np.zeros((1, k))
        probs[0, df["action"].to_numpy()] = df["prob"].to_numpy()
        return PolicyTable(name, None, probs)
    if df["context_id"].null_count():
        raise MvalError(f"policy {name!r} mixes rows with and without context_id; give every row a context_id")
    contexts, index = np.unique(df["context_id"].to_numpy().astype(str), return_inverse=True)
    probs = np.zeros((len(contexts), k))
    probs[index, df["action"].to_numpy()] = df["prob"].to_numpy()
    return PolicyTable(name, contexts, probs)


def context_name(key: str | None) -> str:
    """How messages name a context key (None: the rows without context_id, i.e. a context-free policy's one)."""
    return "every context" if key is None else f"context {key!r}"


def check_logged_propensities(logger: str, said: np.ndarray, logged: np.ndarray, contexts: np.ndarray,
                              actions: np.ndarray, context_name: Callable[[int], str]) -> str | None:
    """Why the policy table named like `logger` cannot be the policy that logged its rows (or cells): the
    first whose logged propensity differs from the table's probability `said` of its action by more than
    1e-3 + 1e-2 p (propensities rounded to 3 digits pass); None when they agree. Rows are at context indices
    `contexts`, which `context_name` names. Balanced estimators and `mval design` weight by the table, IPS
    by the propensities: they would disagree without a word."""
    off = np.abs(said - logged) > 1e-3 + 1e-2 * logged
    if not off.any():
        return None
    i = int(np.argmax(off))
    pairs = len(np.unique(np.stack([contexts[off], actions[off]]), axis=1).T)
    more = f"; {pairs - 1} more context-action pair{'s' if pairs > 2 else ''} like it" if pairs > 1 else ""
    return (f"logger {logger!r}'s policy gives action {actions[i]} at {context_name(int(contexts[i]))} probability "
            f"{said[i]:.4g}, but its rows logged propensity {logged[i]:.4g} there{more}; the policy named like a "
            "logger must be the one that logged its rows: fix the policy (`mval policy add --replace`) or the "
            "logged propensities")
