"""Reading user files (CSV, Parquet, JSON lines) as DuckDB relations or UTF-8 lines, and writing results out."""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Callable
from pathlib import Path

import duckdb

from mval.errors import MvalError
from mval.store import load_sql

READERS = {
    ".csv": "read_csv",
    ".tsv": "read_csv",
    ".parquet": "read_parquet",
    ".pq": "read_parquet",
    ".jsonl": "read_json",
    ".ndjson": "read_json",
    ".json": "read_json",
}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in chunks."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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


def table_sql(path: str | Path, columns: list[str] | None = None) -> str:
    """The table function over `path` (one `?` parameter: the path). With `columns` (the file's column
    names), CSV and JSON are read with every column as text, so that no value is rounded by types
    guessed from the first rows (DuckDB reads a 1.5 after 20,000 integers as 2); Parquet keeps its types."""
    reader = file_reader(path)
    if columns is None or reader == "read_parquet":
        return f"{reader}(?)"
    if reader == "read_csv":
        return "read_csv(?, all_varchar = true)"
    text = ", ".join("'" + c.replace("'", "''") + "': 'VARCHAR'" for c in columns)
    return f"read_json(?, columns = {{{text}}})"


def key_text_sql(path: str | Path, column: str, dtype: str) -> str:
    """SQL for an id column (a context or event id) as text; ids are compared as text, so a column of
    floats or fractional decimals is refused: its 1.0 would be another id than 1 in an integer or text
    file (a pandas integer column with a missing value is written as floats)."""
    scale = re.fullmatch(r"DECIMAL\(\d+,(\d+)\)", dtype)
    if dtype in ("FLOAT", "DOUBLE") or (scale is not None and int(scale.group(1)) > 0):
        raise MvalError(f"{path}: column {column} is {dtype}; ids are compared as text, so its 1.0 would not "
                        f"match 1: write it as integers or text (pandas: df[{column!r}].astype('Int64'))")
    return f"CAST({sql_ident(column)} AS TEXT)"


def sql_ident(name: str) -> str:
    """`name` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def relation_for_file(con: duckdb.DuckDBPyConnection, path: str | Path, as_text: bool = False) -> duckdb.DuckDBPyRelation:
    """A lazy relation over the file (nothing is read into Python); `as_text`: CSV and JSON columns as text."""
    path = Path(path)
    if not path.is_file():
        raise MvalError(f"{path}: no such file")
    reader = file_reader(path)
    try:
        rel = con.sql(f"SELECT * FROM {table_sql(path)}", params=[str(path)])
        rel.columns  # noqa: B018 - forces the reader to sniff the file now, so errors name it
        if as_text and reader != "read_parquet":
            rel = con.sql(f"SELECT * FROM {table_sql(path, rel.columns)}", params=[str(path)])
            rel.columns  # noqa: B018
    except duckdb.Error as e:
        raise MvalError(f"{path}: cannot read as {reader.removeprefix('read_')} ({str(e).splitlines()[0]})") from e
    check_unique_names(con, path, len(rel.columns))
    return rel


def _csv_header(con: duckdb.DuckDBPyConnection, path: Path, width: int) -> list[str | None]:
    """The names of a CSV file's header line as written and trimmed (None: unnamed, or no header line),
    read with the dialect that DuckDB detects for `read_csv(all_varchar = true)`, as the file is staged."""
    has_header, *dialect = con.execute(
        "SELECT HasHeader, SkipRows, Delimiter, Quote, Escape, Comment, NewLineDelimiter "
        "FROM sniff_csv(?, all_varchar = true)", [str(path)]).fetchall()[0]
    if not has_header:
        return [None] * width
    skip, delim, quote, escape, comment, new_line = ("" if v == "(empty)" else v for v in dialect)
    names = con.execute(load_sql("csv_header"), {
        "path": str(path), "columns": {f"c{i}": "VARCHAR" for i in range(width)}, "skip": skip, "delim": delim,
        "quote": quote, "escape": escape, "comment": comment, "new_line": new_line}).fetchall()[0]
    return [(name or "").strip() or None for name in names]


def _written_names(con: duckdb.DuckDBPyConnection, path: Path, width: int) -> list[str | None]:
    """The file's column names as written, before DuckDB renames a repeated one (action, action -> action,
    action_1): a CSV file's header line, a Parquet file's schema (its footer). JSON is not read here (all
    None): DuckDB's JSON reader refuses a key repeated in one object itself (see `_read_error`)."""
    reader = file_reader(path)
    if reader == "read_csv":
        return _csv_header(con, path, width)
    if reader == "read_parquet":
        import pyarrow.parquet as pq  # here, not at the top: it would cost every mval command ~0.1 s to start

        return pq.read_schema(path).names
    return [None] * width


def check_unique_names(con: duckdb.DuckDBPyConnection, path: Path, width: int) -> None:
    """Refuse a file that names two columns alike (case-insensitive, as DuckDB compares them): DuckDB reads
    the second `action` as `action_1`, and the first would be used without a word."""
    names = _written_names(con, path, width)
    first: dict[str, int] = {}
    for number, name in enumerate(names, 1):
        if name is None:
            continue
        earlier = first.setdefault(name.lower(), number)
        if earlier != number:
            spelled = names[earlier - 1]
            case = "" if spelled == name else f", the first spelled {spelled!r}; names are case-insensitive"
            raise MvalError(f"{path}: column {name!r} appears twice (columns {earlier} and {number}{case}); "
                            "rename or drop one of them")


def check_output_path(path: str | Path, suffixes: tuple[str, ...] | None = None, flag: str = "-o") -> Path:
    """Refuse, before any work is done, an output file whose folder does not exist, that cannot be written
    or whose type is unknown."""
    path = Path(path)
    try:
        if not path.parent.is_dir():
            raise MvalError(f"{flag} {path}: folder {path.parent} does not exist; create it first")
        if path.is_dir():
            raise MvalError(f"{flag} {path}: is a folder; give a file name")
        exists = path.exists()
    except OSError as e:  # e.g. a name longer than the file system takes
        raise MvalError(f"{flag} {path}: {e.strerror or e}; choose another path") from e
    if not os.access(path if exists else path.parent, os.W_OK):
        raise MvalError(f"{flag} {path}: {'file' if exists else 'folder ' + str(path.parent)} is not writable; "
                        "choose another path or fix its permissions")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise MvalError(f"{flag} {path}: unknown file type {path.suffix or '(none)'}; use {', '.join(suffixes)}")
    return path


def write_output(path: str | Path, write: Callable[[io.BytesIO], object]) -> None:
    """Write a result file: `write` fills a buffer, then the bytes go to `path` in one call, so that a
    failure (full disk, permissions) is one error naming the file, whichever library made the bytes."""
    buffer = io.BytesIO()
    write(buffer)
    try:
        Path(path).write_bytes(buffer.getvalue())
    except OSError as e:
        raise MvalError(f"{path}: cannot write ({e.strerror or e}); check free space and permissions") from e


def output_file_option(ctx, param, value: str | None) -> str | None:
    """A click callback: check an output file option (folder exists, not a folder) while parsing, before any work."""
    if value is not None:
        check_output_path(value, flag=max(param.opts, key=len))
    return value
