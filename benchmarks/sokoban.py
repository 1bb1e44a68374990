"""Sokoban planning agent benchmark: solve rate, thinking steps, plan probes, plan edits, speed.

    python benchmarks/sokoban.py --quick --json     # the shipped agent (about 10 minutes on 2 cores)
    python benchmarks/sokoban.py --json             # trains an agent from scratch first (the shipped recipe)

Held-out levels: 6x6, two boxes, optimal length >= 8, generated with a seed of their own and with every
level of the agent's training set removed. Speed is compared side by side with a plain one-board Python
implementation of the same rules (env_speedup).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attribution.sokoban.agent import SHIPPED_AGENT, DRCConfig, load_agent  # noqa: E402
from attribution.sokoban.env import SokobanVecEnv  # noqa: E402
from attribution.sokoban.intervene import edit_plan  # noqa: E402
from attribution.sokoban.levels import generate_levels, level_hashes, read_levels  # noqa: E402
from attribution.sokoban.play import play, rollout  # noqa: E402
from attribution.sokoban.probes import evaluate_probes, probe_data, rank_channels, split_by_level  # noqa: E402
from attribution.sokoban.train import Trainer, TrainConfig  # noqa: E402

SHIPPED_LEVELS = SHIPPED_AGENT.with_name("agent_levels.npy")
# The recipe of the shipped agent (`mval sokoban train` with these options; see the README).
SHIPPED_RECIPE = dict(
    agent=DRCConfig(2, 2, 16), n_levels=10000, min_length=8, imitation_steps=1_500_000, rl_steps=0, lr=2e-3, seed=1
)


def held_out(n: int, exclude: np.ndarray, seed: int = 12345):
    """n unseen 6x6 two-box levels with optimal length >= 8."""
    levels = generate_levels(int(n * 1.6) + 20, 6, 2, min_length=8, seed=seed)
    keep = np.flatnonzero(~np.isin(level_hashes(levels), exclude))[:n]
    return levels.subset(keep)


def reference_steps_per_second(levels, seconds: float = 1.0) -> float:
    """A plain one-board env with Python sets (the rules written out): reward and (4, H, W) observation per step."""
    lv = levels.level(0)
    walls = {tuple(x) for x in np.argwhere(lv.walls)}
    targets = {tuple(x) for x in np.argwhere(lv.targets)}
    moves = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    actions = np.random.default_rng(0).integers(4, size=1000).tolist()
    boxes, player, n, start = {tuple(x) for x in np.argwhere(lv.boxes)}, lv.player, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for a in actions:
            dr, dc = moves[a]
            q = (player[0] + dr, player[1] + dc)
            reward = -0.1
            if q in boxes:
                b = (q[0] + dr, q[1] + dc)
                if b not in walls and b not in boxes:
                    boxes = (boxes - {q}) | {b}
                    reward += (b in targets) - (q in targets)
                    player = q
            elif q not in walls:
                player = q
            obs = np.zeros((4, *lv.shape), np.float32)
            for k, cells in enumerate((walls, targets, boxes, {player})):
                for r, c in cells:
                    obs[k, r, c] = 1.0
            if boxes <= targets:
                reward += 10.0
                boxes, player = {tuple(x) for x in np.argwhere(lv.boxes)}, lv.player
        n += len(actions)
    return n / (time.perf_counter() - start)


def env_steps_per_second(levels, num_envs: int = 256, seconds: float = 2.0) -> float:
    env = SokobanVecEnv(levels, num_envs, max_steps=120, seed=0)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.step(rng.integers(4, size=num_envs))
        n += num_envs
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="use the shipped agent; fewer levels")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--agent", default=None, help="agent file (default: shipped, or trained when not --quick)")
    parser.add_argument("--train-seconds", type=float, default=2100.0, help="training time without --quick")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    n_eval, n_probe = (500, 250) if args.quick else (1000, 400)
    tmp = Path(tempfile.mkdtemp(prefix="sokoban-bench-"))

    if args.quick or args.agent:
        agent_path = Path(args.agent) if args.agent else SHIPPED_AGENT
        exclude = np.load(SHIPPED_LEVELS, allow_pickle=False) if agent_path == SHIPPED_AGENT else np.zeros(0, np.uint64)
        # training speed: 30 s of the shipped recipe on a small level set
        speed_cfg = TrainConfig(**{**SHIPPED_RECIPE, "n_levels": 300, "agent": load_agent(agent_path).config})
        speed = Trainer(speed_cfg, tmp / "speed").run(time_limit=30.0)
        trained = None
    else:
        cfg = TrainConfig(**SHIPPED_RECIPE)
        speed = Trainer(cfg, tmp / "train").run(time_limit=args.train_seconds)
        agent_path = tmp / "train" / "agent.safetensors"
        exclude = level_hashes(read_levels(tmp / "train" / "levels.txt"))
        trained = speed.to_dict()
    agent = load_agent(agent_path)
    levels = held_out(n_eval, exclude)

    solved = play(agent, levels)
    thinking = {str(k): play(agent, levels, k).solve_rate for k in (0, 2, 4, 8)}
    by_length = {
        str(int(length)): float(solved.solved[levels.optimal_length == length].mean())
        for length in np.unique(levels.optimal_length)
        if (levels.optimal_length == length).sum() >= 10
    }

    probe_levels = levels.subset(np.arange(n_probe))
    r = rollout(agent, probe_levels, keep_states=True)
    probes_out, best_probe = {}, None
    for label in ("box", "agent"):
        fit, test = split_by_level(probe_data(r, label), 0.5, seed=0)
        scores, probes = evaluate_probes(fit, test, label)
        layer_scores = [s for s in scores if s.source not in ("obs", "all")]
        best = max(layer_scores, key=lambda s: s.macro_f1)
        probes_out[label] = {
            "per_source": {s.source: s.macro_f1 for s in scores},
            "f1_per_direction_best": dict(zip(("up", "down", "left", "right"), best.f1)),
            "best_layer": best.source,
            "channels": [c.to_dict() for c in rank_channels(test, 1)],
        }
        if label == "box":
            best_probe = probes[best.source]
            box_scores = {s.source: s.macro_f1 for s in scores}

    edit_levels = levels.subset(np.arange(n_probe, min(len(levels), n_probe + 250)))
    edits = [edit_plan(agent, edit_levels, best_probe, strength=s).to_dict() for s in (1.0, 2.0, 4.0, 8.0)]
    headline_edit = max(edits, key=lambda e: e["success_rate"])

    env_sps = env_steps_per_second(levels)
    ref_sps = reference_steps_per_second(levels)
    result = {
        "agent": str(agent_path),
        "agent_config": agent.config.__dict__,
        "held_out_levels": len(levels),
        "solve_rate": solved.solve_rate,
        "mean_steps": solved.mean_steps,
        "solve_rate_by_optimal_length": by_length,
        "thinking": thinking,
        "probe_f1": max(v for k, v in box_scores.items() if k not in ("obs", "all")),
        "probe_f1_all_layers": box_scores["all"],
        "baseline_f1": box_scores["obs"],
        "probe_best_layer": probes_out["box"]["best_layer"],
        "probes": probes_out,
        "intervention_success": headline_edit["success_rate"],
        "intervention_control": headline_edit["control_rate"],
        "intervention_strength": headline_edit["strength"],
        "interventions": edits,
        "env_steps_per_second": env_sps,
        "reference_env_steps_per_second": ref_sps,
        "env_speedup": env_sps / ref_sps,
        "train_steps_per_second": speed.steps_per_second,
        "trained": trained,
        "seconds": time.time() - t0,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
