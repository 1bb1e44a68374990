"""Reward model speed: the default cross-fitted model of DM/DR against the same model on the dense design.

Data shaped like the Open Bandit Dataset sample: `--rows` rows, `--features` 0/1 features (20% ones),
`--actions` actions, 0/1 rewards with a 0.5% base rate. Both sides fit the same 5 cross-fitted logistic
regressions (C = 1) on [x, one-hot(a), x * one-hot(a)]. The default (`cross_fit_model` without a factory)
builds that matrix sparse (2d + 1 entries per row) and computes q for every action from the coefficients
in one product; the reference passes the same model as a factory, which takes the generic path: the dense
matrix (d (K + 1) + K columns), and one `predict_proba` per action. Reports both times, their ratio and
the largest difference between the two q tables.

    python benchmarks/reward_model.py
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from mval.reward_model import cross_fit_model, default_factory, fold_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--features", type=int, default=80)
    parser.add_argument("--actions", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    x = (rng.random((args.rows, args.features)) < 0.2).astype(float)
    action = rng.integers(args.actions, size=args.rows)
    lift = 0.01 * x[:, 0] * (action % 4 == 0)
    reward = (rng.random(args.rows) < 0.005 + lift).astype(float)
    fold = fold_ids(args.rows, 5, args.seed)

    start = time.perf_counter()
    fast = cross_fit_model(x, action, reward, args.actions, fold, 5)
    fast_seconds = time.perf_counter() - start
    start = time.perf_counter()
    dense = cross_fit_model(x, action, reward, args.actions, fold, 5, factory=default_factory(binary=True))
    dense_seconds = time.perf_counter() - start
    print(json.dumps({
        "rows": args.rows, "features": args.features, "actions": args.actions,
        "default_seconds": round(fast_seconds, 2), "dense_per_action_seconds": round(dense_seconds, 2),
        "ratio": round(dense_seconds / fast_seconds, 1), "max_abs_difference": float(np.abs(fast - dense).max()),
    }))


if __name__ == "__main__":
    main()
