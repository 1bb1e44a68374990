"""`mval query` output: the format of a result file, and DuckDB types that polars cannot take as they are."""

import csv
import io
import json
import re
from decimal import Decimal

import polars as pl
import pytest
from conftest import as_ingested, run_cli

import mval.output
from mval.store import open_store

CONTEXT = "user-" + "x" * 60  # longer than a table cell shows


@pytest.fixture
def events_store(store):
    """A store with 100 events, one a second from 2019-11-24 00:00:00, contexts CONTEXT0 ... CONTEXT99."""
    with open_store(store) as con:
        con.execute("INSERT INTO events (event_id, ingest_id, logger, context_id, action, propensity, reward, ts) "
                    "SELECT i, 1, 'random', ? || i, i % 4, 0.25, i % 2, TIMESTAMP '2019-11-24' + to_seconds(i) "
                    "FROM range(100) AS t(i)", [CONTEXT])
        as_ingested(con, 1, "random", 100)
    return store


def _refused(result) -> str:
    """The one `Error: ...` line of a refused command (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def _read(path, fmt: str) -> list[dict]:
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(path.read_text())))
    if fmt == "json":
        return json.loads(path.read_text())
    return pl.read_parquet(path).to_dicts()


@pytest.mark.parametrize("name, fmt", [("ev.csv", "csv"), ("ev.json", "json"), ("ev.parquet", "parquet"),
                                       ("ev.pq", "parquet"), ("EV.CSV", "csv")])
def test_output_file_without_format_is_written_in_its_extensions_format(events_store, tmp_path, name, fmt):
    """All 100 rows, exact, not the 40-row terminal table."""
    out = tmp_path / name
    sql = "SELECT event_id, context_id FROM events ORDER BY event_id LIMIT 100"
    result = run_cli("query", events_store, sql, "-o", out)
    assert result.output == ""
    rows = _read(out, fmt)
    assert [int(r["event_id"]) for r in rows] == list(range(100))
    assert [r["context_id"] for r in rows] == [f"{CONTEXT}{i}" for i in range(100)]


@pytest.mark.parametrize("fmt, name, hint", [
    ("json", "out.csv", "drop --format to write csv, or name the file .json"),
    ("csv", "out.json", "drop --format to write json, or name the file .csv"),
    ("parquet", "out.csv", "drop --format to write csv, or name the file .parquet"),
    ("csv", "out.pq", "drop --format to write parquet, or name the file .csv"),
    ("table", "out.csv", "drop --format to write csv"),
])
def test_format_that_contradicts_the_output_file_is_refused(events_store, tmp_path, fmt, name, hint):
    result = run_cli("query", events_store, "SELECT * FROM events", "--format", fmt, "-o", tmp_path / name, ok=False)
    line = _refused(result)
    assert f"-o {tmp_path / name}: " in line and hint in line
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("name", ["ev.txt", "ev.jsonl", "ev.tsv", "ev"])
@pytest.mark.parametrize("fmt", [None, "table"])
def test_output_file_of_a_type_query_cannot_write_is_refused(events_store, tmp_path, name, fmt):
    """Without --format, an extension that names no format is refused (`.jsonl` too: the json format is one
    JSON array, not JSON lines); a table is never written to a file."""
    given = [] if fmt is None else ["--format", fmt]
    result = run_cli("query", events_store, "SELECT * FROM events", *given, "-o", tmp_path / name, ok=False)
    line = _refused(result)
    assert f"-o {tmp_path / name}: unknown file type" in line and "use .csv, .json, .parquet" in line
    assert not (tmp_path / name).exists()


def _all_formats(store, tmp_path, sql: str) -> dict[str, object]:
    """The value of the one cell `x` of `sql` as each format gives it (the table: its printed text)."""
    got = {}
    got["csv"] = _read_csv_cell(run_cli("query", store, sql, "--format", "csv").output)
    got["json"] = json.loads(run_cli("query", store, sql, "--format", "json").output)[0]["x"]
    run_cli("query", store, sql, "--format", "parquet", "-o", tmp_path / "x.parquet")
    got["parquet"] = pl.read_parquet(tmp_path / "x.parquet")["x"].to_list()[0]
    got["table"] = run_cli("query", store, sql).output
    return got


def _read_csv_cell(text: str) -> str:
    header, row = csv.reader(io.StringIO(text))
    assert header == ["x"]
    return row[0]


@pytest.mark.parametrize("sql, text", [
    ("SELECT max(ts) - min(ts) AS x FROM events", "00:01:39"),  # INTERVAL: polars cannot import it
    ("SELECT union_value(k := 1) AS x", "1"),  # UNION: polars cannot import it
    (r"SELECT '\xAA'::BLOB AS x", r"\xAA"),  # polars' binary: csv refuses it, table and json show b'...'
    ("SELECT BIT '101' AS x", "101"),
    ("SELECT '1267650600228229401496703205376'::BIGNUM AS x", "1267650600228229401496703205376"),
    ("SELECT '12:00:00+02'::TIMETZ AS x", "12:00:00+02"),  # polars' Time would drop the offset
    ("SELECT 1::UHUGEINT << 127 AS x", "170141183460469231731687303715884105728"),  # it printed a negative number
    ("SELECT '24:00:00'::TIME AS x", "24:00:00"),  # polars took it as null
])
def test_types_polars_cannot_take_are_shown_as_duckdb_text_in_every_format(events_store, tmp_path, sql, text):
    got = _all_formats(events_store, tmp_path, sql)
    assert {f: got[f] for f in ("csv", "json", "parquet")} == {"csv": text, "json": text, "parquet": text}
    assert f"│ {text} │" in got["table"]


@pytest.mark.parametrize("sql, value", [
    ("SELECT [INTERVAL 1 DAY, NULL] AS x", ["1 day", None]),
    (r"SELECT {'b': '\xAA'::BLOB, 'n': 2} AS x", {"b": r"\xAA", "n": 2}),
    ("SELECT map([1, 2], [10, 20]) AS x", {"1": 10, "2": 20}),  # csv writes a map as a JSON object: text keys
    ("SELECT [map([1], [INTERVAL 2 HOURS])] AS x", [{"1": "02:00:00"}]),
])
def test_nested_values_keep_their_shape_with_such_types_as_text(events_store, tmp_path, sql, value):
    got = _all_formats(events_store, tmp_path, sql)
    assert json.loads(got["csv"]) == value and got["json"] == value
    assert got["parquet"] == value
    assert "Traceback" not in got["table"]


@pytest.mark.parametrize("sql, text", [
    ("SELECT 'infinity'::DATE AS x", "infinity"),  # polars' table panics on it
    ("SELECT '-infinity'::TIMESTAMP AS x", "-infinity"),
    ("SELECT '10000-01-01'::DATE AS x", "10000-01-01"),  # json goes through Python's datetime: years 1 to 9999
    ("SELECT '0001-01-01 (BC)'::TIMESTAMP_MS AS x", "0001-01-01 (BC) 00:00:00"),
    ("SELECT 'infinity'::TIMESTAMP_S AS x", "infinity"),  # it printed 1969-12-31 23:59:59
    ("SELECT '-infinity'::TIMESTAMP_MS AS x", "-infinity"),
    ("SELECT 'infinity'::TIMESTAMP_NS AS x", "infinity"),  # it printed 2262-04-11 23:47:16.854775807
    ("SELECT '-infinity'::TIMESTAMP_NS AS x", "-infinity"),  # and 1677-09-21 00:12:43.145224193
])
def test_dates_python_cannot_hold_are_shown_as_duckdb_text_in_every_format(events_store, tmp_path, sql, text):
    got = _all_formats(events_store, tmp_path, sql)
    assert {f: got[f] for f in ("csv", "json", "parquet")} == {"csv": text, "json": text, "parquet": text}
    assert f"│ {text} │" in got["table"]


def test_dates_within_years_1_to_9999_stay_dates(events_store, tmp_path):
    """Only a column with a date beyond them becomes text; the query's other dates keep their type."""
    sql = ("SELECT ts, CASE WHEN event_id = 99 THEN 'infinity'::TIMESTAMP ELSE ts END AS ends "
           "FROM events ORDER BY event_id")
    run_cli("query", events_store, sql, "--format", "parquet", "-o", tmp_path / "x.parquet")
    frame = pl.read_parquet(tmp_path / "x.parquet")
    assert frame.schema == {"ts": pl.Datetime("us"), "ends": pl.String}
    assert frame["ends"].to_list()[98:] == ["2019-11-24 00:01:38", "infinity"]


@pytest.mark.parametrize("name", ["ev.txt", "ev.tsv", "ev"])
def test_an_explicit_format_writes_any_file_name(events_store, tmp_path, name):
    """`--format csv -o out.txt` (or -o /dev/stdout): the format is said, the name is the user's."""
    run_cli("query", events_store, "SELECT 1 AS x", "--format", "csv", "-o", tmp_path / name)
    assert (tmp_path / name).read_text() == "x\n1\n"


@pytest.mark.parametrize("sql, value, shown", [
    ("SELECT ['infinity'::DATE, DATE '2020-01-02'] AS x", ["infinity", "2020-01-02"], '["infinity", "2020-01-02"]'),
    ("SELECT {'a': 'infinity'::TIMESTAMP, 'n': 2} AS x", {"a": "infinity", "n": 2}, '{"infinity",2}'),  # n: a number
    ("SELECT [['-infinity'::TIMESTAMP_S]] AS x", [["-infinity"]], '[["-infinity"]]'),
    ("SELECT ['infinity'::TIMESTAMP_NS] AS x", ["infinity"], '["infinity"]'),
    ("SELECT ['infinity'::DATE]::DATE[1] AS x", ["infinity"], '["infinity"]'),
    ("SELECT map(['k'], ['-infinity'::DATE]) AS x", {"k": "-infinity"}, '{"k": "-infinity"}'),
    ("SELECT {'t': '24:00:00'::TIME} AS x", {"t": "24:00:00"}, '{"24:00:00"}'),
])
def test_nested_values_beyond_polars_are_shown_as_text_in_every_format(events_store, tmp_path, sql, value, shown):
    """An infinite date inside a list, struct or map was a polars panic in every format."""
    got = _all_formats(events_store, tmp_path, sql)
    assert json.loads(got["csv"]) == value and got["json"] == value
    assert got["parquet"] == value
    assert f"│ {shown}" in got["table"]


def test_nanoseconds_are_kept_in_every_format(events_store, tmp_path):
    """TIMESTAMP_NS and TIME_NS keep their nanoseconds (json cut them to microseconds), in a column of
    timestamps as in one that is text because it holds infinity."""
    stamp = "2020-01-01 00:00:00.123456789"
    sql = f"SELECT '{stamp}'::TIMESTAMP_NS AS x, '12:00:00.123456789'::TIME_NS AS t"
    rows = json.loads(run_cli("query", events_store, sql, "--format", "json").output)
    assert rows == [{"x": stamp, "t": "12:00:00.123456789"}]
    assert run_cli("query", events_store, sql, "--format", "csv").output.splitlines()[1] == (
        f"{stamp.replace(' ', 'T')},12:00:00.123456789")
    assert f"│ {stamp} ┆ 12:00:00.123456789 │" in run_cli("query", events_store, sql).output
    run_cli("query", events_store, sql, "-o", tmp_path / "x.parquet")
    frame = pl.read_parquet(tmp_path / "x.parquet")
    assert frame.schema == {"x": pl.Datetime("ns"), "t": pl.Time}
    assert frame.select(pl.col("x").dt.nanosecond(), pl.col("t").dt.nanosecond()).row(0) == (123456789, 123456789)

    both = f"SELECT x FROM (VALUES ('{stamp}'::TIMESTAMP_NS, 1), ('infinity', 2)) AS t(x, i) ORDER BY i"
    assert [r["x"] for r in json.loads(run_cli("query", events_store, both, "--format", "json").output)] == [
        stamp, "infinity"]


def test_decimals_are_exact_numbers_in_json(events_store, tmp_path):
    """DECIMAL values are written as their digits, a JSON number (json printed 1.2345678901234567e+19): a
    reader that keeps them exact (Python's json with parse_float=Decimal, jq) gets DuckDB's value."""
    sql = ("SELECT 12345678901234567890.12345678::DECIMAL(38,8) AS x, [1.50::DECIMAL(10,2)] AS l, "
           "{'d': -0.1::DECIMAL(2,1)} AS s, 99999999999999999999999999999999999999::HUGEINT AS h")
    text = run_cli("query", events_store, sql, "--format", "json").output
    assert text.splitlines()[1] == ('{"x": 12345678901234567890.12345678, "l": [1.50], "s": {"d": -0.1}, '
                                    '"h": 99999999999999999999999999999999999999}')
    assert json.loads(text, parse_float=Decimal) == [{
        "x": Decimal("12345678901234567890.12345678"), "l": [Decimal("1.50")], "s": {"d": Decimal("-0.1")},
        "h": 10**38 - 1}]
    run_cli("query", events_store, sql, "-o", tmp_path / "x.parquet")  # HUGEINTs of 38 digits stay numbers
    assert pl.read_parquet(tmp_path / "x.parquet").row(0) == (
        Decimal("12345678901234567890.12345678"), [Decimal("1.50")], {"d": Decimal("-0.1")}, 10**38 - 1)


@pytest.mark.parametrize("sql, value", [
    ("SELECT 0.1::FLOAT AS x", 0.1),  # it printed 0.10000000149011612, csv and the table 0.1
    ("SELECT 'nan'::DOUBLE AS x", None),  # JSON has no NaN or infinity
    ("SELECT ['nan'::DOUBLE, '-inf'::DOUBLE, 1.5] AS x", [None, None, 1.5]),
    ("SELECT {'n': 'inf'::FLOAT} AS x", {"n": None}),
    ("SELECT 'é\"' AS x", 'é\"'),
    ("SELECT map([2], [[DATE '2020-01-02']]) AS x", {"2": ["2020-01-02"]}),
])
def test_json_values(events_store, sql, value):
    assert json.loads(run_cli("query", events_store, sql, "--format", "json").output) == [{"x": value}]


def test_times_that_are_null_stay_times(events_store, tmp_path):
    """A null time is looked up in DuckDB (polars takes 24:00:00 as null): a real null keeps the column's type."""
    sql = "SELECT [NULL, '12:00:00'::TIME] AS x, NULL::TIME AS y"
    run_cli("query", events_store, sql, "-o", tmp_path / "x.parquet")
    frame = pl.read_parquet(tmp_path / "x.parquet")
    assert frame.schema == {"x": pl.List(pl.Time), "y": pl.Time}


def test_a_result_parquet_cannot_hold_is_refused(events_store, tmp_path):
    line = _refused(run_cli("query", events_store, "SELECT {} AS x", "-o", tmp_path / "x.parquet", ok=False))
    assert f"-o {tmp_path / 'x.parquet'}: parquet cannot hold this result" in line and "csv or json" in line


def test_the_output_path_is_checked_once(events_store, tmp_path, monkeypatch):
    """`file_format` checks -o before the query runs; writing does not check it again."""
    checked = []
    check = mval.output.check_output_path
    monkeypatch.setattr(mval.output, "check_output_path", lambda path, *a, **k: checked.append(path) or check(path))
    run_cli("query", events_store, "SELECT 1 AS x", "-o", tmp_path / "x.csv")
    assert checked == [str(tmp_path / "x.csv")]


@pytest.mark.parametrize("value", ["170141183460469231731687303715884105727", "-170141183460469231731687303715884105728"])
def test_39_digit_hugeints_are_exact_in_every_format(events_store, tmp_path, value):
    """JSON printed 170141183460469231731687303715884105730. Table, csv and json print every digit (json as a
    number, also beside small values and in lists); parquet's decimal holds 38 digits, so there it is text."""
    literal = f"({value[:-1]}::HUGEINT * 10 + {'-' if value[0] == '-' else ''}{value[-1]})"
    got = _all_formats(events_store, tmp_path, f"SELECT {literal} AS x")
    assert (got["csv"], got["json"], got["parquet"]) == (value, int(value), value)
    assert f"│ {value} │" in got["table"]
    both = f"SELECT x, [x] AS l FROM (VALUES (1::HUGEINT, 1), ({literal}, 2)) AS t(x, i) ORDER BY i"
    assert json.loads(run_cli("query", events_store, both, "--format", "json").output) == [
        {"x": 1, "l": [1]}, {"x": int(value), "l": [int(value)]}]


def test_column_and_field_names_are_names_not_patterns(events_store, tmp_path):
    """polars reads a name like ^b$ or * as a pattern: json printed the value of `b` under ^b$, or panicked."""
    sql = """SELECT 1 AS "^b$", 2 AS b, {'^a.*$': 3, 'ab': 4} AS s, [{'^x$': 5, 'x': 6}] AS "*", 7 AS "^$" """
    expected = {"^b$": 1, "b": 2, "s": {"^a.*$": 3, "ab": 4}, "*": [{"^x$": 5, "x": 6}], "^$": 7}
    assert json.loads(run_cli("query", events_store, sql, "--format", "json").output) == [expected]
    row = next(csv.DictReader(io.StringIO(run_cli("query", events_store, sql, "--format", "csv").output)))
    assert {k: json.loads(v) for k, v in row.items()} == expected
    run_cli("query", events_store, "SELECT ['infinity'::DATE] AS \"^b$\", 1 AS b", "-o", tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == [{"^b$": ["infinity"], "b": 1}]


def test_timestamps_with_time_zone_are_written_as_naive_ones_in_json(events_store):
    sql = ("SELECT TIMESTAMP '2024-01-02 03:04:05' AS ts, TIMESTAMPTZ '2024-01-02 03:04:05+00' AS tz, "
           "[TIMESTAMPTZ '2024-01-02 03:04:05.5+00'] AS l")
    (row,) = json.loads(run_cli("query", events_store, sql, "--format", "json").output)
    assert row["ts"] == "2024-01-02 03:04:05"  # shown in the machine's time zone, with its offset:
    assert re.fullmatch(r"2024-01-0[12] \d\d:\d\d:05[+-]\d\d:\d\d", row["tz"]), row
    assert re.fullmatch(r"2024-01-0[12] \d\d:\d\d:05\.500[+-]\d\d:\d\d", row["l"][0]), row
