"""`mval design`: the MVAL logging policy for the next n1 rounds, with its predicted std errors."""

from __future__ import annotations

import click

from mval.design_store import ESTIMATORS, OBJECTIVES, POLICY_FILE_TYPES, SOLVERS, design_logging_policy, save_design
from mval.files import check_output_path
from mval.output import emit, format_option
from mval.policies import check_new_name
from mval.store import open_store


def _names(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


@click.command()
@click.argument("store", type=click.Path(dir_okay=False))
@click.option("--target", required=True, help="Target policy name(s) in the store, comma separated.")
@click.option("--budget", required=True, type=int, help="New rounds n1 to log with the designed policy.")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="average", show_default=True,
              help="average: mean variance over targets; minimax: worst target; difference: V(A) - V(B).")
@click.option("--estimator", type=click.Choice(ESTIMATORS), default="ips", show_default=True,
              help="Balanced IPS or Balanced DR (reward model fitted on the log).")
@click.option("--floor", type=float, default=0.0, show_default=True, help="Exploration floor: pi1(a|x) >= EPS.")
@click.option("--cap", type=float, default=1.0, show_default=True, help="Cap: pi1(a|x) <= C.")
@click.option("--min-reward-ratio", type=float, help="pi1 must earn at least R x the existing logger's value.")
@click.option("--solver", type=click.Choice(SOLVERS), default="auto", show_default=True,
              help="exact (fast water-filling) or cvxpy; auto: exact, cvxpy for minimax.")
@click.option("--loggers", help="Loggers forming the existing log (default: all), comma separated.")
@click.option("--second-moment", "second_moment", type=click.Path(dir_okay=False),
              help="File with context_id, action, s to use instead of s estimated from the log.")
@click.option("--save-as", help="Name of the designed policy in the store (default mval-<targets>).")
@click.option("--replace", is_flag=True, help="Overwrite a stored policy of the same name.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the policy to CSV/Parquet/JSON.")
@format_option("table", "json")
def design(store: str, target: str, budget: int, objective: str, estimator: str, floor: float, cap: float,
           min_reward_ratio: float | None, solver: str, loggers: str | None, second_moment: str | None,
           save_as: str | None, replace: bool, output: str | None, fmt: str) -> None:
    """Design the logging policy that makes old + new log evaluate the target(s) with least variance (MVAL).

    Saves the policy (context_id, action, prob) in the store and prints the predicted standard
    error of the final estimate under it and under the usual alternatives, with the rounds each
    alternative would need to match it.

    \b
    Example:
      mval design logs.duckdb --target new-ranker --budget 10000 --floor 0.01 -o next.csv
    """
    targets = _names(target)
    if output:  # refused before the policy is designed and saved
        check_output_path(output, POLICY_FILE_TYPES)
    name = save_as or "mval-" + ("-vs-".join(targets) if objective == "difference" else "+".join(targets))
    with open_store(store) as con:
        check_new_name(con, name, replace, "another --save-as")  # before the solve; save_design checks again in its transaction
        result = design_logging_policy(
            con, targets, budget, objective=objective, estimator=estimator, floor=floor, cap=cap,
            min_reward_ratio=min_reward_ratio, solver=solver, loggers=_names(loggers),
            second_moment_table=second_moment,
        )
        save_design(con, result.policy, name, replace=replace, output=output)
    if fmt == "json":
        emit([{**result.to_dict(), "saved_as": name, "output": output}], "json")
        return
    click.echo(
        f"designed {name!r}: {result.contexts} contexts x {result.actions} actions, "
        f"{result.existing_rows} existing rows + {result.budget} new (alpha = {result.alpha:.4g}), "
        f"{result.estimator} / {result.objective} / {result.solver}"
    )
    if result.uniform_contexts:
        click.echo(f"{result.uniform_contexts} context(s) where the targets cost nothing: uniform pi1 there")
    emit(result.report(), "table")

