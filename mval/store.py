"""The DuckDB store: create, open (read-only or for writing), and run the packaged SQL.

A store is one DuckDB file made by `init_store`. Its schema lives in `sql/schema.sql`;
`mval_meta.schema_version` says which version built it so that later versions can migrate.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib import resources
from pathlib import Path

import duckdb

from mval.errors import MvalError, StoreBusyError

SCHEMA_VERSION = 1
_LOCK_PID = re.compile(r"PID (\d+)")


@cache
def load_sql(name: str) -> str:
    """Text of `sql/<name>.sql`: installed as `mval/sql/` in a wheel, or `sql/` in a checkout."""
    installed = resources.files("mval").joinpath("sql", f"{name}.sql")
    if installed.is_file():
        return installed.read_text()
    return (Path(__file__).resolve().parent.parent / "sql" / f"{name}.sql").read_text()


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as e:
        text = str(e)
        if "not a valid DuckDB database" in text:
            raise MvalError(f"{path}: not a DuckDB database; give the path of a store made by `mval init`") from e
        if "lock" in text.lower():
            pid = _LOCK_PID.search(text)
            who = f"process {pid.group(1)}" if pid else "another process"
            raise StoreBusyError(
                f"{path}: store busy, {who} holds it for writing; wait for it to finish and retry"
            ) from e
        raise MvalError(f"{path}: cannot open store ({text.splitlines()[0]})") from e
    except duckdb.Error as e:
        raise MvalError(
            f"{path}: not a DuckDB database ({str(e).splitlines()[0]}); "
            "give the path of a store made by `mval init`"
        ) from e


def init_store(path: str | Path) -> Path:
    """Create a new store at `path` with the packaged schema (refuses to overwrite)."""
    path = Path(path)
    if path.exists():
        raise MvalError(f"{path}: already exists; choose a new path or delete the file first")
    if not path.parent.exists():
        raise MvalError(f"{path}: folder {path.parent} does not exist; create it first")
    con = _connect(path, read_only=False)
    try:
        con.execute("BEGIN")
        con.execute(load_sql("schema"))
        con.execute(load_sql("views"))
        con.execute("INSERT INTO mval_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        con.execute("COMMIT")
    except Exception:
        con.close()
        path.unlink(missing_ok=True)
        raise
    con.close()
    return path


def _check_is_store(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    try:
        rows = con.execute("SELECT value FROM mval_meta WHERE key = 'schema_version'").fetchall()
    except duckdb.CatalogException:
        rows = []
    if not rows:
        raise MvalError(f"{path}: not an mval store (no mval_meta table); create one with `mval init {path}`")
    if int(rows[0][0]) > SCHEMA_VERSION:
        raise MvalError(
            f"{path}: store schema version {rows[0][0]} is newer than this mval ({SCHEMA_VERSION}); upgrade mval"
        )


@contextmanager
def open_store(path: str | Path, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """One connection to an existing store; read-only for queries. Closed on exit."""
    path = Path(path)
    if not path.is_file():
        raise MvalError(f"{path}: no such store; create it with `mval init {path}`")
    con = _connect(path, read_only=read_only)
    try:
        _check_is_store(con, path)
        yield con
    finally:
        con.close()


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All-or-nothing: commit if the block succeeds, roll back (store unchanged) if it raises."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
