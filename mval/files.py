"""Reading user files (CSV, Parquet, JSON lines) as DuckDB relations or UTF-8 lines, and writing results out."""

from __future__ import annotations

from pathlib import Path

import duckdb

from mval.errors import MvalError

READERS = {
    ".csv": "read_csv",
    ".tsv": "read_csv",
    ".parquet": "read_parquet",
    ".pq": "read_parquet",
    ".jsonl": "read_json",
    ".ndjson": "read_json",
    ".json": "read_json",
}


def utf8_line(raw: bytes, where: str) -> str:
    """One line of a text file (`where`: "FILE line N"), decoded as UTF-8 or refused naming the byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MvalError(f"{where}: not UTF-8 text (byte {e.start + 1}); save the file as UTF-8") from e


def file_reader(path: str | Path) -> str:
    """The DuckDB table function that reads `path`, chosen by its extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in READERS:
        raise MvalError(f"{path}: unknown file type {suffix or '(none)'}; use .csv, .parquet or .jsonl")
    return READERS[suffix]


def relation_for_file(con: duckdb.DuckDBPyConnection, path: str | Path) -> duckdb.DuckDBPyRelation:
    """A lazy relation over the file (nothing is read into Python)."""
    path = Path(path)
    if not path.is_file():
        raise MvalError(f"{path}: no such file")
    reader = file_reader(path)
    try:
        rel = con.sql(f"SELECT * FROM {reader}(?)", params=[str(path)])
        rel.columns  # noqa: B018 - forces the reader to sniff the file now, so errors name it
    except duckdb.Error as e:
        raise MvalError(f"{path}: cannot read as {reader.removeprefix('read_')} ({str(e).splitlines()[0]})") from e
    return rel
