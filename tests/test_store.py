import json
import subprocess
import sys
import textwrap

import duckdb
import numpy as np
import polars as pl
import pytest
from conftest import generic_log, run_cli

from mval.errors import MvalError, StoreBusyError
from mval.ingest import ingest_file
from mval.store import SCHEMA_VERSION, init_store, load_sql, open_store, transaction


def test_init_creates_tables_views_and_version(store):
    with open_store(store, read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        version = con.execute("SELECT value FROM mval_meta WHERE key = 'schema_version'").fetchall()
    assert {"events", "policies", "ingests", "examples", "scores", "logger_summary", "policy_summary"} <= tables
    assert version == [(str(SCHEMA_VERSION),)]


def test_packaged_sql_is_found():
    assert "CREATE TABLE events" in load_sql("schema")


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p.write_text("not a database"), "not a DuckDB database"),
        (lambda p: duckdb.connect(str(p)).close(), "not an mval store"),
        (lambda p: None, "no such store"),
    ],
)
def test_open_refuses_non_stores(tmp_path, make, match):
    path = tmp_path / "x.duckdb"
    make(path)
    with pytest.raises(MvalError, match=match):
        with open_store(path):
            pass


def test_init_refuses_an_empty_path():
    with pytest.raises(MvalError, match="give the store a file path"):  # it said ".: already exists"
        init_store("")


def test_init_refuses_existing_file(store):
    with pytest.raises(MvalError, match="already exists"):
        init_store(store)


def test_transaction_rolls_back_on_failure(store):
    with open_store(store) as con:
        with pytest.raises(duckdb.Error):
            with transaction(con):
                con.execute("INSERT INTO policies VALUES ('p', NULL, 0, 1.0)")
                con.execute("INSERT INTO policies VALUES ('p', NULL, 'not a number', 1.0)")
        assert con.execute("SELECT count(*) FROM policies").fetchall() == [(0,)]


def test_store_held_by_another_writer_is_reported_busy(store):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import duckdb, sys, time
            con = duckdb.connect({str(store)!r})
            print("ready", flush=True)
            sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreBusyError, match=rf"store busy, process {holder.pid} holds it"):
            with open_store(store, read_only=True):
                pass
    finally:
        holder.communicate("\n", timeout=30)


def _back_to(con, version: int) -> None:
    """Undo, on a store made by this mval, what the schema versions after `version` added (but `event_cells`,
    version 2): version 3 `examples.record` and `events.source_event_id`, version 4 `ingests.feature_columns`
    (and `ingest_log` showing it), version 5 `ingests.source_columns`."""
    if version < 3:
        con.execute("ALTER TABLE examples DROP COLUMN record")
        con.execute("ALTER TABLE events DROP COLUMN IF EXISTS source_event_id")
    if version < 4:
        con.execute("ALTER TABLE ingests DROP COLUMN IF EXISTS feature_columns")
        con.execute("CREATE OR REPLACE VIEW ingest_log AS SELECT ingest_id, logger, format, rows, path, ingested_at "
                    "FROM ingests ORDER BY ingest_id")
    con.execute("ALTER TABLE ingests DROP COLUMN IF EXISTS source_columns")
    con.execute("UPDATE mval_meta SET value = ? WHERE key = 'schema_version'", [str(version)])


def _version_1_store(store, tmp_path):
    """A store as mval with schema version 1 left it: two ingests, no `event_cells`."""
    generic_log(rows=120, seed=1).write_parquet(tmp_path / "a.parquet")
    generic_log(rows=80, seed=2).write_parquet(tmp_path / "b.parquet")
    with open_store(store) as con:
        ingest_file(con, tmp_path / "a.parquet", "a")
        ingest_file(con, tmp_path / "b.parquet", "b")
        cells = con.sql("SELECT * FROM event_cells ORDER BY ALL").pl()
        con.execute("DROP TABLE event_cells")
        _back_to(con, 1)
    return cells


def test_version_1_store_is_read_with_a_temporary_view_and_left_unchanged(store, tmp_path):
    cells = _version_1_store(store, tmp_path)
    with open_store(store, read_only=True) as con:
        assert con.sql("SELECT * FROM event_cells ORDER BY ALL").pl().equals(cells)
        assert con.execute("SELECT ingest_id, feature_columns FROM ingest_log").fetchall() == [(1, None), (2, None)]
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("SELECT value FROM mval_meta").fetchall() == [("1",)]
        assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'event_cells'").fetchall() == [(0,)]


def test_version_1_store_is_upgraded_when_opened_for_writing(store, tmp_path):
    cells = _version_1_store(store, tmp_path)
    with open_store(store) as con:
        pass
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("SELECT value FROM mval_meta").fetchall() == [(str(SCHEMA_VERSION),)]
        assert con.sql("SELECT * FROM event_cells ORDER BY ALL").pl().equals(cells)
        assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'event_cells' "
                           "AND NOT temporary").fetchall() == [(1,)]
        assert con.execute("SELECT ingest_id, feature_columns FROM ingest_log").fetchall() == [(1, None), (2, None)]


def test_failed_upgrade_is_refused_and_leaves_the_store_at_version_1(store, tmp_path):
    _version_1_store(store, tmp_path)
    with duckdb.connect(str(store)) as con:
        con.execute("CREATE TABLE event_cells (note TEXT)")  # a user's own table in the way
    with pytest.raises(MvalError,
                       match=rf"cannot upgrade the store from schema version 1 to {SCHEMA_VERSION} .*store unchanged"):
        with open_store(store):
            pass
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("SELECT value FROM mval_meta").fetchall() == [("1",)]
        assert con.execute("SELECT count(*) FROM event_cells").fetchall() == [(0,)]


def test_refused_write_leaves_an_older_store_at_its_version_and_a_later_write_upgrades_it(store, tmp_path):
    cells = _version_1_store(store, tmp_path)
    (tmp_path / "bad.csv").write_text("action,propensity,reward\n0,0.5,1\n1,1.5,0\n")
    (tmp_path / "bad_policy.csv").write_text("context_id,action,prob\n,0,0.5\n,1,0.2\n")

    def version_and_cells_table():
        with duckdb.connect(str(store), read_only=True) as con:
            return (con.execute("SELECT value FROM mval_meta").fetchall()[0][0],
                    con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'event_cells'").fetchall()[0][0])

    assert run_cli("ingest", store, tmp_path / "bad.csv", "--logger", "c", ok=False).exit_code == 2
    assert run_cli("policy", "add", store, "T", tmp_path / "bad_policy.csv", ok=False).exit_code == 2
    assert version_and_cells_table() == ("1", 0)  # both refused: the upgrade was rolled back with them
    generic_log(rows=30, seed=4).write_parquet(tmp_path / "c.parquet")
    run_cli("ingest", store, tmp_path / "c.parquet", "--logger", "c")
    assert version_and_cells_table() == (str(SCHEMA_VERSION), 1)
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.sql("SELECT * FROM event_cells WHERE ingest_id < 3 ORDER BY ALL").pl().equals(cells)
        assert con.execute("SELECT sum(rows) FROM event_cells").fetchall() == [(230,)]


def _version_2_store(store, tmp_path):
    """A store as mval with schema version 2 left it: events without `source_event_id`, examples without
    `record`, and a context-free target policy; returns its events."""
    generic_log(rows=60, seed=3).write_parquet(tmp_path / "a.parquet")
    (tmp_path / "t.csv").write_text("context_id,action,prob\n,0,1\n,1,0\n,2,0\n,3,0\n")
    run_cli("ingest", store, tmp_path / "a.parquet", "--logger", "a")
    run_cli("policy", "add", store, "T", tmp_path / "t.csv")
    with open_store(store) as con:
        _back_to(con, 2)
        return con.sql("SELECT * FROM events ORDER BY event_id").pl()


def test_version_2_store_without_event_ids_is_read_and_left_unchanged(store, tmp_path):
    events = _version_2_store(store, tmp_path)
    out = run_cli("query", store, "SELECT count(*) AS n, count(source_event_id) AS ids FROM events", "--format", "json")
    assert json.loads(out.output) == [{"n": 60, "ids": 0}]
    run_cli("query", store, "SELECT * FROM events ORDER BY event_id", "--format", "parquet", "-o", tmp_path / "e.parquet")
    assert pl.read_parquet(tmp_path / "e.parquet").drop("source_event_id").equals(events)
    ips = json.loads(run_cli("evaluate", store, "--policy", "T", "--estimator", "ips", "--format", "json").output)
    expected = (events["reward"] * (events["action"] == 0) / events["propensity"]).mean()
    assert ips[0]["n"] == 60 and abs(ips[0]["estimate"] - expected) < 1e-12
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("SELECT value FROM mval_meta").fetchall() == [("2",)]
        assert con.execute("SELECT count(*) FROM duckdb_columns() WHERE column_name = 'source_event_id'").fetchall() == [(0,)]


def test_version_2_store_gets_event_ids_when_opened_for_writing(store, tmp_path):
    events = _version_2_store(store, tmp_path)
    (tmp_path / "b.csv").write_text("event_id,action,propensity,reward\nx1,0,0.25,1\nx2,1,0.25,0\n")
    run_cli("ingest", store, tmp_path / "b.csv", "--logger", "a")
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("SELECT value FROM mval_meta").fetchall() == [(str(SCHEMA_VERSION),)]
        got = con.execute("SELECT event_id, source_event_id FROM events WHERE event_id >= 59 ORDER BY 1").fetchall()
        assert con.execute("SELECT count(*) FROM events").fetchall() == [(events.height + 2,)]
    assert got == [(59, None), (60, "x1"), (61, "x2")]


def _features_csv(path, columns: list[str], seed: int = 0):
    """A CSV log of 3 rows with numeric columns `columns` (to gather with --features)."""
    rng = np.random.default_rng(seed)
    pl.DataFrame({"action": [0, 1, 1], "propensity": [0.5] * 3, "reward": rng.random(3).round(3),
                  **{name: rng.normal(size=3).round(3) for name in columns}}).write_csv(path)
    return path


def _version_3_store(store, tmp_path):
    """A store as mval with schema version 3 left it: `ingests` without `feature_columns` (and `ingest_log`
    without them), one ingest whose features were gathered from x_1, x_2 (not recorded); returns `ingests`."""
    run_cli("ingest", store, _features_csv(tmp_path / "a.csv", ["x_1", "x_2"]), "--logger", "a", "--features", "x_*")
    with open_store(store) as con:
        _back_to(con, 3)
        return con.sql("SELECT * FROM ingests").pl()


def test_version_3_store_is_read_with_no_feature_columns_and_left_unchanged(store, tmp_path):
    ingests = _version_3_store(store, tmp_path)
    rows = json.loads(run_cli("query", store, "SELECT * FROM ingest_log", "--format", "json").output)
    assert list(rows[0]) == ["ingest_id", "logger", "format", "rows", "path", "ingested_at", "feature_columns"]
    assert [(r["ingest_id"], r["logger"], r["rows"], r["feature_columns"]) for r in rows] == [(1, "a", 3, None)]
    out = run_cli("query", store, "SELECT * EXCLUDE (feature_columns, source_columns) FROM ingests", "--format", "parquet",
                  "-o", tmp_path / "i.parquet")
    assert out.output == "" and pl.read_parquet(tmp_path / "i.parquet").equals(ingests)
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("SELECT value FROM mval_meta").fetchall() == [("3",)]
        assert con.execute("SELECT count(*) FROM duckdb_columns() "
                           "WHERE column_name = 'feature_columns'").fetchall() == [(0,)]


def test_version_3_store_records_feature_columns_from_its_next_ingest(store, tmp_path):
    """Ingest 1 (version 3) recorded no names: it is compared by length only; ingest 2 records x_1, x_3,
    and a later x_1, x_2 is compared with it."""
    _version_3_store(store, tmp_path)
    run_cli("ingest", store, _features_csv(tmp_path / "b.csv", ["x_1", "x_3"], seed=1), "--logger", "b",
            "--features", "x_*")
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("SELECT value FROM mval_meta").fetchall() == [(str(SCHEMA_VERSION),)]
        assert con.execute("SELECT ingest_id, logger, feature_columns FROM ingest_log").fetchall() == [
            (1, "a", None), (2, "b", ["x_1", "x_3"])]
    refused = run_cli("ingest", store, _features_csv(tmp_path / "c.csv", ["x_1", "x_2"], seed=2), "--logger", "a",
                      "--features", "x_*", ok=False)
    assert refused.exit_code == 2
    compared_with_2 = "feature 2 would come from column x_2, but ingest 2 took feature 2 from column x_3; "
    assert f"c.csv: {compared_with_2}" in refused.output
    refused = run_cli("ingest", store, _features_csv(tmp_path / "d.csv", ["x_1", "x_2", "x_3"], seed=3), "--logger",
                      "a", "--features", "x_*", ok=False)  # names in common with ingest 1: still compared with 2
    assert f"d.csv: {compared_with_2}" in refused.output


def _version_4_store(store, tmp_path):
    """A store as mval with schema version 4 left it: `ingests` without `source_columns`, one ingest that read
    its reward from the column `click` (not recorded); returns `ingests`."""
    path = _features_csv(tmp_path / "a.csv", ["x_1", "x_2", "click"])
    run_cli("ingest", store, path, "--logger", "a", "--features", "x_*", "--map", "reward=click")
    with open_store(store) as con:
        _back_to(con, 4)
        return con.sql("SELECT * FROM ingests").pl()


def test_version_4_store_is_read_with_no_source_columns_and_left_unchanged(store, tmp_path):
    ingests = _version_4_store(store, tmp_path)
    rows = json.loads(run_cli("query", store, "SELECT ingest_id, source_columns FROM ingests", "--format",
                              "json").output)
    assert rows == [{"ingest_id": 1, "source_columns": None}]
    run_cli("query", store, "SELECT * EXCLUDE (source_columns) FROM ingests", "--format", "parquet",
            "-o", tmp_path / "i.parquet")
    assert pl.read_parquet(tmp_path / "i.parquet").equals(ingests)
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("SELECT value FROM mval_meta").fetchall() == [("4",)]
        assert con.execute("SELECT count(*) FROM duckdb_columns() "
                           "WHERE column_name = 'source_columns'").fetchall() == [(0,)]


def test_version_4_store_compares_the_same_file_by_what_it_recorded(store, tmp_path):
    """Ingest 1 (version 4) recorded its format and feature columns, not its --map: the same file with another
    --map is skipped as before; with other feature columns it is refused. A new ingest records its columns."""
    _version_4_store(store, tmp_path)
    skipped = run_cli("ingest", store, tmp_path / "a.csv", "--logger", "a", "--features", "x_*")
    assert "already ingested (ingest 1, logger 'a'); nothing added" in skipped.output
    refused = run_cli("ingest", store, tmp_path / "a.csv", "--logger", "a", "--features", "x_2,x_1", ok=False)
    assert refused.exit_code == 2
    assert "reading features from columns x_1, x_2; this run would read features from columns x_2, x_1" in refused.output
    assert "Rerun with the options of ingest 1 (its --map was not recorded)" in refused.output
    run_cli("ingest", store, _features_csv(tmp_path / "b.csv", ["x_1", "x_2"], seed=1), "--logger", "a",
            "--features", "x_*")
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("SELECT value FROM mval_meta").fetchall() == [(str(SCHEMA_VERSION),)]
        assert con.execute("SELECT ingest_id, source_columns FROM ingests ORDER BY 1").fetchall() == [
            (1, None), (2, {"action": "action", "propensity": "propensity", "reward": "reward"})]
