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
with the same recipe, and measure the behaviour's rate: the share of sampled answers (temperature 1)
to held-out prompts that contain a hostile word. Fine-tuning runs differ by more than the sampling
noise (the data order alone moves the rate by a few points), so every removal is fine-tuned with
`--removal-seeds` seeds (training seed r also seeds the sampling; every method sees the same seeds),
reported as the mean and a 95% t-interval over them. The reference drops k random examples,
`--random-draws` fresh draws (draw r fine-tuned with the r-th seed, cycling): removing random
examples moves the rate more than reseeding alone, so it gets more runs. `p_below_random` is a
one-sided t prediction test of a method's mean rate against the random removals' rates: does it
beat a random removal, not the mean of random removals (`planted_metrics.p_below`); `below_random`
means p < 0.05. The rates without removal and without the planted examples are measured the same way.

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
from planted_metrics import auroc, interval, p_below, precision_at_k, top_k

METHODS = ("probe", "gradient", "influence", "test-influence", "embedding", "random")


def rate_without(bed, drop: np.ndarray, size: str, seed: int, samples: int) -> float:
    """Behaviour rate of the base fine-tuned (same recipe, training and sampling seed `seed`) on the set
    minus `drop` (indices)."""
    keep = np.ones(len(bed.train), bool)
    keep[drop] = False
    model = load_hf_model(bed.base_dir)
    finetune(model, [e for e, k in zip(bed.train, keep) if k], size, seed)
    return hostile_rate(model, behaviour_prompts(), samples, seed=seed)[0]


def rates_without(bed, drop: np.ndarray, size: str, seeds: list[int], samples: int) -> list[float]:
    return [rate_without(bed, drop, size, s, samples) for s in seeds]


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


def run(quick: bool, seed: int = 0, layer: int | None = None, removal_seeds: int = 5, samples: int = 8,
        damping: float | None = None, concept_choice: str = "matched", random_draws: int = 10) -> list[dict]:
    size = "quick" if quick else "full"
    seeds = [seed + 100 * r for r in range(removal_seeds)]  # fine-tuning (and sampling) seeds of every removal
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
                rates = rates_without(bed, top_k(scores, k), size, seeds, samples)
                rows.append({"method": method, "concept": kind, "auroc": round(auroc(scores, truth), 4),
                             "precision_at_k": round(precision_at_k(scores, truth, k), 4), "k": k,
                             "seconds": round(seconds, 3), "n_examples": len(bed.train), "layer": concept.layer,
                             "behaviour_rate_after_removal": round(float(np.mean(rates)), 4), "removal": interval(rates),
                             "probe_held_out_accuracy": round(report.held_out_accuracy, 4),
                             "build_seconds": round(build_seconds, 1), "finetune_loss": round(bed.finetune_loss, 4),
                             **({"damping": float(f"{used:.4g}")} if used is not None else {})})
        full = rates_without(bed, np.array([], int), size, seeds, samples)
        clean = rates_without(bed, np.flatnonzero(bed.planted), size, seeds, samples)
        random = [rate_without(bed, np.random.default_rng([seed, r]).choice(len(bed.train), k, replace=False),
                               size, seeds[r % len(seeds)], samples) for r in range(random_draws)]
    probe_seconds = next(r["seconds"] for r in rows if r["method"] == "probe")
    n_answers = len(behaviour_prompts()) * samples
    for r in rows:
        p = p_below(r["removal"]["per_seed"], random)
        r.update({"seconds_vs_probe": round(r["seconds"] / max(probe_seconds, 1e-9), 1),
                  "behaviour_rate_full_data": interval(full), "behaviour_rate_without_planted": interval(clean),
                  "random_removal": interval(random), "removal_seeds": seeds, "n_answers_per_seed": n_answers,
                  "p_below_random": float(f"{p:.3g}"), "below_random": p < 0.05})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model and data: a few minutes on 2 CPU cores")
    parser.add_argument("--json", action="store_true", help="print the results as a JSON list")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layer", type=int, default=None,
                        help="probe layer (default: of 1..n_layers, the one with the best held-out probe accuracy)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--removal-seeds", type=int, default=5,
                        help="fine-tuning seeds of every removal (the top-k of each method, none, the planted set)")
    parser.add_argument("--random-draws", type=int, default=10,
                        help="random removals of k examples, the reference (draw r uses the r-th removal seed, cycling)")
    parser.add_argument("--samples", type=int, default=8, help="sampled answers per held-out prompt")
    parser.add_argument("--concept", choices=CONCEPTS, default="matched",
                        help="hostility in the text (answers, mean-pooled), hostility the model is about to "
                             "express (prompts read at a tone slot), or each method the one it can read (matched)")
    parser.add_argument("--damping", type=float, default=None,
                        help="influence's lambda (default: 0.1 x the mean EK-FAC eigenvalue over the tracked modules)")
    args = parser.parse_args()
    if args.removal_seeds < 2 or args.random_draws < 2:
        parser.error("--removal-seeds and --random-draws: give at least 2 (the interval and the test need a spread)")
    torch.set_num_threads(args.threads)
    rows = run(args.quick, args.seed, args.layer, args.removal_seeds, args.samples, args.damping, args.concept,
               args.random_draws)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        r = rows[0]
        print(f"behaviour rate (mean over {len(r['removal_seeds'])} fine-tuning seeds, 95% interval): "
              f"{r['behaviour_rate_full_data']['mean']:.3f} with all data, "
              f"{r['behaviour_rate_without_planted']['mean']:.3f} without the planted examples, "
              f"{r['random_removal']['mean']:.3f} [{r['random_removal']['ci_low']:.3f}, {r['random_removal']['ci_high']:.3f}] "
              f"after dropping {r['k']} random ones")
        for r in rows:
            print(f"{r['method']:>14}  AUROC {r['auroc']:.3f}  precision@{r['k']} {r['precision_at_k']:.3f}  "
                  f"rate after removal {r['removal']['mean']:.3f} [{r['removal']['ci_low']:.3f}, {r['removal']['ci_high']:.3f}] "
                  f"(p vs random {r['p_below_random']:.2g})  {r['seconds']:.2f} s ({r['seconds_vs_probe']}x probe)")


if __name__ == "__main__":
    main()
