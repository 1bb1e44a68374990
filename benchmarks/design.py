"""Exact MVAL solver vs the cvxpy reference on one random instance, side by side; or the exact solver alone at scale.

    python benchmarks/design.py --contexts 10000 --actions 10 --json
    python benchmarks/design.py --contexts 1000000 --actions 20 --exact-only --json

Prints one JSON object: exact_seconds, cvxpy_seconds, objective_gap (relative), speedup; with
--exact-only: exact_seconds, peak_memory_ratio (tracemalloc peak of the solve / input bytes) and
pass_seconds (one numpy pass over the inputs: np.sum over c and pi0, the memory-bandwidth floor).
"""

from __future__ import annotations

import json
import time
import tracemalloc

import click
import numpy as np

from mval.design import MvalProblem, solve_exact
from mval.design_cvxpy import solve_cvxpy


def random_problem(n: int, k: int, alpha: float, seed: int) -> MvalProblem:
    rng = np.random.default_rng(seed)
    c = rng.gamma(0.5, size=(n, k))
    pi0 = rng.random((n, k))
    pi0 /= pi0.sum(axis=1, keepdims=True)
    return MvalProblem(c, pi0, alpha)


def best_of(repeats: int, fn):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


@click.command()
@click.option("--contexts", type=int, default=10_000, show_default=True)
@click.option("--actions", type=int, default=10, show_default=True)
@click.option("--alpha", type=float, default=0.5, show_default=True)
@click.option("--seed", type=int, default=0)
@click.option("--exact-only", is_flag=True, help="Skip cvxpy; report time and peak memory of the exact solver.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the default prints it indented).")
def main(contexts: int, actions: int, alpha: float, seed: int, exact_only: bool, as_json: bool) -> None:
    problem = random_problem(contexts, actions, alpha, seed)
    input_bytes = problem.c.nbytes + problem.pi0.nbytes
    out = {"contexts": contexts, "actions": actions, "alpha": alpha, "input_mb": input_bytes / 2**20}
    # timed with the input checks of MvalProblem (finite, >= 0, rows of pi0 sum to 1)
    exact_seconds, pi_exact = best_of(3, lambda: solve_exact(MvalProblem(problem.c, problem.pi0, alpha)))
    out["exact_seconds"] = exact_seconds
    if exact_only:
        tracemalloc.start()
        solve_exact(problem)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out["peak_memory_ratio"] = peak / input_bytes
        out["pass_seconds"], _ = best_of(3, lambda: (problem.c.sum(), problem.pi0.sum()))
        out["exact_over_pass"] = exact_seconds / out["pass_seconds"]
    else:
        start = time.perf_counter()
        pi_cvxpy = solve_cvxpy(problem)
        out["cvxpy_seconds"] = time.perf_counter() - start
        f_exact, f_cvxpy = float(problem.objective(pi_exact)), float(problem.objective(pi_cvxpy))
        out["objective_exact"], out["objective_cvxpy"] = f_exact, f_cvxpy
        out["objective_gap"] = abs(f_exact - f_cvxpy) / abs(f_cvxpy)
        out["speedup"] = out["cvxpy_seconds"] / exact_seconds
    click.echo(json.dumps(out) if as_json else json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
