"""One way to print results on every command: `--format table|json|csv` (and parquet for queries)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import polars as pl

from mval.errors import MvalError
from mval.files import check_output_path, write_output

TABLE_ROWS = 40  # rows shown on a terminal; csv/json/parquet are always complete
TABLE_STR = 40  # characters shown per text cell on a terminal
FILE_FORMATS = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}  # what -o FILE holds


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Decimal):  # in records a command builds: numbers, integers kept exact (frames: json_text)
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def to_frame(data: pl.DataFrame | Sequence[dict]) -> pl.DataFrame:
    if isinstance(data, pl.DataFrame):
        return data
    return pl.DataFrame([_clean(dict(r)) for r in data], infer_schema_length=None)


def json_text(value: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """The JSON text of each `value` of type `dtype`, spaced as `json.dumps` spaces it: decimals as their exact
    digits (a number, not a float near it), times and dates as polars writes them (nanoseconds kept), NaN
    and infinities as null. Lists, structs and maps are built from their parts' text, in polars."""
    if isinstance(dtype, pl.Decimal):
        text = value.cast(pl.String)
    elif isinstance(dtype, pl.List | pl.Array):
        items = value.arr.to_list() if isinstance(dtype, pl.Array) else value
        text = "[" + items.list.eval(json_text(pl.element(), dtype.inner)).list.join(", ") + "]"
    elif isinstance(dtype, pl.Map):  # keys are text (see mval.query.shown_type)
        entries = value.map.entries().list.eval(
            json_text(pl.element().struct.field("key"), dtype.key) + ": "
            + json_text(pl.element().struct.field("value"), dtype.value))
        text = "{" + entries.list.join(", ") + "}"
    elif isinstance(dtype, pl.Struct):
        by_place = value.struct.rename_fields([str(i) for i in range(len(dtype.fields))])  # "^a$", "*": not patterns
        fields = [pl.lit(json.dumps(f.name, ensure_ascii=False) + ": ") + json_text(by_place.struct.field(str(i)), f.dtype)
                  for i, f in enumerate(dtype.fields)]
        text = "{" + pl.concat_str(fields, separator=", ") + "}" if fields else pl.lit("{}")
    elif isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:  # spaced as naive ones are, not with T
        text = '"' + value.dt.to_string("%Y-%m-%d %H:%M:%S%.f%:z") + '"'
    else:  # one value as polars' JSON writer writes it: {"v":...} without its key
        text = pl.struct(value.alias("v")).struct.json_encode().str.slice(5).str.strip_suffix("}")
    return pl.when(value.is_null()).then(pl.lit("null")).otherwise(text)


def json_rows(frame: pl.DataFrame) -> pl.Series:
    """Each row of `frame` as a JSON object, its keys the column names."""
    return frame.select(json_text(pl.struct(pl.all()), pl.Struct(frame.schema))).to_series()


def render(data: pl.DataFrame | Sequence[dict], fmt: str) -> str:
    """The text a command prints for `data` in format `fmt` (table, json, csv)."""
    if fmt == "json":  # a JSON list, one object per line
        if isinstance(data, pl.DataFrame):
            rows = ",\n".join(json_rows(data))  # in Python: one polars string holds at most 4 GiB
        else:
            rows = ",\n".join(json.dumps(_clean(r), default=str) for r in data)
        return "[\n" + rows + "\n]" if rows else "[]"
    frame = to_frame(data)
    if fmt == "csv":  # nested values (lists, structs) as JSON text in their cell
        frame = frame.with_columns(
            pl.when(pl.nth(i).is_not_null()).then(json_text(pl.nth(i), t)).alias(c)
            for i, (c, t) in enumerate(frame.schema.items()) if t.is_nested())
        return frame.write_csv().rstrip("\n")
    if fmt == "table":
        with pl.Config(
            tbl_rows=TABLE_ROWS, tbl_cols=-1, fmt_str_lengths=TABLE_STR, tbl_hide_dataframe_shape=True,
            tbl_hide_column_data_types=True, tbl_width_chars=160, float_precision=None,
        ):
            text = str(frame)
        if frame.height > TABLE_ROWS:
            text += f"\n({frame.height} rows; --format csv or json prints them all)"
        return text
    raise MvalError(f"--format {fmt}: unknown; use table, json or csv")


def emit(data: pl.DataFrame | Sequence[dict], fmt: str, path: str | Path | None = None) -> None:
    """Print `data` (or write it to `path`, checked by `file_format` before any work); parquet needs a path."""
    if fmt == "parquet":
        if path is None:
            raise MvalError("--format parquet writes a binary file: give -o FILE.parquet")
        try:
            write_output(path, to_frame(data).write_parquet)
        except pl.exceptions.PolarsError as e:  # a struct without fields, say
            raise MvalError(f"-o {path}: parquet cannot hold this result ({str(e).splitlines()[0]}); "
                            "write it as csv or json") from e
        return
    text = render(data, fmt)
    if path is None:
        click.echo(text)
    else:
        write_output(path, lambda buffer: buffer.write((text + "\n").encode()))


def file_format(fmt: str | None, path: str | Path | None) -> str:
    """The format to print or write in: `fmt` as given (None: no --format), checked against the extension of
    the output file `path`, which picks the format when none is given. Printing defaults to a table; a table
    is never written to a file. Checks `path` (folder, permissions) too, so call it before any work."""
    if path is None:
        return fmt or "table"
    path = check_output_path(path)
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS and fmt not in (None, "table"):
        return fmt  # -o out.txt --format csv, -o /dev/stdout --format json: the format is said
    if suffix not in FILE_FORMATS:
        raise MvalError(f"-o {path}: unknown file type {path.suffix or '(none)'}; use .csv, .json, .parquet or .pq "
                        "(json is written as one JSON array; a table is only printed)")
    from_name = FILE_FORMATS[suffix]
    if fmt == "table":
        raise MvalError(f"-o {path}: --format table is only printed, never written to a file; "
                        f"drop --format to write {from_name}, as the extension says")
    if fmt is not None and fmt != from_name:
        raise MvalError(f"-o {path}: --format {fmt} contradicts the file's extension {path.suffix}; "
                        f"drop --format to write {from_name}, or name the file .{fmt}")
    return from_name


def format_option(*choices: str, default: str | None = "table") -> Callable:
    """`--format` with the given choices (shared by every command); `default=None`: a table when printing, the
    extension of the output file otherwise (see `file_format`)."""
    return click.option(
        "--format", "fmt", type=click.Choice(choices), default=default,
        show_default=True if default is not None else "table, or the -o file's extension",
        help="Output format: table for people, " + "/".join(c for c in choices if c != "table") + " for scripts.",
    )


def stderr(message: str) -> None:
    click.echo(message, err=True)


__all__ = ["emit", "file_format", "format_option", "render", "stderr", "to_frame"]
