"""`mval sokoban`: levels, train, play, probe, edit (the lead registers `sokoban` in cli.py)."""

from __future__ import annotations

import json

import click
import numpy as np
import torch

from attribution.sokoban.agent import DRCConfig, load_agent
from attribution.sokoban.levels import generate_levels, read_levels, write_levels
from mval.errors import MvalError
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
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Level file to write.")
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
@click.option("--threads", default=1, show_default=True, help="Torch CPU threads.")
@format_option("table", "json")
def train(out, levels_path, size, boxes, n_levels, min_length, layers, ticks, channels, num_envs, rollout,
          imitation_steps, rl_steps, max_steps, lr, rl_lr, seed, time_limit, threads, fmt) -> None:
    """Train a DRC(D, N) agent: imitation of the exact solver, then actor-critic; resumable.

    The run folder holds agent.safetensors (the agent), optimizer.safetensors and state.json (resume
    point), levels.txt and episodes.csv (one row per finished training episode).

    \b
    Example:
      mval sokoban train -o run --n-levels 500 --imitation-steps 20000 --time-limit 60
    """
    from attribution.sokoban.train import Trainer, TrainConfig

    torch.set_num_threads(threads)
    h, w = read_levels(levels_path).shape if levels_path is not None else (size, size)
    cfg = TrainConfig(
        levels=levels_path, size=size, boxes=boxes, n_levels=n_levels, min_length=min_length,
        agent=DRCConfig(layers, ticks, channels, h, w), num_envs=num_envs, rollout=rollout,
        imitation_steps=imitation_steps, rl_steps=rl_steps, max_steps=max_steps, lr=lr, rl_lr=rl_lr, seed=seed,
    )
    result = Trainer(cfg, out).run(time_limit=time_limit)
    emit([result.to_dict()], fmt)


@sokoban.command()
@_levels_option
@_agent_option
@click.option("--thinking-steps", default=0, show_default=True, help="Extra steps on the first observation before acting.")
@click.option("--max-steps", default=120, show_default=True, help="Episode cap.")
@click.option("--render", type=click.Path(dir_okay=False), default=None, help="Write a GIF of one level.")
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
    from attribution.sokoban.probes import load_probe

    lv = read_levels(levels_path)
    model = load_agent(agent)
    r = rollout(model, lv, thinking_steps, max_steps)
    mean_steps = float(r.steps[r.solved].mean()) if r.solved.any() else float("nan")
    result = PlayResult(float(r.solved.mean()), len(lv), mean_steps, thinking_steps, r.solved, r.steps, r.returns)
    record = result.to_dict()
    if store is not None:
        record["run_id"] = store_episodes(store, agent or "shipped", levels_path, lv, r, thinking_steps, max_steps)
    if render is not None:
        probe = load_probe(probe_path) if probe_path else None
        record["frames"] = render_gif(model, lv, render_level, render, thinking_steps, max_steps, probe)
    if fmt == "json":
        click.echo(json.dumps({k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in record.items()}))
    else:
        emit([record], fmt)


@sokoban.command()
@_levels_option
@_agent_option
@click.option("--label", type=click.Choice(["box", "agent"]), default="box", show_default=True,
              help="box: direction the box on a square is next pushed; agent: direction the player next leaves it.")
@click.option("--test-fraction", default=0.5, show_default=True, help="Share of levels held out for F1.")
@click.option("--thinking-steps", default=0, show_default=True)
@click.option("--top", default=3, show_default=True, help="Single channels listed per direction.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Save the best single-layer probe (safetensors).")
@click.option("--seed", default=0, show_default=True)
@format_option("table", "json")
def probe(levels_path, agent, label, test_fraction, thinking_steps, top, output, seed, fmt) -> None:
    """Fit 1x1 plan probes per layer (h and c) and on the observation; F1 per direction on held-out levels.

    \b
    Example:
      mval sokoban probe --levels levels.txt -o push.safetensors --format json
    """
    from attribution.sokoban.play import rollout
    from attribution.sokoban.probes import evaluate_probes, probe_data, rank_channels, split_by_level

    if not 0 < test_fraction < 1:
        raise MvalError(f"--test-fraction {test_fraction}: must be between 0 and 1")
    lv = read_levels(levels_path)
    if len(lv) < 2:
        raise MvalError(f"{levels_path}: probing needs at least 2 levels (some to fit, some to test)")
    model = load_agent(agent)
    data = probe_data(rollout(model, lv, thinking_steps, keep_states=True), label)
    fit, test = split_by_level(data, test_fraction, seed)
    scores, probes = evaluate_probes(fit, test, label)
    channels = rank_channels(test, top)
    layer_scores = [s for s in scores if s.source not in ("obs", "all")]
    best = max(layer_scores, key=lambda s: s.macro_f1)
    if output is not None:
        probes[best.source].save(output, {"macro_f1": best.macro_f1, "agent": agent or "shipped"})
    if fmt == "json":
        click.echo(json.dumps({
            "probes": [s.to_dict() for s in scores],
            "best": best.source,
            "channels": [c.to_dict() for c in channels],
            "saved": output,
        }))
    else:
        emit([s.to_dict() for s in scores], fmt)
        emit([c.to_dict() for c in channels], fmt)
        if output is not None:
            stderr(f"saved probe on {best.source} to {output}")


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
    from attribution.sokoban.probes import load_probe

    result = edit_plan(load_agent(agent), read_levels(levels_path), load_probe(probe_path), strength, seed=seed)
    if fmt == "json":
        click.echo(json.dumps(result.to_dict()))
    else:
        emit([result.to_dict()], fmt)

