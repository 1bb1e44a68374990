"""The DuckDB store: create, open (read-only or for writing), and run the packaged SQL.

A store is one DuckDB file made by `init_store`. Its schema lives in `sql/schema.sql`;
`mval_meta.schema_version` says which version built it so that later versions can migrate.
Each version's additions reach an older store when it is opened for writing, in the same transaction
as the command's first write (a refused command leaves the older store as it was), and as temporary
views when it is opened read-only (the file is left as it was):
- 2: `event_cells` (identical events counted once, per ingest), counted from the store's events;
- 3: `examples.record` (each example's input JSON record, which `mval curate` writes back), NULL for
  examples added before it (curate then rebuilds their records from the fields); `events.source_event_id`
  (the log file's own event id), NULL for events added before it (they are never matched as duplicates);
- 4: `ingests.feature_columns` (the file columns each ingest gathered into `features`, which later ingests
  must match), NULL for ingests before it (they are compared by vector length only); `ingest_log` shows it;
- 5: `ingests.source_columns` (the file column each store column was read from), NULL for ingests before it
  (the same file again is then compared by format and feature columns only).
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

SCHEMA_VERSION = 5
# Connections (by id) holding an uncommitted upgrade that their first `transaction` commits with its writes.
_PENDING_UPGRADE: set[int] = set()
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
    if not str(path).strip():
        raise MvalError("give the store a file path, e.g. `mval init logs.duckdb`")
    path = Path(path)
    if path.exists():
        raise MvalError(f"{path}: already exists; choose a new path or delete the file first")
    if not path.parent.exists():
        raise MvalError(f"{path}: folder {path.parent} does not exist; create it first")
    con = _connect(path, read_only=False)
    try:
        con.execute("BEGIN")
        con.execute(load_sql("schema"))
        con.execute(load_sql("event_cells_table"))
        con.execute(load_sql("views"))
        _create_ingest_log(con, temporary=False)
        con.execute("INSERT INTO mval_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        con.execute("COMMIT")
    except Exception:
        con.close()
        path.unlink(missing_ok=True)
        raise
    con.close()
    return path


def add_event_cells(con: duckdb.DuckDBPyConnection, ingest_id: int | None) -> None:
    """Count the events of `ingest_id` (of every ingest: None) into `event_cells` (sql/event_cells.sql)."""
    con.execute(load_sql("event_cells"))
    con.execute("INSERT INTO event_cells SELECT * FROM events_counted WHERE ? IS NULL OR ingest_id = ?",
                [ingest_id, ingest_id])


def check_counted(events: int, counted: int) -> None:
    """Refuse when `event_cells` count fewer or more rows than the chosen events hold: rows were
    written into `events` without `mval ingest`, and estimates would silently leave them out."""
    if events != counted:
        raise MvalError(f"the store's event_cells count {counted:.0f} of the chosen {events} events: rows were "
                        "written into `events` around `mval ingest`; re-ingest them with `mval ingest`")


def _create_ingest_log(con: duckdb.DuckDBPyConnection, temporary: bool) -> None:
    """The view `ingest_log` (sql/ingest_log.sql), or its temporary stand-in over an older store opened read-only."""
    con.execute(f"CREATE OR REPLACE {'TEMP ' if temporary else ''}VIEW ingest_log AS {load_sql('ingest_log')}")


# Columns that versions 3 to 5 added to tables of an older store, in the order they were added.
_ADDED_COLUMNS = {
    "examples": [("record", "TEXT")],
    "events": [("source_event_id", "TEXT")],
    "ingests": [("feature_columns", "TEXT[]"), ("source_columns", "MAP(TEXT, TEXT)")],
}


def _upgrade(con: duckdb.DuckDBPyConnection, path: Path, version: int, read_only: bool) -> None:
    """Bring an older store to SCHEMA_VERSION: temporary views when read-only, else an open transaction
    that the connection's first `transaction` (or a clean exit from `open_store`) commits."""
    if version >= SCHEMA_VERSION:
        return
    try:
        if read_only:
            if version < 2:
                con.execute(load_sql("event_cells"))
                con.execute("CREATE TEMP VIEW event_cells AS SELECT * FROM events_counted")
            catalog = con.execute("SELECT current_database()").fetchall()[0][0].replace('"', '""')
            for table, columns in _ADDED_COLUMNS.items():
                added = ", ".join(f"NULL::{kind} AS {column}" for column, kind in columns
                                  if not _has_column(con, table, column))
                if added:
                    con.execute(f'CREATE TEMP VIEW {table} AS SELECT *, {added} FROM "{catalog}".main.{table}')
            if version < 4:
                _create_ingest_log(con, temporary=True)
            return
        con.execute("BEGIN TRANSACTION")
        try:
            if version < 2:
                con.execute(load_sql("event_cells_table"))
                add_event_cells(con, None)
            for table, columns in _ADDED_COLUMNS.items():
                for column, kind in columns:
                    con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
            _create_ingest_log(con, temporary=False)
            con.execute("UPDATE mval_meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION)])
        except BaseException:
            con.execute("ROLLBACK")
            raise
        _PENDING_UPGRADE.add(id(con))
    except duckdb.Error as e:
        raise MvalError(f"{path}: cannot upgrade the store from schema version {version} to {SCHEMA_VERSION} "
                        f"({str(e).splitlines()[0]}); store unchanged. A table of your own named like one of "
                        "mval's (event_cells), if you made one, must be renamed first") from e


def _has_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    return con.execute("SELECT count(*) FROM duckdb_columns() WHERE schema_name = 'main' AND table_name = ? "
                       "AND column_name = ?", [table, column]).fetchall()[0][0] > 0


def _check_is_store(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """The store's schema version; refuse files that are not stores or come from a newer mval."""
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
    return int(rows[0][0])


@contextmanager
def open_store(path: str | Path, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """One connection to an existing store; read-only for queries. Closed on exit."""
    path = Path(path)
    if not path.is_file():
        raise MvalError(f"{path}: no such store; create it with `mval init {path}`")
    con = _connect(path, read_only=read_only)
    try:
        _upgrade(con, path, _check_is_store(con, path), read_only)
        yield con
        if id(con) in _PENDING_UPGRADE:
            con.execute("COMMIT")  # a command that wrote nothing through `transaction` still upgrades
    finally:
        _PENDING_UPGRADE.discard(id(con))
        con.close()  # rolls back an upgrade left pending by a refused command


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All-or-nothing: commit if the block succeeds, roll back (store unchanged) if it raises. The first
    one on a connection that opened an older store commits (or rolls back) its upgrade with it."""
    pending = id(con) in _PENDING_UPGRADE
    if not pending:
        con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        _PENDING_UPGRADE.discard(id(con))
        con.execute("ROLLBACK")
        raise
    _PENDING_UPGRADE.discard(id(con))
    con.execute("COMMIT")
