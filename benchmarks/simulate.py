"""MVAL against the usual designs on three environments with a known truth (the README's table).

    python benchmarks/simulate.py --reps 200 --json        # one JSON object per env/design/budget/estimator
    python benchmarks/simulate.py --reps 200 --markdown    # the README table

Environments: synthetic (overlap 0.7: the old logger already covers part of the target), wine and
digits (supervised-to-bandit, reward flip noise 0.1). The existing log has n0 = 5000 rows.
"""

from __future__ import annotations

import argparse
import json
import time

from mval.environments import sklearn_env, synthetic_env
from mval.simulate import run_experiment, summarise

ENVS = {
    "synthetic": lambda: synthetic_env(overlap=0.7),
    "wine": lambda: sklearn_env("wine"),
    "digits": lambda: sklearn_env("digits"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--n0", type=int, default=5000)
    parser.add_argument("--budgets", default="500,2000")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    rows = []
    for name, make in ENVS.items():
        env = make()
        start = time.perf_counter()
        records = run_experiment(env, args.n0, budgets, args.reps, seed=0)
        for s in summarise(env, args.n0, records):
            rows.append(s.to_dict() | {"env": name, "seconds": round(time.perf_counter() - start, 1)})
    if args.json:
        print(json.dumps(rows))
    if args.markdown or not args.json:
        print("| env | n1 | estimator | design | RMSE | RMSE / MVAL [95% CI] | emp. std | predicted std | rounds to match MVAL |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['env']} | {r['budget']} | {r['estimator']} | {r['design']} | {r['rmse']:.4f} | "
                  f"{r['rmse_ratio_vs_mval']:.2f} [{r['ratio_ci_low']:.2f}, {r['ratio_ci_high']:.2f}] | "
                  f"{r['empirical_std']:.4f} | {r['predicted_std']:.4f} | {r['rounds_to_match_mval']:.0f} |")


if __name__ == "__main__":
    main()
