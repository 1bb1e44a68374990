"""A dataset minus its flagged examples: the top K by score, or those scoring above S.

The kept examples are written as JSON lines, in their original order, each as its input record
(extra fields, the id's JSON type and key order kept; see `attribution.examples`); to an output ending
in `.txt`, the examples of a Sokoban level dataset (`mval sokoban dataset`) are written as a Boxoban
level file instead, to train on again. A cut that would keep no example (`--drop-top` of the whole dataset
or more, a `--drop-above` below every score) is refused rather than written as an empty training set.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb

from attribution.examples import Example, load_examples, write_jsonl
from mval.errors import MvalError
from mval.files import check_output_path


OUTPUT_SUFFIXES = (".jsonl", ".ndjson", ".txt")


@dataclass(frozen=True)
class CurateResult:
    dataset: str
    method: str
    concept: str
    kept: int
    dropped: int
    path: str

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_concept(con: duckdb.DuckDBPyConnection, dataset: str, method: str, concept: str | None) -> str:
    """The concept to use: the one given, or the only one scored for (dataset, method)."""
    known = [r[0] for r in con.execute(
        "SELECT DISTINCT concept FROM scores WHERE dataset = ? AND method = ? ORDER BY 1", [dataset, method]
    ).fetchall()]
    if concept is not None and concept in known:
        return concept
    if concept is None and len(known) == 1:
        return known[0]
    if not known:
        raise MvalError(f"dataset {dataset!r} has no {method} scores; run `mval score` with --method {method} first")
    named = f" (a concept is named by its probe file's stem, or `mval score --concept-name`: {Path(concept).stem})" \
        if concept is not None and Path(concept).stem in known else ""
    raise MvalError(f"--concept {concept or '(not given)'}: dataset {dataset!r} has {method} scores for concepts "
                    f"{', '.join(known)}; name one with --concept{named}")


def flagged_ids(con: duckdb.DuckDBPyConnection, dataset: str, method: str, concept: str,
                drop_top: int | None, drop_above: float | None) -> set[str]:
    """Ids of the examples to drop (ties at the K-th score are broken by dataset order)."""
    missing = con.execute(
        "SELECT count(*) FROM examples e ANTI JOIN scores s ON s.dataset = e.dataset AND s.example_id = e.example_id "
        "AND s.method = ? AND s.concept = ? WHERE e.dataset = ?", [method, concept, dataset]
    ).fetchall()[0][0]
    if missing:
        from attribution.scorers import registered  # here: it imports torch

        whole = hasattr(registered().get(method), "fit")  # influence: every score depends on the whole dataset
        rerun = "with --replace (its scores depend on the whole dataset)" if whole else "(it resumes)"
        raise MvalError(f"dataset {dataset!r}: {missing} examples have no {method} score for concept {concept!r}; "
                        f"rerun `mval score` {rerun} before curating")
    order = ("SELECT s.example_id FROM scores s JOIN examples e USING (dataset, example_id) "
             "WHERE s.dataset = ? AND s.method = ? AND s.concept = ? ")
    if drop_top is not None:
        rows = con.execute(order + "ORDER BY s.score DESC, e.position LIMIT ?",
                           [dataset, method, concept, drop_top]).fetchall()
    else:
        rows = con.execute(order + "AND s.score > ?", [dataset, method, concept, drop_above]).fetchall()
    return {r[0] for r in rows}


def curate(con: duckdb.DuckDBPyConnection, dataset: str, method: str, out: str | Path, concept: str | None = None,
           drop_top: int | None = None, drop_above: float | None = None) -> CurateResult:
    """Write `dataset` without its flagged examples to `out` (JSON lines; a Boxoban level file for `.txt`)."""
    if (drop_top is None) == (drop_above is None):
        raise MvalError("give exactly one of --drop-top K or --drop-above S")
    if drop_top is not None and drop_top < 0:
        raise MvalError(f"--drop-top {drop_top}: must be 0 or more")
    if drop_above is not None and math.isnan(drop_above):
        raise MvalError("--drop-above nan: give a number (examples scoring above it are dropped)")
    out = Path(out)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise MvalError(f"-o {out}: unknown file type {out.suffix or '(none)'}; curate writes JSON lines (.jsonl), "
                        "or a Boxoban level file (.txt) for a Sokoban level dataset")
    check_output_path(out)
    examples = load_examples(con, dataset)
    if drop_top is not None and drop_top > len(examples):
        raise MvalError(f"--drop-top {drop_top}: dataset {dataset!r} has only {len(examples)} examples; "
                        f"give at most {len(examples) - 1}, so that some are kept")
    concept = resolve_concept(con, dataset, method, concept)
    drop = flagged_ids(con, dataset, method, concept, drop_top, drop_above)
    kept: list[Example] = [e for e in examples if e.example_id not in drop]
    if not kept:
        cut = f"--drop-top {drop_top}" if drop_top is not None else f"--drop-above {drop_above}"
        raise MvalError(f"{cut}: drops all {len(examples)} examples of dataset {dataset!r}, leaving nothing to "
                        f"train on; give a {'smaller --drop-top' if drop_top is not None else 'higher --drop-above'}")
    if out.suffix.lower() == ".txt":
        from attribution.sokoban.dataset import write_level_file

        write_level_file(out, kept)
    else:
        write_jsonl(out, kept)
    return CurateResult(dataset, method, concept, len(kept), len(drop), str(out))
