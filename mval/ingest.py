"""Load a log file (CSV, Parquet, JSON lines) into `events` (and its counted cells into `event_cells`),
validated in SQL, in one transaction.

Formats:
- `generic`: the store's own column names (`action`, `propensity`, `reward`; optional `context_id`,
  `features`, `action_probs`, `position`, `ts`, `event_id`), renamed with `mapping` {store_col: file_col};
  features from one list column or gathered from several numeric columns (`features=[...]`, globs allowed;
  a column's exact name names it, even with glob characters; `parse_features` splits the CLI's text),
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

The same content (sha256) is stored once: read again the same way (format, the file column of each store
column, the gathered feature columns; recorded in `ingests`) it adds nothing, read another way it is refused.
"""

from __future__ import annotations

import fnmatch
import math
import re
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb

from mval.errors import MvalError
from mval.files import (FLOAT_ID, bad_rows, file_reader, file_sha256, key_text_sql, more_rows, read_error,
                        relation_for_file, sql_ident, table_sql)
from mval.store import add_event_cells, load_sql, transaction

FORMATS = ("generic", "obd")
STORE_COLUMNS = ("context_id", "features", "action", "propensity", "reward", "action_probs", "position", "ts", "event_id")
REQUIRED = ("action", "propensity", "reward")

INTEGER_MAX = 2**31 - 1  # the store's INTEGER (events.action, events.position)

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
    "float_context_id": ("context_id", *FLOAT_ID),
    "float_event_id": ("event_id", *FLOAT_ID),
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


# one --features pattern, in double quotes (as written, "" for a quote) or bare (trimmed), then a comma or the end
_FEATURE_PATTERN = re.compile(r'\s*(?:"((?:[^"]|"")*)"|([^,"]*?))\s*(,|\Z)')


def parse_features(text: str) -> list[str]:
    """The patterns of `--features TEXT`, separated by commas as in a CSV line: a pattern in double quotes
    is taken as written, so it may hold a comma ("price, usd"; "" for a quote inside); others are trimmed."""
    patterns, start = [], 0
    while True:
        found = _FEATURE_PATTERN.match(text, start)
        if found is None:
            raise MvalError(f"--features {text}: a double quote must enclose a whole pattern, as in "
                            '--features \'"price, usd",x_*\' (write "" for a quote inside it)')
        quoted, bare, comma = found.groups()
        patterns.append(bare if quoted is None else quoted.replace('""', '"'))
        if not comma:
            return patterns
        start = found.end()


def features_option(columns: list[str]) -> str:
    """`--features` text that names exactly `columns`, in order (the inverse of `parse_features`)."""
    quoted = ('"' + c.replace('"', '""') + '"' if re.search(r'[,"]|^\s|\s$', c) else c for c in columns)
    return ",".join(quoted)


def _resolve_features(columns: list[str], patterns: list[str], path: Path) -> list[str]:
    """The feature columns in the order of `patterns`, not of the file (two exports of one log with their
    columns in another order must store the same vectors): a name where it is given, a glob's matches in
    natural order; case-sensitive; each column once, where first named. A pattern that is a column's exact
    name names that column only, even if it holds glob characters (*, ?, [). A pattern that matches nothing
    is refused (a misspelt name would drop its feature from every vector)."""
    chosen: dict[str, None] = {}
    for pattern in patterns:
        if pattern in columns:
            chosen |= dict.fromkeys([pattern])
            continue
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
    missing = [col for col in REQUIRED if source[col] not in columns]
    if missing:
        col, src = missing[0], source[missing[0]]
        cased = [c for c in columns if c.lower() == src.lower()]
        fix = (f"names are case-sensitive here: --map {col}={cased[0]}" if cased
               else f"rename it with --map {col}=FILE_COLUMN")
        raise MvalError(f"{path}: missing column {col} (file column {src!r}); {fix}")
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
    out |= {f"_{col}_text": f"nullif(trim(CAST({sql_ident(source[col])} AS TEXT)), '')" for col in REQUIRED}
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
    read = {col: src for col, src in source.items() if src in columns and not (col == "features" and gathered)}
    return Staging(out, read, gathered)


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
        **{f"_{col}_text": f"nullif(trim(CAST({sql_ident(src)} AS TEXT)), '')"
           for col, src in (("action", "item_id"), ("propensity", "propensity_score"), ("reward", "click"))},
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
            listed = (features_option(stored) if len(stored) <= _LISTED_MAX else f"with the {len(stored)} columns of "
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
        **{f"_{col}_text": "CAST(NULL AS TEXT)" for col in REQUIRED},  # the file's text: for messages only
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
    elif column in REQUIRED:  # a value that is not a number: the file's text of it
        shown = f"coalesce({shown}, s._{column}_text)"
    row, value, features, texts = con.execute(
        f"SELECT c._row, {shown}, s.features, s._features_text FROM staged_checks c JOIN staged s USING (_row) "
        f"WHERE c.{rule} ORDER BY c._row LIMIT 1"
    ).fetchall()[0]
    name = staging.sources.get(column, column)
    if rule == "bad_features" and staging.feature_columns:  # one element of the row: name its column
        bad = next(i for i, f in enumerate(features) if f is None or not math.isfinite(f))
        name, value, (must_be, fix) = staging.feature_columns[bad], texts[bad], _BAD_GATHERED
    return bad_rows(path, row, name, must_be, value, count, fix.format(column=name))


def _validate(con: duckdb.DuckDBPyConnection, path: Path, staging: Staging) -> int:
    """Run every rule over the staged rows in one scan; raise on the first failing rule. Returns rows."""
    con.execute(load_sql("float_ids"))
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
        raise bad_rows(path, missing_row, column, "an event id", None, missing,
                       "give every row its id, or leave the ids unread with --map event_id= (no duplicate checks)")
    if repeated:
        raise MvalError(f"{path}: row {row}, column {column}: event id {event_id!r} repeats row {first_row}"
                        f"{more_rows(repeated)} "
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
        raise MvalError(
            f"{path}: row {row}, column {col}: event id {event_id!r} of logger {logger!r} is already in the store "
            f"(ingest {stored_ingest}) with {col} {old_value or 'missing'}, the file has {new_value or 'missing'}"
            f"{more_rows(differ)}; "
            "an event id names one event: fix the row, or give the changed events new ids"
        )
    return known


@dataclass(frozen=True)
class Reading:
    """How a file's bytes become events: the `--format`, the file column each store column is read from
    (`sources`; None: not recorded, an ingest before schema version 5) and the columns gathered into
    `features` (None: none, a list column, or not recorded before version 4)."""

    fmt: str
    sources: dict[str, str] | None
    feature_columns: list[str] | None

    def differs(self, other: Reading) -> tuple[str, str] | None:
        """The first difference from the `other` reading, told as (this one's, the other's); None if there is
        none that both record."""
        if self.fmt != other.fmt:
            return f"with --format {self.fmt}", f"with --format {other.fmt}"
        recorded = self.sources is not None and other.sources is not None  # before version 5: format only,
        known = recorded or None not in (self.feature_columns, other.feature_columns)  # and names if gathered
        if known and self.feature_columns != other.feature_columns:
            return _gathered_text(self.feature_columns), _gathered_text(other.feature_columns)
        if recorded:
            for col in STORE_COLUMNS:
                mine, theirs = self.sources.get(col), other.sources.get(col)
                if mine != theirs:
                    return _source_text(col, mine), _source_text(col, theirs)
        return None

    def options(self, columns: list[str]) -> str:
        """The `mval ingest` options that read a file with `columns` this way (`sources` recorded)."""
        if self.fmt == "obd" or self.sources is None:
            return f"--format {self.fmt}"
        flags = []
        for col in STORE_COLUMNS:
            src = self.sources.get(col)
            if src is None and col in columns and not (col == "features" and self.feature_columns):
                flags.append(f"--map {col}=")
            elif src is not None and src != col:
                flags.append(f"--map {shlex.quote(f'{col}={src}')}")
        if self.feature_columns:
            flags.append(f"--features {shlex.quote(features_option(self.feature_columns))}")
        return " ".join(flags) or "no --map or --features"


def _source_text(col: str, src: str | None) -> str:
    return f"{col} from column {src!r}" if src is not None else f"no {col}"


def _gathered_text(columns: list[str] | None) -> str:
    return f"features from columns {', '.join(columns)}" if columns else "no --features"


def _already_ingested(path: Path, logger: str, ingest_id: int, stored_logger: str) -> IngestResult:
    """The same file content was ingested before (ingest `ingest_id`): nothing to add for the same logger;
    another logger is refused, since one file's events cannot come from two loggers."""
    if stored_logger != logger:
        raise MvalError(f"{path}: already ingested as logger {stored_logger!r} (ingest {ingest_id}); the same events "
                        f"cannot come from two loggers, so nothing was added for {logger!r} and they stay stored under "
                        f"{stored_logger!r} (mval has no command to rename or delete an ingest)")
    return IngestResult(str(path), logger, ingest_id, 0, 0, skipped=True)


def _check_same_reading(path: Path, ingest_id: int, earlier: Reading, now: Reading, columns: list[str]) -> None:
    """Refuse to read again, another way, a file whose content ingest `ingest_id` holds: another --map or
    --features (or --format) makes other events of the same bytes, which would sit beside the stored ones
    (the same events twice, with other values); so would skipping it in silence, the user believing the
    new reading stored."""
    difference = earlier.differs(now)
    if difference is None:
        return
    before, after = difference
    options = earlier.options(columns) if earlier.sources is not None else "its --map was not recorded"
    raise MvalError(f"{path}: already ingested as ingest {ingest_id}, reading {before}; this run would read {after}: "
                    "the same content read two ways would store its events twice, so nothing was added. Rerun with "
                    f"the options of ingest {ingest_id} ({options}), or ingest into a new store to read the file "
                    "this way (mval has no command to delete an ingest)")


def ingest_file(
    con: duckdb.DuckDBPyConnection,
    path: str | Path,
    logger: str,
    fmt: str = "generic",
    mapping: dict[str, str] | None = None,
    features: list[str] | None = None,
) -> IngestResult:
    """Validate `path` in SQL and append its rows to `events` in one transaction (all or nothing).
    `features`: the patterns to gather, each a column's exact name or a glob (`parse_features` splits the
    CLI's comma list)."""
    path = Path(path)
    if not logger.strip():
        raise MvalError("--logger must be a non-empty name (the logging policy or batch that produced the file)")
    if fmt not in FORMATS:
        raise MvalError(f"--format {fmt}: unknown; use one of {', '.join(FORMATS)}")
    rel = relation_for_file(con, path, as_text=True)
    digest = file_sha256(path)  # the same content read the same way twice adds nothing
    seen = con.execute("SELECT ingest_id, logger, format, source_columns, feature_columns FROM ingests "
                       "WHERE content_hash = ?", [digest]).fetchall()
    if seen and seen[0][1] != logger:
        _already_ingested(path, logger, *seen[0][:2])  # refused: one file's events cannot come from two loggers
    types = dict(zip(rel.columns, (str(t) for t in rel.types)))
    try:
        if fmt == "obd":
            staging = _obd_columns(rel.columns, types, path)
        else:
            staging = _generic_columns(rel.columns, types, path, mapping or {}, features)
    except MvalError as e:  # a rerun that forgot the options the file was ingested with (--format obd, say)
        if not seen:
            raise
        ingest_id, _, *earlier = seen[0]
        raise MvalError(f"{path}: already ingested as ingest {ingest_id} ({Reading(*earlier).options(rel.columns)}); "
                        f"nothing added. This run could not read it: {str(e).removeprefix(f'{path}: ')}") from e
    reading = Reading(fmt, staging.sources, staging.feature_columns or None)
    if seen:
        ingest_id, stored_logger, *earlier = seen[0]
        _check_same_reading(path, ingest_id, Reading(*earlier), reading, rel.columns)
        return _already_ingested(path, logger, ingest_id, stored_logger)
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
                "feature_columns, source_columns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, map(?::TEXT[], ?::TEXT[]))",
                [ingest_id, str(path.resolve()), digest, fmt, logger, rows, first_event,
                 reading.feature_columns, list(reading.sources), list(reading.sources.values())],
            )
            con.execute(
                load_sql("ingest_insert"),
                {"first_event": first_event, "ingest_id": ingest_id, "logger": logger},
            )
            add_event_cells(con, ingest_id)
    except duckdb.Error as e:
        raise read_error(path, e, "ingest failed, store unchanged") from e
    finally:
        con.execute("DROP VIEW IF EXISTS staged_new")
        con.execute("DROP TABLE IF EXISTS staged_known")
        con.execute("DROP VIEW IF EXISTS staged_checks")
        con.execute("DROP VIEW IF EXISTS staged")
    return IngestResult(str(path), logger, int(ingest_id), int(rows), int(known), skipped=False, unchecked=int(unchecked))
