"""Load a log file (CSV, Parquet, JSON lines) into `events` (and its counted cells into `event_cells`),
validated in SQL, in one transaction.

Formats:
- `generic`: the store's own column names (`action`, `propensity`, `reward`; optional `context_id`,
  `features`, `action_probs`, `position`, `ts`, `event_id`), renamed with `mapping` {store_col: file_col};
  features from one list column or gathered from several numeric columns (`features=[...]`, globs allowed),
  in the order of the patterns as given and, within one glob, in natural order (f_2 before f_10), so the
  vectors do not depend on the file's column order. The gathered names are recorded
  (`ingests.feature_columns`): a file that gathers other columns, or the same in another order, than an
  earlier ingest of the store recorded is refused (one store, one feature space).
  `event_id` is the file's own id of each event, kept as `source_event_id`: a row whose id the store
  already holds for the logger, with the same content, is skipped (a log appended to and ingested again
  adds only its new rows); the same id with other content is refused.
- `obd`: the Open Bandit Dataset layout (timestamp, item_id, position, click, propensity_score,
  user_feature_*, user-item_affinity_*): action = item_id, reward = click, context_id = the
  user features joined by '|', features = the user-item affinities (both in natural order of their
  column names). Positions are kept as published.
  No event id: every row is added.
"""

from __future__ import annotations

import csv
import fnmatch
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb

from mval.errors import MvalError
from mval.files import file_reader, file_sha256, key_text_sql, relation_for_file, sql_ident, table_sql, utf8_line
from mval.store import add_event_cells, load_sql, transaction

FORMATS = ("generic", "obd")
STORE_COLUMNS = ("context_id", "features", "action", "propensity", "reward", "action_probs", "position", "ts", "event_id")
REQUIRED = ("action", "propensity", "reward")

INTEGER_MAX = 2**31 - 1  # the store's INTEGER (events.action, events.position)
_FLOAT_ID_FIX = ("ids are compared as text, so 1.0 would not match the 1 of another file: write the column as "
                 "integers or text (pandas: df[{column!r}].astype('Int64') before writing)")

# rule -> (store column, what it must be, how to fix); {column!r} in the fix: the file's column
RULES = {
    "bad_action": ("action", f"an integer from 0 to {INTEGER_MAX}", "actions are 0-based integers"),
    "bad_propensity": ("propensity", "in (0, 1]", "log the probability of the shown action under the logger"),
    "bad_reward": ("reward", "a finite number", "drop or fill rows with missing rewards"),
    "bad_position": ("position", f"an integer from 0 to {INTEGER_MAX} or empty", "fix the position column"),
    "bad_action_probs": (
        "action_probs",
        "a distribution over actions (sums to 1, covers the action, equals propensity at the action)",
        "log the logger's full distribution or drop the column",
    ),
    "nested_features": ("features", "a flat list of numbers",
                        "write one list of numbers per row (its context vector), like [0.1, 2], not a list of lists"),
    "bad_features": ("features", "finite numbers only",
                     "write a list like [0.1, 2] (or name numeric columns with --features) and fill or drop missing values"),
    "bad_ts": ("ts", "a timestamp", "use ISO 8601 (2024-01-31 12:00:00)"),
    "float_context_id": ("context_id", "an integer or text id, not a float", _FLOAT_ID_FIX),
    "float_event_id": ("event_id", "an integer or text id, not a float", _FLOAT_ID_FIX),
}
_STAGED_AS = {"event_id": "source_event_id"}  # store column -> its column in `staged`, where the names differ
# a feature gathered from one column that is missing or not a finite number (the rule bad_features)
_BAD_GATHERED = ("a finite number (gathered into features)", "fill or drop missing values, or leave the column out of "
                 "--features")


@dataclass(frozen=True)
class IngestResult:
    """What one `ingest_file` call did."""

    path: str
    logger: str
    ingest_id: int | None
    rows: int  # rows added to `events`
    already_stored: int  # rows whose event id the store already held for the logger, same content: skipped
    skipped: bool  # the same file content was ingested before: nothing read, nothing added
    unchecked: int = 0  # events of the logger stored without an event id: a file with ids cannot match them

    def to_dict(self) -> dict:
        return asdict(self)


PARSED = ("features", "action_probs", "position", "ts")  # optional columns that may fail to parse: kept raw too
# DuckDB types that cast to the store's type without fail: numbers and lists of them; timestamps and dates for ts
_NUMERIC = re.compile(r"(U?(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT)|FLOAT|DOUBLE|DECIMAL\(\d+,\d+\))(\[\d*\])?")


def _timestamp_expr(column: str, type_name: str) -> str:
    """ts as a UTC wall time (no pytz round trip); text with a UTC offset ("+02", "Z") is converted to UTC."""
    col = sql_ident(column)
    if type_name.startswith("TIMESTAMP WITH TIME ZONE"):
        return f"timezone('UTC', {col})"
    if type_name == "VARCHAR":
        return (f"CASE WHEN regexp_matches(trim({col}), '(Z|[+-][0-9]{{2}}(:?[0-9]{{2}})?)$') "
                f"THEN timezone('UTC', TRY_CAST(trim({col}) AS TIMESTAMPTZ)) ELSE TRY_CAST({col} AS TIMESTAMP) END")
    return f"TRY_CAST({col} AS TIMESTAMP)"


def _raw_columns(sources: dict[str, str], types: dict[str, str]) -> dict[str, str]:
    """`_<col>_raw`: the file's text of each parsed store column (store column -> file column) whose type
    may fail to parse, empty text as missing, so that a value that does not parse is refused, not dropped.
    Typed columns that always cast (Parquet numbers, timestamps) are skipped: the text would cost a cast per row."""
    def may_fail(col: str, type_name: str) -> bool:
        if col == "ts":
            return not type_name.startswith(("TIMESTAMP", "DATE"))
        return not _NUMERIC.fullmatch(type_name)

    return {f"_{col}_raw": f"nullif(trim(CAST({sql_ident(src)} AS TEXT)), '')"
            for col, src in sources.items() if may_fail(col, types[src])}


def _natural_key(name: str) -> tuple[list[str | int], str]:
    """Sort key: runs of digits compare as numbers (f_2 before f_10); the name itself breaks ties (f_01, f_1)."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"([0-9]+)", name))], name


def _natural_sorted(columns: list[str]) -> list[str]:
    return sorted(columns, key=_natural_key)


def _resolve_features(columns: list[str], patterns: list[str], path: Path) -> list[str]:
    """The feature columns in the order of `patterns`, not of the file (two exports of one log with their
    columns in another order must store the same vectors): a name where it is given, a glob's matches in
    natural order; case-sensitive; each column once, where first named. A pattern that matches nothing
    is refused (a misspelt name would drop its feature from every vector)."""
    chosen: dict[str, None] = {}
    for pattern in patterns:
        matched = _natural_sorted([c for c in columns if fnmatch.fnmatchcase(c, pattern)])
        if not matched:
            raise MvalError(f"{path}: no column matches --features {pattern}; columns are {', '.join(columns)}")
        chosen |= dict.fromkeys(matched)
    return list(chosen)


def _gathered_features(columns: list[str]) -> dict[str, str]:
    """`features` as the list of `columns` cast to numbers, and `_features_text`, their text as written
    (for the error message only: an unused column of the `staged` view is not computed)."""
    return {
        "features": "[" + ", ".join(f"TRY_CAST({sql_ident(c)} AS DOUBLE)" for c in columns) + "]",
        "_features_text": "[" + ", ".join(f"nullif(trim(CAST({sql_ident(c)} AS TEXT)), '')" for c in columns) + "]",
    }


@dataclass(frozen=True)
class Staging:
    """How the file's columns become the store's: `exprs` (staged column -> SQL over the file), `sources`
    (store column -> the file column it is read from, for messages) and `feature_columns` (the file columns
    gathered into `features`, in order; empty when features come from one list column or none)."""

    exprs: dict[str, str]
    sources: dict[str, str]
    feature_columns: list[str]


def _generic_columns(
    columns: list[str], types: dict[str, str], path: Path, mapping: dict[str, str], features: list[str] | None
) -> Staging:
    unknown = sorted(set(mapping) - set(STORE_COLUMNS))
    if unknown:
        raise MvalError(f"--map {unknown[0]}=...: unknown store column; store columns are {', '.join(STORE_COLUMNS)}")
    source = {col: mapping.get(col, col) for col in STORE_COLUMNS}
    for col, src in mapping.items():
        if src == "" and col in REQUIRED:
            raise MvalError(f"--map {col}=: {col} is required; map it to a column of the file")
        if src != "" and src not in columns:
            raise MvalError(f"{path}: --map {col}={src}: no column {src!r} in the file")
    missing = [f"{col} (file column {source[col]!r})" for col in REQUIRED if source[col] not in columns]
    if missing:
        raise MvalError(
            f"{path}: missing column {missing[0]}; rename it with --map {missing[0].split()[0]}=FILE_COLUMN"
        )
    exprs = {
        "action": "TRY_CAST({} AS DOUBLE)",
        "propensity": "TRY_CAST({} AS DOUBLE)",
        "reward": "TRY_CAST({} AS DOUBLE)",
        "action_probs": "TRY_CAST({} AS DOUBLE[])",
        "position": "TRY_CAST({} AS DOUBLE)",
        "features": "TRY_CAST({} AS DOUBLE[])",
    }
    out = {col: expr.format(sql_ident(source[col])) for col, expr in exprs.items() if source[col] in columns}
    out |= _raw_columns({col: source[col] for col in PARSED if source[col] in columns}, types)
    if source["context_id"] in columns:
        out["context_id"] = key_text_sql(path, source["context_id"], types[source["context_id"]])
    if file_reader(path) != "read_parquet":  # CSV and JSON are read as text: their ids are the file's text
        out["_text_ids"] = "true"
    gathered = _resolve_features(columns, features, path) if features else []
    if gathered:
        out |= _gathered_features(gathered)
        out.pop("_features_raw", None)  # a missing or bad value is one element: `_features_text` shows it
    if source["ts"] in columns:
        out["ts"] = _timestamp_expr(source["ts"], types[source["ts"]])
    if source["event_id"] in columns:
        out["source_event_id"] = key_text_sql(path, source["event_id"], types[source["event_id"]])
    return Staging(out, {col: src for col, src in source.items() if src in columns}, gathered)


def _obd_columns(columns: list[str], types: dict[str, str], path: Path) -> Staging:
    need = ["timestamp", "item_id", "position", "click", "propensity_score"]
    missing = [c for c in need if c not in columns]
    if missing:
        raise MvalError(
            f"{path}: missing column {missing[0]!r} of the Open Bandit Dataset layout; "
            "use --format generic for other layouts"
        )
    users = _natural_sorted([c for c in columns if c.startswith("user_feature_")])
    affinities = _natural_sorted([c for c in columns if c.startswith("user-item_affinity_")])
    out = {
        "action": 'TRY_CAST("item_id" AS DOUBLE)',
        "propensity": 'TRY_CAST("propensity_score" AS DOUBLE)',
        "reward": 'TRY_CAST("click" AS DOUBLE)',
        "position": 'TRY_CAST("position" AS DOUBLE)',
        "ts": _timestamp_expr("timestamp", types["timestamp"]),
        **_raw_columns({"position": "position", "ts": "timestamp"}, types),
    }
    if users:
        out["context_id"] = "concat_ws('|', " + ", ".join(f"CAST({sql_ident(c)} AS TEXT)" for c in users) + ")"
    if affinities:
        out |= _gathered_features(affinities)
    sources = {"action": "item_id", "propensity": "propensity_score", "reward": "click", "position": "position",
               "ts": "timestamp"}
    return Staging(out, sources, affinities)


_LISTED_MAX = 12  # feature columns named in a refusal's fix; more are named by a query


def _check_feature_space(con: duckdb.DuckDBPyConnection, path: Path, fmt: str, gathered: list[str]) -> None:
    """Refuse a file whose gathered feature columns (names, in order) are not those that the store's earlier
    ingests recorded (any logger: one store, one feature space; evaluate and design fit one reward model on
    every ingest's vectors). Ingests that recorded none (features from one list column, or before schema
    version 4) are compared by length only, in `_validate`. Per file: the scan of the rows is not involved."""
    if not gathered:
        return
    recorded = con.execute("SELECT min(ingest_id), any_value(feature_columns) FROM ingests "
                           "WHERE feature_columns IS NOT NULL GROUP BY feature_columns ORDER BY 1").fetchall()
    for ingest_id, stored in recorded:
        if stored == gathered:
            continue
        i = next(i for i, (new, old) in enumerate(zip([*gathered, None], [*stored, None])) if new != old)
        new = f"would come from column {gathered[i]}" if i < len(gathered) else f"would be missing ({i} gathered)"
        old = f"took feature {i + 1} from column {stored[i]}" if i < len(stored) else f"had only {i} features"
        if fmt == "obd":
            fix = "ingest OBD files with the same user-item_affinity_ columns"
        else:
            listed = (",".join(stored) if len(stored) <= _LISTED_MAX else f"with the {len(stored)} columns of "
                      f"SELECT feature_columns FROM ingests WHERE ingest_id = {ingest_id}")
            fix = f"gather the same columns in the same order (--features {listed})"
        raise MvalError(f"{path}: feature {i + 1} {new}, but ingest {ingest_id} {old}; one store holds one feature "
                        "space (evaluate and design fit one reward model on every ingest's vectors): "
                        f"{fix}, or ingest into a new store")


def _stage(con: duckdb.DuckDBPyConnection, path: Path, exprs: dict[str, str], columns: list[str]) -> None:
    """Create the temp view `staged` (typed store columns, the raw text of parsed ones, and `_row`,
    1-based row in the file). CSV and JSON are read as text: no type is guessed from the first rows."""
    typed = {
        "context_id": "CAST(NULL AS TEXT)",
        "features": "CAST(NULL AS DOUBLE[])",
        "action_probs": "CAST(NULL AS DOUBLE[])",
        "position": "CAST(NULL AS DOUBLE)",
        "ts": "CAST(NULL AS TIMESTAMP)",
        "source_event_id": "CAST(NULL AS TEXT)",
        **{f"_{col}_raw": "CAST(NULL AS TEXT)" for col in PARSED},
        "_features_text": "CAST(NULL AS TEXT[])",
        "_text_ids": "false",  # true: the ids are the file's text, checked for floats (ingest_checks.sql)
    } | exprs
    select = ", ".join(f"{expr} AS {name}" for name, expr in typed.items())
    if file_reader(path) == "read_parquet":  # the row number comes free with the scan
        source = "SELECT *, file_row_number + 1 AS _row FROM read_parquet(?, file_row_number = true)"
    else:
        source = f"SELECT *, row_number() OVER () AS _row FROM {table_sql(path, columns)}"
    con.sql(f"SELECT {select}, _row FROM ({source})", params=[str(path)]).create_view("staged", replace=True)


def _as_text(value: str) -> str:
    """SQL: a staged DOUBLE as text, a whole number without ".0" (99999999999, not 99999999999.0)."""
    return (f"CASE WHEN {value} = trunc({value}) AND abs({value}) < 1e18 THEN CAST(CAST({value} AS BIGINT) AS TEXT) "
            f"ELSE CAST({value} AS TEXT) END")


def _first_violation(con: duckdb.DuckDBPyConnection, path: Path, rule: str, count: int, staging: Staging) -> MvalError:
    """The error for the first row that fails `rule`, naming the file's column and showing the value as the
    file writes it where the file's text is kept (a failed cast would show [NULL, NULL] for [[1, 2], [3]])."""
    column, must_be, fix = RULES[rule]
    staged = f"s.{_STAGED_AS.get(column, column)}"
    shown = _as_text(staged) if column in ("action", "position") else f"CAST({staged} AS TEXT)"
    if column in PARSED:
        shown = f"coalesce(s._{column}_raw, {shown})"
    row, value, features, texts = con.execute(
        f"SELECT c._row, {shown}, s.features, s._features_text FROM staged_checks c JOIN staged s USING (_row) "
        f"WHERE c.{rule} ORDER BY c._row LIMIT 1"
    ).fetchall()[0]
    name = staging.sources.get(column, column)
    if rule == "bad_features" and staging.feature_columns:  # one element of the row: name its column
        bad = next(i for i, f in enumerate(features) if f is None or not math.isfinite(f))
        name, value, (must_be, fix) = staging.feature_columns[bad], texts[bad], _BAD_GATHERED
        found = "found missing" if value is None else f"found {value}"
    else:
        found = "missing or not a number" if value is None else f"found {value}"
    more = f" ({count - 1} more rows like it)" if count > 1 else ""
    return MvalError(f"{path}: row {row}, column {name}: must be {must_be}, {found}{more}; "
                     f"{fix.format(column=name)}")


def _validate(con: duckdb.DuckDBPyConnection, path: Path, staging: Staging) -> int:
    """Run every rule over the staged rows in one scan; raise on the first failing rule. Returns rows."""
    con.execute(load_sql("ingest_checks"))
    counts_sql = ("SELECT count(*), min(features_len), max(features_len), "
                  + ", ".join(f"count_if({rule})" for rule in RULES) + " FROM staged_checks")
    rows, min_len, max_len, *counts = con.execute(counts_sql).fetchall()[0]
    for rule, count in zip(RULES, counts):
        if count:
            raise _first_violation(con, path, rule, count, staging)
    if rows == 0:
        raise MvalError(f"{path}: the file has no rows")
    # every stored row has the store's one dimension (this check keeps it so): one row tells it
    stored = con.execute("SELECT len(features) FROM events WHERE features IS NOT NULL LIMIT 1").fetchall()
    dims = {d for d in (min_len, max_len) if d is not None} | {d[0] for d in stored}
    if len(dims) > 1:
        sizes = ", ".join(str(d) for d in sorted(dims))
        raise MvalError(
            f"{path}: column features: every row (and the rows already in the store) must have the same "
            f"number of features, found lengths {sizes}; give each context vector the same dimension"
        )
    return rows


_STORED_AS = {"action": "CAST(s.action AS INTEGER)", "position": "CAST(s.position AS INTEGER)"}  # staged -> store type


def _known_events(con: duckdb.DuckDBPyConnection, path: Path, column: str, logger: str) -> int:
    """Check the file's event ids (`column`: the file's name for them) and find the rows the store already
    holds for `logger` (temp table `staged_known`). Raises on a missing or repeated id, or on an id stored
    with other content; returns the number of rows already stored (skipped)."""
    missing, missing_row, repeated, row, event_id, first_row = con.execute(load_sql("ingest_event_ids")).fetchall()[0]
    if missing:
        more = f" ({missing - 1} more rows like it)" if missing > 1 else ""
        raise MvalError(f"{path}: row {missing_row}, column {column}: must be an event id, found missing{more}; "
                        "give every row its id, or leave the ids unread with --map event_id= (no duplicate checks)")
    if repeated:
        more = f" ({repeated - 1} more rows like it)" if repeated > 1 else ""
        raise MvalError(f"{path}: row {row}, column {column}: event id {event_id!r} repeats row {first_row}{more} "
                        "at the same position; an event id names one event (one slate position): drop the repeated "
                        "rows or give them their own ids, or leave the ids unread with --map event_id=")
    con.execute(load_sql("ingest_known_events"), {"logger": logger})
    known, differ = con.execute("SELECT count(DISTINCT _row), count(DISTINCT _row) FILTER (differs IS NOT NULL) "
                                "FROM staged_known").fetchall()[0]  # a row matches one stored event, unless added by hand
    if differ:
        row, event_id, col, stored_event, stored_ingest = con.execute(
            "SELECT _row, source_event_id, differs, stored_event, stored_ingest FROM staged_known "
            "WHERE differs IS NOT NULL ORDER BY _row LIMIT 1").fetchall()[0]
        new = _STORED_AS.get(col, f"s.{col}")  # col: a store column named by ingest_known_events.sql
        old_value, new_value = con.execute(
            f"SELECT CAST(e.{col} AS TEXT), CAST({new} AS TEXT) FROM events e, staged s "
            "WHERE e.event_id = ? AND s._row = ?", [stored_event, row]).fetchall()[0]
        more = f" ({differ - 1} more rows like it)" if differ > 1 else ""
        raise MvalError(
            f"{path}: row {row}, column {col}: event id {event_id!r} of logger {logger!r} is already in the store "
            f"(ingest {stored_ingest}) with {col} {old_value or 'missing'}, the file has {new_value or 'missing'}{more}; "
            "an event id names one event: fix the row, or give the changed events new ids"
        )
    return known


def _already_ingested(path: Path, logger: str, ingest_id: int, stored_logger: str) -> IngestResult:
    """The same file content was ingested before (ingest `ingest_id`): nothing to add for the same logger;
    another logger is refused, since one file's events cannot come from two loggers."""
    if stored_logger != logger:
        raise MvalError(f"{path}: already ingested as logger {stored_logger!r} (ingest {ingest_id}); the same events "
                        f"cannot come from two loggers, so nothing was added for {logger!r} and they stay stored under "
                        f"{stored_logger!r} (mval has no command to rename or delete an ingest)")
    return IngestResult(str(path), logger, ingest_id, 0, 0, skipped=True)


# DuckDB's JSON reader on an object with a repeated key (first line of its message)
_REPEATED_KEY = re.compile(r'in (line|record)(?:/value)? (\d+): Object .* has duplicate key "(.*)"$')
# DuckDB's CSV reader on a line with more or fewer fields than the header (its "Original Line" may hold a newline)
_RAGGED_LINE = re.compile(r"CSV Error on Line: (\d+)\n(?s:.*?)\nExpected Number of Columns: (\d+) Found: (\d+)")


def _ragged_line(path: Path, message: str) -> MvalError | None:
    ragged = _RAGGED_LINE.search(message)
    if ragged is None:
        return None
    line, header, found = ragged.groups()
    return MvalError(f"{path}: line {line} has {found} fields, the header {header}; give every line one field per "
                     "header column (quote a value that holds the delimiter), or drop the line")


def _check_csv_width(con: duckdb.DuckDBPyConnection, path: Path, width: int) -> None:
    """Refuse a CSV file with a line of more or fewer fields than its header, naming the line; called
    when the file's columns were not found. DuckDB's sniffer reads a sample: a ragged line in it makes the
    file look like one without a header (columns column0.., the lines before the widest one skipped) or
    with another delimiter. Only when the `width` sniffed does not match the header line (one line read
    here) is the file read again, with the header's delimiter and width, to find the line. A ragged line
    past the sample fails the ingest's own scan instead (see `_read_error`)."""
    with path.open("rb") as f:
        first = utf8_line(f.readline(), f"{path} line 1").removeprefix("\ufeff").rstrip("\r\n")
    delimiter = max(",\t;|", key=first.count)
    if delimiter not in first:
        return  # one column, or a line before the header: nothing to compare
    header = next(csv.reader([first], delimiter=delimiter))
    if len(header) == width:
        return
    columns = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(len(header))) + "}"
    try:
        con.execute(f"SELECT count(*) FROM read_csv(?, auto_detect = false, header = true, delim = ?, "
                    f"quote = '\"', escape = '\"', columns = {columns})", [str(path), delimiter])
    except duckdb.Error as e:
        ragged = _ragged_line(path, str(e))
        if ragged is not None:
            raise ragged from e


def _read_error(path: Path, e: duckdb.Error) -> MvalError:
    """A DuckDB error while the file is read or stored, as one line; a JSON object with a repeated key
    names the line and the key, a CSV line with more or fewer fields than the header its line."""
    ragged = _ragged_line(path, str(e))
    if ragged is not None:
        return ragged
    message = str(e).splitlines()[0]
    repeated = _REPEATED_KEY.search(message)
    if repeated:
        where, number, key = repeated.groups()
        return MvalError(f"{path}: {where} {number}: key {key!r} appears twice in one object; keep one of them")
    return MvalError(f"{path}: ingest failed, store unchanged ({message})")


def ingest_file(
    con: duckdb.DuckDBPyConnection,
    path: str | Path,
    logger: str,
    fmt: str = "generic",
    mapping: dict[str, str] | None = None,
    features: list[str] | None = None,
) -> IngestResult:
    """Validate `path` in SQL and append its rows to `events` in one transaction (all or nothing)."""
    path = Path(path)
    if not logger.strip():
        raise MvalError("--logger must be a non-empty name (the logging policy or batch that produced the file)")
    if fmt not in FORMATS:
        raise MvalError(f"--format {fmt}: unknown; use one of {', '.join(FORMATS)}")
    rel = relation_for_file(con, path, as_text=True)
    digest = file_sha256(path)  # the same content ingested twice adds nothing
    seen = con.execute("SELECT ingest_id, logger FROM ingests WHERE content_hash = ?", [digest]).fetchall()
    if seen:
        return _already_ingested(path, logger, *seen[0])
    types = dict(zip(rel.columns, (str(t) for t in rel.types)))
    try:
        if fmt == "obd":
            staging = _obd_columns(rel.columns, types, path)
        else:
            staging = _generic_columns(rel.columns, types, path, mapping or {}, features)
    except MvalError:
        if file_reader(path) == "read_csv":  # columns missing: a ragged line may have misled the sniffer
            _check_csv_width(con, path, len(rel.columns))
        raise
    try:
        _check_feature_space(con, path, fmt, staging.feature_columns)
        _stage(con, path, staging.exprs, rel.columns)
        rows = _validate(con, path, staging)
        unchecked = 0
        if "source_event_id" in staging.exprs:
            known = _known_events(con, path, (mapping or {}).get("event_id", "event_id"), logger)
            con.execute(load_sql("ingest_new_rows"))
            unchecked = con.execute("SELECT count(*) FROM events WHERE logger = ? AND source_event_id IS NULL",
                                    [logger]).fetchall()[0][0]
        else:  # every row is new: the row number is the sequence (no sort)
            known = 0
            con.execute("CREATE OR REPLACE TEMP VIEW staged_new AS SELECT *, _row AS _seq FROM staged")
        rows -= known
        with transaction(con):
            first_event, ingest_id = con.execute(
                "SELECT coalesce(max(event_id), -1) + 1, nextval('ingest_id_seq') FROM events"
            ).fetchall()[0]
            con.execute(
                "INSERT INTO ingests (ingest_id, path, content_hash, format, logger, rows, first_event, "
                "feature_columns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [ingest_id, str(path.resolve()), digest, fmt, logger, rows, first_event,
                 staging.feature_columns or None],
            )
            con.execute(
                load_sql("ingest_insert"),
                {"first_event": first_event, "ingest_id": ingest_id, "logger": logger},
            )
            add_event_cells(con, ingest_id)
    except duckdb.Error as e:
        raise _read_error(path, e) from e
    finally:
        con.execute("DROP VIEW IF EXISTS staged_new")
        con.execute("DROP TABLE IF EXISTS staged_known")
        con.execute("DROP VIEW IF EXISTS staged_checks")
        con.execute("DROP VIEW IF EXISTS staged")
    return IngestResult(str(path), logger, int(ingest_id), int(rows), int(known), skipped=False, unchecked=int(unchecked))
