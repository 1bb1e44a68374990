import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import generic_log, write_obd_csv

from mval.errors import MvalError
from mval.ingest import ingest_file
from mval.store import open_store


def _all_tables(store):
    with open_store(store, read_only=True) as con:
        return {t: con.sql(f"SELECT * FROM {t} ORDER BY ALL").pl() for t in ("events", "event_cells", "ingests", "policies")}


def test_obd_layout_is_mapped(store, tmp_path):
    src = write_obd_csv(tmp_path / "all.csv", rows=120, n_items=8)
    with open_store(store) as con:
        result = ingest_file(con, tmp_path / "all.csv", "random", "obd")
        got = con.sql("SELECT * FROM events ORDER BY event_id").pl()
    assert (result.rows, result.skipped) == (120, False)
    assert got["event_id"].to_list() == list(range(120))
    assert got["action"].to_list() == src["item_id"].to_list()
    assert got["reward"].to_list() == src["click"].cast(float).to_list()
    assert got["position"].to_list() == src["position"].to_list()
    np.testing.assert_allclose(got["propensity"].to_numpy(), 1 / 8)
    expected_ctx = [
        "|".join(r) for r in src.select([f"user_feature_{j}" for j in range(4)]).iter_rows()
    ]
    assert got["context_id"].to_list() == expected_ctx
    affinities = src.select([f"user-item_affinity_{j}" for j in range(8)]).to_numpy()
    np.testing.assert_array_equal(np.array(got["features"].to_list()), affinities)
    assert str(got["ts"][0]) == "2019-11-24 00:00:00.000001"  # +00:00 stored as UTC wall time


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_generic_formats_round_trip(store, tmp_path, suffix):
    log = generic_log(rows=50)
    path = tmp_path / f"log{suffix}"
    if suffix == ".parquet":
        log.write_parquet(path)
    elif suffix == ".csv":
        log.drop("features", "action_probs").write_csv(path)
    else:
        log.write_ndjson(path)
    with open_store(store) as con:
        ingest_file(con, path, "uniform")
        got = con.sql("SELECT * FROM events ORDER BY event_id").pl()
    assert got["action"].to_list() == log["action"].to_list()
    np.testing.assert_allclose(got["reward"].to_numpy(), log["reward"].to_numpy())
    assert got["context_id"].to_list() == log["context_id"].to_list()
    if suffix != ".csv":
        np.testing.assert_allclose(np.array(got["features"].to_list()), np.array(log["features"].to_list()))


def test_map_and_feature_columns(store, tmp_path):
    rng = np.random.default_rng(1)
    frame = pl.DataFrame({
        "arm": [0, 2, 1], "p": [0.5, 0.25, 0.25], "click": [1, 0, 1],
        "x_a": rng.normal(size=3), "x_b": rng.normal(size=3), "other": [9, 9, 9],
    })
    frame.write_csv(tmp_path / "renamed.csv")
    with open_store(store) as con:
        ingest_file(con, tmp_path / "renamed.csv", "prod",
                    mapping={"action": "arm", "propensity": "p", "reward": "click"}, features=["x_*"])
        got = con.sql("SELECT action, propensity, reward, features FROM events ORDER BY event_id").pl()
    assert got["action"].to_list() == [0, 2, 1]
    np.testing.assert_allclose(np.array(got["features"].to_list()), frame.select("x_a", "x_b").to_numpy())


def test_same_content_twice_adds_nothing(store, tmp_path):
    generic_log(rows=30).write_parquet(tmp_path / "a.parquet")
    generic_log(rows=30).write_parquet(tmp_path / "copy.parquet")
    with open_store(store) as con:
        first = ingest_file(con, tmp_path / "a.parquet", "uniform")
        again = ingest_file(con, tmp_path / "copy.parquet", "uniform")
        rows = con.execute("SELECT count(*) FROM events").fetchall()[0][0]
    assert (first.skipped, again.skipped, again.rows, rows) == (False, True, 0, 30)


def test_same_content_under_another_logger_is_refused_and_store_is_unchanged(store, tmp_path):
    """One file's events cannot come from two loggers: the hash skip holds for the same logger only."""
    from conftest import run_cli

    generic_log(rows=30).write_parquet(tmp_path / "a.parquet")
    generic_log(rows=30).write_parquet(tmp_path / "copy.parquet")
    run_cli("ingest", store, tmp_path / "a.parquet", "--logger", "prod")
    before = _all_tables(store)
    result = run_cli("ingest", store, tmp_path / "copy.parquet", "--logger", "canary", ok=False)
    assert result.exit_code == 2
    assert result.output == (f"Error: {tmp_path / 'copy.parquet'}: already ingested as logger 'prod' (ingest 1); "
                             "the same events cannot come from two loggers, so nothing was added for 'canary' and they "
                             "stay stored under 'prod' (mval has no command to rename or delete an ingest)\n")
    after = _all_tables(store)
    for table in before:
        assert before[table].equals(after[table]), table


def _two_readings_csv(path: Path) -> Path:
    """A log that two readings can take apart: two reward columns, two feature columns, event ids."""
    path.write_text("event_id,action,propensity,reward,click,x_1,x_2\na,0,0.5,0.2,1,1.5,2\nb,1,0.5,0.7,0,3,4\n")
    return path


@pytest.mark.parametrize("kwargs", [
    {"features": ["x_1", "x_2"]},
    {"features": ["x_?"], "mapping": {"reward": "reward", "context_id": ""}},  # the same columns, spelled otherwise
])
def test_the_same_content_read_the_same_way_is_skipped(store, tmp_path, kwargs):
    path = _two_readings_csv(tmp_path / "log.csv")
    with open_store(store) as con:
        ingest_file(con, path, "a", features=["x_*"])
        again = ingest_file(con, path, "a", **kwargs)
        assert (again.skipped, again.ingest_id, again.rows) == (True, 1, 0)
        assert con.execute("SELECT count(*) FROM events").fetchall() == [(2,)]


@pytest.mark.parametrize("kwargs, earlier, now", [
    ({"features": ["x_*"], "mapping": {"reward": "click"}}, "reward from column 'reward'", "reward from column 'click'"),
    ({"features": ["x_2", "x_1"]}, "features from columns x_1, x_2", "features from columns x_2, x_1"),
    ({}, "features from columns x_1, x_2", "no --features"),
    ({"features": ["x_*"], "mapping": {"event_id": ""}}, "event_id from column 'event_id'", "no event_id"),
], ids=["map", "feature-order", "no-features", "ids-unread"])
def test_the_same_content_read_another_way_is_refused_naming_the_earlier_options(store, tmp_path, kwargs, earlier,
                                                                                 now):
    """Skipped, the user would believe the new reading stored; added, the same events would be stored twice."""
    path = _two_readings_csv(tmp_path / "log.csv")
    with open_store(store) as con:
        ingest_file(con, path, "a", features=["x_*"], mapping={"propensity": "propensity"})
    before = _all_tables(store)
    (tmp_path / "copy.csv").write_bytes(path.read_bytes())
    with open_store(store) as con, pytest.raises(MvalError) as refused:
        ingest_file(con, tmp_path / "copy.csv", "a", **kwargs)
    assert str(refused.value) == (
        f"{tmp_path / 'copy.csv'}: already ingested as ingest 1, reading {earlier}; this run would read {now}: the same "
        "content read two ways would store its events twice, so nothing was added. Rerun with the options of ingest 1 "
        "(--features x_1,x_2), or ingest into a new store to read the file this way (mval has no command to delete "
        "an ingest)")
    after = _all_tables(store)
    for table in before:
        assert before[table].equals(after[table]), table


def test_an_obd_file_read_with_another_format_is_refused(store, tmp_path):
    write_obd_csv(tmp_path / "obd.csv", rows=10, n_items=3)
    with open_store(store) as con:
        ingest_file(con, tmp_path / "obd.csv", "r", mapping={"action": "item_id", "propensity": "propensity_score",
                                                             "reward": "click"})
        with pytest.raises(MvalError, match=r"obd.csv: already ingested as ingest 1, reading with --format generic; "
                                            r"this run would read with --format obd: .* Rerun with the options of "
                                            r"ingest 1 \(--map action=item_id --map propensity=propensity_score "
                                            r"--map reward=click\), "):
            ingest_file(con, tmp_path / "obd.csv", "r", "obd")


def test_the_earlier_options_are_told_as_flags_to_rerun(store, tmp_path):
    path = _two_readings_csv(tmp_path / "log.csv")
    path.write_text(path.read_text().replace("x_2", '"x, 2"'))
    with open_store(store) as con:
        ingest_file(con, path, "a", mapping={"reward": "click", "event_id": ""}, features=["x, 2", "x_1"])
        with pytest.raises(MvalError, match=r"Rerun with the options of ingest 1 \(--map reward=click --map event_id= "
                                            r"--features '\"x, 2\",x_1'\)"):
            ingest_file(con, path, "a")


def test_event_ids_continue_across_ingests(store, tmp_path):
    generic_log(rows=10, seed=1).write_parquet(tmp_path / "a.parquet")
    generic_log(rows=7, seed=2).drop("features", "action_probs").write_csv(tmp_path / "b.csv")
    with open_store(store) as con:
        ingest_file(con, tmp_path / "a.parquet", "a")
        ingest_file(con, tmp_path / "b.csv", "b")
        ids = con.execute("SELECT logger, event_id FROM events ORDER BY event_id").fetchall()
    assert [i for _, i in ids] == list(range(17))
    assert [lg for lg, _ in ids] == ["a"] * 10 + ["b"] * 7


def test_event_cells_count_each_ingests_identical_rows(store, tmp_path):
    """`event_cells` = the events of each ingest grouped on (context, position, action, propensity,
    reward) with their number of rows, checked against polars on the files themselves."""
    logs = {"a": generic_log(rows=300, seed=1), "b": generic_log(rows=200, seed=2)}
    logs = {name: log.with_columns(reward=(pl.col("reward") > 0.5).cast(float), position=pl.col("action") % 2)
            for name, log in logs.items()}
    keys = ["context_id", "position", "action", "propensity", "reward"]
    with open_store(store) as con:
        expected = []
        for name, log in logs.items():
            log.write_parquet(tmp_path / f"{name}.parquet")
            ingest_id = ingest_file(con, tmp_path / f"{name}.parquet", name).ingest_id
            expected.append(log.group_by(keys).len("rows").with_columns(ingest_id=pl.lit(ingest_id)))
        got = con.sql("SELECT * FROM event_cells").pl()
    order = ["ingest_id", *keys]
    expected = pl.concat(expected).select(*order, "rows").sort(order)
    got = got.select(*order, "rows").sort(order)
    assert got.height < 500 and got["rows"].sum() == 500
    assert got.cast(expected.schema).equals(expected)


BAD_ROWS = [
    ("propensity", 0.0, r"row 3, column propensity: must be in \(0, 1\], found 0.0"),
    ("propensity", 1.5, r"row 3, column propensity: must be in \(0, 1\], found 1.5"),
    ("propensity", None, r"row 3, column propensity: must be in \(0, 1\], found missing;"),
    ("propensity", "half", r"row 3, column propensity: must be in \(0, 1\], found half;"),  # it said "missing or not a number"
    ("reward", [1], r"row 3, column reward: must be a finite number, found \[1\];"),
    ("reward", None, "row 3, column reward: must be a finite number, found missing;"),
    ("reward", float("nan"), "row 3, column reward: must be a finite number"),
    ("action", -1, "row 3, column action: must be an integer from 0 to 2147483647, found -1;"),
    ("action", 1.5, "row 3, column action: must be an integer from 0 to 2147483647, found 1.5"),
    ("action", "abc", "row 3, column action: must be an integer from 0 to 2147483647, found abc;"),
    # optional columns: a value that is there but does not parse is refused, not stored as missing
    ("features", "1;2", "row 3, column features: must be finite numbers only, found 1;2"),
    ("features", [1.0, "inf"], "row 3, column features: must be finite numbers only"),
    ("action_probs", "0.5 0.5", "row 3, column action_probs: must be a distribution .* found 0.5 0.5"),
    ("action_probs", [0.5, 0.5, None], r"row 3, column action_probs: must be a distribution .* found \[0.5,0.5,null\]"),
    ("position", "abc", "row 3, column position: must be an integer from 0 to 2147483647 or empty, found abc"),
    ("ts", "yesterday", "row 3, column ts: must be a timestamp, found yesterday"),
]


@pytest.mark.parametrize("column, value, match", BAD_ROWS)
def test_bad_rows_are_refused_and_store_is_unchanged(store, tmp_path, column, value, match):
    generic_log(rows=20, seed=5).write_parquet(tmp_path / "good.parquet")
    with open_store(store) as con:
        ingest_file(con, tmp_path / "good.parquet", "a")
    before = _all_tables(store)
    rows = [{"action": 1, "propensity": 0.5, "reward": 1.0} for _ in range(5)]
    rows[2][column] = value
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows).replace("NaN", '"NaN"'))
    with open_store(store) as con:
        with pytest.raises(MvalError, match=f"bad.jsonl: {match}"):
            ingest_file(con, path, "b")
    after = _all_tables(store)
    for table in before:
        assert before[table].equals(after[table]), table


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_values_after_the_first_rows_keep_their_type(store, tmp_path, suffix):
    """DuckDB guesses column types from the first 20,480 rows; a later 0.5 reward must stay 0.5
    and a later 1.5 action must be refused, not rounded."""
    rows = [{"action": i % 2, "propensity": 0.5, "reward": i % 2} for i in range(25_000)]
    for name, last in (("reward", {"action": 1, "propensity": 0.5, "reward": 0.5}),
                       ("action", {"action": 1.5, "propensity": 0.5, "reward": 1})):
        if suffix == ".csv":
            text = "action,propensity,reward\n" + "".join(f"{r['action']},{r['propensity']},{r['reward']}\n"
                                                         for r in [*rows, last])
        else:
            text = "".join(json.dumps(r) + "\n" for r in [*rows, last])
        (tmp_path / f"{name}{suffix}").write_text(text)
    with open_store(store) as con:
        ingest_file(con, tmp_path / f"reward{suffix}", "a")
        assert con.execute("SELECT reward FROM events WHERE event_id = 25000").fetchone()[0] == 0.5
        with pytest.raises(MvalError, match="row 25001, column action: must be an integer from 0 to 2147483647, "
                                            "found 1.5"):
            ingest_file(con, tmp_path / f"action{suffix}", "b")


def _write_log(path: Path, names: list[str]) -> None:
    """Two rows (action, propensity, reward, one more integer) under the column names `names`, which may
    repeat one: pyarrow writes such a Parquet file (polars would not), JSON lines get a repeated key."""
    rows = [(0, 0.5, 1.0, 3), (1, 0.5, 0.0, 3)]
    if path.suffix == ".parquet":
        pq.write_table(pa.table(list(zip(*rows)), names=names), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join("{" + ", ".join(f'"{n}": {v}' for n, v in zip(names, row)) + "}\n" for row in rows))
    elif path.suffix == ".json":  # one array of objects
        path.write_text(json.dumps([dict(zip(names, row)) for row in rows]))
    else:
        path.write_text("".join(",".join(map(str, line)) + "\n" for line in [names, *rows]))


@pytest.mark.parametrize("name, first, match", [
    ("f.csv", "action", r"column 'action' appears twice \(columns 1 and 4\)"),
    ("f.csv", "Action", r"column 'action' appears twice \(columns 1 and 4, the first spelled 'Action'; "
                        r"names are case-insensitive\)"),
    ("f.parquet", "action", r"column 'action' appears twice \(columns 1 and 4\)"),
    ("f.jsonl", "action", r"object 1: key 'action' appears twice in one object"),
    ("f.jsonl", "Action", r"keys 'Action' and 'action' differ only in case \(both in object 1; names are "
                          r"case-insensitive, so one would be read as the other\)"),
    ("f.json", "Action", r"keys 'Action' and 'action' differ only in case \(both in object 1; "),
])
def test_repeated_column_names_are_refused_and_store_is_unchanged(store, tmp_path, name, first, match):
    """DuckDB renames a repeated column (action, action_1): ingest would read the first one silently."""
    generic_log(rows=5).write_parquet(tmp_path / "good.parquet")
    with open_store(store) as con:
        ingest_file(con, tmp_path / "good.parquet", "a")
    before = _all_tables(store)
    _write_log(tmp_path / name, [first, "propensity", "reward", "action"])
    with open_store(store) as con, pytest.raises(MvalError, match=rf"{re.escape(name)}: {match}.*; "
                                                                   r"(rename or drop|keep) one of them$"):
        ingest_file(con, tmp_path / name, "b")
    after = _all_tables(store)
    for table in before:
        assert before[table].equals(after[table]), table


@pytest.mark.parametrize("rows", [1, 30_000])
def test_json_keys_that_differ_in_case_in_two_objects_are_refused(store, tmp_path, rows):
    """DuckDB reads `Action` as a column of its own (or, past the rows its sniffer samples, not at all), and
    the object would have no action; every object's keys are read, not a sample."""
    path = tmp_path / "f.jsonl"
    path.write_text('{"action": 0, "propensity": 0.5, "reward": 1}\n' * rows
                    + '{"Action": 1, "propensity": 0.5, "reward": 0}\n')
    _refused_and_store_unchanged(store, tmp_path, path, rf"f.jsonl: keys 'action' and 'Action' differ only in case "
                                                        rf"\(objects 1 and {rows + 1}; names are case-insensitive, so "
                                                        r"one would be read as the other\); rename or drop one of them$")


def test_a_json_key_first_seen_past_the_sample_is_read(store, tmp_path):
    """DuckDB's JSON reader takes its columns from the first 20,480 objects: a key first seen later was dropped,
    and its values with it, without a word."""
    path = tmp_path / "f.jsonl"
    path.write_text('{"action": 0, "propensity": 0.5, "reward": 1}\n' * 30_000
                    + '{"action": 1, "propensity": 0.5, "reward": 0, "context_id": "late", "position": 2}\n')
    with open_store(store) as con:
        assert ingest_file(con, path, "a").rows == 30_001
        assert con.execute("SELECT context_id, position FROM events WHERE event_id = 30000").fetchall() == [("late", 2)]


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_a_column_named_like_a_renamed_one_is_read(store, tmp_path, suffix):
    _write_log(tmp_path / f"f{suffix}", ["action", "propensity", "reward", "action_1"])
    with open_store(store) as con:
        assert ingest_file(con, tmp_path / f"f{suffix}", "a").rows == 2
        assert con.execute("SELECT list(action ORDER BY event_id) FROM events").fetchone()[0] == [0, 1]


@pytest.mark.parametrize("suffix, match", [
    (".parquet", r"row 1, column features: must be a flat list of numbers, found \[\[1.0, 2.0\], \[3.0\]\] "
                 r"\(1 more rows like it\)"),
    (".csv", r"row 2, column features: must be a flat list of numbers, found \[\[1,2\],\[3\]\]"),
    (".jsonl", r"row 2, column features: must be a flat list of numbers, found \[1,\[2,3\]\]"),
])
def test_nested_features_are_refused_and_store_is_unchanged(store, tmp_path, suffix, match):
    path = tmp_path / f"nested{suffix}"
    if suffix == ".parquet":
        pl.DataFrame({"action": [0, 1], "propensity": [0.5, 0.5], "reward": [1.0, 0.0],
                      "features": [[[1.0, 2.0], [3.0]], [[4.0], [5.0, 6.0]]]}).write_parquet(path)
    elif suffix == ".csv":
        path.write_text('action,propensity,reward,features\n0,0.5,1,"[1,2,3]"\n1,0.5,0,"[[1,2],[3]]"\n')
    else:
        path.write_text('{"action": 0, "propensity": 0.5, "reward": 1, "features": [1, 2, 3]}\n'
                        '{"action": 1, "propensity": 0.5, "reward": 0, "features": [1, [2, 3]]}\n')
    before = _all_tables(store)
    with open_store(store) as con, pytest.raises(MvalError, match=rf"nested{suffix}: {match}; .*not a list of lists"):
        ingest_file(con, path, "a")
    after = _all_tables(store)
    for table in before:
        assert before[table].equals(after[table]), table


def test_typed_parquet_columns_that_do_not_parse_are_refused(store, tmp_path):
    """Parquet keeps its types; a ts of integers or features of text still cannot be stored as missing."""
    base = {"action": [0, 1], "propensity": [0.5, 0.5], "reward": [1.0, 0.0]}
    pl.DataFrame({**base, "ts": [1, 2]}).write_parquet(tmp_path / "ts.parquet")
    pl.DataFrame({**base, "features": [["1", "2"], ["x", "2"]]}).write_parquet(tmp_path / "f.parquet")
    with open_store(store) as con:
        with pytest.raises(MvalError, match="row 1, column ts: must be a timestamp, found 1"):
            ingest_file(con, tmp_path / "ts.parquet", "a")
        with pytest.raises(MvalError, match=r"row 2, column features: must be finite numbers only, found \[x, 2\]"):
            ingest_file(con, tmp_path / "f.parquet", "a")


@pytest.mark.parametrize("column", ["context_id", "event_id"])
@pytest.mark.parametrize("values, dtype", [([1.0, 2.0], pl.Float64), ([1.0, float("nan")], pl.Float64),
                                           ([1.5, 2.5], pl.Decimal(10, 2))])
def test_id_columns_of_floats_are_refused(store, tmp_path, column, values, dtype):
    """Ids are compared as text: a float (pandas writes an integer column with a missing value as floats)
    or fractional decimal id column would make 1.0 a different id from the 1 of an integer or CSV file."""
    from decimal import Decimal

    from mval.policies import add_policy

    ids = [Decimal(str(v)) for v in values] if dtype != pl.Float64 else values
    base = {"action": [0, 1], "propensity": [0.5, 0.5], "reward": [1.0, 0.0]}
    pl.DataFrame({**base, column: ids}, schema_overrides={column: dtype}).write_parquet(tmp_path / "f.parquet")
    pl.DataFrame({"context_id": ids, "action": [0, 0], "prob": [1.0, 1.0]},
                 schema_overrides={"context_id": dtype}).write_parquet(tmp_path / "p.parquet")
    before = _all_tables(store)
    with open_store(store) as con:
        with pytest.raises(MvalError, match=rf"f.parquet: column {column} is (DOUBLE|DECIMAL\(10,2\)); ids are "
                                            rf"compared as text, .*astype\('Int64'\)"):
            ingest_file(con, tmp_path / "f.parquet", "a")
        with pytest.raises(MvalError, match=r"p.parquet: column context_id is"):
            add_policy(con, "p", tmp_path / "p.parquet")
    assert all(before[t].equals(after) for t, after in _all_tables(store).items())


def test_integer_and_whole_decimal_ids_are_their_integer_text(store, tmp_path):
    from decimal import Decimal

    base = {"action": [0, 1], "propensity": [0.5, 0.5], "reward": [1.0, 0.0]}
    pl.DataFrame({**base, "context_id": [1, 2]}, schema_overrides={"context_id": pl.Int8}).write_parquet(tmp_path / "i.parquet")
    pl.DataFrame({**base, "context_id": [Decimal("1"), Decimal("30")]},
                 schema_overrides={"context_id": pl.Decimal(10, 0)}).write_parquet(tmp_path / "d.parquet")
    with open_store(store) as con:
        ingest_file(con, tmp_path / "i.parquet", "i")
        ingest_file(con, tmp_path / "d.parquet", "d")
        ids = con.execute("SELECT logger, list(context_id ORDER BY event_id) FROM events GROUP BY 1 ORDER BY 1").fetchall()
    assert ids == [("d", ["1", "30"]), ("i", ["1", "2"])]


def test_text_timestamps_with_an_offset_are_stored_in_utc(store, tmp_path):
    path = tmp_path / "ts.csv"
    path.write_text("action,propensity,reward,ts\n0,0.5,1,2024-01-01 12:00:00+02\n1,0.5,0,2024-01-01 12:00:00\n"
                    "1,0.5,0,2024-01-01T12:00:00Z\n")
    with open_store(store) as con:
        ingest_file(con, path, "a")
        got = [str(r[0]) for r in con.execute("SELECT ts FROM events ORDER BY event_id").fetchall()]
    assert got == ["2024-01-01 10:00:00", "2024-01-01 12:00:00", "2024-01-01 12:00:00"]


def test_action_probs_must_match_propensity(store, tmp_path):
    log = generic_log(rows=5).with_columns(propensity=pl.Series([0.25, 0.25, 0.3, 0.25, 0.25]))
    log.write_parquet(tmp_path / "x.parquet")
    with open_store(store) as con, pytest.raises(MvalError, match="row 3, column action_probs"):
        ingest_file(con, tmp_path / "x.parquet", "a")


@pytest.mark.parametrize(
    "kwargs, content, match",
    [
        ({}, "reward,propensity\n1,0.5\n", "missing column action .*--map action=FILE_COLUMN"),
        ({"fmt": "obd"}, "action,propensity,reward\n1,0.5,1\n", "missing column 'timestamp' of the Open Bandit"),
        ({"mapping": {"reward": "nope"}}, "action,propensity,reward\n1,0.5,1\n", "--map reward=nope: no column"),
        ({"mapping": {"rewards": "r"}}, "action,propensity,reward\n1,0.5,1\n", "--map rewards=...: unknown store column"),
        ({"features": ["z_*"]}, "action,propensity,reward\n1,0.5,1\n", "no column matches --features z_"),
        ({}, "action,propensity,reward\n", "the file has no rows"),
    ],
)
def test_bad_files_are_refused(store, tmp_path, kwargs, content, match):
    path = tmp_path / "f.csv"
    path.write_text(content)
    with open_store(store) as con, pytest.raises(MvalError, match=match):
        ingest_file(con, path, "a", **kwargs)


@pytest.mark.parametrize("name, content, match", [
    ("empty.csv", b"", r"empty.csv: the file is empty \(0 bytes\); check that the export finished$"),
    ("empty.jsonl", b"", r"empty.jsonl: the file is empty \(0 bytes\)"),  # both said "missing column action"
    ("upper.csv", b"Action,propensity,reward\n0,0.5,1\n",
     r"upper.csv: missing column action \(file column 'action'\); names are case-sensitive here: --map action=Action$"),
    ("latin.csv", "action,propensity,reward,context_id\n0,0.5,1,caf\xe9\n".encode("latin-1"),
     r"latin.csv: line 2 is not UTF-8 text; save the file as UTF-8 \(it may be Latin-1"),  # "CSV Error on Line: 2"
    ("utf16.csv", "action,propensity,reward\n0,0.5,1\n".encode("utf-16"), r"utf16.csv: line 1 is not UTF-8 text; "),
    ("latin.jsonl", '{"action": 0, "propensity": 0.5, "reward": 1, "context_id": "caf\xe9"}\n'.encode("latin-1"),
     r"latin.jsonl: the file is not UTF-8 text; "),
    ("late.csv", b"action,propensity,reward,context_id\n" + b"0,0.5,1,u\n" * 30_000 + "0,0.5,1,caf\xe9\n".encode("latin-1"),
     r"late.csv: line 30002 is not UTF-8 text; "),  # past the sample: the ingest's own scan
], ids=["empty-csv", "empty-jsonl", "other-case", "latin-1", "utf-16", "latin-1-json", "latin-1-past-sample"])
def test_files_that_cannot_be_read_as_given_say_why(store, tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    _refused_and_store_unchanged(store, tmp_path, path, rf"^{re.escape(str(tmp_path))}/{match}")


@pytest.mark.parametrize("column", ["context_id", "event_id"])
@pytest.mark.parametrize("values", [pa.array([[1], [2]]), pa.array([{"a": 1}, {"a": 2}])], ids=["list", "struct"])
def test_nested_id_columns_are_refused(store, tmp_path, column, values):
    """Their text ({'a': 1}) would be stored as the id."""
    pq.write_table(pa.table({"action": [0, 1], "propensity": [0.5, 0.5], "reward": [1.0, 0.0], column: values}),
                   tmp_path / "f.parquet")
    _refused_and_store_unchanged(store, tmp_path, tmp_path / "f.parquet",
                                 rf"f.parquet: column {column} is (BIGINT\[\]|STRUCT\(a BIGINT\)); an id is one text "
                                 "or integer value per row")


def test_unreadable_and_unknown_files(store, tmp_path):
    (tmp_path / "x.parquet").write_text("this is not parquet")
    (tmp_path / "x.xlsx").write_text("")
    with open_store(store) as con:
        with pytest.raises(MvalError, match=r"x.parquet: cannot read as parquet"):
            ingest_file(con, tmp_path / "x.parquet", "a")
        with pytest.raises(MvalError, match=r"unknown file type .xlsx"):
            ingest_file(con, tmp_path / "x.xlsx", "a")
        with pytest.raises(MvalError, match=r"no such file"):
            ingest_file(con, tmp_path / "missing.csv", "a")


def test_feature_dimension_must_match_store(store, tmp_path):
    generic_log(rows=5).write_parquet(tmp_path / "a.parquet")
    generic_log(rows=5, seed=3).with_columns(features=pl.Series([[1.0, 2.0]] * 5)).write_parquet(tmp_path / "b.parquet")
    with open_store(store) as con:
        ingest_file(con, tmp_path / "a.parquet", "a")
        with pytest.raises(MvalError, match="same number of features, found lengths 2, 3"):
            ingest_file(con, tmp_path / "b.parquet", "b")


def test_feature_dimension_must_match_within_the_file(store, tmp_path):
    ragged = [[1.0, 2.0], [1.0, 2.0, 3.0], [1.0, 2.0], [4.0, 5.0, 6.0, 7.0], [1.0, 2.0]]
    generic_log(rows=5).with_columns(features=pl.Series(ragged)).write_parquet(tmp_path / "ragged.parquet")
    with open_store(store) as con:
        with pytest.raises(MvalError, match="same number of features, found lengths 2, 4"):
            ingest_file(con, tmp_path / "ragged.parquet", "a")
        assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def _log_with_ids(rows: int, seed: int = 0, ids=None) -> pl.DataFrame:
    """A CSV-able log (no list columns) whose rows carry the file's own `event_id`."""
    ids = [f"e{i}" for i in range(rows)] if ids is None else ids
    return generic_log(rows=rows, seed=seed).drop("features", "action_probs").with_columns(event_id=pl.Series(ids))


def _counts(con) -> tuple[list, list]:
    """Events per ingest, and the rows `event_cells` count per ingest (what evaluate and design check)."""
    events = con.execute("SELECT ingest_id, count(*) FROM events GROUP BY 1 ORDER BY 1").fetchall()
    cells = con.execute("SELECT ingest_id, sum(rows)::BIGINT FROM event_cells GROUP BY 1 ORDER BY 1").fetchall()
    return events, cells


def test_appended_csv_reingested_adds_only_the_new_rows(store, tmp_path):
    """A daily log appended to and ingested again: its old rows are recognised by their event ids."""
    from mval.evaluate import evaluate_policy
    from mval.policies import add_policy

    log = _log_with_ids(50, seed=4)
    path = tmp_path / "daily.csv"
    log[:30].write_csv(path)
    (tmp_path / "t.csv").write_text("context_id,action,prob\n,0,1\n,1,0\n,2,0\n,3,0\n")  # everywhere action 0
    with open_store(store) as con:
        first = ingest_file(con, path, "prod")
        with path.open("a") as f:
            f.write(log[30:].write_csv(include_header=False))
        again = ingest_file(con, path, "prod")
        got = con.sql("SELECT * FROM events ORDER BY event_id").pl()
        events, cells = _counts(con)
        add_policy(con, "always-0", tmp_path / "t.csv")
        ips = evaluate_policy(con, "always-0", estimators=["ips"]).estimates[0][1]
    assert (first.rows, first.already_stored) == (30, 0)
    assert (again.rows, again.already_stored, again.skipped) == (20, 30, False)
    assert got["source_event_id"].to_list() == log["event_id"].to_list()
    assert got["event_id"].to_list() == list(range(50))
    np.testing.assert_array_equal(got["reward"].to_numpy(), log["reward"].to_numpy())
    assert events == cells == [(first.ingest_id, 30), (again.ingest_id, 20)]
    expected = np.mean(log["reward"].to_numpy() * (log["action"].to_numpy() == 0) / log["propensity"].to_numpy())
    assert ips.n == 50
    np.testing.assert_allclose(ips.estimate, expected)


def test_same_ids_in_another_order_add_nothing(store, tmp_path):
    log = generic_log(rows=40, seed=6).with_columns(event_id=pl.Series(np.arange(1000, 1040)))
    log.write_parquet(tmp_path / "a.parquet")
    log.sample(fraction=1.0, shuffle=True, seed=7).write_parquet(tmp_path / "b.parquet")
    with open_store(store) as con:
        first = ingest_file(con, tmp_path / "a.parquet", "prod")
    before = _all_tables(store)
    with open_store(store) as con:
        again = ingest_file(con, tmp_path / "b.parquet", "prod")
        events, cells = _counts(con)
    after = _all_tables(store)
    assert (again.rows, again.already_stored, again.skipped) == (0, 40, False)
    assert events == cells == [(first.ingest_id, 40)]
    for table in ("events", "event_cells", "policies"):
        assert before[table].equals(after[table]), table
    assert after["ingests"]["rows"].to_list() == [40, 0]  # the file is recorded: a third try is a hash skip


def test_changed_content_under_a_stored_id_is_refused_and_store_is_unchanged(store, tmp_path):
    log = _log_with_ids(30, seed=8)
    log.write_csv(tmp_path / "a.csv")
    changed = log.with_columns(reward=pl.when(pl.col("event_id") == "e3").then(pl.col("reward") + 1)
                               .otherwise(pl.col("reward")))
    pl.concat([changed, _log_with_ids(5, seed=9, ids=[f"n{i}" for i in range(5)])]).write_csv(tmp_path / "b.csv")
    with open_store(store) as con:
        ingest_file(con, tmp_path / "a.csv", "prod")
    before = _all_tables(store)
    with open_store(store) as con, pytest.raises(
            MvalError, match=r"b.csv: row 4, column reward: event id 'e3' of logger 'prod' is already in the "
                             r"store \(ingest 1\) with reward .*, the file has .*"):
        ingest_file(con, tmp_path / "b.csv", "prod")
    after = _all_tables(store)
    for table in before:
        assert before[table].equals(after[table]), table


@pytest.mark.parametrize("ids, match", [
    (["a", "b", "c", "d", "b", "b"], r"row 5, column event_id: event id 'b' repeats row 2 \(1 more rows like it\)"),
    (["a", "b", None, "d", "e", "f"], "row 3, column event_id: must be an event id, found missing"),
    (["a", "b", "c", "d", "e", " "], "row 6, column event_id: must be an event id, found missing"),
])
def test_bad_event_ids_within_a_file_are_refused(store, tmp_path, ids, match):
    _log_with_ids(6, ids=ids).write_csv(tmp_path / "f.csv")
    with open_store(store) as con:
        with pytest.raises(MvalError, match=f"f.csv: {match}"):
            ingest_file(con, tmp_path / "f.csv", "prod")
        assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_map_event_id_from_the_command_line(store, tmp_path):
    from conftest import run_cli

    log = _log_with_ids(12).rename({"event_id": "my_id"})
    log[:8].write_csv(tmp_path / "a.csv")
    log.write_csv(tmp_path / "b.csv")
    run_cli("ingest", store, tmp_path / "a.csv", "--logger", "prod", "--map", "event_id=my_id")
    out = run_cli("ingest", store, tmp_path / "b.csv", "--logger", "prod", "--map", "event_id=my_id",
                  "--output", "json").output
    assert json.loads(out) == [{"path": str(tmp_path / "b.csv"), "logger": "prod", "ingest_id": 2, "rows": 4,
                                "already_stored": 8, "skipped": False, "unchecked": 0}]
    with open_store(store, read_only=True) as con:
        ids = [r[0] for r in con.execute("SELECT source_event_id FROM events ORDER BY event_id").fetchall()]
    assert ids == [f"e{i}" for i in range(12)]


def test_a_slate_shares_one_event_id_across_positions(store, tmp_path):
    """Per-position logs name an impression once for all its positions: (id, position) is the event."""
    log = _log_with_ids(6, ids=["i1", "i1", "i2", "i2", "i3", "i3"]).with_columns(position=pl.Series([0, 1] * 3))
    log[:4].write_csv(tmp_path / "a.csv")
    log.write_csv(tmp_path / "b.csv")
    with open_store(store) as con:
        ingest_file(con, tmp_path / "a.csv", "prod")
        again = ingest_file(con, tmp_path / "b.csv", "prod")
        stored = con.execute("SELECT source_event_id, position FROM events ORDER BY event_id").fetchall()
    assert (again.rows, again.already_stored) == (2, 4)
    assert stored == [("i1", 0), ("i1", 1), ("i2", 0), ("i2", 1), ("i3", 0), ("i3", 1)]
    log.with_columns(position=pl.Series([0, 0, 1, 0, 0, 1])).write_csv(tmp_path / "c.csv")
    with open_store(store) as con, pytest.raises(MvalError, match=r"c.csv: row 2, .*'i1' repeats row 1 at the same position"):
        ingest_file(con, tmp_path / "c.csv", "other")


def test_ids_can_be_left_unread_and_events_stored_without_ids_are_reported(store, tmp_path):
    """`--map event_id=` ingests a file whose ids are incomplete as a file without ids; a later file with
    ids cannot match those events, and the command says so."""
    from conftest import run_cli

    log = _log_with_ids(6, ids=["a", None, "c", "d", "e", "f"])
    log.write_csv(tmp_path / "partial.csv")
    out = run_cli("ingest", store, tmp_path / "partial.csv", "--logger", "prod", "--map", "event_id=").output
    assert out.startswith("ingested 6 rows")
    _log_with_ids(6).write_csv(tmp_path / "full.csv")
    result = run_cli("ingest", store, tmp_path / "full.csv", "--logger", "prod")
    assert result.stdout.startswith("ingested 6 rows")
    assert result.stderr == (f"note: logger 'prod' has 6 events ingested without event ids; rows of "
                             f"{tmp_path / 'full.csv'} that repeat them were added again (no id to match)\n")
    _log_with_ids(3, seed=1).write_csv(tmp_path / "new.csv")
    bad = run_cli("ingest", store, tmp_path / "new.csv", "--logger", "x", "--map", "reward=", ok=False)
    assert bad.exit_code == 2 and "--map reward=: reward is required" in bad.output


def test_the_same_id_under_another_logger_is_another_event(store, tmp_path):
    _log_with_ids(10, seed=1).write_csv(tmp_path / "a.csv")
    _log_with_ids(10, seed=2).write_csv(tmp_path / "b.csv")  # same ids, other rewards
    with open_store(store) as con:
        a = ingest_file(con, tmp_path / "a.csv", "a")
        b = ingest_file(con, tmp_path / "b.csv", "b")
        got = con.execute("SELECT logger, count(DISTINCT source_event_id) FROM events GROUP BY 1 ORDER BY 1").fetchall()
    assert (a.rows, b.rows, b.already_stored) == (10, 10, 0)
    assert got == [("a", 10), ("b", 10)]


def test_logs_without_event_ids_are_not_deduplicated(store, tmp_path):
    """No event id column: the same rows in another file are new events, as before."""
    log = generic_log(rows=20, seed=3)
    log.write_parquet(tmp_path / "a.parquet")
    log.reverse().write_parquet(tmp_path / "b.parquet")
    with open_store(store) as con:
        ingest_file(con, tmp_path / "a.parquet", "prod")
        b = ingest_file(con, tmp_path / "b.parquet", "prod")
        nulls = con.execute("SELECT count(*) FROM events WHERE source_event_id IS NULL").fetchone()[0]
    assert (b.rows, b.already_stored, nulls) == (20, 0, 40)


def _refused_and_store_unchanged(store, tmp_path, path: Path, match: str, **kwargs) -> None:
    """Ingesting `path` (after an earlier good file without features) is refused with `match` and
    leaves every table as it was."""
    generic_log(rows=5, seed=11).drop("features").write_parquet(tmp_path / "earlier.parquet")
    with open_store(store) as con:
        ingest_file(con, tmp_path / "earlier.parquet", "earlier")
    before = _all_tables(store)
    with open_store(store) as con, pytest.raises(MvalError, match=match):
        ingest_file(con, path, "a", **kwargs)
    after = _all_tables(store)
    for table in before:
        assert before[table].equals(after[table]), table


@pytest.mark.parametrize("file_order, patterns, gathered", [
    (["f_a", "f_b"], ["f_*"], ["f_a", "f_b"]),
    (["f_b", "f_a"], ["f_*"], ["f_a", "f_b"]),  # another export's column order: the same vectors
    (["f_10", "f_2", "f_1", "F_3"], ["f_*"], ["f_1", "f_2", "f_10"]),  # natural order, case-sensitive
    (["f_a", "f_b"], ["f_b", "f_a"], ["f_b", "f_a"]),  # names: the order given
    (["f_a", "x", "f_b"], ["x", "f_*"], ["x", "f_a", "f_b"]),  # patterns in the order given
    (["f_a", "f_b", "f_c"], ["f_c", "f_*"], ["f_c", "f_a", "f_b"]),  # each column once, where first named
    (["f1", "f[1]", "f*", "f2"], ["f[1]", "f*"], ["f[1]", "f*"]),  # an exact name wins over its glob reading
    (["f1", "f[1]", "f*", "f2"], ["f?", "f[[]*"], ["f1", "f2", "f*", "f[1]"]),  # globs still glob
    (["price, usd", "x_2", "x_1"], ["x_*", "price, usd"], ["x_1", "x_2", "price, usd"]),  # a comma in a name
])
def test_features_follow_the_patterns_not_the_file_order(store, tmp_path, file_order, patterns, gathered):
    """Two exports of one log with their columns in another order must store the same vectors."""
    rng = np.random.default_rng(3)
    values = {name: rng.normal(size=4) for name in file_order}
    frame = pl.DataFrame({"action": [0, 1, 1, 0], "propensity": [0.5] * 4, "reward": [1.0, 0.0, 1.0, 1.0],
                          **values})
    frame.write_csv(tmp_path / "f.csv")
    with open_store(store) as con:
        ingest_file(con, tmp_path / "f.csv", "a", features=patterns)
        got = np.array(con.execute("SELECT list(features ORDER BY event_id) FROM events").fetchone()[0])
    np.testing.assert_array_equal(got, np.column_stack([values[name] for name in gathered]))


@pytest.mark.parametrize("text, patterns", [
    ("x_*", ["x_*"]),
    (" x_b , x_a ", ["x_b", "x_a"]),
    ('"price, usd",x_*', ["price, usd", "x_*"]),
    ('x_1, "a ""b"", c" ,y', ["x_1", 'a "b", c', "y"]),
    ('" padded "', [" padded "]),  # quoted: taken as written
])
def test_features_option_splits_on_commas_outside_double_quotes(text, patterns):
    from mval.ingest import features_option, parse_features

    assert parse_features(text) == patterns
    assert parse_features(features_option(patterns)) == patterns


@pytest.mark.parametrize("text", ['a"b', '"a', '"a"b'])
def test_features_option_with_a_stray_quote_is_refused(text):
    from mval.ingest import parse_features

    with pytest.raises(MvalError, match=r"--features .*: a double quote must enclose a whole pattern"):
        parse_features(text)


def test_the_feature_space_fix_quotes_a_name_with_a_comma(store, tmp_path):
    path = _features_file(tmp_path / "a.csv", ["price, usd", "x"])
    with open_store(store) as con:
        ingest_file(con, path, "a", features=["price, usd", "x"])
        with pytest.raises(MvalError, match=r'\(--features "price, usd",x\), or ingest into a new store$'):
            ingest_file(con, _features_file(tmp_path / "b.csv", ["price, usd", "x"], seed=1), "a",
                        features=["x", "price, usd"])


def test_the_cli_takes_a_column_named_like_a_glob_as_its_name(store, tmp_path):
    from conftest import run_cli

    path = _features_file(tmp_path / "a.csv", ["f1", "f[1]"])
    run_cli("ingest", store, path, "--logger", "a", "--features", "f[1]")
    with open_store(store, read_only=True) as con:
        assert con.execute("SELECT feature_columns FROM ingests").fetchall() == [(["f[1]"],)]


def test_the_cli_takes_a_quoted_column_name_with_a_comma(store, tmp_path):
    from conftest import run_cli

    path = _features_file(tmp_path / "a.csv", ["price, usd", "x_2", "x_1"])
    run_cli("ingest", store, path, "--logger", "a", "--features", '"price, usd",x_*')
    with open_store(store, read_only=True) as con:
        assert con.execute("SELECT feature_columns FROM ingests").fetchall() == [(["price, usd", "x_1", "x_2"],)]


def test_obd_features_and_context_do_not_depend_on_the_column_order(store, tmp_path):
    src = write_obd_csv(tmp_path / "a.csv", rows=30, n_items=12)
    gathered = [c for c in src.columns if c.startswith(("user_feature_", "user-item_affinity_"))]
    src.select(*[c for c in src.columns if c not in gathered], *reversed(gathered)).write_csv(tmp_path / "b.csv")
    with open_store(store) as con:
        ingest_file(con, tmp_path / "a.csv", "a", "obd")
        ingest_file(con, tmp_path / "b.csv", "b", "obd")
        got = {logger: (ctx, np.array(f)) for logger, ctx, f in con.execute(
            "SELECT logger, list(context_id ORDER BY event_id), list(features ORDER BY event_id) FROM events GROUP BY 1"
        ).fetchall()}
    affinities = src.select([f"user-item_affinity_{j}" for j in range(12)]).to_numpy()  # 0, 1, .., 10, 11
    np.testing.assert_array_equal(got["a"][1], affinities)
    np.testing.assert_array_equal(got["b"][1], affinities)
    assert got["a"][0] == got["b"][0]


def test_a_features_pattern_that_matches_nothing_is_refused(store, tmp_path):
    """A misspelt name among others would drop its column from every vector without a word."""
    path = tmp_path / "f.csv"
    path.write_text("action,propensity,reward,f_a,f_b\n0,0.5,1,0.1,0.2\n")
    _refused_and_store_unchanged(store, tmp_path, path, r"f.csv: no column matches --features f_c; columns are",
                                 features=["f_a", "f_c"])


def _ragged_rows(rows: int, bad_row: int, bad: str) -> str:
    return "action,propensity,reward\n" + "".join(bad if i == bad_row else "0,0.5,1\n" for i in range(rows))


@pytest.mark.parametrize("text, line, fields", [
    ("action,propensity,reward\n0,0.5,1\n1,0.5,0,EXTRA\n", 3, 4),
    ("action,propensity,reward\n0,0.5,1\n1,0.5\n0,0.5,1\n", 3, 2),
    ("action,propensity,reward\n1,0.5,0,EXTRA\n0,0.5,1\n", 2, 4),
    ("action,propensity,reward\r\n0,0.5,1\r\n1,0.5,0,EXTRA\r\n", 3, 4),
    ("action\tpropensity\treward\n0\t0.5\t1\n1\t0.5\n", 3, 2),
    (_ragged_rows(100_000, 60_000, "1,0.5,0,EXTRA\n"), 60_002, 4),  # past the rows DuckDB's sniffer samples
    (_ragged_rows(100_000, 60_000, "1,0.5\n"), 60_002, 2),
], ids=["extra", "missing", "first-row", "crlf", "tsv", "extra-past-sample", "missing-past-sample"])
def test_a_ragged_csv_line_is_named_and_store_is_unchanged(store, tmp_path, text, line, fields):
    """A line with more or fewer fields than the header: DuckDB's sniffer takes the file for one without a
    header (columns column0..) or fails mid-scan; either way the line is what the user must fix."""
    path = tmp_path / ("ragged.tsv" if "\t" in text else "ragged.csv")
    path.write_bytes(text.encode())
    _refused_and_store_unchanged(store, tmp_path, path,
                                 rf"^{re.escape(str(path))}: line {line} has {fields} fields, the header 3; ")


@pytest.mark.parametrize("column, value, shown", [
    ("action", "99999999999", "99999999999"),
    ("action", "-1", "-1"),
    ("action", "-1.0", "-1"),
    ("position", "99999999999", "99999999999"),
])
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_integers_out_of_range_say_the_limit(store, tmp_path, column, value, shown, suffix):
    columns = {"action": [0.0, 1.0, 1.0], "propensity": [0.5] * 3, "reward": [1.0, 0.0, 1.0],
               "position": [0.0, 1.0, 2.0]}
    columns[column][2] = float(value)
    path = tmp_path / f"f{suffix}"
    if suffix == ".csv":
        path.write_text("action,propensity,reward,position\n0,0.5,1,0\n1,0.5,0,1\n"
                        + (f"{value},0.5,1,2\n" if column == "action" else f"1,0.5,1,{value}\n"))
    else:
        pl.DataFrame(columns).write_parquet(path)  # doubles: the store's INTEGER is checked after reading
    optional = " or empty" if column == "position" else ""
    _refused_and_store_unchanged(store, tmp_path, path, rf"f{suffix}: row 3, column {column}: must be an integer "
                                                        rf"from 0 to 2147483647{optional}, found {shown}; ")


@pytest.mark.parametrize("cell, shown", [("zz", "zz"), ("", "missing"), ("inf", "inf")])
def test_a_non_number_in_a_features_column_names_the_column(store, tmp_path, cell, shown):
    path = tmp_path / "f.csv"
    path.write_text(f"action,propensity,reward,x_a,x_b\n0,0.5,1,0.1,0.2\n1,0.5,0,0.3,0.4\n1,0.5,1,0.5,{cell}\n")
    _refused_and_store_unchanged(store, tmp_path, path, rf"f.csv: row 3, column x_b: must be a finite number "
                                                        rf"\(gathered into features\), found {shown}; ",
                                 features=["x_*"])


@pytest.mark.parametrize("mapping, column", [({}, "context_id"), ({}, "event_id"),
                                             ({"context_id": "user"}, "user")])
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_text_ids_written_as_floats_are_refused(store, tmp_path, mapping, column, suffix):
    """pandas writes an integer column with a missing value as floats: a CSV id "2.0" would be another id
    than the "2" of a file written from integers."""
    frame = pl.DataFrame({"action": [0, 1, 1], "propensity": [0.5] * 3, "reward": [1.0, 0.0, 1.0],
                          column: ["1", "2.0", "3.00"]})
    path = tmp_path / f"f{suffix}"
    if suffix == ".csv":
        frame.write_csv(path)
    else:
        frame.write_ndjson(path)
    _refused_and_store_unchanged(store, tmp_path, path,
                                 rf"f{suffix}: row 2, column {column}: must be an integer or text id, not a float, "
                                 rf"found 2.0 \(1 more rows like it\); .*df\['{column}'\].astype\('Int64'\)",
                                 mapping=mapping)


def test_text_ids_that_only_look_like_numbers_are_kept(store, tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("context_id,event_id,action,propensity,reward\n1.5,v1.0,0,0.5,1\n1,1.0.0,1,0.5,0\n"
                    "-1,10,0,0.5,1\n")
    with open_store(store) as con:
        ingest_file(con, path, "a")
        got = con.execute("SELECT context_id, source_event_id FROM events ORDER BY event_id").fetchall()
    assert got == [("1.5", "v1.0"), ("1", "1.0.0"), ("-1", "10")]


def _features_file(path: Path, columns: list[str], seed: int = 0) -> Path:
    """A CSV log of 4 rows with numeric columns `columns` (to gather with --features), in the file order given."""
    rng = np.random.default_rng(seed)
    pl.DataFrame({"action": [0, 1, 1, 0], "propensity": [0.5] * 4, "reward": rng.random(4).round(3),
                  **{name: rng.normal(size=4).round(3) for name in columns}}).write_csv(path)
    return path


def _recorded(store) -> list[tuple]:
    with open_store(store, read_only=True) as con:
        return con.execute("SELECT ingest_id, logger, feature_columns FROM ingest_log").fetchall()


def test_the_gathered_feature_columns_are_recorded_and_the_same_names_pass(store, tmp_path):
    """Another file, another logger, the columns in another file order: the same names, the same vectors."""
    with open_store(store) as con:
        ingest_file(con, _features_file(tmp_path / "a.csv", ["f_a", "f_b", "x"]), "a", features=["f_*"])
        ingest_file(con, _features_file(tmp_path / "b.csv", ["f_b", "f_a"], seed=1), "b", features=["f_a", "f_b"])
        generic_log(rows=5).drop("features").write_parquet(tmp_path / "none.parquet")
        ingest_file(con, tmp_path / "none.parquet", "c")
    assert _recorded(store) == [(1, "a", ["f_a", "f_b"]), (2, "b", ["f_a", "f_b"]), (3, "c", None)]


def test_obd_records_its_affinity_columns_and_list_columns_record_none(tmp_path):
    from mval.store import init_store

    store = init_store(tmp_path / "obd.duckdb")
    write_obd_csv(tmp_path / "obd.csv", rows=10, n_items=3)
    pl.DataFrame({"action": [0, 1], "propensity": [0.5, 0.5], "reward": [1.0, 0.0],
                  "features": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]}).write_parquet(tmp_path / "list.parquet")
    with open_store(store) as con:
        ingest_file(con, tmp_path / "obd.csv", "random", "obd")
        ingest_file(con, tmp_path / "list.parquet", "other")  # one list column: compared by length only
    assert _recorded(store) == [(1, "random", [f"user-item_affinity_{j}" for j in range(3)]), (2, "other", None)]


@pytest.mark.parametrize("columns, patterns, match", [
    (["f_a", "f_c"], ["f_*"], r"feature 2 would come from column f_c, but ingest 1 took feature 2 from column f_b"),
    (["f_a", "f_b"], ["f_b", "f_a"],
     r"feature 1 would come from column f_b, but ingest 1 took feature 1 from column f_a"),
    (["f_a", "f_b", "f_c"], ["f_*"], r"feature 3 would come from column f_c, but ingest 1 had only 2 features"),
    (["f_a"], ["f_*"], r"feature 2 would be missing \(1 gathered\), but ingest 1 took feature 2 from column f_b"),
], ids=["other-names", "other-order", "longer", "shorter"])
def test_other_feature_columns_are_refused_and_store_is_unchanged(store, tmp_path, columns, patterns, match):
    """f_a,f_b then f_a,f_c: the vectors have one length but mean different things, and evaluate and
    design would fit one reward model on them."""
    with open_store(store) as con:
        ingest_file(con, _features_file(tmp_path / "a.csv", ["f_a", "f_b"]), "a", features=["f_a", "f_b"])
        generic_log(rows=5).with_columns(features=pl.Series([[1.0, 2.0]] * 5)).write_parquet(tmp_path / "l.parquet")
        ingest_file(con, tmp_path / "l.parquet", "list")  # recorded no names: not compared by name
    path = _features_file(tmp_path / "b.csv", columns, seed=1)
    before = _all_tables(store)
    with open_store(store) as con, pytest.raises(MvalError) as refused:
        ingest_file(con, path, "b", features=patterns)
    message = str(refused.value)
    assert re.match(rf"{re.escape(str(path))}: {match}; ", message), message
    assert message.endswith("one store holds one feature space (evaluate and design fit one reward model on every "
                            "ingest's vectors): gather the same columns in the same order (--features f_a,f_b), "
                            "or ingest into a new store")
    assert "\n" not in message
    after = _all_tables(store)
    for table in before:
        assert before[table].equals(after[table]), table


def test_the_cli_refuses_other_feature_columns_in_one_line(store, tmp_path):
    from conftest import run_cli

    run_cli("ingest", store, _features_file(tmp_path / "a.csv", ["x_1", "x_2", "x_10"]), "--logger", "a",
            "--features", "x_*")
    result = run_cli("ingest", store, _features_file(tmp_path / "b.csv", ["x_1", "x_3", "x_10"]), "--logger", "b",
                     "--features", "x_*", ok=False)
    assert result.exit_code == 2
    assert result.output == (f"Error: {tmp_path / 'b.csv'}: feature 2 would come from column x_3, but ingest 1 took "
                             "feature 2 from column x_2; one store holds one feature space (evaluate and design fit "
                             "one reward model on every ingest's vectors): gather the same columns in the same order "
                             "(--features x_1,x_2,x_10), or ingest into a new store\n")


def test_an_obd_file_with_other_items_is_refused(store, tmp_path):
    write_obd_csv(tmp_path / "a.csv", rows=10, n_items=3)
    write_obd_csv(tmp_path / "b.csv", rows=10, n_items=4)
    with open_store(store) as con:
        ingest_file(con, tmp_path / "a.csv", "a", "obd")
        with pytest.raises(MvalError, match=r"b.csv: feature 4 would come from column user-item_affinity_3, but "
                                            r"ingest 1 had only 3 features; .*: ingest OBD files with the same "
                                            r"user-item_affinity_ columns, or ingest into a new store$"):
            ingest_file(con, tmp_path / "b.csv", "b", "obd")


def test_a_long_list_of_feature_columns_is_named_by_a_query(store, tmp_path):
    names = [f"f_{i}" for i in range(20)]
    with open_store(store) as con:
        ingest_file(con, _features_file(tmp_path / "a.csv", names), "a", features=["f_*"])
        with pytest.raises(MvalError, match=r"gather the same columns in the same order \(--features with the 20 "
                                            r"columns of SELECT feature_columns FROM ingests WHERE ingest_id = 1\), "):
            ingest_file(con, _features_file(tmp_path / "b.csv", names[::-1]), "b", features=names[::-1])


def test_a_header_cell_holding_other_delimiters_is_not_taken_for_a_ragged_line(store, tmp_path):
    """The ragged-line check guessed the delimiter by counting characters: a quoted header cell with four
    semicolons made it read the file as ';'-separated and refuse line 2."""
    path = tmp_path / "semi.csv"
    path.write_text('action,propensity,reward,"score;v1;v2;v3;v4"\n' + "0,0.5,1,7\n" * 50)
    with open_store(store) as con:
        assert ingest_file(con, path, "a").rows == 50


def test_a_rerun_without_the_format_it_was_ingested_with_names_that_ingest(store, tmp_path):
    """It said `missing column action ... --map action=FILE_COLUMN`, as if the file were new."""
    path = tmp_path / "obd.csv"
    affinities = ",".join(f"user-item_affinity_{i}" for i in range(3))
    path.write_text(f",timestamp,item_id,position,click,propensity_score,user_feature_0,{affinities}\n"
                    "0,2019-11-24 00:00:00+00:00,1,1,0,0.3,a,0.1,0.2,0.3\n")
    with open_store(store) as con:
        assert ingest_file(con, path, "r", "obd").rows == 1
        with pytest.raises(MvalError, match=r"already ingested as ingest 1 \(--format obd\); nothing added\. This run "
                                            r"could not read it: missing column"):
            ingest_file(con, path, "r")
