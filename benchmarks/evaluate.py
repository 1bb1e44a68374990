"""Evaluation speed: `evaluate_policy` (ips, snips, dr) on a store vs one numpy pass over arrays in memory.

The store holds `--rows` events from a uniform logger (10 actions, 1,000 contexts, 0/1 rewards),
generated in DuckDB, with their cells counted as `mval ingest` counts them (`event_cells`). The
reference computes the IPS and SNIPS sums (sum w r, sum w, sum (w r)^2) with w = pi(a|x) / p on
arrays already in memory (context codes, actions, propensities, rewards, the target as a contexts x
actions matrix). `evaluate_policy` reads the cells and scans the events once for what they carry
(lists, row count), checks overlap, fits the default cross-fitted reward model (per-context-action
means) and runs ips, snips and dr. Both alternate, best of `--repeats`. Target (issue 3): ratio =
evaluate / numpy <= 3. `ratio` is on a fresh connection (what `mval evaluate` does: the store is
read from the file), `ratio_warm` is a second run on the same connection. The time to count the
cells is part of ingest (benchmarks/ingest.py).

    python benchmarks/evaluate.py --rows 10000000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from mval.evaluate import evaluate_policy
from mval.policies import add_policy, policy_frame
from mval.store import add_event_cells, init_store, load_sql, open_store

ACTIONS, CONTEXTS = 10, 1000


def build_store(folder: Path, rows: int, seed: int) -> Path:
    path = init_store(folder / "bench.duckdb")
    rng = np.random.default_rng(seed)
    target = rng.dirichlet(np.full(ACTIONS, 0.5), size=CONTEXTS)
    policy_frame(np.array([f"c{i}" for i in range(CONTEXTS)]), target).write_csv(folder / "target.csv")
    policy_frame(None, np.full((1, ACTIONS), 1 / ACTIONS)).write_csv(folder / "uniform.csv")
    with open_store(path) as con:
        con.execute("INSERT INTO ingests (ingest_id, path, content_hash, format, logger, rows, first_event) "
                    "VALUES (1, 'generated', 'generated', 'generic', 'uniform', ?, 0)",
                    [rows])
        con.execute(load_sql("evaluate_bench_log"), {"rows": rows, "actions": ACTIONS, "contexts": CONTEXTS})
        add_event_cells(con, 1)  # as `mval ingest` does
        add_policy(con, "target", folder / "target.csv")
        add_policy(con, "uniform", folder / "uniform.csv")
    return path


def arrays_in_memory(path: Path) -> tuple[np.ndarray, ...]:
    with open_store(path, read_only=True) as con:
        df = con.sql("SELECT CAST(substr(context_id, 2) AS INTEGER) AS x, action, propensity, reward FROM events").pl()
        target = con.sql("SELECT CAST(substr(context_id, 2) AS INTEGER) AS x, action, prob FROM policies "
                         "WHERE policy = 'target'").pl()
    probs = np.zeros((CONTEXTS, ACTIONS))
    probs[target["x"].to_numpy(), target["action"].to_numpy()] = target["prob"].to_numpy()
    return (df["x"].to_numpy(), df["action"].to_numpy(), df["propensity"].to_numpy(), df["reward"].to_numpy(), probs)


def numpy_pass(x: np.ndarray, a: np.ndarray, p: np.ndarray, r: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """Seconds for sum w r, sum w, sum (w r)^2 (IPS, SNIPS and their SEs), and the IPS estimate."""
    start = time.perf_counter()
    w = probs[x, a] / p
    wr = w * r
    sums = np.array([wr.sum(), w.sum(), wr @ wr])
    seconds = time.perf_counter() - start
    return seconds, float(sums[0] / len(r))


def mval_pass(path: Path) -> tuple[float, float, float]:
    """Seconds on a fresh connection (as `mval evaluate` runs: the store is read from the file), then
    again on the same connection (DuckDB's buffers warm), and the IPS estimate."""
    seconds = []
    with open_store(path, read_only=True) as con:
        for _ in range(2):
            start = time.perf_counter()
            result = evaluate_policy(con, "target", None, ["ips", "snips", "dr"])
            seconds.append(time.perf_counter() - start)
    return seconds[0], seconds[1], result.estimates[0][1].estimate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = build_store(Path(tmp), args.rows, args.seed)
        build_seconds = time.perf_counter() - start
        arrays = arrays_in_memory(path)
        reference, cold, warm = [], [], []
        for _ in range(args.repeats):
            seconds, ips_numpy = numpy_pass(*arrays)
            reference.append(seconds)
            first, second, ips_mval = mval_pass(path)
            cold.append(first)
            warm.append(second)
    print(json.dumps({
        "rows": args.rows,
        "actions": ACTIONS,
        "contexts": CONTEXTS,
        "store_build_seconds": round(build_seconds, 2),
        "numpy_ips_sums_seconds": round(min(reference), 3),
        "evaluate_ips_snips_dr_seconds": round(min(cold), 3),
        "ratio": round(min(cold) / min(reference), 2),
        "evaluate_warm_seconds": round(min(warm), 3),
        "ratio_warm": round(min(warm) / min(reference), 2),
        "target_ratio": 3.0,
        "ips_numpy": ips_numpy,
        "ips_mval": ips_mval,
    }))


if __name__ == "__main__":
    main()
