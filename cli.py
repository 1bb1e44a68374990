"""The `mval` command line: a thin layer over the Python API in `mval/` and `attribution/`.

Every command raises `MvalError` for input the user can fix; the group prints it as one line on
stderr and exits with code 2 (no traceback).
"""

from __future__ import annotations

import importlib
import shlex
import sys
from pathlib import Path

import click
import duckdb

from mval.errors import MvalError
from mval.ingest import FORMATS, ingest_file, parse_features
from mval.output import emit, file_format, format_option
from mval.policies import add_policy
from mval.query import run_query
from mval.store import init_store, open_store


# Commands whose modules import torch, cvxpy or transformers: loaded only when they run (or for
# `mval --help`), so that `mval query` starts in a fraction of a second.
LAZY_COMMANDS = {
    "evaluate": "mval.commands.evaluate:evaluate",
    "design": "mval.commands.design:design",
    "simulate": "mval.commands.simulate:simulate",
    "examples": "attribution.commands:examples",
    "probe": "attribution.commands:probe",
    "score": "attribution.commands:score",
    "curate": "attribution.commands:curate",
    "sokoban": "attribution.sokoban.commands:sokoban",
}


class MvalGroup(click.Group):
    """A click group that loads heavy commands lazily and turns MvalError into `Error: ...`, exit 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS and name not in self.commands:
            module_name, attr = LAZY_COMMANDS[name].split(":")
            self.add_command(getattr(importlib.import_module(module_name), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MvalError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(2)
        except click.UsageError as e:  # click's own three lines (usage, hint, error) as one
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            click.echo(f"Error: {e.format_message()} (`{where} --help` shows the usage)", err=True)
            ctx.exit(2)
        except (KeyboardInterrupt, click.Abort, duckdb.InterruptException, RuntimeError) as e:
            if isinstance(e, RuntimeError) and str(e) != "Query interrupted":  # DuckDB's word for a Ctrl-C
                raise
            click.echo("Error: interrupted; rerun the command to finish (a store keeps only whole writes)", err=True)
            ctx.exit(130)
        except OSError as e:  # a file the user named could not be read or written (permissions, full disk)
            if e.filename is None:
                raise
            click.echo(f"Error: {e.filename}: {e.strerror or e}; check the path, its permissions and free space", err=True)
            ctx.exit(2)


@click.group(cls=MvalGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mval")
def main() -> None:
    """mval: curate logged bandit feedback and training data.

    \b
    Start here:  mval demo
    Example:     mval init logs.duckdb && mval ingest logs.duckdb log.parquet --logger prod
    """


@main.command()
@click.argument("store", type=click.Path(dir_okay=False))
def init(store: str) -> None:
    """Create a new, empty store (a DuckDB file).

    \b
    Example:
      mval init logs.duckdb
    """
    path = init_store(store)
    click.echo(f"created store {path}")


def _parse_map(pairs: tuple[str, ...]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        store_col, sep, file_col = pair.partition("=")
        if not sep or not store_col:
            raise MvalError(f"--map {pair}: expected STORE_COLUMN=FILE_COLUMN, e.g. --map reward=click "
                            "(or STORE_COLUMN= to leave an optional column of the file unread)")
        mapping[store_col] = file_col
    return mapping


@main.command()
@click.argument("store", type=click.Path(dir_okay=False))
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--logger", required=True, help="Name of the logging policy (or batch) that produced the file.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="generic", show_default=True,
              help="generic: the store's column names; obd: the Open Bandit Dataset layout.")
@click.option("--map", "mapping", multiple=True, metavar="STORE_COL=FILE_COL",
              help="Rename a file column to a store column (repeatable); STORE_COL= leaves an optional "
                   "column of the file unread (e.g. event_id=).")
@click.option("--features", help="Gather these numeric columns into `features` (comma list, globs allowed: 'x_*'), "
                                 "in the order given, a glob's matches in natural order (x_2 before x_10), "
                                 "each column once; the file's column order does not matter. A column's exact "
                                 "name names it even if it holds * ? [; quote one with a comma: '\"price, usd\",x_*'.")
@click.option("--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="How to print the result.")
def ingest(store: str, file: str, logger: str, fmt: str, mapping: tuple[str, ...], features: str | None,
           output: str) -> None:
    """Load a log file (CSV, Parquet or JSON lines) into the store's events.

    The file is validated first (propensities in (0, 1], integer actions >= 0, finite rewards);
    a bad file is refused with its row and column and the store is left unchanged. The same
    file content read the same way twice adds nothing; read another way it is refused.

    \b
    Examples:
      mval ingest logs.duckdb log.parquet --logger prod
      mval ingest logs.duckdb obd/random/all/all.csv --logger random --format obd
      mval ingest logs.duckdb log.csv --logger prod --map reward=click --features 'x_*'
    """
    feature_patterns = parse_features(features) if features else None
    with open_store(store) as con:
        result = ingest_file(con, file, logger, fmt, _parse_map(mapping), feature_patterns)
    if output == "json":
        emit([result.to_dict()], "json")
    elif result.skipped:
        click.echo(f"{file}: already ingested (ingest {result.ingest_id}, logger {result.logger!r}); nothing added")
    else:
        already = f"; {result.already_stored} rows were already in the store" if result.already_stored else ""
        click.echo(f"ingested {result.rows} rows from {file} as logger {result.logger!r} (ingest {result.ingest_id}){already}")
    if result.unchecked:
        click.echo(f"note: logger {result.logger!r} has {result.unchecked} events ingested without event ids; rows of "
                   f"{file} that repeat them were added again (no id to match)", err=True)


@main.command()
@click.argument("store", type=click.Path(dir_okay=False))
@click.argument("sql")
@format_option("table", "csv", "json", "parquet", default=None)
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False),
              help="Write to FILE (.csv, .json, .parquet) instead of printing; its extension picks the format.")
def query(store: str, sql: str, fmt: str | None, out: str | None) -> None:
    """Run SQL on the store, read-only.

    Views for everyday questions: logger_summary, action_summary, policy_summary, ingest_log.
    Values polars or a format cannot hold (intervals, blobs, bit strings, unions, times with time zone,
    infinite or far dates, 24:00:00; 39-digit HUGEINTs in parquet) come out as DuckDB's text (1 day 02:00:00).

    \b
    Examples:
      mval query logs.duckdb "SELECT * FROM logger_summary"
      mval query logs.duckdb "SELECT action, avg(reward) FROM events GROUP BY 1" --format csv
      mval query logs.duckdb "SELECT * FROM events" -o events.parquet
    """
    fmt = file_format(fmt, out)  # before the query runs: a wrong -o is refused at once
    emit(run_query(store, sql, fmt), fmt, out)


@main.group()
def policy() -> None:
    """Target, logging and designed policies (context_id, action, prob)."""


@policy.command("add")
@click.argument("store", type=click.Path(dir_okay=False))
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--replace", is_flag=True, help="Replace a policy of the same name.")
def policy_add(store: str, name: str, file: str, replace: bool) -> None:
    """Add a policy from CSV/Parquet/JSON lines with columns context_id, action, prob.

    Probabilities must lie in [0, 1] and sum to 1 within 1e-6 for each context. An empty
    context_id means the same distribution for every context. Name a logger's policy like the
    logger so balanced estimators can use it.

    \b
    Example:
      mval policy add logs.duckdb new-ranker target_policy.csv
    """
    with open_store(store) as con:
        rows = add_policy(con, name, file, replace=replace)
    click.echo(f"added policy {name!r} ({rows} rows)")


@policy.command("list")
@click.argument("store", type=click.Path(dir_okay=False))
@format_option("table", "csv", "json")
def policy_list(store: str, fmt: str) -> None:
    """List the policies in the store.

    \b
    Example:
      mval policy list logs.duckdb
    """
    emit(run_query(store, "SELECT * FROM policy_summary"), fmt)


@main.command()
@click.argument("folder", type=click.Path(file_okay=False), default="mval-demo")
def demo(folder: str) -> None:
    """Walk through mval on built-in examples (writes into FOLDER), printing each command and its output.

    Bandit logs: create a store, ingest a generated log, query it, add the logger's and a target
    policy, evaluate the target off-policy, design the next logging policy with MVAL, log rounds with
    it and evaluate again from both logs.
    Attribution: a tiny language model fine-tuned with a few planted hostile answers; train a
    concept probe, score the training examples, and write the set without the top-scored ones.

    \b
    Example:
      mval demo mval-demo
    """
    from mval.demo import attribution_steps, bandit_steps

    folder_path = Path(folder)
    if (folder_path / "demo.duckdb").exists():
        raise MvalError(f"{folder_path / 'demo.duckdb'}: already exists; give another FOLDER or delete it to rerun")
    for steps in (bandit_steps, attribution_steps):
        for step in steps(folder_path):
            if step.comment:
                click.echo(f"\n# {step.comment}")
            click.echo(f"$ mval {shlex.join(step.args)}")
            if step.prepare is not None:
                step.prepare()
            main.main(step.args, prog_name="mval", standalone_mode=False)


if __name__ == "__main__":
    sys.exit(main())
