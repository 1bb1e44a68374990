"""Read-only SQL over a store, with results handed over as polars frames or written by DuckDB."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl

from mval.errors import MvalError
from mval.store import open_store


def run_query(store: str | Path, sql: str) -> pl.DataFrame:
    """Run `sql` on a read-only connection to `store` and return the result as a polars frame."""
    with open_store(store, read_only=True) as con:
        try:
            rel = con.sql(sql)
            if rel is None:
                raise MvalError("the statement returned no rows to show; mval query runs SELECT-like statements")
            return rel.pl()
        except duckdb.Error as e:
            first = str(e).splitlines()[0]
            if "read-only" in first.lower():
                raise MvalError(f"{store}: mval query opens the store read-only; it cannot change it ({first})") from e
            raise MvalError(f"query failed: {first}; check table and column names with `mval query STORE \"SHOW ALL TABLES\"`") from e
