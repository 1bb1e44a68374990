"""Benchmark: how well each attribution method finds the planted examples of the test bed.

Builds the test bed (pretrain a tiny Llama-style LM from scratch, fine-tune it on a mix where a
known 5% of answers are hostile), trains the hostility probe on held-out labelled answers at the
layer where it reads best (held-out accuracy), then
scores every fine-tuning example with each method, side by side, through the store
(`mval examples add` / `mval score` code paths). Per method: AUROC and precision@k (k = number
of planted examples) of the scores against the planted flags, and wall time.

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
from sklearn.metrics import roc_auc_score

from attribution.examples import add_examples
from attribution.models import load_hf_model
from attribution.probes import train_probe
from attribution.scorers import ScoreRequest, make_scorer
from attribution.scoring import score_dataset
from attribution.testbed import build_testbed
from mval.store import init_store, open_store

METHODS = ("probe", "gradient", "embedding", "random")


def precision_at_k(scores: np.ndarray, truth: np.ndarray, k: int) -> float:
    top = np.argsort(-scores, kind="stable")[:k]
    return float(truth[top].mean())


def run(quick: bool, seed: int = 0, layer: int | None = None) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        bed = build_testbed(tmp, "quick" if quick else "full", seed=seed)
        build_seconds = time.perf_counter() - start
        model = load_hf_model(bed.model_dir)
        layers = range(model.n_layers + 1) if layer is None else [layer]
        probes = [train_probe(model, bed.probe_data, bed.probe_labels, ell, "mean", seed=seed) for ell in layers]
        concept, report = max(probes, key=lambda p: p[1].held_out_accuracy)  # the layer where the probe reads best
        layer = concept.layer

        train_file = tmp / "train.jsonl"
        train_file.write_text("".join(json.dumps(e.to_json()) + "\n" for e in bed.train))
        store = init_store(tmp / "store.duckdb")
        truth = bed.planted.astype(int)
        k = int(truth.sum())
        rows = []
        with open_store(store) as con:
            add_examples(con, "train", train_file)
            for method in METHODS:
                request = ScoreRequest(concept, tuple(bed.queries), seed=seed, batch_size=32, proj_dim=4096,
                                       cache_dir=tmp / "cache")
                begin = time.perf_counter()
                score_dataset(con, "train", method, "hostile", model, make_scorer(method, request), request)
                seconds = time.perf_counter() - begin
                scores = np.array([r[0] for r in con.execute(
                    "SELECT s.score FROM scores s JOIN examples e USING (dataset, example_id) "
                    "WHERE s.dataset = 'train' AND s.method = ? ORDER BY e.position", [method]).fetchall()])
                rows.append({"method": method, "auroc": round(float(roc_auc_score(truth, scores)), 4),
                             "precision_at_k": round(precision_at_k(scores, truth, k), 4), "k": k,
                             "seconds": round(seconds, 3), "n_examples": len(bed.train), "layer": layer,
                             "probe_held_out_accuracy": round(report.held_out_accuracy, 4),
                             "build_seconds": round(build_seconds, 1), "finetune_loss": round(bed.finetune_loss, 4)})
    probe_seconds = next(r["seconds"] for r in rows if r["method"] == "probe")
    for r in rows:
        r["seconds_vs_probe"] = round(r["seconds"] / max(probe_seconds, 1e-9), 1)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model and data: a few minutes on 2 CPU cores")
    parser.add_argument("--json", action="store_true", help="print the results as a JSON list")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layer", type=int, default=None, help="probe layer (default: the one with the best held-out probe accuracy)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args.quick, args.seed, args.layer)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            print(f"{r['method']:>10}  AUROC {r['auroc']:.3f}  precision@{r['k']} {r['precision_at_k']:.3f}  "
                  f"{r['seconds']:.2f} s ({r['seconds_vs_probe']}x probe)")


if __name__ == "__main__":
    main()
