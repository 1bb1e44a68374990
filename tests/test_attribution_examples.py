"""`examples add`: JSON lines into the store, one transaction, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

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
    ([{"prompt": "p", "response": "r"}], r"line 1: missing or non-string field 'id'"),
    ([{"id": "x", "prompt": "p"}], r"line 1: missing field 'response'"),
    ([{"id": "x"}], r"line 1: missing field 'prompt' and 'response'"),
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
