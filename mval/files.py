"""Reading user files (CSV, Parquet, JSON lines) as DuckDB relations or UTF-8 lines, and writing results out."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from mval.errors import MvalError
from mval.store import load_sql

if TYPE_CHECKING:
    import polars as pl

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


# A CSV or JSON id written as a whole float (1.0; the rule: sql/float_ids.sql): what it must be, and the fix
# ({column!r}: the file's column). Logs (`mval ingest`) and policies (`mval policy add`) say the same.
FLOAT_ID = ("an integer or text id, not a float",
            "ids are compared as text, so 1.0 would not match the 1 of another file: write the column as "
            "integers or text (pandas: df[{column!r}].astype('Int64') before writing)")


def more_rows(count: int) -> str:
    """` (N more rows like it)` after the first of `count` rows that break one rule, or nothing for one row."""
    return f" ({count - 1} more rows like it)" if count > 1 else ""


def bad_rows(path: str | Path, row: int, column: str, must_be: str, value: object, count: int, fix: str) -> MvalError:
    """`FILE: row R, column C: must be M, found V (N more rows like it); FIX`: the first of `count` rows whose
    `column` breaks a rule, its `value` as the file writes it (None: missing)."""
    found = "found missing" if value is None else f"found {value}"
    return MvalError(f"{path}: row {row}, column {column}: must be {must_be}, {found}{more_rows(count)}; {fix}")


def key_text_sql(path: str | Path, column: str, dtype: str) -> str:
    """SQL for an id column (a context or event id) as text; ids are compared as text, so a column of
    floats or fractional decimals is refused: its 1.0 would be another id than 1 in an integer or text
    file (a pandas integer column with a missing value is written as floats); so is a nested column."""
    if dtype.startswith(("STRUCT", "MAP", "UNION")) or dtype.endswith("]"):  # its text would be an id: {'a': 1}
        raise MvalError(f"{path}: column {column} is {dtype}; an id is one text or integer value per row: write "
                        "the column as text or integers")
    scale = re.fullmatch(r"DECIMAL\(\d+,(\d+)\)", dtype)
    if dtype in ("FLOAT", "DOUBLE") or (scale is not None and int(scale.group(1)) > 0):
        raise MvalError(f"{path}: column {column} is {dtype}; ids are compared as text, so its 1.0 would not "
                        f"match 1: write it as integers or text (pandas: df[{column!r}].astype('Int64'))")
    return f"CAST({sql_ident(column)} AS TEXT)"


def sql_ident(name: str) -> str:
    """`name` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def relation_for_file(con: duckdb.DuckDBPyConnection, path: str | Path, as_text: bool = False) -> duckdb.DuckDBPyRelation:
    """A lazy relation over the file (nothing is read into Python); `as_text`: CSV and JSON columns as text.
    Refused here, for every command that reads a file: a column named twice (case-insensitively, as DuckDB
    compares names), a CSV line with more or fewer fields than the header in the rows DuckDB's sniffer
    samples (a later one fails the reader's scan: wrap it with `read_error`)."""
    path = Path(path)
    if not path.is_file():
        raise MvalError(f"{path}: no such file")
    reader = file_reader(path)
    if path.stat().st_size == 0:  # DuckDB reads it as one column `column0` (CSV) or none: "missing columns"
        raise MvalError(f"{path}: the file is empty (0 bytes); check that the export finished")
    try:
        # JSON: every object's keys, before the reader, which takes a repeated key in its sample for a broken
        # file and reads only the keys of its sample (a key first seen later would be dropped without a word)
        keys = check_unique_keys(con, path) if reader == "read_json" else []
        rel = con.sql(f"SELECT * FROM {table_sql(path)}", params=[str(path)])
        rel.columns  # noqa: B018 - forces the reader to sniff the file now, so errors name it
        if as_text and reader != "read_parquet":
            rel = con.sql(f"SELECT * FROM {table_sql(path, keys or rel.columns)}", params=[str(path)])
            rel.columns  # noqa: B018
        if reader == "read_csv":
            dialect = _sniff_csv(con, path)
            _check_csv_width(con, path, dialect, len(rel.columns))
            check_unique_names(path, _csv_header(con, path, dialect, len(rel.columns)))
        elif reader == "read_parquet":
            import pyarrow.parquet as pq  # here, not at the top: it would cost every mval command ~0.1 s to start

            check_unique_names(path, pq.read_schema(path).names)
    except duckdb.Error as e:
        raise read_error(path, e, f"cannot read as {reader.removeprefix('read_')}") from e
    return rel


# the type of a CSV or JSON column that every value (trimmed; empty is missing) has: (type, SQL test of one value $x)
_WHOLE_FILE_TYPES = (
    ("BIGINT", "regexp_full_match($x, '[+-]?[0-9]{1,18}')"),  # not TRY_CAST: DuckDB casts '1.5' to the BIGINT 2
    ("HUGEINT", "regexp_full_match($x, '[+-]?[0-9]{1,38}')"),  # 19-digit ids stay exact (a DOUBLE would merge them)
    ("DOUBLE", "TRY_CAST($x AS DOUBLE) IS NOT NULL"),
    ("BOOLEAN", "lower($x) IN ('true', 'false')"),
)


def read_frame(path: str | Path, text: tuple[str, ...] = ()) -> pl.DataFrame:
    """A whole file as a polars frame, refused as `relation_for_file` refuses it (names alike, ragged CSV
    lines). A CSV or JSON column gets the type that every one of its values has (an integer, a number,
    true/false, else text), found in one scan of the file: DuckDB's reader guesses from a sample and would
    read a 1.5 after 20,000 integers as 2. The columns named in `text` stay text (ids: "007" is not 7).
    Parquet keeps its types. Empty or blank CSV/JSON values are missing."""
    import polars as pl  # here: polars costs the commands that never read a frame a fraction of a second

    con = duckdb.connect()
    try:
        rel = relation_for_file(con, path, as_text=True)
        if file_reader(path) == "read_parquet":
            return rel.pl()
        values = {c: f"nullif(trim({sql_ident(c)}), '')" for c in rel.columns}
        tests = [f"coalesce(bool_and({test.replace('$x', value)} OR {value} IS NULL), true)"  # no rows: any type
                 for value in values.values() for _, test in _WHOLE_FILE_TYPES]
        con.register("file_text", rel)
        fits = con.execute(f"SELECT {', '.join(tests) or 'true'} FROM file_text").fetchall()[0]
        select = []
        for i, (column, value) in enumerate(values.items()):
            n = len(_WHOLE_FILE_TYPES)
            kinds = [kind for (kind, _), fit in zip(_WHOLE_FILE_TYPES, fits[n * i:n * (i + 1)]) if fit]
            select.append(value if column in text else f"CAST({value} AS {kinds[0]})" if kinds else sql_ident(column))
        return con.sql(f"SELECT {', '.join(f'{e} AS {sql_ident(c)}' for e, c in zip(select, values))} "
                       "FROM file_text").pl()
    except duckdb.Error as e:
        raise read_error(path, e, "cannot read") from e
    finally:
        con.close()


# DuckDB's readers on bytes that are not UTF-8: CSV with the line, JSON without (its record numbers are not objects)
_NOT_UTF8 = re.compile(r"(?:CSV Error on Line: (\d+)\n(?s:.*?))?(?:Invalid unicode \(byte sequence mismatch\)|"
                       r"invalid UTF-8 encoding)")
# DuckDB's CSV reader on a line with more or fewer fields than the header (its "Original Line" may hold a newline)
_RAGGED_LINE = re.compile(r"CSV Error on Line: (\d+)\n(?s:.*?)\nExpected Number of Columns: (\d+) Found: (\d+)")


def read_error(path: str | Path, e: duckdb.Error, what: str) -> MvalError:
    """A DuckDB error while `path` is read, as one line: a CSV line with more or fewer fields than the
    header names the line and both counts, text that is not UTF-8 its line (CSV); any other error is
    `{path}: {what} (DuckDB's first line)`."""
    encoding = _NOT_UTF8.search(str(e))
    if encoding is not None:
        where = f"line {encoding.group(1)}" if encoding.group(1) else "the file"
        return MvalError(f"{path}: {where} is not UTF-8 text; save the file as UTF-8 (it may be Latin-1, "
                         "Windows-1252 or UTF-16)")
    ragged = _RAGGED_LINE.search(str(e))
    if ragged is not None:
        line, header, found = ragged.groups()
        return MvalError(f"{path}: line {line} has {found} field{'' if found == '1' else 's'}, the header {header}; "
                         "give every line one field per header column (quote a value that holds the delimiter), "
                         "or drop the line")
    return MvalError(f"{path}: {what} ({str(e).splitlines()[0]})")


def _sniff_csv(con: duckdb.DuckDBPyConnection, path: Path) -> dict[str, str | bool]:
    """The dialect that DuckDB detects for `read_csv(all_varchar = true)`, as the file is staged
    ("(empty)" as ""): has_header, skip, delim, quote, escape, comment, new_line."""
    row = con.execute("SELECT HasHeader, SkipRows, Delimiter, Quote, Escape, Comment, NewLineDelimiter "
                      "FROM sniff_csv(?, all_varchar = true)", [str(path)]).fetchall()[0]
    names = ("has_header", "skip", "delim", "quote", "escape", "comment", "new_line")
    return {name: ("" if value == "(empty)" else value) for name, value in zip(names, row)}


def _csv_header(con: duckdb.DuckDBPyConnection, path: Path, dialect: dict, width: int) -> list[str | None]:
    """The names of a CSV file's header line as written and trimmed (None: unnamed, or no header line),
    read with the sniffed `dialect`, as the file is staged."""
    if not dialect["has_header"]:
        return [None] * width
    params = {k: v for k, v in dialect.items() if k != "has_header"}
    names = con.execute(load_sql("csv_header"), {
        "path": str(path), "columns": {f"c{i}": "VARCHAR" for i in range(width)}, **params}).fetchall()[0]
    return [(name or "").strip() or None for name in names]


def _check_csv_width(con: duckdb.DuckDBPyConnection, path: Path, dialect: dict, width: int) -> None:
    """Refuse a CSV file with a line of more or fewer fields than its header, naming the line. DuckDB's
    sniffer reads a sample: a ragged line in it makes the file look like one without a header (columns
    column0.., the lines before the widest one skipped) or with another delimiter (one column). Only then,
    and when the `width` sniffed is not the first line's (one line read here), is the file read again with
    the first line's delimiter and width, to find the line. (A header after a preamble line, which the
    sniffer skips and reads as a header, is left alone.) A ragged line past the sample fails the reader's
    own scan instead (see `read_error`)."""
    if dialect["has_header"] and width > 1:
        return  # a header of several columns: no ragged line in the sample (a header cell may hold ';' or '|')
    with path.open("rb") as f:
        first = utf8_line(f.readline(), f"{path} line 1").removeprefix("\ufeff").rstrip("\r\n")
    fields = {d: len(next(csv.reader([first], delimiter=d))) for d in ",\t;|"}  # quoted delimiters do not count
    delimiter = max(fields, key=lambda d: (fields[d], d == dialect["delim"]))
    if fields[delimiter] == 1 or fields[delimiter] == width:
        return  # one column, or the first line's width
    columns = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(fields[delimiter])) + "}"
    try:
        con.execute(f"SELECT count(*) FROM read_csv(?, auto_detect = false, header = true, delim = ?, "
                    f"quote = '\"', escape = '\"', columns = {columns})", [str(path), delimiter])
    except duckdb.Error as e:
        if _RAGGED_LINE.search(str(e)):
            raise read_error(path, e, "") from e


def check_unique_keys(con: duckdb.DuckDBPyConnection, path: Path) -> list[str]:
    """The keys of a JSON file's objects, in order of first appearance; refused: an object that holds one key
    twice, or two keys that differ only in case (in one object or in two): DuckDB matches names
    case-insensitively and would read one of them as the other's column, or drop it, without a word. Every
    object is read (sql/json_keys.sql), not only a sample."""
    spelled = con.execute(load_sql("json_keys"), {"path": str(path)}).fetchall()
    repeated = [(obj, key) for key, _, obj in spelled if obj is not None]
    if repeated:
        obj, key = min(repeated)
        raise MvalError(f"{path}: object {obj}: key {key!r} appears twice in one object; keep one of them")
    first: dict[str, tuple[str, int]] = {}
    for key, obj, _ in spelled:
        other, other_obj = first.setdefault(key.lower(), (key, obj))
        if other != key:
            where = f"both in object {obj}" if obj == other_obj else f"objects {other_obj} and {obj}"
            raise MvalError(f"{path}: keys {other!r} and {key!r} differ only in case ({where}; names are "
                            "case-insensitive, so one would be read as the other); rename or drop one of them")
    return [key for key, _, _ in spelled]


def check_unique_names(path: Path, names: list[str | None]) -> None:
    """Refuse a file that names two columns alike (case-insensitive, as DuckDB compares them): DuckDB reads
    the second `action` as `action_1`, and the first would be used without a word. `names`: the columns as
    written (a CSV header line, a Parquet schema), None where a column has no name."""
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


def check_not_an_input(outputs: dict[str, str | Path | None], inputs: dict[str, str | Path | None]) -> None:
    """Refuse an output (flag -> path) that is one of the command's input files (by `samefile`, so links
    and other spellings of the same file count)."""
    for out_flag, out in outputs.items():
        if out is None or not Path(out).exists():
            continue
        for in_flag, given in inputs.items():
            if given is not None and Path(given).exists() and Path(out).samefile(given):
                raise MvalError(f"{out_flag} {out}: is the {in_flag} file this command reads; writing there would "
                                "overwrite it, choose another path")


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
