"""Score a dataset of the store and write `scores` as it goes, so that a killed run resumes.

Scored batches are committed together once `flush_seconds` have passed since the last commit (every
batch with 0), and whatever is scored when the run stops on an exception (Ctrl-C included) is
committed before it propagates; a hard kill loses at most `flush_seconds` of work. A rerun scores
only the examples with no row yet for (dataset, method, concept): nothing is written twice. Cheap
methods (probe) would otherwise spend a third of their time committing small batches.
`score_runs` records what made the scores (model, concept, queries, settings); a rerun with
different inputs under the same concept name is refused unless `replace=True`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import duckdb
import numpy as np
import polars as pl

from attribution.concept import batches
from attribution.examples import Example, examples_hash, load_examples
from attribution.models import ConceptModel, fingerprint, pinned_fingerprints, weights_digest
from attribution.scorers import ScoreRequest, Scorer, needs_queries
from mval.errors import MvalError
from mval.progress import progress
from mval.store import load_sql, transaction


INFLUENCE_METHODS = ("influence", "test-influence")  # they read `request.damping`, and fit on the whole dataset


@dataclass(frozen=True)
class ScoreSummary:
    dataset: str
    method: str
    concept: str
    scored: int  # in this run
    already_scored: int  # skipped: scored by an earlier (interrupted) run
    total: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def run_settings(model: ConceptModel, method: str, request: ScoreRequest, examples: Sequence[Example]) -> dict:
    """What determines the scores of a method; its hash is the run's fingerprint. Influence scores also
    depend on the whole dataset (the Hessian is fit on it): adding examples changes every score."""
    c = request.concept
    settings = {"method": method, "model": fingerprint(model), "weights": weights_digest(model.module),
                "layer": c.layer, "position": c.position,
                "direction": hashlib.sha256(c.vector.tobytes()).hexdigest(), "seed": request.seed}
    if needs_queries(method):
        settings["queries"] = examples_hash(request.queries)
    if method in ("gradient", "tracin"):
        settings["proj_dim"] = request.proj_dim
    if method == "tracin":
        settings["checkpoint_set"] = sorted(fingerprint(c) for c in request.checkpoints)
    if method in INFLUENCE_METHODS:
        settings["damping"] = request.damping
        settings["training_set"] = examples_hash(examples)
    return settings


def _check_run(con: duckdb.DuckDBPyConnection, dataset: str, method: str, concept: str, settings: dict,
               replace: bool) -> list[tuple[str, list]]:
    """Refuse a resume with other settings; return the statements that record this run (and, with
    `replace`, delete the old one), run with the first scores committed, so a run that fails before
    scoring anything leaves the store as it was."""
    text = json.dumps(settings, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    key = [dataset, method, concept]
    where = "WHERE dataset = ? AND method = ? AND concept = ?"
    record = ("INSERT INTO score_runs (dataset, method, concept, fingerprint, settings) VALUES (?, ?, ?, ?, ?)",
              [*key, digest, text])
    if replace:
        return [(f"DELETE FROM scores {where}", key), (f"DELETE FROM score_runs {where}", key), record]
    rows = con.execute(f"SELECT fingerprint, settings FROM score_runs {where}", key).fetchall()
    if rows and rows[0][0] != digest:
        old = _recorded_settings(json.loads(rows[0][1]), settings)
        if old == settings:
            return []
        changed = sorted(k for k in settings.keys() | old.keys() if settings.get(k) != old.get(k))
        raise MvalError(
            f"dataset {dataset!r} already has {method} scores for concept {concept!r} made with a different "
            f"{', '.join(k.replace('_', ' ') for k in changed)}; use another --concept-name, or --replace to rescore"
        )
    return [] if rows else [record]


def _recorded_settings(old: dict, now: dict) -> dict:
    """A run's recorded settings in today's terms: runs recorded before the fingerprint covered the
    config and tokenizer have no "weights", and their "model" is the weights' digest alone; such a run
    counts as made by today's model when the weights match (a changed config cannot be told apart)."""
    if "weights" in old or old.get("model") != now["weights"]:
        return old
    return old | {"model": now["model"], "weights": now["weights"]}


def _unscored(con: duckdb.DuckDBPyConnection, dataset: str, method: str, concept: str) -> list[Example]:
    rows = con.execute(load_sql("attribution_unscored"),
                       {"dataset": dataset, "method": method, "concept": concept}).fetchall()
    return [Example(*r) for r in rows]


def _checked(method: str, examples: Sequence[Example], scores: np.ndarray) -> pl.DataFrame:
    """One scored batch as rows for `scores`; refuse a scorer's wrong shape or non-finite values."""
    if scores.shape != (len(examples),) or not np.isfinite(scores).all():
        raise MvalError(f"method {method} returned {scores.shape} scores (finite: {np.isfinite(scores).all()}) "
                        f"for {len(examples)} examples; the scorer is broken")
    return pl.DataFrame({"example_id": [e.example_id for e in examples], "score": scores.astype(np.float64)})


def _write(con: duckdb.DuckDBPyConnection, dataset: str, method: str, concept: str,
           parts: list[pl.DataFrame], first: list[tuple[str, list]]) -> None:
    """Commit the scored batches `parts` in one transaction (after the pending statements `first`,
    which record the run), and empty both lists."""
    if not parts:
        return
    con.register("batch_scores", pl.concat(parts))
    try:
        with transaction(con):
            for statement, params in first:
                con.execute(statement, params).fetchall()
            con.execute("INSERT INTO scores (dataset, example_id, method, concept, score) "
                        "SELECT ?, example_id, ?, ?, score FROM batch_scores", [dataset, method, concept]).fetchall()
    finally:
        con.unregister("batch_scores")
    parts.clear()
    first.clear()


def score_dataset(con: duckdb.DuckDBPyConnection, dataset: str, method: str, concept: str, model: ConceptModel,
                  scorer: Scorer, request: ScoreRequest, replace: bool = False,
                  flush_seconds: float = 2.0) -> ScoreSummary:
    """Score every example of `dataset` not yet scored for (method, concept); commit at least every
    `flush_seconds`, and what is scored when an exception stops the run."""
    with pinned_fingerprints():  # the model does not change during the run: hash its weights once
        return _score_dataset(con, dataset, method, concept, model, scorer, request, replace, flush_seconds)


def _score_dataset(con: duckdb.DuckDBPyConnection, dataset: str, method: str, concept: str, model: ConceptModel,
                   scorer: Scorer, request: ScoreRequest, replace: bool, flush_seconds: float) -> ScoreSummary:
    start = time.perf_counter()
    examples = load_examples(con, dataset)
    total = len(examples)
    request.concept.check_fits(model)
    first = _check_run(con, dataset, method, concept, run_settings(model, method, request, examples), replace)
    todo = examples if replace else _unscored(con, dataset, method, concept)
    fit = getattr(scorer, "fit", None)
    if todo and fit is not None:  # e.g. influence's Hessian: always from the whole dataset, even on resume
        fit(model, examples)
    chunks = batches(todo, request.batch_size)
    parts: list[pl.DataFrame] = []
    flushed = time.perf_counter()
    try:
        for chunk in progress(chunks, desc=f"{method} scores", total=len(chunks)):
            parts.append(_checked(method, chunk, np.asarray(scorer.score(model, chunk), dtype=np.float64)))
            if time.perf_counter() - flushed >= flush_seconds:
                _write(con, dataset, method, concept, parts, first)
                flushed = time.perf_counter()
    finally:
        _write(con, dataset, method, concept, parts, first)
    return ScoreSummary(dataset, method, concept, len(todo), total - len(todo), total, time.perf_counter() - start)


def top_scores(con: duckdb.DuckDBPyConnection, dataset: str, method: str, concept: str, k: int) -> pl.DataFrame:
    """The k highest-scored examples with their content."""
    return con.sql(
        "SELECT s.example_id, s.score, coalesce(e.text, e.prompt || ' => ' || e.response) AS example "
        "FROM scores s JOIN examples e USING (dataset, example_id) "
        "WHERE s.dataset = ? AND s.method = ? AND s.concept = ? ORDER BY s.score DESC, e.position LIMIT ?",
        params=[dataset, method, concept, k],
    ).pl()
