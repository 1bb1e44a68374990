"""The command line as a user runs it: real stores and files in a temporary folder."""

import json
import re
from pathlib import Path

import click
from click.testing import CliRunner
import polars as pl
import pytest
from conftest import generic_log, run_cli, write_obd_csv

from cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


run = run_cli


def _commands(group: click.Group, prefix: str = "mval"):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield f"{prefix} {name}", command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix} {name}")


@pytest.fixture
def loaded(tmp_path):
    store = tmp_path / "s.duckdb"
    write_obd_csv(tmp_path / "all.csv", rows=60, n_items=6)
    generic_log(rows=40).drop("features").write_parquet(tmp_path / "log.parquet")
    run("init", store)
    run("ingest", store, tmp_path / "all.csv", "--logger", "random", "--format", "obd")
    run("ingest", store, tmp_path / "log.parquet", "--logger", "uniform")
    return store


def test_init_ingest_query_flow(loaded, tmp_path):
    out = run("query", loaded, "SELECT logger, rows FROM logger_summary", "--format", "json").output
    assert json.loads(out) == [{"logger": "random", "rows": 60}, {"logger": "uniform", "rows": 40}]
    csv = run("query", loaded, "SELECT logger, rows FROM logger_summary", "--format", "csv").output
    assert csv.splitlines() == ["logger,rows", "random,60", "uniform,40"]
    table = run("query", loaded, "SELECT logger, rows FROM logger_summary").output
    assert "random" in table and "│" in table
    run("query", loaded, "SELECT * FROM events ORDER BY event_id", "--format", "parquet", "-o", tmp_path / "e.parquet")
    events = pl.read_parquet(tmp_path / "e.parquet")
    assert events.height == 100 and events["event_id"].to_list() == list(range(100))
    again = run("ingest", loaded, tmp_path / "log.parquet", "--logger", "uniform").output
    assert "already ingested" in again


def test_csv_and_json_output_of_lists_and_big_integers(loaded):
    """Lists go into a CSV cell as JSON text; DuckDB's HUGEINT sums print as JSON numbers."""
    csv = run("query", loaded, "SELECT [1.5::DOUBLE, NULL] AS xs, {'a': 1} AS st, NULL::DOUBLE[] AS none", "--format", "csv").output
    assert csv.splitlines() == ["xs,st,none", '"[1.5, null]","{""a"": 1}",']  # JSON text, spaced as json.dumps
    out = run("query", loaded, "SELECT sum(action) AS s FROM events", "--format", "json").output
    total = run("query", loaded, "SELECT sum(action)::BIGINT FROM events", "--format", "csv").output.splitlines()[1]
    assert json.loads(out) == [{"s": int(total)}]


def test_table_output_is_truncated_but_csv_is_exact(loaded):
    table = run("query", loaded, "SELECT event_id FROM events").output
    assert "(100 rows; --format csv or json prints them all)" in table
    csv = run("query", loaded, "SELECT event_id FROM events ORDER BY 1", "--format", "csv").output
    assert csv.splitlines()[1:] == [str(i) for i in range(100)]


def test_policy_add_and_list(loaded, tmp_path):
    (tmp_path / "p.csv").write_text("context_id,action,prob\n,0,0.5\n,1,0.5\n")
    assert "added policy 'half' (2 rows)" in run("policy", "add", loaded, "half", tmp_path / "p.csv").output
    out = json.loads(run("policy", "list", loaded, "--format", "json").output)
    assert out[0]["policy"] == "half"


def _bad_log(tmp_path):
    (tmp_path / "bad.csv").write_text("action,propensity,reward\n0,0.5,1\n1,2.0,0\n")
    return tmp_path / "bad.csv"


BAD_COMMANDS = [
    (lambda s, t: ["init", s], "already exists"),
    (lambda s, t: ["ingest", t / "missing.duckdb", _bad_log(t), "--logger", "x"], "no such store"),
    (lambda s, t: ["ingest", s, _bad_log(t), "--logger", "x"], r"bad.csv: row 2, column propensity"),
    (lambda s, t: ["ingest", s, _bad_log(t), "--logger", "x", "--map", "oops"], "expected STORE_COLUMN=FILE_COLUMN"),
    (lambda s, t: ["query", s, "DELETE FROM events"], "opens the store read-only"),
    (lambda s, t: ["query", s, "SELECT nope FROM events"], "query failed: Binder Error"),
    (lambda s, t: ["query", s, "SELECT 1", "--format", "parquet"], "give -o FILE.parquet"),
    (lambda s, t: ["policy", "add", s, "p", _bad_log(t)], "missing column"),
    (lambda s, t: ["query", s, "SELECT 1", "--format", "csv", "-o", t / "nodir" / "x.csv"], "folder .*nodir does not exist"),
    # checked before anything is designed or saved (the target does not even exist here)
    (lambda s, t: ["design", s, "--target", "nope", "--budget", "10", "-o", t / "out.txt"], "unknown file type .txt"),
    (lambda s, t: ["simulate", "--env", "synthetic", "--noise", "0.3"], "--noise applies to supervised environments"),
    (lambda s, t: ["simulate", "--env", "synthetic", "--plot", t / "nodir" / "p.png"], "--plot .* does not exist"),
    # click's usage errors: one line too, with where to find the usage
    (lambda s, t: ["query", t, "SELECT 1"], r"Invalid value for 'STORE': .* is a directory. \(`mval query --help`"),
    (lambda s, t: ["evaluate"], r"Missing argument 'STORE'. \(`mval evaluate --help` shows the usage\)"),
    (lambda s, t: ["policy", "ad", s], r"No such command 'ad'.* \(`mval policy --help` shows the usage\)"),
]


@pytest.mark.parametrize("make_args, match", BAD_COMMANDS)
def test_bad_input_is_one_line_and_exit_2(loaded, tmp_path, make_args, match):
    result = run(*make_args(loaded, tmp_path), ok=False)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert re.search(match, lines[0]), lines[0]
    assert "Traceback" not in result.output


def test_every_command_has_help_with_example_and_is_in_readme():
    readme = README.read_text()
    for name, command in _commands(main):
        if isinstance(command, click.Group):
            continue
        help_text = run(*name.split()[1:], "--help").output
        assert "Example" in help_text, f"{name} --help has no example"
        assert f"{name} " in readme or f"`{name}`" in readme, f"{name} is not documented in README.md"


def test_ctrl_c_during_a_duckdb_query_is_one_line_and_exit_130():
    """DuckDB turns a Ctrl-C into RuntimeError('Query interrupted'): one line, no traceback (the real
    interrupt here comes from a timer thread calling `interrupt()` on the connection, as the signal does)."""
    import threading

    import duckdb

    from cli import MvalGroup

    group = MvalGroup()

    @group.command()
    def count() -> None:
        con = duckdb.connect()
        threading.Timer(0.3, con.interrupt).start()
        con.execute("SELECT count(*) FROM range(1000000000000) a WHERE a.range % 7 = 3").fetchall()

    @group.command()
    def signalled() -> None:  # what a real SIGINT raises inside a DuckDB call (checked by hand with `kill -INT`)
        raise RuntimeError("Query interrupted")

    @group.command()
    def broken() -> None:
        raise RuntimeError("something else")

    for command in ("count", "signalled"):
        result = CliRunner().invoke(group, [command])
        assert result.exit_code == 130 and "Traceback" not in result.output, result.output
        assert result.output == "Error: interrupted; rerun the command to finish (a store keeps only whole writes)\n"
    assert isinstance(CliRunner().invoke(group, ["broken"]).exception, RuntimeError)  # other errors are not hidden
