"""`mval sokoban`: levels, train, play, probe, edit (the lead registers `sokoban` in cli.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click
import numpy as np
import torch

from attribution.sokoban.agent import DRCConfig, agent_fingerprint, load_agent
from attribution.sokoban.levels import ACTIONS, generate_levels, read_levels, write_levels
from mval.errors import MvalError
from mval.files import check_not_an_input, check_output_path, output_file_option
from mval.output import emit, format_option, stderr


def _agent_option(f):
    return click.option(
        "--agent", type=click.Path(dir_okay=False), default=None,
        help="Agent weights (safetensors); default: the agent shipped with mval.",
    )(f)


def _levels_option(f):
    return click.option("--levels", "levels_path", required=True, type=click.Path(dir_okay=False),
                        help="Level file in Boxoban text format.")(f)


@click.group()
def sokoban() -> None:
    """Planning agent: Sokoban levels, a DRC agent, its plan read and edited square by square.

    \b
    Example:
      mval sokoban levels --size 6 --boxes 2 --n 100 -o levels.txt
      mval sokoban play --levels levels.txt --format json
    """


@sokoban.command()
@click.option("--size", default=6, show_default=True, help="Board side, walls included.")
@click.option("--boxes", default=2, show_default=True, help="Boxes (and targets) per level.")
@click.option("--n", "n", default=100, show_default=True, help="Number of levels.")
@click.option("--min-length", default=1, show_default=True,
              help="Keep levels whose optimal solution has at least this many moves.")
@click.option("--max-length", default=10_000, show_default=True, help="... and at most this many.")
@click.option("--seed", default=0, show_default=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), callback=output_file_option, help="Level file to write.")
@format_option("table", "json")
def levels(size: int, boxes: int, n: int, min_length: int, max_length: int, seed: int, output: str, fmt: str) -> None:
    """Generate solvable levels (random room, boxes placed by reverse play), each solved optimally.

    \b
    Example:
      mval sokoban levels --size 6 --boxes 2 --n 100 --min-length 8 -o levels.txt
    """
    if n < 1:
        raise MvalError(f"--n {n}: must be at least 1")
    made = generate_levels(n, size, boxes, min_length, max_length, seed)
    write_levels(output, made)
    summary = {"file": output, "levels": n, "size": size, "boxes": boxes,
               "mean_optimal_length": float(made.optimal_length.mean()),
               "max_optimal_length": int(made.optimal_length.max())}
    if fmt == "json":
        click.echo(json.dumps(summary))
    else:
        emit([summary], fmt)


@sokoban.command()
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False),
              help="Run folder (created; rerun the same command to resume).")
@click.option("--levels", "levels_path", default=None, type=click.Path(dir_okay=False),
              help="Training levels (Boxoban text); default: generate --n-levels.")
@click.option("--size", default=6, show_default=True)
@click.option("--boxes", default=2, show_default=True)
@click.option("--n-levels", default=5000, show_default=True)
@click.option("--min-length", default=8, show_default=True)
@click.option("--layers", default=2, show_default=True, help="DRC depth D.")
@click.option("--ticks", default=2, show_default=True, help="DRC ticks N per step.")
@click.option("--channels", default=16, show_default=True)
@click.option("--num-envs", default=128, show_default=True)
@click.option("--rollout", default=16, show_default=True, help="Steps per update (truncated BPTT length).")
@click.option("--imitation-steps", default=1_000_000, show_default=True, help="Env steps imitating the solver (DAgger).")
@click.option("--rl-steps", default=0, show_default=True, help="Env steps of actor-critic (A2C) afterwards.")
@click.option("--max-steps", default=60, show_default=True, help="Episode cap during training.")
@click.option("--lr", default=2e-3, show_default=True)
@click.option("--rl-lr", default=2e-4, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--time-limit", default=None, type=float, help="Stop (and checkpoint) after this many seconds.")
@click.option("--keep-every", default=None, type=click.IntRange(min=1),
              help="Also keep the agent every this many env steps (and at the start) in OUT/checkpoints/: the "
                   "checkpoints of `mval score --method tracin`.")
@click.option("--threads", default=1, show_default=True, help="Torch CPU threads.")
@format_option("table", "json")
def train(out, levels_path, size, boxes, n_levels, min_length, layers, ticks, channels, num_envs, rollout,
          imitation_steps, rl_steps, max_steps, lr, rl_lr, seed, time_limit, keep_every, threads, fmt) -> None:
    """Train a DRC(D, N) agent: imitation of the exact solver, then actor-critic; resumable.

    The run folder holds agent.safetensors (the agent), optimizer.safetensors and state.json (resume
    point), levels.txt, episodes.csv (one row per finished training episode) and episodes.jsonl (its
    moves); with --keep-every, checkpoints/agent-<env steps>.safetensors. A resume first drops the
    episodes (and kept agents) recorded after the last checkpoint (a killed run's); a checkpoint is
    written whole or not at all: a kill while its files are written resumes from the one before, a
    kill while they are renamed into place completes it on resume.

    \b
    Example:
      mval sokoban train -o run --n-levels 500 --imitation-steps 20000 --time-limit 60
    """
    from attribution.sokoban.train import Trainer, TrainConfig

    if threads < 1:
        raise MvalError(f"--threads {threads}: must be at least 1")
    if time_limit is not None and not time_limit > 0:
        raise MvalError(f"--time-limit {time_limit}: must be more than 0 seconds (leave it out for no limit)")
    torch.set_num_threads(threads)
    h, w = read_levels(levels_path).shape if levels_path is not None else (size, size)
    cfg = TrainConfig(
        levels=levels_path, size=size, boxes=boxes, n_levels=n_levels, min_length=min_length,
        agent=DRCConfig(layers, ticks, channels, h, w), num_envs=num_envs, rollout=rollout,
        imitation_steps=imitation_steps, rl_steps=rl_steps, max_steps=max_steps, lr=lr, rl_lr=rl_lr, seed=seed,
    )
    trainer = Trainer(cfg, out)
    result = trainer.run(time_limit=time_limit, keep_every=keep_every)
    emit([result.to_dict()], fmt)
    if trainer.interrupted:
        click.echo(f"Error: interrupted; checkpoint saved in {out} at {result.env_steps} env steps "
                   "(rerun the same command to resume)", err=True)
        click.get_current_context().exit(130)


@sokoban.command()
@_levels_option
@_agent_option
@click.option("--thinking-steps", default=0, show_default=True, help="Extra steps on the first observation before acting.")
@click.option("--max-steps", default=120, show_default=True, help="Episode cap.")
@click.option("--render", type=click.Path(dir_okay=False), callback=output_file_option, default=None, help="Write a GIF of one level.")
@click.option("--render-level", default=0, show_default=True, help="Which level --render shows.")
@click.option("--probe", "probe_path", type=click.Path(dir_okay=False), default=None,
              help="Draw this probe's plan arrows in the GIF.")
@click.option("--store", type=click.Path(dir_okay=False), default=None, help="Add one row per level to sokoban_episodes.")
@format_option("table", "json")
def play(levels_path, agent, thinking_steps, max_steps, render, render_level, probe_path, store, fmt) -> None:
    """Play levels greedily: solve rate and steps; optionally store episodes and render a GIF.

    \b
    Example:
      mval sokoban play --levels levels.txt --thinking-steps 4 --format json
      mval sokoban play --levels levels.txt --render play.gif --store logs.duckdb
    """
    from attribution.sokoban.play import PlayResult, render_gif, rollout, store_episodes
    from attribution.sokoban.probes import SHIPPED, load_probe

    if probe_path and render is None:
        raise MvalError(f"--probe {probe_path}: the probe's plan is drawn in the GIF; give --render FILE.gif too")
    check_not_an_input({"--render": render},
                        {"--levels": levels_path, "--agent": agent, "--probe": probe_path, "--store": store})
    lv = read_levels(levels_path)
    model = load_agent(agent)
    model.check_board(*lv.shape, levels_path, agent or "(shipped)")
    probe = load_probe(probe_path, model, agent or SHIPPED) if probe_path else None
    r = rollout(model, lv, thinking_steps, max_steps)
    mean_steps = float(r.steps[r.solved].mean()) if r.solved.any() else float("nan")
    result = PlayResult(float(r.solved.mean()), len(lv), mean_steps, thinking_steps, r.solved, r.steps, r.returns)
    record = result.to_dict()
    if store is not None:
        record["run_id"] = store_episodes(store, agent or SHIPPED, levels_path, lv, r, thinking_steps, max_steps)
    if render is not None:
        record["frames"] = render_gif(model, lv, render_level, render, thinking_steps, max_steps, probe)
    if fmt == "json":
        click.echo(json.dumps({k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in record.items()}))
    else:
        emit([record], fmt)


@sokoban.command()
@_levels_option
@_agent_option
@click.option("--label", type=click.Choice(["box", "agent", "move"]), default="box", show_default=True,
              help="box: direction the box on a square is next pushed; agent: direction the player next leaves it; "
                   "move: the agent's next move, read at the player's square only.")
@click.option("--test-fraction", default=0.5, show_default=True, help="Share of levels held out for F1.")
@click.option("--thinking-steps", default=0, show_default=True)
@click.option("--top", default=3, show_default=True, help="Single channels listed per direction.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), callback=output_file_option, default=None,
              help="Save the best single-layer probe (safetensors).")
@click.option("--concept-out", type=click.Path(dir_okay=False), callback=output_file_option, default=None,
              help="Also save the best probe's --direction plan as a concept file for `mval score`.")
@click.option("--direction", type=click.Choice(ACTIONS), default="left", show_default=True,
              help="Which push direction --concept-out saves.")
@click.option("--squares", type=click.Choice(["all", "player"]), default=None,
              help="Where --concept-out reads the plan: averaged over all squares, or at the player's square "
                   "[default: player for --label move, all otherwise].")
@click.option("--seed", default=0, show_default=True)
@format_option("table", "json")
def probe(levels_path, agent, label, test_fraction, thinking_steps, top, output, concept_out, direction, squares,
          seed, fmt) -> None:
    """Fit 1x1 plan probes per layer (h and c) and on the observation; F1 per direction on held-out levels.

    With --concept-out, the best probe's plan for --direction, averaged over squares (or read at the
    player's square, --squares player), is saved as a concept for `mval score --model AGENT --concept
    FILE` (see `mval sokoban dataset`). --label move fits the probe on the decisions themselves (the
    state at the player's square, labelled with the move the agent makes there).

    \b
    Example:
      mval sokoban probe --levels levels.txt -o push.safetensors --format json
      mval sokoban probe --levels levels.txt --concept-out push-left.safetensors --direction left
      mval sokoban probe --levels levels.txt --label move --concept-out move-left.safetensors
    """
    from attribution.sokoban.play import rollout
    from attribution.sokoban.probes import SHIPPED, evaluate_probes, probe_data, rank_channels, split_by_level

    if not 0 < test_fraction < 1:
        raise MvalError(f"--test-fraction {test_fraction}: must be between 0 and 1")
    if top < 1:
        raise MvalError(f"--top {top}: must be at least 1")
    if output is not None and concept_out is not None and Path(output).resolve() == Path(concept_out).resolve():
        raise MvalError(f"--concept-out {concept_out}: is also -o; give the probe and the concept different files")
    check_not_an_input({"--output": output, "--concept-out": concept_out}, {"--levels": levels_path, "--agent": agent})
    lv = read_levels(levels_path)
    if len(lv) < 2:
        raise MvalError(f"{levels_path}: probing needs at least 2 levels (some to fit, some to test)")
    model = load_agent(agent)
    model.check_board(*lv.shape, levels_path, agent or "(shipped)")
    data = probe_data(rollout(model, lv, thinking_steps, keep_states=True), label)
    fit, test = split_by_level(data, test_fraction, seed)
    scores, probes = evaluate_probes(fit, test, label)
    channels = rank_channels(test, top)
    layer_scores = [s for s in scores if s.source not in ("obs", "all")]
    best = max(layer_scores, key=lambda s: s.macro_f1)
    fit_on = replace(probes[best.source], agent=agent or SHIPPED, fingerprint=agent_fingerprint(model))
    if output is not None:
        fit_on.save(output, {"macro_f1": best.macro_f1})
    if concept_out is not None:
        from attribution.sokoban.concept_model import plan_concept

        plan_concept(fit_on, direction, model.config.layers, squares).save(concept_out)
    if fmt == "json":
        click.echo(json.dumps({
            "probes": [s.to_dict() for s in scores],
            "best": best.source,
            "channels": [c.to_dict() for c in channels],
            "saved": output,
            "concept": concept_out,
        }))
    else:
        emit([s.to_dict() for s in scores], fmt)
        emit([c.to_dict() for c in channels], fmt)
        if output is not None:
            stderr(f"saved probe on {best.source} to {output}")
        if concept_out is not None:
            stderr(f"saved the {direction} plan of the probe on {best.source} as concept {concept_out}")


@sokoban.command()
@click.argument("probe_path", metavar="PROBE", type=click.Path(dir_okay=False))
@click.option("--direction", type=click.Choice(ACTIONS), required=True, help="Which push direction to save.")
@_agent_option
@click.option("--squares", type=click.Choice(["all", "player"]), default=None,
              help="Read the plan averaged over all squares, or at the player's square (where the next move is "
                   "decided) [default: player for a --label move probe, all otherwise].")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), callback=output_file_option, help="Concept file to write.")
@format_option("table", "json")
def concept(probe_path, direction, agent, squares, output, fmt) -> None:
    """Turn a plan probe (`mval sokoban probe -o`) into a concept file for `mval score`.

    The concept reads the probe's --direction plan at --squares (the mean over all squares, or the
    player's square), averaged over the episode's steps. A player-square concept is saved at layer
    D + d of the agent's activations (D: the agent's depth, d: the probe's layer).

    \b
    Example:
      mval sokoban concept push.safetensors --direction left -o push-left.safetensors
      mval sokoban concept move.safetensors --direction left --squares player -o move-left.safetensors
    """
    from attribution.sokoban.concept_model import plan_concept
    from attribution.sokoban.probes import SHIPPED, load_probe

    check_not_an_input({"--output": output}, {"PROBE": probe_path, "--agent": agent})
    model = load_agent(agent)
    made = plan_concept(load_probe(probe_path, model, agent or SHIPPED), direction, model.config.layers, squares)
    made.save(output)
    emit([{**made.to_dict(), "path": output}], fmt)


@sokoban.command()
@click.argument("source", type=click.Path(exists=False))
@click.option("--episodes", type=click.Choice(["expert", "recorded"]), default="expert", show_default=True,
              help="expert: the solver's demonstration per level; recorded: the last episode the run played on it.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), callback=output_file_option,
              help="JSON lines file of examples (accepted by `mval examples add`).")
@click.option("--store", type=click.Path(dir_okay=False), default=None, help="Also add the examples to this store ...")
@click.option("--dataset", "dataset_name", default=None, help="... as this dataset.")
@format_option("table", "json")
def dataset(source, episodes, output, store, dataset_name, fmt) -> None:
    """Training levels as examples for attribution: one per level, id = hash of the level text.

    SOURCE is a run folder of `mval sokoban train` (its levels.txt and episodes.jsonl) or a level file.
    Each example holds the level (prompt, Boxoban text) and its episode (response, JSON: moves, the
    taught actions, rewards); `mval score --model AGENT.safetensors` replays it. With --episodes recorded,
    a last line of episodes.jsonl cut off mid-write (a killed run) is skipped; any other bad line is refused.

    \b
    Example:
      mval sokoban dataset run -o levels.jsonl --store runs.duckdb --dataset levels
      mval score runs.duckdb --model run/agent.safetensors --dataset levels --concept push-left.safetensors
    """
    from attribution.examples import write_jsonl
    from attribution.sokoban.dataset import dataset_examples

    if (store is None) != (dataset_name is None):
        raise MvalError("give --store and --dataset together (or neither, to write only the JSON lines file)")
    if not Path(source).exists():
        raise MvalError(f"{source}: no such run folder or level file")
    read = ({f"SOURCE {name}": str(Path(source) / name) for name in ("levels.txt", "episodes.jsonl")}
            if Path(source).is_dir() else {"SOURCE": source})
    check_not_an_input({"--output": output}, {**read, "--store": store})
    check_output_path(output, (".jsonl", ".ndjson"))  # JSON lines: `mval curate -o .txt` means level text
    made, skipped = dataset_examples(source, episodes)
    write_jsonl(output, made)
    record = {"file": output, "examples": len(made), "skipped_levels": skipped, "episodes": episodes}
    if store is not None:
        from attribution.examples import add_examples
        from mval.store import open_store

        with open_store(store) as con:
            added = add_examples(con, dataset_name, output)
        record.update({"dataset": dataset_name, "added": added.added, "unchanged": added.unchanged})
    emit([record], fmt)


@sokoban.command()
@_levels_option
@_agent_option
@click.option("--probe", "probe_path", required=True, type=click.Path(dir_okay=False),
              help="Probe from `mval sokoban probe -o`.")
@click.option("--strength", default=4.0, show_default=True, help="Size of the added vector per square.")
@click.option("--seed", default=0, show_default=True)
@format_option("table", "json")
def edit(levels_path, agent, probe_path, strength, seed, fmt) -> None:
    """Edit the plan: write a push direction into the state and count how often the agent follows it.

    \b
    Example:
      mval sokoban edit --levels levels.txt --probe push.safetensors --format json
    """
    from attribution.sokoban.intervene import edit_plan
    from attribution.sokoban.probes import SHIPPED, load_probe

    lv = read_levels(levels_path)
    model = load_agent(agent)
    model.check_board(*lv.shape, levels_path, agent or "(shipped)")
    probe = load_probe(probe_path, model, agent or SHIPPED)
    result = edit_plan(model, lv, probe, strength, seed=seed)
    if fmt == "json":
        click.echo(json.dumps(result.to_dict()))
    else:
        emit([result.to_dict()], fmt)

