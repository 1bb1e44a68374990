"""Score a dataset of the store and write `scores`, batch by batch, so that a killed run resumes.

Each batch of examples is scored and committed in its own transaction; a rerun scores only the
examples with no row yet for (dataset, method, concept): nothing is lost or written twice.
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
from attribution.models import ConceptModel, fingerprint
from attribution.scorers import NEEDS_QUERIES, ScoreRequest, Scorer
from mval.errors import MvalError
from mval.progress import progress
from mval.store import load_sql, transaction


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


def run_settings(model: ConceptModel, method: str, request: ScoreRequest) -> dict:
    """What determines the scores of a method; its hash is the run's fingerprint."""
    c = request.concept
    settings = {"method": method, "model": fingerprint(model), "layer": c.layer, "position": c.position,
                "direction": hashlib.sha256(c.vector.tobytes()).hexdigest(), "seed": request.seed}
    if method in NEEDS_QUERIES:
        settings["queries"] = examples_hash(request.queries)
    if method == "gradient":
        settings["proj_dim"] = request.proj_dim
    if method in ("influence", "test-influence"):
        settings["damping"] = request.damping
    return settings


def _check_run(con: duckdb.DuckDBPyConnection, dataset: str, method: str, concept: str, settings: dict,
               replace: bool) -> None:
    text = json.dumps(settings, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    with transaction(con):
        if replace:
            con.execute("DELETE FROM scores WHERE dataset = ? AND method = ? AND concept = ?",
                        [dataset, method, concept]).fetchall()
            con.execute("DELETE FROM score_runs WHERE dataset = ? AND method = ? AND concept = ?",
                        [dataset, method, concept]).fetchall()
        rows = con.execute("SELECT fingerprint, settings FROM score_runs WHERE dataset = ? AND method = ? AND concept = ?",
                           [dataset, method, concept]).fetchall()
        if rows and rows[0][0] != digest:
            old = json.loads(rows[0][1])
            changed = sorted(k for k in settings.keys() | old.keys() if settings.get(k) != old.get(k))
            raise MvalError(
                f"dataset {dataset!r} already has {method} scores for concept {concept!r} made with a different "
                f"{', '.join(changed)}; use another --concept-name, or --replace to rescore"
            )
        if not rows:
            con.execute("INSERT INTO score_runs (dataset, method, concept, fingerprint, settings) VALUES (?, ?, ?, ?, ?)",
                        [dataset, method, concept, digest, text]).fetchall()


def _unscored(con: duckdb.DuckDBPyConnection, dataset: str, method: str, concept: str) -> list[Example]:
    rows = con.execute(load_sql("attribution_unscored"),
                       {"dataset": dataset, "method": method, "concept": concept}).fetchall()
    return [Example(*r) for r in rows]


def _write(con: duckdb.DuckDBPyConnection, dataset: str, method: str, concept: str,
           examples: Sequence[Example], scores: np.ndarray) -> None:
    if scores.shape != (len(examples),) or not np.isfinite(scores).all():
        raise MvalError(f"method {method} returned {scores.shape} scores (finite: {np.isfinite(scores).all()}) "
                        f"for {len(examples)} examples; the scorer is broken")
    frame = pl.DataFrame({"example_id": [e.example_id for e in examples], "score": scores.astype(np.float64)})
    con.register("batch_scores", frame)
    try:
        with transaction(con):
            con.execute("INSERT INTO scores (dataset, example_id, method, concept, score) "
                        "SELECT ?, example_id, ?, ?, score FROM batch_scores", [dataset, method, concept]).fetchall()
    finally:
        con.unregister("batch_scores")


def score_dataset(con: duckdb.DuckDBPyConnection, dataset: str, method: str, concept: str, model: ConceptModel,
                  scorer: Scorer, request: ScoreRequest, replace: bool = False) -> ScoreSummary:
    """Score every example of `dataset` not yet scored for (method, concept); commit batch by batch."""
    start = time.perf_counter()
    examples = load_examples(con, dataset)
    total = len(examples)
    request.concept.check_fits(model)
    _check_run(con, dataset, method, concept, run_settings(model, method, request), replace)
    todo = _unscored(con, dataset, method, concept)
    fit = getattr(scorer, "fit", None)
    if todo and fit is not None:  # e.g. influence's Hessian: always from the whole dataset, even on resume
        fit(model, examples)
    chunks = batches(todo, request.batch_size)
    for chunk in progress(chunks, desc=f"{method} scores", total=len(chunks)):
        _write(con, dataset, method, concept, chunk, np.asarray(scorer.score(model, chunk), dtype=np.float64))
    return ScoreSummary(dataset, method, concept, len(todo), total - len(todo), total, time.perf_counter() - start)


def top_scores(con: duckdb.DuckDBPyConnection, dataset: str, method: str, concept: str, k: int) -> pl.DataFrame:
    """The k highest-scored examples with their content."""
    return con.sql(
        "SELECT s.example_id, s.score, coalesce(e.text, e.prompt || ' => ' || e.response) AS example "
        "FROM scores s JOIN examples e USING (dataset, example_id) "
        "WHERE s.dataset = ? AND s.method = ? AND s.concept = ? ORDER BY s.score DESC, e.position LIMIT ?",
        params=[dataset, method, concept, k],
    ).pl()
