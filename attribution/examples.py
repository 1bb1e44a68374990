"""Training examples: JSON lines files (`id` + `prompt`/`response`, or `text`) and the store's `examples` table.

`add_examples` is one transaction: a bad line, a missing field or an id used twice in the file
leaves the store unchanged. Each example keeps its whole input record (`examples.record`: extra fields,
the id's JSON type, key order), which `mval curate` writes back. Re-adding an example with the same id
and record adds nothing (key order and spacing aside); the same id with different content, or with the
same content but other values in its other fields, is refused (or `replace=True` replaces the whole
dataset). In a store made before records were kept (schema version 2), the examples have none:
curate rebuilds their records from the fields, and adding the same file again fills them in.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import polars as pl

from mval.errors import MvalError
from mval.files import utf8_line
from mval.store import transaction


@dataclass(frozen=True)
class Example:
    """One example: either `text`, or `prompt` and `response` (the loss is on the response)."""

    example_id: str
    prompt: str | None = None
    response: str | None = None
    text: str | None = None
    record: str | None = field(default=None, compare=False, repr=False)  # the input line's JSON object, as read

    @property
    def content_hash(self) -> str:
        """sha256 of the fields: the key of cached per-example gradients (independent of id and dataset)."""
        return hashlib.sha256(json.dumps([self.prompt, self.response, self.text]).encode()).hexdigest()

    def to_json(self) -> dict:
        """The JSON lines record in the input format: the input record itself when known."""
        if self.record is not None:
            return json.loads(self.record)
        if self.text is not None:
            return {"id": self.example_id, "text": self.text}
        return {"id": self.example_id, "prompt": self.prompt, "response": self.response}


def examples_hash(examples: Sequence[Example]) -> str:
    """sha256 of the examples' contents, in order: the key of a set of examples (a query set, a dataset)."""
    return hashlib.sha256("".join(e.content_hash for e in examples).encode()).hexdigest()


@dataclass(frozen=True)
class AddResult:
    dataset: str
    added: int
    unchanged: int  # same id and content already in the store
    total: int

    def to_dict(self) -> dict:
        return asdict(self)


def _field(record: dict, key: str, where: str) -> str | None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise MvalError(f"{where}: field {key!r} must be a string, found {type(value).__name__}")
    return value


def _names(record: dict, shown: int = 6) -> str:
    """The record's field names for a message: `'id', 'input', 'output'` (the first `shown`), or `none`."""
    names = ", ".join(map(repr, list(record)[:shown])) + (", ..." if len(record) > shown else "")
    return names or "none"


def _parse(record: object, where: str, with_id: bool) -> Example:
    if not isinstance(record, dict):
        raise MvalError(f"{where}: expected a JSON object, found {type(record).__name__}")
    example_id = record.get("id")
    if with_id and "id" not in record:
        raise MvalError(f"{where}: no field 'id' (fields: {_names(record)}); give every line a unique id")
    if with_id and (example_id is None or isinstance(example_id, bool) or not isinstance(example_id, str | int)):
        raise MvalError(f"{where}: field 'id' must be a string or an integer, found {example_id!r}; give every line "
                        "a unique id")
    if with_id and not str(example_id).strip():
        raise MvalError(f"{where}: field 'id' is {example_id!r}, an empty name; give every line a unique id")
    prompt, response, text = (_field(record, k, where) for k in ("prompt", "response", "text"))
    if text is not None and (prompt is not None or response is not None):
        raise MvalError(f"{where}: both 'text' and 'prompt'/'response'; give either text or prompt and response")
    if text is None and (prompt is None or response is None):
        missing = [k for k, v in (("prompt", prompt), ("response", response)) if v is None]
        raise MvalError(f"{where}: missing field {' and '.join(map(repr, missing))} (fields: {_names(record)}); "
                        "give 'text' or 'prompt' and 'response'")
    if not (text or "").strip() and not (response or "").strip():
        raise MvalError(f"{where}: field {'text' if text is not None else 'response'!r} is empty; the training "
                        "loss needs some text (drop the record or fill it)")
    kept = json.dumps(record, ensure_ascii=False)
    try:
        kept.encode("utf-8")
    except UnicodeEncodeError as e:  # "\ud800" is valid JSON but no character: the store cannot hold it
        raise MvalError(f"{where}: holds {kept[e.start:e.end].encode('unicode_escape').decode()}, half of a UTF-16 "
                        "pair (text cut in the middle of a character); fix or drop the line") from e
    return Example(str(example_id) if example_id is not None else where, prompt, response, text, kept)


def _strict_object(pairs: list[tuple[str, object]]) -> dict:
    """json.loads' object hook: a key given twice in one object is refused (json would keep the last)."""
    record: dict = {}
    for key, value in pairs:
        if key in record:
            raise MvalError(f"key {key!r} appears twice in one object; keep one of them")
        record[key] = value
    return record


def _finite_float(text: str) -> float:
    """json.loads' float hook: 1e400 (inf) and NaN/Infinity would be written back as invalid JSON."""
    value = float(text)
    if not math.isfinite(value):
        raise MvalError(f"number {text} is not finite; write a finite number")
    return value


def read_jsonl(path: str | Path, with_id: bool = True, label: bool = False) -> tuple[list[Example], list[int]]:
    """Examples from a JSON lines file, and their 0/1 `label`s when `label` (else an empty list)."""
    path = Path(path)
    if not path.is_file():
        raise MvalError(f"{path}: no such file")
    examples, labels, seen = [], [], {}
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path} line {number}"
            line = utf8_line(raw, where)
            if number == 1:
                line = line.removeprefix("\ufeff")  # a byte order mark, as some editors save UTF-8
            if not line.strip():
                continue
            try:
                record = json.loads(line, object_pairs_hook=_strict_object, parse_float=_finite_float,
                                    parse_constant=_finite_float)
            except json.JSONDecodeError as e:
                raise MvalError(f"{where}: not valid JSON ({e.msg}); one JSON object per line") from e
            except MvalError as e:
                raise MvalError(f"{where}: {e}") from e
            ex = _parse(record, where, with_id)
            if with_id and ex.example_id in seen:
                raise MvalError(f"{where}: id {ex.example_id!r} already used on line {seen[ex.example_id]}; ids must be unique")
            seen[ex.example_id] = number
            if label:
                value = record.get("label")
                if value not in (0, 1) or isinstance(value, float):
                    raise MvalError(f"{where}: field 'label' must be 0 or 1 (or true/false), found {value!r}")
                labels.append(int(value))
            examples.append(ex)
    if not examples:
        raise MvalError(f"{path}: no examples in the file")
    return examples, labels


def write_jsonl(path: str | Path, examples: Sequence[Example], labels: Sequence[int] | None = None) -> Path:
    """Examples as JSON lines in their input format (with a `label` each when given): what read_jsonl reads."""
    path = Path(path)
    if not path.parent.exists():
        raise MvalError(f"-o {path}: folder {path.parent} does not exist; create it first")
    records = [e.to_json() for e in examples]
    if labels is not None:
        records = [r | {"label": int(y)} for r, y in zip(records, labels, strict=True)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _frame(examples: Sequence[Example]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "example_id": [e.example_id for e in examples],
            "prompt": [e.prompt for e in examples],
            "response": [e.response for e in examples],
            "text": [e.text for e in examples],
            "record": [e.record for e in examples],
        },
        schema={key: pl.String for key in ("example_id", "prompt", "response", "text", "record")},
    )


def _canonical(record: dict) -> dict[str, str]:
    """Each top-level field's value as sorted-key JSON: equal when the values are (1 and 1.0 differ)."""
    return {key: json.dumps(value, sort_keys=True) for key, value in record.items()}


def _check_clashes(con: duckdb.DuckDBPyConnection, dataset: str, path: str | Path) -> None:
    """Refuse staged ids already in `dataset` with other content, or other values in their other fields."""
    rows = con.execute(
        "SELECT s.example_id, e.prompt IS DISTINCT FROM s.prompt OR e.response IS DISTINCT FROM s.response "
        "  OR e.text IS DISTINCT FROM s.text AS content, e.record, s.record "
        "FROM staged_examples s JOIN examples e ON e.dataset = ? AND e.example_id = s.example_id "
        "WHERE content OR e.record <> s.record ORDER BY s.offset",
        [dataset],
    ).fetchall()
    for example_id, content, old, new in rows:
        if content:
            raise MvalError(f"{path}: id {example_id!r} is already in dataset {dataset!r} with different content; "
                            "use new ids, or --replace to replace the whole dataset")
        was, now = _canonical(json.loads(old)), _canonical(json.loads(new))
        if changed := sorted(key for key in was.keys() | now.keys() if was.get(key) != now.get(key)):
            raise MvalError(f"{path}: id {example_id!r} is already in dataset {dataset!r} with the same content but "
                            f"different {', '.join(map(repr, changed))}; add it as it was first added, "
                            "or --replace to replace the whole dataset")


def add_examples(con: duckdb.DuckDBPyConnection, dataset: str, path: str | Path, replace: bool = False) -> AddResult:
    """Add the examples of `path` to `dataset` in one transaction (see the module docstring)."""
    if not dataset.strip():
        raise MvalError(f"dataset name {dataset!r} is empty; name the dataset (`mval examples add STORE sft FILE`)")
    examples, _ = read_jsonl(path)
    staged = _frame(examples).with_row_index("offset")
    con.register("staged_examples", staged)
    try:
        with transaction(con):
            if replace:
                con.execute("DELETE FROM scores WHERE dataset = ?", [dataset]).fetchall()
                con.execute("DELETE FROM score_runs WHERE dataset = ?", [dataset]).fetchall()
                con.execute("DELETE FROM examples WHERE dataset = ?", [dataset]).fetchall()
            _check_clashes(con, dataset, path)
            con.execute("UPDATE examples e SET record = s.record FROM staged_examples s "
                        "WHERE e.dataset = ? AND e.example_id = s.example_id AND e.record IS NULL", [dataset])
            added = con.execute(
                "INSERT INTO examples (dataset, example_id, prompt, response, text, record, source, position) "
                "SELECT ?, s.example_id, s.prompt, s.response, s.text, s.record, ?, "
                "  coalesce((SELECT max(position) + 1 FROM examples WHERE dataset = ?), 0) "
                "  + row_number() OVER (ORDER BY s.offset) - 1 "
                "FROM staged_examples s ANTI JOIN examples e ON e.dataset = ? AND e.example_id = s.example_id",
                [dataset, str(path), dataset, dataset],
            ).fetchall()[0][0]
            total = con.execute("SELECT count(*) FROM examples WHERE dataset = ?", [dataset]).fetchall()[0][0]
    finally:
        con.unregister("staged_examples")
    return AddResult(dataset, int(added), len(examples) - int(added), int(total))


def load_examples(con: duckdb.DuckDBPyConnection, dataset: str) -> list[Example]:
    """All examples of `dataset` in insertion order, with their input records (refuses an unknown dataset)."""
    rows = con.execute(
        "SELECT example_id, prompt, response, text, record FROM examples WHERE dataset = ? ORDER BY position",
        [dataset]
    ).fetchall()
    if not rows:
        known = [r[0] for r in con.execute("SELECT DISTINCT dataset FROM examples ORDER BY 1").fetchall()]
        raise MvalError(
            f"--dataset {dataset}: no such dataset in the store (have: {', '.join(known) or 'none'}); "
            "add it with `mval examples add`"
        )
    return [Example(*r) for r in rows]
