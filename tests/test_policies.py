import re

import numpy as np
import polars as pl
import pytest

from mval.errors import MvalError
from mval.ingest import ingest_file
from mval.policies import add_policy, load_policy
from mval.store import open_store


def test_add_and_load_policy(store, tmp_path):
    pl.DataFrame({"context_id": ["b", "a", "a"], "action": [1, 0, 2], "prob": [1.0, 0.25, 0.75]}).write_csv(
        tmp_path / "p.csv"
    )
    with open_store(store) as con:
        assert add_policy(con, "p", tmp_path / "p.csv") == 3
        policy = load_policy(con, "p")
    assert list(policy.context_ids) == ["a", "b"]
    np.testing.assert_array_equal(policy.probs, [[0.25, 0.0, 0.75], [0.0, 1.0, 0.0]])
    np.testing.assert_array_equal(policy.probs_for(np.array(["b", "a", "b"])), policy.probs[[1, 0, 1]])
    with pytest.raises(MvalError, match="policy 'p' has no row for context_id 'zz'"):
        policy.probs_for(np.array(["a", "zz"]))


def test_context_free_policy(store, tmp_path):
    pl.DataFrame({"context_id": [None, None], "action": [0, 1], "prob": [0.5, 0.5]},
                 schema={"context_id": pl.String, "action": pl.Int64, "prob": pl.Float64}).write_parquet(tmp_path / "u.parquet")
    with open_store(store) as con:
        add_policy(con, "uniform", tmp_path / "u.parquet")
        policy = load_policy(con, "uniform", n_actions=3)
    assert policy.context_ids is None
    np.testing.assert_array_equal(policy.probs_for(np.array(["x", "y"])), [[0.5, 0.5, 0], [0.5, 0.5, 0]])


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_empty_context_id_is_context_free_in_every_format(store, tmp_path, suffix):
    frame = pl.DataFrame({"context_id": ["", ""], "action": [0, 1], "prob": [0.25, 0.75]})
    path = tmp_path / f"u{suffix}"
    {".csv": frame.write_csv, ".parquet": frame.write_parquet, ".jsonl": frame.write_ndjson}[suffix](path)
    with open_store(store) as con:
        add_policy(con, "uniform", path)
        policy = load_policy(con, "uniform")
    assert policy.context_ids is None
    np.testing.assert_array_equal(policy.probs_for(np.array(["x"])), [[0.25, 0.75]])


@pytest.mark.parametrize(
    "content, match",
    [
        ("context_id,action,prob\na,0,0.5\na,1,0.4\n", r"context_id 'a': probabilities of a context must sum to 1 .*found 0.9"),
        ("context_id,action,prob\na,0,1.5\na,1,-0.5\n", r"prob must be in \[0, 1\], found"),
        ("context_id,action,prob\na,-1,1.0\n", r"action must be a non-negative integer \(at most 2147483647\), found -1;"),
        ("context_id,action,prob\na,3000000000,1.0\n", r"action must be a non-negative integer \(at most 2147483647\), found 3000000000;"),
        ("context_id,action,prob\na,0,0.5\na,0.5,0.5\n", r"action must be a non-negative integer \(at most 2147483647\), found 0.5;"),
        ("context_id,action,prob\na,0,0.5\na,0,0.5\n", r"each \(context_id, action\) must appear once"),
        ("context_id,action,prob\n,0,0.5\n,0,0.5\n",  # it said "found 0.0", naming neither action nor context
         r"bad.csv: each \(context_id, action\) must appear once, found action 0 in 2 rows;"),
        ("context_id,action,prob\na,0,0.5\na,1,0.499998\n", r"must sum to 1 \(within 1e-6 per row\), found 0.999998"),
        ("context_id,action\na,0\n", "missing column.*prob"),
        ("context_id,Action,prob\na,0,1\n", r"missing column\(s\) action; .*\(names are case-sensitive: rename 'Action'\)"),
        ("context_id,action,prob\na,zero,1\n", r"context_id 'a': action must be .*, found zero;"),  # it said None
        ("context_id,action,prob\na,0,one\n", r"context_id 'a': prob must be in \[0, 1\], found one;"),
        ("context_id,action,prob\na,0,\n", r"context_id 'a': prob must be in \[0, 1\], found missing;"),
        ("", r"bad.csv: the file is empty \(0 bytes\)"),  # it said "missing column(s) context_id, action, prob"
        ("context_id,action,prob,Prob\na,0,1,0.5\n", r"bad.csv: column 'Prob' appears twice \(columns 3 and 4, "
                                                      r"the first spelled 'prob'; names are case-insensitive\)"),
        ("context_id,action,prob\n", r"bad.csv: a policy needs at least one .* row, found no rows"),
        ("context_id,action,prob\n,0,1\nc0,2,1\n", r"bad.csv: rows with an empty context_id .* cannot be mixed "
                                                     r"with rows that name contexts, found 1 rows without one"),
    ],
)
def test_bad_policies_are_refused(store, tmp_path, content, match):
    (tmp_path / "bad.csv").write_text(content)
    with open_store(store) as con:
        with pytest.raises(MvalError, match=match):
            add_policy(con, "bad", tmp_path / "bad.csv")
        assert con.execute("SELECT count(*) FROM policies").fetchall() == [(0,)]


def test_duplicate_name_needs_replace(store, tmp_path):
    (tmp_path / "p.csv").write_text("context_id,action,prob\na,0,1\n")
    (tmp_path / "q.csv").write_text("context_id,action,prob\na,1,1\n")
    with open_store(store) as con:
        add_policy(con, "p", tmp_path / "p.csv")
        with pytest.raises(MvalError, match="already exists.*--replace"):
            add_policy(con, "p", tmp_path / "q.csv")
        add_policy(con, "p", tmp_path / "q.csv", replace=True)
        assert con.execute("SELECT action FROM policies").fetchall() == [(1,)]
        with pytest.raises(MvalError, match="no policy named 'nope'.*known: p"):
            load_policy(con, "nope")


def test_probabilities_rounded_to_six_decimals_are_accepted(store, tmp_path):
    """Three actions at 0.333333 sum to 0.999999: off by 1e-6 in all, within 1e-6 per row (was refused)."""
    (tmp_path / "thirds.csv").write_text("context_id,action,prob\n,0,0.333333\n,1,0.333333\n,2,0.333333\n")
    with open_store(store) as con:
        assert add_policy(con, "thirds", tmp_path / "thirds.csv") == 3


def test_an_empty_name_is_refused(store, tmp_path):
    (tmp_path / "p.csv").write_text("context_id,action,prob\n,0,1\n")
    with open_store(store) as con:
        with pytest.raises(MvalError, match="a policy needs a non-empty NAME"):
            add_policy(con, " ", tmp_path / "p.csv")
        assert con.execute("SELECT count(*) FROM policies").fetchall() == [(0,)]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_float_written_context_ids_are_refused_in_text_files(store, tmp_path, suffix):
    """pandas writes an integer column with a missing value as 1.0: it would not match the log's 1."""
    frame = pl.DataFrame({"context_id": ["1.0", "2.0"], "action": [0, 0], "prob": [1.0, 1.0]})
    path = tmp_path / f"p{suffix}"
    frame.write_csv(path) if suffix == ".csv" else frame.write_ndjson(path)
    with open_store(store) as con:
        with pytest.raises(MvalError, match=r"p\.(csv|jsonl): row 1, column context_id: must be an integer or text "
                                            r"id, not a float, found 1.0 \(1 more rows like it\); ids are compared"):
            add_policy(con, "p", path)
        pl.DataFrame({"context_id": ["1.5", "v1.0"], "action": [0, 0], "prob": [1.0, 1.0]}).write_csv(tmp_path / "ok.csv")
        assert add_policy(con, "ok", tmp_path / "ok.csv") == 2  # other ids that look like numbers are kept


@pytest.mark.parametrize("ids", [["1", "-3.00"], ["2.0", "x"]])
def test_a_float_written_id_gets_the_message_of_ingest(store, tmp_path, ids):
    """One rule and one message for the ids of logs and of policies (sql/float_ids.sql)."""
    pl.DataFrame({"context_id": ids, "action": [0, 0], "prob": [1.0, 1.0]}).write_csv(tmp_path / "p.csv")
    pl.DataFrame({"context_id": ids, "action": [0, 0], "propensity": [0.5, 0.5],
                  "reward": [1.0, 0.0]}).write_csv(tmp_path / "p_log.csv")
    with open_store(store) as con:
        with pytest.raises(MvalError) as policy:
            add_policy(con, "p", tmp_path / "p.csv")
        with pytest.raises(MvalError) as log:
            ingest_file(con, tmp_path / "p_log.csv", "a")
    assert str(policy.value) == str(log.value).replace("p_log.csv", "p.csv")


@pytest.mark.parametrize("name, text, match", [
    ("p.jsonl", '{"context_id": "a", "action": 0, "prob": 1, "Prob": 0.5}\n',
     r"keys 'prob' and 'Prob' differ only in case \(both in object 1; "),
    ("p.json", '[{"context_id": "a", "action": 0, "prob": 1}, {"context_id": "b", "Action": 0, "prob": 1}]',
     r"keys 'action' and 'Action' differ only in case \(objects 1 and 2; "),
])
def test_json_keys_that_differ_only_in_case_are_refused(store, tmp_path, name, text, match):
    """DuckDB matches names case-insensitively: one of the two keys would be read, the other dropped."""
    (tmp_path / name).write_text(text)
    with open_store(store) as con:
        with pytest.raises(MvalError, match=rf"{name}: {match}.*; rename or drop one of them$"):
            add_policy(con, "p", tmp_path / name)
        assert con.execute("SELECT count(*) FROM policies").fetchall() == [(0,)]


def _ragged_policy(rows: int, bad_row: int, bad: str) -> str:
    return "context_id,action,prob\n" + "".join(bad if i == bad_row else f"c{i},0,1\n" for i in range(rows))


@pytest.mark.parametrize("text, line, fields", [
    ("context_id,action,prob\na,0,1\nb,0,1,EXTRA\nc,0,1\n", 3, 4),
    ("context_id,action,prob\na,0,1\nb,0\n", 3, 2),
    ("context_id,action,prob\nb,0,1,EXTRA\n", 2, 4),
    (_ragged_policy(50_000, 30_000, "b,0,1,EXTRA\n"), 30_002, 4),  # past the rows DuckDB's sniffer samples
], ids=["extra", "missing-last", "first-row", "past-sample"])
def test_a_ragged_csv_line_is_named(store, tmp_path, text, line, fields):
    """The line to fix, as `mval ingest` names it, not "missing columns" or DuckDB's error."""
    (tmp_path / "p.csv").write_text(text)
    with open_store(store) as con:
        with pytest.raises(MvalError, match=rf"^{re.escape(str(tmp_path / 'p.csv'))}: line {line} has {fields} "
                                            r"fields, the header 3; give every line one field per header column"):
            add_policy(con, "p", tmp_path / "p.csv")
        assert con.execute("SELECT count(*) FROM policies").fetchall() == [(0,)]
