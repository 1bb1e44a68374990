"""Read-only SQL over a store, with results handed over as polars frames or written by DuckDB."""

from __future__ import annotations

from collections.abc import Iterator
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
# microseconds (no precision lost) infinity arrives as such and is shown as text (`beyond`)
COARSE_TIMESTAMPS = {"timestamp_s", "timestamp_ms"}
# Types whose values may lie beyond what polars and the output formats hold; a column (or a list, struct or
# map) holding such a value shows that type's values as DuckDB's text (see `beyond`), its others as they are.
DATES = frozenset({"date"})
TIMESTAMPS = frozenset({"timestamp", "timestamp_s", "timestamp_ms", "timestamp_ns", "timestamp with time zone"})
HUGEINTS = frozenset({"hugeint"})  # polars' Decimal(38, 0) prints 39 digits, but parquet's decimal holds 38
TIMES = frozenset({"time", "time_ns"})  # polars takes DuckDB's 24:00:00 as null
# Dates that Python's datetime holds (days from 1970-01-01 to 0001-01-01 and to 9999-12-31): polars' table
# panics on DuckDB's infinite dates, and readers of a parquet file make its dates Python dates. DuckDB's
# infinity is the largest number of its type, -infinity its negative: among nanosecond timestamps (years
# 1677 to 2262) they are the only values beyond.
FIRST_DAY, LAST_DAY = -719_162, 2_932_896
PER_DAY = {"ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}
INFINITY = 2**63 - 1
DECIMAL_MAX = 10**38 - 1


def shown_type(dtype: duckdb.DuckDBPyType, as_text: frozenset[str] = frozenset()) -> str | None:
    """The type to cast a column of type `dtype` to so that polars and every output format take it, with the
    types named in `as_text` as text too, or None when it is taken as it is. Nested types keep their shape
    with such parts as text; a map's keys become text (csv writes a map as a JSON object)."""
    if dtype.id in AS_TEXT or dtype.id in as_text:
        return "VARCHAR"
    if dtype.id in COARSE_TIMESTAMPS:
        return "TIMESTAMP"
    if dtype.id in ("list", "array"):
        children = dict(dtype.children)  # child, and an array's size
        inner = shown_type(children["child"], as_text)
        if inner is None:
            return None
        return f"{inner}[]" if dtype.id == "list" else f"{inner}[{children['size']}]"
    if dtype.id == "struct":
        fields = [(name, field, shown_type(field, as_text)) for name, field in dtype.children]
        if all(shown is None for *_, shown in fields):
            return None
        return "STRUCT(" + ", ".join(f"{sql_ident(name)} {shown or field}" for name, field, shown in fields) + ")"
    if dtype.id == "map":
        (_, key), (_, value) = dtype.children
        shown_value = shown_type(value, as_text)
        if key.id == "varchar" and shown_value is None:
            return None
        return f"MAP(VARCHAR, {shown_value or value})"
    return None


def leaves(column: pl.Series) -> Iterator[pl.Series]:
    """The values of `column` that are not lists, structs or maps: one series per place in its nesting (a
    list's elements, each field of a struct, a map's keys and its values), made without Python objects."""
    column, dtype = column.rename("leaf"), column.dtype  # polars reads a name like "^a$" as a pattern
    if isinstance(dtype, pl.List):
        yield from leaves(column.list.explode(empty_as_null=False, keep_nulls=False))
    elif isinstance(dtype, pl.Array):
        yield from leaves(column.arr.explode(empty_as_null=False, keep_nulls=False))
    elif isinstance(dtype, pl.Map):
        yield from leaves(column.map.keys())
        yield from leaves(column.map.values())
    elif isinstance(dtype, pl.Struct):
        for field in column.struct.unnest().iter_columns():
            yield from leaves(field)
    else:
        yield column


def beyond(column: pl.Series) -> frozenset[str]:
    """The types (of `DATES`, `TIMESTAMPS`, `HUGEINTS`) of which `column` holds, at any depth, a value that
    the output formats cannot take: a date outside years 1 to 9999 (DuckDB's infinity included), a HUGEINT
    of 39 digits."""
    found: set[str] = set()
    for leaf in leaves(column):
        if leaf.dtype == pl.Date:
            low, high, kinds = FIRST_DAY, LAST_DAY, DATES
        elif isinstance(leaf.dtype, pl.Datetime):
            per_day = PER_DAY[leaf.dtype.time_unit]
            low, high = max(FIRST_DAY * per_day, 1 - INFINITY), min((LAST_DAY + 1) * per_day, INFINITY) - 1
            kinds = TIMESTAMPS
        elif leaf.dtype == pl.Decimal(38, 0):  # a HUGEINT (or a DECIMAL(38, 0), which never has 39 digits)
            low, high, kinds = -DECIMAL_MAX, DECIMAL_MAX, HUGEINTS
        else:
            continue
        physical = leaf.to_physical()  # days, time units since 1970 or the integer: no date is made, none fails
        least, most = physical.min(), physical.max()
        if least is not None and (least < low or most > high):
            found |= kinds
    return frozenset(found)


def null_times(column: pl.Series) -> bool:
    """Whether `column` holds a null time (at any depth): DuckDB's 24:00:00 arrives in polars as null."""
    return any(leaf.dtype == pl.Time and leaf.null_count() > 0 for leaf in leaves(column))


def as_shown(rel: duckdb.DuckDBPyRelation, as_text: dict[int, frozenset[str]] | None = None) -> duckdb.DuckDBPyRelation:
    """`rel` with the columns whose types polars or an output format cannot take (see `shown_type`), and in
    column i (from 0) the types named in `as_text[i]`, cast to text in DuckDB; `rel` itself when there are none."""
    as_text = as_text or {}
    casts = [shown_type(dtype, as_text.get(i, frozenset())) for i, dtype in enumerate(rel.types)]
    if all(cast is None for cast in casts):
        return rel
    return rel.project(", ".join(  # by position: a result may repeat a column name
        (f"#{i}" if cast is None else f"CAST(#{i} AS {cast})") + f" AS {sql_ident(name)}"
        for i, (name, cast) in enumerate(zip(rel.columns, casts, strict=True), 1)))


def text_columns(rel: duckdb.DuckDBPyRelation, frame: pl.DataFrame, fmt: str) -> dict[int, frozenset[str]]:
    """For each column of `frame` (`rel` as fetched) that holds values polars or format `fmt` cannot take as
    they are, the types in it to show as text (see `beyond`; 39-digit HUGEINTs only for parquet, whose
    decimals hold 38: the other formats print their digits). A null time is looked up in DuckDB."""
    keep = frozenset() if fmt == "parquet" else HUGEINTS
    as_text = {i: kinds - keep for i, column in enumerate(frame.iter_columns()) if (kinds := beyond(column)) - keep}
    times = [i for i, column in enumerate(frame.iter_columns()) if null_times(column)]
    if times:  # rare: the query runs again; a time's text is 24:00:00 wherever it is nested
        found = rel.aggregate(", ".join(f"bool_or(contains(CAST(#{i + 1} AS VARCHAR), '24:00:00'))" for i in times))
        for i, midnight in zip(times, found.fetchall()[0], strict=True):
            if midnight:
                as_text[i] = as_text.get(i, frozenset()) | TIMES
    return as_text


def run_query(store: str | Path, sql: str, fmt: str = "table") -> pl.DataFrame:
    """Run `sql` on a read-only connection to `store` and return the result as a polars frame for output
    format `fmt`."""
    with open_store(store, read_only=True) as con:
        try:
            rel = con.sql(sql)
            if rel is None:
                raise MvalError("the statement returned no rows to show; mval query runs SELECT-like statements")
            frame = as_shown(rel).pl()
            as_text = text_columns(rel, frame, fmt)
            return as_shown(rel, as_text).pl() if as_text else frame  # rare: the query runs again
        except duckdb.Error as e:
            first = str(e).splitlines()[0]
            if "read-only" in first.lower():
                raise MvalError(f"{store}: mval query opens the store read-only; it cannot change it ({first})") from e
            raise MvalError(f"query failed: {first}; check table and column names with `mval query STORE \"SHOW ALL TABLES\"`") from e
