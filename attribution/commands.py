"""Attribution commands: `examples add`, `probe train`, `score`, `curate` (registered in cli.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from attribution.checkpoints import checkpoint_paths, load_checkpoints
from attribution.curate import curate as curate_dataset
from attribution.examples import add_examples, read_jsonl
from attribution.models import load_hf_model, load_model
from attribution.probes import direction_from_file, load_probe, train_probe
from attribution.scorers import ScoreRequest, check_method, make_scorer, needs_queries
from attribution.scoring import INFLUENCE_METHODS, score_dataset, top_scores
from mval.errors import MvalError
from mval.files import check_not_an_input, check_output_path, output_file_option
from mval.output import emit, format_option, stderr
from mval.store import open_store

STORE = click.argument("store", type=click.Path(dir_okay=False))


@click.group("examples")
def examples() -> None:
    """Training examples of a dataset, the things attribution scores."""


@examples.command("add")
@STORE
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--replace", is_flag=True, help="Replace the whole dataset (and its scores).")
@format_option("table", "json")
def examples_add(store: str, name: str, file: str, replace: bool, fmt: str) -> None:
    """Add a JSON lines file of examples to dataset NAME.

    Each line: {"id": ..., "prompt": ..., "response": ...} (loss on the response) or
    {"id": ..., "text": ...}. Ids must be unique; a bad line is refused with its line number and
    the store is left unchanged. Adding the same examples again adds nothing.

    \b
    Example:
      mval examples add runs.duckdb sft train.jsonl
    """
    with open_store(store) as con:
        result = add_examples(con, name, file, replace=replace)
    if fmt == "json":
        emit([result.to_dict()], "json")
    else:
        click.echo(f"dataset {name!r}: added {result.added} examples ({result.unchanged} already there), "
                   f"{result.total} in all")


def probe_output_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A click callback: the probe's -o is a .safetensors file in a folder that exists (checked before any work)."""
    check_output_path(value, (".safetensors",), flag="--output")
    return value


def check_not_a_weights_shard(out: str, model_dir: str) -> None:
    """Refuse a probe output that the --model folder would read as a weights shard (it reads every
    model*.safetensors in it)."""
    target = Path(out).resolve()
    if target.parent == Path(model_dir).resolve() and target.match("model*.safetensors"):
        raise MvalError(f"--output {out}: the --model folder reads every model*.safetensors in it as its weights; "
                        "give the probe another name or folder")


@click.group("probe")
def probe() -> None:
    """Concept directions: linear probes on a model's activations, or vectors brought from a file."""


@probe.command("train")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False),
              help="Folder of a Hugging Face causal LM (config.json, tokenizer, *.safetensors).")
@click.option("--layer", required=True, type=int, help="Activations after block L (0 = embeddings).")
@click.option("--data", type=click.Path(dir_okay=False),
              help="Labelled JSON lines: text or prompt/response, and label 0/1.")
@click.option("--direction", type=click.Path(dir_okay=False),
              help="Bring a vector instead (.npy or .safetensors, e.g. an SAE decoder row).")
@click.option("--key", help="Tensor name in a --direction safetensors file holding several.")
@click.option("--feature", type=int, help="Row of a --direction matrix [n_features, d_model].")
@click.option("--position", type=click.Choice(["mean", "last"]), default="mean", show_default=True,
              help="Read activations averaged over tokens, or at the last token.")
@click.option("--held-out", type=click.FloatRange(0.05, 0.5), default=0.2, show_default=True,
              help="Share of each label's distinct texts held out (with all their copies) to measure accuracy.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False), callback=probe_output_option,
              help="Where to write the probe (.safetensors).")
@format_option("table", "json")
def probe_train(model_dir: str, layer: int, data: str | None, direction: str | None, key: str | None,
                feature: int | None, position: str, held_out: float, seed: int, out: str, fmt: str) -> None:
    """Train a logistic probe on activations at --layer (held-out accuracy printed), or save a given direction.

    \b
    Examples:
      mval probe train --model ./sft-model --layer 2 --data hostile_labelled.jsonl -o hostile.safetensors
      mval probe train --model ./sft-model --layer 2 --direction sae_decoder.npy --feature 1234 -o f1234.safetensors
    """
    if (data is None) == (direction is None):
        raise MvalError("give exactly one of --data LABELLED.jsonl (train a probe) or --direction FILE (bring a vector)")
    if data is not None and (key is not None or feature is not None):
        flag, value = ("--key", key) if key is not None else ("--feature", feature)
        raise MvalError(f"{flag} {value}: picks a tensor or row of a --direction file, but --data trains a probe on "
                        f"labelled text; leave {flag} out (or bring the vector with --direction FILE {flag} {value})")
    check_not_an_input({"--output": out}, {"--data": data, "--direction": direction})
    check_not_a_weights_shard(out, model_dir)
    model = load_hf_model(model_dir)
    if direction is not None:
        concept = direction_from_file(direction, model, layer, position, key, feature)
        record = concept.to_dict()
    else:
        texts, labels = read_jsonl(data, with_id=False, label=True)
        concept, report = train_probe(model, texts, labels, layer, position, held_out, seed)
        record = {**concept.to_dict(), **report.to_dict()}
    concept.save(out)
    record["path"] = out
    emit([record], fmt)


def check_cache_dir(path: Path) -> Path:
    """Refuse, before any work, a cache folder that cannot be made: it, or a folder above it, is a file."""
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise MvalError(f"--cache-dir {path}: {folder} is a file, not a folder; give another --cache-dir")
            break
    return path


@click.command("score")
@STORE
@click.option("--model", "model_dir", required=True, type=click.Path(),
              help="Folder of the fine-tuned Hugging Face causal LM, or a Sokoban agent's .safetensors file.")
@click.option("--dataset", required=True, help="Dataset of examples to score (see `mval examples add`).")
@click.option("--concept", "concept_file", required=True, type=click.Path(dir_okay=False),
              help="Probe file made by `mval probe train`.")
@click.option("--method", default="probe", show_default=True,
              help="probe, gradient, tracin, influence, test-influence, embedding or random (and any other "
                   "registered method).")
@click.option("--queries", type=click.Path(dir_okay=False),
              help="JSON lines of prompts where the behaviour shows (needed by all but probe and random); for "
                   "gradient and influence, prompts that end where it would start, with a concept read there "
                   "(`probe train --position last`).")
@click.option("--concept-name", help="Name of the concept in `scores` (default: the probe file's stem).")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--proj-dim", type=int, default=4096, show_default=True, help="Dimensions of projected gradients.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the projection / random baseline.")
@click.option("--damping", type=float, default=None,
              help="Influence only: lambda in (H + lambda I)^-1 [default: 0.1 x the mean EK-FAC eigenvalue].")
@click.option("--checkpoint", "checkpoint_args", multiple=True, type=click.Path(),
              help="tracin only (repeat it): the model saved during its training, or a folder of such models.")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Projected gradients and EK-FAC factors (default: STORE.cache/ next to the store).")
@click.option("--replace", is_flag=True, help="Delete earlier scores of this method and concept first.")
@click.option("--top", type=click.IntRange(min=0), default=10, show_default=True, help="How many top examples to print.")
@format_option("table", "json", "csv")
def score(store: str, model_dir: str, dataset: str, concept_file: str, method: str, queries: str | None,
          concept_name: str | None, batch_size: int, proj_dim: int, seed: int, damping: float | None,
          checkpoint_args: tuple[str, ...], cache_dir: str | None, replace: bool, top: int, fmt: str) -> None:
    """Score every example of a dataset against a concept; write `scores` and print the top ones.

    Higher means the example pushes the model towards the concept. A killed run resumes where it
    stopped when run again (scores are committed every 2 seconds, and on Ctrl-C).

    \b
    Examples:
      mval score runs.duckdb --model ./sft-model --dataset sft --concept hostile.safetensors \\
          --method gradient --queries prompts.jsonl
      mval score runs.duckdb --model ./sft-model --dataset sft --concept hostile.safetensors \\
          --method influence --queries prompts.jsonl
      mval score runs.duckdb --model run/agent.safetensors --dataset levels --concept push-left.safetensors \\
          --method tracin --queries queries.jsonl --checkpoint run/checkpoints
    """
    if damping is not None and method not in INFLUENCE_METHODS:
        raise MvalError(f"--damping {damping}: only --method {' and '.join(INFLUENCE_METHODS)} use it; "
                        f"leave it out for --method {method}")
    if checkpoint_args and method != "tracin":
        raise MvalError(f"--checkpoint {checkpoint_args[0]}: only --method tracin reads checkpoints; leave it out "
                        f"for --method {method}")
    if queries is not None and not needs_queries(method):
        raise MvalError(f"--queries {queries}: --method {method} does not read a query set (it scores each example "
                        "on its own); leave --queries out")
    cache = check_cache_dir(Path(cache_dir) if cache_dir else Path(f"{store}.cache"))
    concept = load_probe(concept_file)
    query_set = tuple(read_jsonl(queries, with_id=False)[0]) if queries else ()
    request = ScoreRequest(concept, query_set, seed, batch_size, proj_dim, cache, damping)
    check_method(method, request)  # a mistyped method or missing queries: refused before the model loads
    checkpoints = checkpoint_paths(checkpoint_args)
    model = load_model(model_dir)
    request = dataclasses.replace(request, checkpoints=load_checkpoints(model, checkpoints))
    scorer = make_scorer(method, request)
    name = concept_name or Path(concept_file).stem
    with open_store(store) as con:
        summary = score_dataset(con, dataset, method, name, model, scorer, request, replace=replace)
        best = top_scores(con, dataset, method, name, top)
    stderr(f"{method} scores for concept {name!r}: {summary.scored} examples scored now, "
           f"{summary.already_scored} already scored, {summary.total} in all ({summary.seconds:.1f} s)")
    emit(best, fmt)


@click.command("curate")
@STORE
@click.option("--dataset", required=True, help="Dataset to curate.")
@click.option("--method", required=True, help="Whose scores flag examples (as given to `mval score`).")
@click.option("--concept", help="Concept name (needed only when the method has scores for several).")
@click.option("--drop-top", type=int, help="Drop the K highest-scored examples.")
@click.option("--drop-above", type=float, help="Drop the examples scoring above S.")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False), callback=output_file_option,
              help="Where to write the kept examples (JSON lines, input format).")
@format_option("table", "json")
def curate(store: str, dataset: str, method: str, concept: str | None, drop_top: int | None,
           drop_above: float | None, out: str, fmt: str) -> None:
    """Write the dataset minus its flagged examples, as JSON lines in the input format.

    \b
    Example:
      mval curate runs.duckdb --dataset sft --method gradient --drop-top 50 -o clean.jsonl
    """
    check_not_an_input({"--output": out}, {"STORE": store})
    with open_store(store, read_only=True) as con:
        result = curate_dataset(con, dataset, method, out, concept, drop_top, drop_above)
    if fmt == "json":
        emit([result.to_dict()], "json")
    else:
        click.echo(f"wrote {result.kept} examples to {out} (dropped {result.dropped} flagged by "
                   f"{method} / {result.concept})")
