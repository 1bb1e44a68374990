"""Exact MVAL solver vs the cvxpy reference on one random instance, side by side; or the exact solver alone at scale.

    python benchmarks/design.py --contexts 10000 --actions 10 --json
    python benchmarks/design.py --contexts 1000000 --actions 20 --exact-only --json
    python benchmarks/design.py --contexts 60 --actions 80 --coupled --json

Prints one JSON object: exact_seconds, cvxpy_seconds, objective_gap (relative), speedup; with
--exact-only: exact_seconds, peak_memory_ratio (tracemalloc peak of the solve / input bytes) and
pass_seconds (one numpy pass over the inputs: np.sum over c and pi0, the memory-bandwidth floor).
With --coupled: a two-target minimax problem (cvxpy only; no exact solver), solved as mval does
(`ignore_dpp`) and with cvxpy's DPP compilation (the reference), with each one's seconds and peak
memory (ru_maxrss growth) and the objective gap.
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


def coupled_comparison(n: int, k: int, alpha: float, seed: int) -> dict:
    """Seconds, peak memory growth and objective of the minimax solve, with ignore_dpp (mval) and with DPP."""
    import resource

    import mval.design_cvxpy as design_cvxpy

    base = random_problem(n, k, alpha, seed)
    costs = np.stack([base.c, np.random.default_rng(seed + 1).gamma(0.5, size=(n, k))])
    problem = MvalProblem(costs, base.pi0, alpha)
    out = {"contexts": n, "actions": k, "targets": 2, "alpha": alpha}
    for name, options in (("ignore_dpp", {}), ("dpp", {"ignore_dpp": False})):
        design_cvxpy._MODELS.clear()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        pi1 = solve_cvxpy(problem, **options)
        out[f"{name}_seconds"] = round(time.perf_counter() - start, 3)
        out[f"{name}_peak_mb_growth"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, 1)
        out[f"{name}_objective"] = float(np.max(problem.objective(pi1)))  # the worst target
    out["speedup"] = round(out["dpp_seconds"] / out["ignore_dpp_seconds"], 1)
    out["objective_gap"] = abs(out["dpp_objective"] - out["ignore_dpp_objective"]) / abs(out["dpp_objective"])
    return out


@click.command()
@click.option("--contexts", type=int, default=10_000, show_default=True)
@click.option("--actions", type=int, default=10, show_default=True)
@click.option("--alpha", type=float, default=0.5, show_default=True)
@click.option("--seed", type=int, default=0)
@click.option("--exact-only", is_flag=True, help="Skip cvxpy; report time and peak memory of the exact solver.")
@click.option("--coupled", is_flag=True, help="Minimax over two targets: mval's cvxpy solve against DPP compilation.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the default prints it indented).")
def main(contexts: int, actions: int, alpha: float, seed: int, exact_only: bool, coupled: bool, as_json: bool) -> None:
    if coupled:
        out = coupled_comparison(contexts, actions, alpha, seed)
        click.echo(json.dumps(out) if as_json else json.dumps(out, indent=1))
        return
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
