"""Benchmark: how well each attribution method finds the planted examples of the test bed, and the causal test.

Builds the test bed (pretrain a tiny Llama-style LM from scratch, fine-tune it on a mix where a
known 5% of answers are hostile), trains the hostility probe at the block output where it reads best
(held-out accuracy; not the embeddings, which influence cannot track), then scores every fine-tuning
example with each method, side by side, through the store
(`mval examples add` / `mval score` code paths). Per method: AUROC and precision@k (k = number
of planted examples) of the scores against the planted flags, and wall time.

The concept (`--concept`), see `attribution.testbed`:
- `said`: hostility in the text. The probe is trained on held-out answers labelled hostile or not,
  mean-pooled over the tokens; the concept's queries are hostile answers about held-out nouns.
- `intended`: hostility the model is about to express. The probe is trained on held-out prompts whose
  first sentence sets the tone, read at their last token, where a tone word comes next; the concept's
  queries are neutral prompts about held-out nouns ending there.
- `matched` (default): `said` for `probe`, which reads each training example's own activations, and
  `intended` for the methods that read what an example teaches (`gradient`, `influence`).
The baselines that read examples, not a concept (`test-influence`, `embedding`), use the hostile answers
as their queries and the layer of the `intended` concept (`said` with `--concept said`).

The causal test: drop each method's top-k examples, fine-tune again from the same pretrained base
with the same recipe and seed, and measure the behaviour's rate: the share of sampled answers
(temperature 1, same sampling seed for every model) to held-out prompts that contain a hostile
word, with a Wilson 95% interval. The reference is dropping k random examples, `--random-seeds`
times, with a 95% t-interval of the mean rate.

    python benchmarks/concept.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from attribution.examples import add_examples, write_jsonl
from attribution.models import load_hf_model
from attribution.probes import ProbeDirection, ProbeReport, train_probe
from attribution.scorers import ScoreRequest, make_scorer
from attribution.scoring import score_dataset
from attribution.testbed import behaviour_prompts, build_testbed, finetune, hostile_rate
from mval.store import init_store, open_store
from planted_metrics import auroc, precision_at_k, t_interval, top_k

METHODS = ("probe", "gradient", "influence", "test-influence", "embedding", "random")


def wilson(hits: float, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a binomial proportion."""
    p = hits / n
    centre, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [round(float((centre - half) / (1 + z * z / n)), 4), round(float((centre + half) / (1 + z * z / n)), 4)]


def rate_without(bed, drop: np.ndarray, size: str, seed: int, samples: int) -> tuple[float, int]:
    """Behaviour rate of the base fine-tuned (same recipe, same seed) on the set minus `drop` (indices)."""
    keep = np.ones(len(bed.train), bool)
    keep[drop] = False
    model = load_hf_model(bed.base_dir)
    finetune(model, [e for e, k in zip(bed.train, keep) if k], size, seed)
    return hostile_rate(model, behaviour_prompts(), samples, seed=seed)


CONCEPTS = ("matched", "intended", "said")
EXAMPLE_BASELINES = ("test-influence", "embedding")  # their queries are the hostile answers, whatever the concept


def concept_of(method: str, choice: str) -> str:
    """The concept a method reads under `--concept choice`."""
    if choice != "matched":
        return choice
    return "said" if method == "probe" else "intended"


def train_concept(model, bed, kind: str, layer: int | None, seed: int) -> tuple[ProbeDirection, ProbeReport, list]:
    """The probe of concept `kind` at the block output where it reads best (held-out accuracy; not the
    embeddings, which influence cannot track), and the concept's queries."""
    if kind == "intended":
        data, labels, position, queries = bed.intent_data, bed.intent_labels, "last", bed.intent_queries
    else:
        data, labels, position, queries = bed.probe_data, bed.probe_labels, "mean", bed.queries
    layers = range(1, model.n_layers + 1) if layer is None else [layer]
    probes = [train_probe(model, data, labels, ell, position, seed=seed) for ell in layers]
    return (*max(probes, key=lambda p: p[1].held_out_accuracy), queries)


def run(quick: bool, seed: int = 0, layer: int | None = None, random_seeds: int = 5, samples: int = 8,
        damping: float | None = None, concept_choice: str = "matched") -> list[dict]:
    size = "quick" if quick else "full"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        bed = build_testbed(tmp, size, seed=seed)
        build_seconds = time.perf_counter() - start
        model = load_hf_model(bed.model_dir)
        kinds = sorted({concept_of(m, concept_choice) for m in METHODS})
        concepts = {kind: train_concept(model, bed, kind, layer, seed) for kind in kinds}

        train_file = tmp / "train.jsonl"
        write_jsonl(train_file, bed.train)
        store = init_store(tmp / "store.duckdb")
        truth = bed.planted.astype(int)
        k = int(truth.sum())
        rows = []
        with open_store(store) as con:
            add_examples(con, "train", train_file)
            for method in METHODS:
                kind = concept_of(method, concept_choice)
                concept, report, queries = concepts[kind]
                queries = bed.queries if method in EXAMPLE_BASELINES else queries
                request = ScoreRequest(concept, tuple(queries), seed=seed, batch_size=32, proj_dim=4096,
                                       cache_dir=tmp / "cache", damping=damping)
                begin = time.perf_counter()
                scorer = make_scorer(method, request)
                score_dataset(con, "train", method, f"hostile-{kind}", model, scorer, request)
                seconds = time.perf_counter() - begin
                used = scorer.damping(model) if hasattr(scorer, "damping") else None  # influence's lambda
                scores = np.array([r[0] for r in con.execute(
                    "SELECT s.score FROM scores s JOIN examples e USING (dataset, example_id) "
                    "WHERE s.dataset = 'train' AND s.method = ? ORDER BY e.position", [method]).fetchall()])
                rate, n = rate_without(bed, top_k(scores, k), size, seed, samples)
                rows.append({"method": method, "concept": kind, "auroc": round(auroc(scores, truth), 4),
                             "precision_at_k": round(precision_at_k(scores, truth, k), 4), "k": k,
                             "seconds": round(seconds, 3), "n_examples": len(bed.train), "layer": concept.layer,
                             "behaviour_rate_after_removal": round(rate, 4),
                             "behaviour_rate_interval": wilson(rate * n, n), "n_sampled_answers": n,
                             "probe_held_out_accuracy": round(report.held_out_accuracy, 4),
                             "build_seconds": round(build_seconds, 1), "finetune_loss": round(bed.finetune_loss, 4),
                             **({"damping": float(f"{used:.4g}")} if used is not None else {})})
        full_rate, _ = hostile_rate(load_hf_model(bed.model_dir), behaviour_prompts(), samples, seed=seed)
        clean_rate, _ = rate_without(bed, np.flatnonzero(bed.planted), size, seed, samples)
        random_rates = [rate_without(bed, np.random.default_rng([seed, r]).choice(len(bed.train), k, replace=False),
                                     size, seed, samples)[0] for r in range(random_seeds)]
    probe_seconds = next(r["seconds"] for r in rows if r["method"] == "probe")
    interval = [round(bound, 4) for bound in t_interval(random_rates)[1:]]
    for r in rows:
        r["seconds_vs_probe"] = round(r["seconds"] / max(probe_seconds, 1e-9), 1)
        r["behaviour_rate_full_data"] = round(full_rate, 4)
        r["behaviour_rate_without_planted"] = round(clean_rate, 4)
        r["random_removal_rate"] = round(float(np.mean(random_rates)), 4)
        r["random_removal_interval"] = interval
        r["random_removal_seeds"] = random_seeds
        r["below_random"] = r["behaviour_rate_interval"][1] < interval[0]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model and data: a few minutes on 2 CPU cores")
    parser.add_argument("--json", action="store_true", help="print the results as a JSON list")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layer", type=int, default=None,
                        help="probe layer (default: of 1..n_layers, the one with the best held-out probe accuracy)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--random-seeds", type=int, default=5, help="random top-k removals to compare with")
    parser.add_argument("--samples", type=int, default=8, help="sampled answers per held-out prompt")
    parser.add_argument("--concept", choices=CONCEPTS, default="matched",
                        help="hostility in the text (answers, mean-pooled), hostility the model is about to "
                             "express (prompts read at a tone slot), or each method the one it can read (matched)")
    parser.add_argument("--damping", type=float, default=None,
                        help="influence's lambda (default: 0.1 x the mean EK-FAC eigenvalue over the tracked modules)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args.quick, args.seed, args.layer, args.random_seeds, args.samples, args.damping, args.concept)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        r = rows[0]
        print(f"behaviour rate: {r['behaviour_rate_full_data']:.3f} with all data, "
              f"{r['behaviour_rate_without_planted']:.3f} without the planted examples, "
              f"{r['random_removal_rate']:.3f} {r['random_removal_interval']} after dropping {r['k']} random examples")
        for r in rows:
            print(f"{r['method']:>14}  AUROC {r['auroc']:.3f}  precision@{r['k']} {r['precision_at_k']:.3f}  "
                  f"rate after removal {r['behaviour_rate_after_removal']:.3f} {r['behaviour_rate_interval']}  "
                  f"{r['seconds']:.2f} s ({r['seconds_vs_probe']}x probe)")


if __name__ == "__main__":
    main()
