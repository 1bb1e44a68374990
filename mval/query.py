"""Read-only SQL over a store, with results handed over as polars frames or written by DuckDB."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl

from mval.errors import MvalError
from mval.files import sql_ident
from mval.store import open_store

# DuckDB types shown as DuckDB's text for them: polars cannot import INTERVAL and UNION (a traceback), takes
# BLOB, BIT and BIGNUM as raw bytes (printed as b'\xaa', refused by csv) and TIME WITH TIME ZONE as a time
# without its offset.
AS_TEXT = {"interval", "union", "blob", "bit", "bignum", "time with time zone", "uhugeint"}  # uhugeint >= 2^127: < 0
# seconds and milliseconds: polars' conversion wraps DuckDB's infinity around (1969-12-31 23:59:59); as
# microseconds (no precision lost) infinity arrives as such and is shown as text (`beyond_python`)
COARSE_TIMESTAMPS = {"timestamp_s", "timestamp_ms"}
# Dates that Python's datetime holds (days from 1970-01-01 to 0001-01-01 and to 9999-12-31): json prints dates
# through Python, and polars' table panics on DuckDB's infinite dates; beyond them a column is shown as text.
FIRST_DAY, LAST_DAY = -719_162, 2_932_896
PER_DAY = {"ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


def shown_type(dtype: duckdb.DuckDBPyType) -> str | None:
    """The type to cast a column of type `dtype` to so that polars and every output format take it, or None
    when it is taken as it is. Nested types keep their shape with such parts as text; a map's keys become
    text (csv writes a map as a JSON object)."""
    if dtype.id in AS_TEXT:
        return "VARCHAR"
    if dtype.id in COARSE_TIMESTAMPS:
        return "TIMESTAMP"
    if dtype.id in ("list", "array"):
        children = dict(dtype.children)  # child, and an array's size
        inner = shown_type(children["child"])
        if inner is None:
            return None
        return f"{inner}[]" if dtype.id == "list" else f"{inner}[{children['size']}]"
    if dtype.id == "struct":
        fields = [(name, field, shown_type(field)) for name, field in dtype.children]
        if all(shown is None for *_, shown in fields):
            return None
        return "STRUCT(" + ", ".join(f"{sql_ident(name)} {shown or field}" for name, field, shown in fields) + ")"
    if dtype.id == "map":
        (_, key), (_, value) = dtype.children
        shown_value = shown_type(value)
        if key.id == "varchar" and shown_value is None:
            return None
        return f"MAP(VARCHAR, {shown_value or value})"
    return None


def beyond_python(column: pl.Series) -> bool:
    """Whether a date or timestamp column holds a date outside years 1 to 9999 (DuckDB's infinity included)."""
    if column.dtype == pl.Date:
        per_day = 1
    elif isinstance(column.dtype, pl.Datetime):
        per_day = PER_DAY[column.dtype.time_unit]
    else:
        return False
    physical = column.to_physical()  # days or time units since 1970: no date is made, none can be out of range
    low, high = physical.min(), physical.max()
    return low is not None and (low < FIRST_DAY * per_day or high >= (LAST_DAY + 1) * per_day)


def as_shown(rel: duckdb.DuckDBPyRelation, as_text: frozenset[int] = frozenset()) -> duckdb.DuckDBPyRelation:
    """`rel` with the columns whose types polars or an output format cannot take (see `shown_type`), and the
    columns numbered in `as_text` (from 0), cast to text in DuckDB; `rel` itself when there are none."""
    casts = ["VARCHAR" if i in as_text else shown_type(dtype) for i, dtype in enumerate(rel.types)]
    if all(cast is None for cast in casts):
        return rel
    return rel.project(", ".join(  # by position: a result may repeat a column name
        (f"#{i}" if cast is None else f"CAST(#{i} AS {cast})") + f" AS {sql_ident(name)}"
        for i, (name, cast) in enumerate(zip(rel.columns, casts, strict=True), 1)))


def run_query(store: str | Path, sql: str) -> pl.DataFrame:
    """Run `sql` on a read-only connection to `store` and return the result as a polars frame."""
    with open_store(store, read_only=True) as con:
        try:
            rel = con.sql(sql)
            if rel is None:
                raise MvalError("the statement returned no rows to show; mval query runs SELECT-like statements")
            frame = as_shown(rel).pl()
            beyond = frozenset(i for i, column in enumerate(frame.iter_columns()) if beyond_python(column))
            return as_shown(rel, beyond).pl() if beyond else frame  # rare: the query runs again
        except duckdb.Error as e:
            first = str(e).splitlines()[0]
            if "read-only" in first.lower():
                raise MvalError(f"{store}: mval query opens the store read-only; it cannot change it ({first})") from e
            raise MvalError(f"query failed: {first}; check table and column names with `mval query STORE \"SHOW ALL TABLES\"`") from e
