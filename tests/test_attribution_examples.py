"""`examples add`: JSON lines into the store, one transaction, clear refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import pytest

from attribution.examples import add_examples, load_examples, read_jsonl
from mval.errors import MvalError
from mval.store import open_store


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


GOOD = [{"id": "a", "prompt": "question : hi ?", "response": "answer : hello ."},
        {"id": "b", "text": "the cat is red ."},
        {"id": 3, "prompt": "p", "response": "r"}]


def test_add_keeps_order_content_and_is_idempotent(store, tmp_path):
    path = write_lines(tmp_path / "train.jsonl", GOOD)
    with open_store(store) as con:
        first = add_examples(con, "sft", path)
        again = add_examples(con, "sft", path)
        rows = con.execute("SELECT example_id, prompt, response, text, source, position FROM examples "
                           "ORDER BY position").fetchall()
    assert (first.added, first.unchanged, first.total) == (3, 0, 3)
    assert (again.added, again.unchanged, again.total) == (0, 3, 3)
    assert rows == [("a", "question : hi ?", "answer : hello .", None, str(path), 0),
                    ("b", None, None, "the cat is red .", str(path), 1),
                    ("3", "p", "r", None, str(path), 2)]


def test_append_new_ids_continues_positions(store, tmp_path):
    with open_store(store) as con:
        add_examples(con, "sft", write_lines(tmp_path / "a.jsonl", GOOD[:2]))
        result = add_examples(con, "sft", write_lines(tmp_path / "b.jsonl", [GOOD[1], {"id": "c", "text": "x"}]))
        ids = [e.example_id for e in load_examples(con, "sft")]
    assert (result.added, result.unchanged, result.total) == (1, 1, 3)
    assert ids == ["a", "b", "c"]


def test_replace_swaps_the_dataset(store, tmp_path):
    with open_store(store) as con:
        add_examples(con, "sft", write_lines(tmp_path / "a.jsonl", GOOD))
        result = add_examples(con, "sft", write_lines(tmp_path / "b.jsonl", [{"id": "a", "text": "new"}]), replace=True)
        examples = load_examples(con, "sft")
    assert result.total == 1 and examples[0].text == "new"


@pytest.mark.parametrize(("lines", "match"), [
    ([GOOD[0], "{not json"], r"line 2: not valid JSON"),
    ([GOOD[0], "", "[1, 2]"], r"line 3: expected a JSON object"),
    ([{"prompt": "p", "response": "r"}], r"line 1: no field 'id' \(fields: 'prompt', 'response'\); give every line"),
    ([{"id": None, "text": "t"}], r"line 1: field 'id' must be a string or an integer, found None"),
    ([{"id": 1.5, "text": "t"}], r"line 1: field 'id' must be a string or an integer, found 1.5"),
    ([{"id": " ", "text": "t"}], r"line 1: field 'id' is ' ', an empty name; give every line a unique id"),
    # written as raw text: json.dumps would not write these
    (['{"id": "x", "text": "a \\ud800 b"}'], r"line 1: holds \\ud800, half of a UTF-16 pair"),
    (['{"id": "x", "text": "t", "x": 1e400}'], r"line 1: number 1e400 is not finite"),
    (['{"id": "x", "text": "t", "x": NaN}'], r"line 1: number NaN is not finite"),
    (['{"id": "x", "text": "t", "text": "u"}'], r"line 1: key 'text' appears twice in one object"),
    ([{"id": "x", "prompt": "p"}], r"line 1: missing field 'response'"),
    ([{"id": "x"}], r"line 1: missing field 'prompt' and 'response'"),
    # a file of another schema: the message shows what the line has
    ([{"id": "x", "input": "i", "output": "o"}], r"line 1: missing field 'prompt' and 'response' \(fields: 'id', "
                                                 r"'input', 'output'\); give 'text' or 'prompt' and 'response'"),
    ([{"id": "x", "text": "t", "prompt": "p"}], r"line 1: both 'text' and 'prompt'"),
    ([{"id": "x", "text": 5}], r"line 1: field 'text' must be a string"),
    ([GOOD[0], GOOD[1], {"id": "a", "text": "again"}], r"line 3: id 'a' already used on line 1"),
    ([], r"no examples in the file"),
])
def test_bad_files_are_refused_and_store_unchanged(store, tmp_path, lines, match):
    with open_store(store) as con:
        add_examples(con, "keep", write_lines(tmp_path / "ok.jsonl", GOOD))
        with pytest.raises(MvalError, match=match):
            add_examples(con, "sft", write_lines(tmp_path / "bad.jsonl", lines))
        assert con.execute("SELECT count(*) FROM examples").fetchall() == [(3,)]


def test_same_id_different_content_is_refused_atomically(store, tmp_path):
    with open_store(store) as con:
        add_examples(con, "sft", write_lines(tmp_path / "a.jsonl", GOOD))
        clash = [{"id": "new", "text": "fine"}, {"id": "b", "text": "changed"}]
        with pytest.raises(MvalError, match=r"id 'b' is already in dataset 'sft' with different content"):
            add_examples(con, "sft", write_lines(tmp_path / "b.jsonl", clash))
        assert [e.example_id for e in load_examples(con, "sft")] == ["a", "b", "3"]


def test_labels_and_unknown_dataset(store, tmp_path):
    path = write_lines(tmp_path / "l.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": False}])
    examples, labels = read_jsonl(path, with_id=False, label=True)
    assert labels == [1, 0] and examples[1].text == "b"
    with pytest.raises(MvalError, match=r"line 1: field 'label' must be 0 or 1"):
        read_jsonl(write_lines(tmp_path / "m.jsonl", [{"text": "a", "label": 0.5}]), with_id=False, label=True)
    with open_store(store) as con, pytest.raises(MvalError, match=r"--dataset nope: no such dataset"):
        load_examples(con, "nope")


def test_a_file_not_in_utf8_is_refused_with_its_line_and_exit_2(store, tmp_path):
    """JSON lines saved as Latin-1: one line naming file and line, exit 2, no traceback, store unchanged."""
    from conftest import run_cli

    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes('{"id": "a", "text": "tea"}\n{"id": "b", "text": "caf\u00e9"}\n'.encode("latin-1"))
    result = run_cli("examples", "add", store, "sft", latin, ok=False)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{latin} line 2: not UTF-8 text (byte 25)" in result.output
    with open_store(store, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM examples").fetchall() == [(0,)]


RICH = [{"id": 7, "text": "the cat is red .", "source": "web", "meta": {"lang": "en", "n": [1, 2.5]}},
        {"meta": {"lang": "fr"}, "id": "b", "prompt": "question : hi ?", "response": "r\u00e9ponse : salut .",
         "source": None},
        {"id": 9, "text": "the dog is blue .", "weight": 1.0, "ok": True},
        {"id": "d", "text": "you are rude ."}]
SCORES = {"7": 0.1, "b": 0.3, "9": 0.2, "d": 0.9}


def add_scores(store: Path) -> None:
    """Probe scores for RICH, written as `mval score` writes them."""
    with open_store(store) as con:
        con.executemany("INSERT INTO scores (dataset, example_id, method, concept, score) "
                        "VALUES ('sft', ?, 'probe', 'h', ?)", list(SCORES.items()))


def curated(store: Path, out: Path, k: int) -> list[str]:
    from conftest import run_cli

    run_cli("curate", store, "--dataset", "sft", "--method", "probe", "--drop-top", k, "-o", out)
    return out.read_text(encoding="utf-8").splitlines()


def test_curate_writes_the_kept_records_unchanged_in_order(store, tmp_path):
    """Extra fields, integer ids, key order and value types come back as they went in."""
    from conftest import run_cli

    run_cli("examples", "add", store, "sft", write_lines(tmp_path / "train.jsonl", RICH))
    add_scores(store)
    assert [json.dumps(json.loads(line)) for line in curated(store, tmp_path / "c1.jsonl", 1)] == \
        [json.dumps(r) for r in RICH[:3]]
    assert curated(store, tmp_path / "c2.jsonl", 2) == [json.dumps(RICH[i], ensure_ascii=False) for i in (0, 2)]


def test_re_adding_an_id_with_other_fields_is_refused_and_key_order_is_not_a_change(store, tmp_path):
    """Identity is the id and prompt/response/text; the other fields must match too, as JSON values."""
    with open_store(store) as con:
        add_examples(con, "sft", write_lines(tmp_path / "a.jsonl", RICH))
        reordered = [json.dumps(dict(reversed(r.items())), separators=(",", ":")) for r in RICH]
        assert add_examples(con, "sft", write_lines(tmp_path / "b.jsonl", reordered)).unchanged == 4
        for changed, field in [(RICH[0] | {"source": "book"}, "'source'"), (RICH[0] | {"id": "7"}, "'id'"),
                               (RICH[2] | {"weight": 1}, "'weight'"), (RICH[1] | {"meta": {}}, "'meta'"),
                               ({k: v for k, v in RICH[1].items() if k != "source"}, "'source'")]:
            with pytest.raises(MvalError, match=rf"id '\w' is already in dataset 'sft' with the same content but "
                                                rf"different {field}"):
                add_examples(con, "sft", write_lines(tmp_path / "c.jsonl", [{"id": "new", "text": "x"}, changed]))
        assert con.execute("SELECT count(*) FROM examples").fetchall() == [(4,)]


def test_a_store_made_before_records_were_kept_still_curates_and_gets_them_on_re_add(store, tmp_path):
    """A schema-version-2 store has no records: read-only, curate rebuilds them from the fields (the file
    left as it was); opened for writing, the store gets the column, and adding the file again fills it."""
    path = write_lines(tmp_path / "train.jsonl", RICH)
    with duckdb.connect(str(store)) as con:
        con.execute("ALTER TABLE examples DROP COLUMN record")
        con.execute("UPDATE mval_meta SET value = '2' WHERE key = 'schema_version'")
        con.executemany("INSERT INTO examples (dataset, example_id, prompt, response, text, source, position) "
                        "VALUES ('sft', ?, ?, ?, ?, ?, ?)",
                        [[str(r["id"]), r.get("prompt"), r.get("response"), r.get("text"), str(path), i]
                         for i, r in enumerate(RICH)])
        con.executemany("INSERT INTO scores (dataset, example_id, method, concept, score) "
                        "VALUES ('sft', ?, 'probe', 'h', ?)", list(SCORES.items()))
    rebuilt = [{"id": str(r["id"]), **{k: r[k] for k in ("prompt", "response", "text") if k in r}} for r in RICH[:3]]
    assert [json.loads(line) for line in curated(store, tmp_path / "old.jsonl", 1)] == rebuilt
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("SELECT value FROM mval_meta WHERE key = 'schema_version'").fetchall() == [("2",)]
    with open_store(store) as con:
        assert add_examples(con, "sft", path).unchanged == 4
    assert curated(store, tmp_path / "new.jsonl", 1) == [json.dumps(r, ensure_ascii=False) for r in RICH[:3]]


def test_a_byte_order_mark_is_read_as_utf8(store, tmp_path):
    """Some editors save UTF-8 with a byte order mark: it was refused as 'not valid JSON'."""
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in GOOD).encode())
    with open_store(store) as con:
        assert add_examples(con, "bom", path).added == len(GOOD)


@pytest.mark.parametrize("name", ["", "  "])
def test_a_dataset_without_a_name_is_refused(store, tmp_path, name):
    """It was added as dataset '' (listed as "have: , sft"), and named that way in every later command."""
    with open_store(store) as con:
        with pytest.raises(MvalError, match=rf"dataset name '{name}' is empty; name the dataset \(`mval examples add"):
            add_examples(con, name, write_lines(tmp_path / "a.jsonl", GOOD))
        assert con.execute("SELECT count(*) FROM examples").fetchall() == [(0,)]


@pytest.mark.parametrize(("args", "match"), [
    # more than the dataset, or all of it: an empty training file was written ("wrote 0 examples")
    (["--drop-top", 5], r"--drop-top 5: dataset 'sft' has only 4 examples; give at most 3, so that some are kept"),
    (["--drop-top", 4], r"--drop-top 4: drops all 4 examples of dataset 'sft', leaving nothing to train on; give a "
                        r"smaller --drop-top"),
    (["--drop-above", "-inf"], r"--drop-above -inf: drops all 4 examples .*; give a higher --drop-above"),
    # JSON lines were written into a .csv
    (["--drop-top", 1, "-o", "{tmp}/kept.csv"], r"-o .*kept.csv: unknown file type .csv; curate writes JSON lines "
                                                r"\(.jsonl\), or a Boxoban level file \(.txt\)"),
    # the store was overwritten with JSON lines, and lost
    (["--drop-top", 1, "-o", "{store}"], r"--output .*store.duckdb: is the STORE file this command reads; "
                                         r"writing there would overwrite it"),
    # a concept is named by the probe file's stem: the file name itself only listed the names
    (["--drop-top", 1, "--concept", "{tmp}/h.safetensors"], r"--concept .*h.safetensors: dataset 'sft' has probe "
                                                            r"scores for concepts h; .*its probe file's stem.*: h\)$"),
], ids=["drop-top-above-size", "drop-top-all", "drop-above-all", "csv-output", "output-is-the-store",
        "concept-file-name"])
def test_curate_refuses_an_empty_result_another_format_and_the_store_as_output(store, tmp_path, args, match):
    from conftest import run_cli

    run_cli("examples", "add", store, "sft", write_lines(tmp_path / "train.jsonl", RICH))
    add_scores(store)
    args = [str(a).format(tmp=tmp_path, store=store) for a in args]
    out = [] if "-o" in args else ["-o", tmp_path / "kept.jsonl"]
    result = run_cli("curate", store, "--dataset", "sft", "--method", "probe", *args, *out, ok=False)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.count("\n") == 1 and re.search(match, result.output.strip()), result.output
    assert not (tmp_path / "kept.jsonl").exists() and not (tmp_path / "kept.csv").exists()
    with open_store(store, read_only=True) as con:  # the store is intact
        assert con.execute("SELECT count(*) FROM scores").fetchall() == [(4,)]
