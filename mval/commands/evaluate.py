"""`mval evaluate`: what would a policy earn, judged from the logs in the store."""

from __future__ import annotations

import click

from mval.estimators import ESTIMATORS
from mval.evaluate import POSITIONS, evaluate_policy
from mval.output import emit, format_option, stderr
from mval.store import open_store

TABLE_DROP_IF_EMPTY = ("boot_low", "boot_high", "position")  # the table shows the positions mode above it


@click.command()
@click.argument("store", type=click.Path(dir_okay=False))
@click.option("--policy", required=True, help="Name of the target policy in the store (`mval policy add`).")
@click.option("--loggers", help="Comma list of loggers whose rows to use (default: all).")
@click.option("--estimator", "estimators", multiple=True, default=("all",), show_default=True,
              help=f"all, or a comma list of: {', '.join(ESTIMATORS)} (repeatable).")
@click.option("--bootstrap", "n_boot", type=click.IntRange(min=0), default=0, show_default=True,
              help="Bootstrap replicates for a percentile interval (0: none).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap and the folds.")
@click.option("--positions", type=click.Choice(POSITIONS), default="pooled", show_default=True,
              help="Slates: ignore positions, one estimate per position, or the position as part of the context.")
@click.option("--clip", type=float, default=10.0, show_default=True, help="clipped-ips: largest weight M.")
@click.option("--tau", type=float, default=10.0, show_default=True, help="switch-dr: weights above tau use the model.")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
              help="Cross-fitting folds of the reward model (dm, dr, sndr, switch-dr, balanced-dr).")
@format_option("table", "json", "csv")
def evaluate(store: str, policy: str, loggers: str | None, estimators: tuple[str, ...], n_boot: int, seed: int,
             positions: str, clip: float, tau: float, folds: int, fmt: str) -> None:
    """Estimate what POLICY would earn from the logged rows (off-policy evaluation).

    One row per estimator: estimate, std_error, normal 95% interval (ci_low, ci_high), effective
    sample size (ess) of the weights and rows used (n); boot_low/boot_high with --bootstrap.
    balanced-ips/balanced-dr weight by the mixture of all loggers and need each logger's policy
    (a policy named like the logger, or action_probs in the rows). With `all`, estimators that
    cannot run are skipped with the reason on stderr; named explicitly, they are refused.

    \b
    Examples:
      mval evaluate logs.duckdb --policy new-ranker
      mval evaluate logs.duckdb --policy new-ranker --estimator ips,snips,dr --bootstrap 500 --format json
      mval evaluate logs.duckdb --policy new-ranker --loggers prod,mval-next --estimator balanced-ips
    """
    names = [n.strip() for n in loggers.split(",") if n.strip()] if loggers is not None else None
    with open_store(store, read_only=True) as con:
        result = evaluate_policy(con, policy, names, estimators, n_boot=n_boot, seed=seed, positions=positions,
                                 clip=clip, tau=tau, folds=folds)
    records = result.records()
    if fmt == "table":
        empty = [c for c in TABLE_DROP_IF_EMPTY if all(r[c] is None for r in records)]
        records = [{k: v for k, v in r.items() if k not in (*empty, "positions")} for r in records]
        click.echo(f"policy {policy!r} on loggers {', '.join(result.loggers)}; positions {positions}"
               + (f"; reward model: {result.reward_model}" if result.reward_model else ""))
    for name, why in result.skipped.items():
        stderr(f"skipped {name}: {why}")
    emit(records, fmt)
