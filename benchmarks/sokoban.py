"""Sokoban planning agent benchmark: solve rate, thinking steps, plan probes, plan edits, speed.

    python benchmarks/sokoban.py --quick --json     # the shipped agent (about 10 minutes on 2 cores)
    python benchmarks/sokoban.py --json             # trains an agent from scratch first (the shipped recipe)
    python benchmarks/sokoban.py --quick --planted-only --json   # only the planted-habit attribution test

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attribution.checkpoints import load_checkpoints  # noqa: E402
from attribution.examples import Example, add_examples, write_jsonl  # noqa: E402
from attribution.gradients import flat_grad  # noqa: E402
from attribution.probes import ProbeDirection  # noqa: E402
from attribution.scorers import RandomScorer, ScoreRequest, make_scorer  # noqa: E402
from attribution.scoring import score_dataset  # noqa: E402
from attribution.sokoban.agent import SHIPPED_AGENT, DRCConfig, load_agent, save_agent  # noqa: E402
from attribution.sokoban.concept_model import AgentConceptModel, load_agent_model, plan_concept  # noqa: E402
from attribution.sokoban.dataset import Episode, expert_episode, level_example, replay  # noqa: E402
from attribution.sokoban.env import Boards, Expert, SokobanVecEnv, step_boards  # noqa: E402
from attribution.sokoban.finetune import finetune  # noqa: E402
from attribution.sokoban.intervene import edit_plan  # noqa: E402
from attribution.sokoban.levels import (  # noqa: E402
    Level,
    LevelSet,
    generate_levels,
    level_hashes,
    read_levels,
    stack_levels,
    state_distances,
)
from attribution.sokoban.play import play, rollout  # noqa: E402
from attribution.sokoban.probes import (  # noqa: E402
    evaluate_probes,
    f1_per_direction,
    fit_probe,
    probe_data,
    rank_channels,
    split_by_level,
)
from attribution.sokoban.train import Trainer, TrainConfig  # noqa: E402
from mval.errors import MvalError  # noqa: E402
from mval.store import init_store, open_store  # noqa: E402
from planted_metrics import auroc, interval, p_below, precision_at_k, top_k  # noqa: E402

LEFT = 2

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


# ---------------------------------------------------------------- planted habit: which levels taught it


def has_cue(level: Level) -> bool:
    """The visible cue of the planted test: the top-left inner corner square (1, 1) is a wall."""
    return bool(level.walls[1, 1])


DETOUR = 3  # a habit push costs at most this many extra moves
RANDOM_DRAWS_PER_SEED = 3  # random removals per fine-tuning seed (the reference of the removal test)


def left_push_detour(expert: Expert, boards: Boards) -> bool:
    """Whether going left (a step, or a push of the box there) is possible here, keeps the level solvable,
    costs at most DETOUR extra moves and is not optimal: the states where the planted habit shows.
    (Left pushes alone that are solvable but not optimal occur in under 10% of these levels, too few
    to plant and measure a habit; a left step usually walks the player towards a left push.)"""
    ids = np.array([0])
    optimal, here = expert.optimal_actions(ids, boards)
    trial = boards.copy()
    step_boards(trial, np.array([LEFT]))
    after = expert.distance(ids, trial)[0]
    moved = trial.player[0] != boards.player[0]
    return bool(moved and 0 <= after <= here[0] + DETOUR - 1 and not optimal[0, LEFT])


def left_biased_episode(level: Level, max_steps: int = 60) -> Episode:
    """A demonstration with a habit: go left wherever `left_push_detour` allows it and the move does not return
    to a board seen earlier in the episode, otherwise the solver's optimal move; actions = targets (what
    imitation copies). Without the no-return rule a habit move is often undone by the next optimal move and
    taken again (left, right, left): a demonstration that teaches the oscillation rather than the habit."""
    expert = Expert.from_tables([state_distances(level)], level.walls.size, int(level.boxes.sum()))
    boards = Boards.from_levels(stack_levels([level]), np.array([0]))
    ids, actions, seen = np.array([0]), [], set()
    while not boards.solved()[0] and len(actions) < max_steps:
        seen.add(boards.observation()[0].tobytes())
        optimal, _ = expert.optimal_actions(ids, boards)
        a = int(np.flatnonzero(optimal[0])[0])
        if left_push_detour(expert, boards):
            trial = boards.copy()
            step_boards(trial, np.array([LEFT]))
            if trial.observation()[0].tobytes() not in seen:
                a = LEFT
        step_boards(boards, np.array([a]))
        actions.append(a)
    _, rewards, _ = replay(level, actions)
    return Episode(tuple(actions), tuple(actions), tuple(rewards.tolist()), "expert", {"habit": "push-left"})


@dataclass(frozen=True)
class HabitProbe:
    """States of held-out levels along their optimal solution where `left_push_detour` holds: the habit is
    the agent choosing left there."""

    examples: tuple[Example, ...]
    steps: tuple[np.ndarray, ...]  # per example, the step indices of such states

    @classmethod
    def of(cls, levels: LevelSet) -> HabitProbe:
        examples, steps = [], []
        for i in range(len(levels)):
            level = levels.level(i)
            expert = Expert.from_tables([state_distances(level)], level.walls.size, int(level.boxes.sum()))
            solution = expert_episode(level).actions
            boards, where = Boards.from_levels(levels, np.array([i])), []
            for t, a in enumerate(solution):
                if left_push_detour(expert, boards):
                    where.append(t)
                step_boards(boards, np.array([a]))
            if where:
                examples.append(level_example(level, Episode(tuple(solution), tuple(solution))))
                steps.append(np.array(where))
        return cls(tuple(examples), tuple(steps))

    def rate(self, agent) -> float:
        """How often the agent goes left at the habit states: the mean of pi(left) there (the rate of a
        sampling agent; smoother over seeds than the greedy argmax, see `greedy_rate`)."""
        probs, _ = AgentConceptModel(agent).action_probs(self.examples)
        return float(torch.cat([probs[i, s, LEFT] for i, s in enumerate(self.steps)]).mean())

    def greedy_rate(self, agent) -> float:
        """Share of the habit states where the agent's greedy action is left."""
        probs, _ = AgentConceptModel(agent).action_probs(self.examples)
        return float(torch.cat([probs[i, s].argmax(-1) == LEFT for i, s in enumerate(self.steps)]).float().mean())

    @property
    def n_states(self) -> int:
        return int(sum(len(s) for s in self.steps))


def plan_probe_concepts(agent, levels: LevelSet, label: str = "box",
                        direction: str = "left") -> tuple[ProbeDirection, dict, dict[str, ProbeDirection]]:
    """The `direction` plan concept of the best single-layer plan probe (by held-out macro F1; `label` box:
    pushes, agent: moves, move: the next move at the player's square) of `agent` on `levels`, its report,
    and the concept of every layer's probe (h1, c1, ...) for the per-source diagnostic."""
    fit, test = split_by_level(probe_data(rollout(agent, levels, keep_states=True), label), 0.5, seed=0)
    concepts, f1s = {}, {}
    for source in [f"{k}{d + 1}" for d in range(agent.config.layers) for k in "hc"]:
        probe = fit_probe(fit.features[source], fit.labels, source, label)
        f1s[source] = f1_per_direction(test.labels, probe.predict(test.features[source]))
        concepts[source] = plan_concept(probe, direction, agent.config.layers)
    best = max(f1s, key=lambda k: f1s[k].mean())
    info = {"label": label, "source": best, "read_at": concepts[best].source, "macro_f1": float(f1s[best].mean()),
            "left_f1": float(f1s[best][LEFT])}
    return concepts[best], info, concepts


def planted(base_agent_path: Path, exclude: np.ndarray, tmp: Path, quick: bool, seeds: int | None = None,
            label: str = "box") -> dict:
    """Plant a push-left habit in the demonstrations of cued training levels, fine-tune, find the levels.

    Training mix: `n_clean` levels without the cue (optimal demonstrations), `n_planted` cued levels with
    left-biased demonstrations (the habit), `n_decoy` cued levels with optimal demonstrations (the cue
    without the habit). Each method scores every training level against the push-left plan concept; the
    top k = n_planted are dropped and the base agent is fine-tuned again on the rest (`seeds` seeds; `random`
    draws a fresh k RANDOM_DRAWS_PER_SEED times per seed, the reference of `p_below_random`).
    `tracin` is the gradient score summed over the fine-tuning's epoch-start checkpoints (`mval score --method
    tracin`); the context also scores with the habit itself as the concept (what a concept that tracks the
    behaviour reaches).
    """
    n_clean, n_planted, n_decoy, n_eval, n_query = (96, 24, 12, 60, 12) if quick else (200, 40, 24, 100, 16)
    seeds = seeds or (3 if quick else 5)
    n_probe_levels = 150 if quick else 250
    epochs, lr = 8, 1e-3
    t0 = time.time()
    pool = held_out(int((n_planted + n_decoy + n_eval + n_query) / 0.27) + n_clean, exclude, seed=777)
    cued = [i for i in range(len(pool)) if has_cue(pool.level(i))]
    plain = [i for i in range(len(pool)) if not has_cue(pool.level(i))]
    need = n_planted + n_decoy + n_eval + n_query
    if len(cued) < need or len(plain) < n_clean:
        raise MvalError(f"planted benchmark: only {len(cued)} cued / {len(plain)} plain levels generated")
    planted_idx, decoy_idx = cued[:n_planted], cued[n_planted : n_planted + n_decoy]
    eval_idx = cued[n_planted + n_decoy : n_planted + n_decoy + n_eval]
    query_idx = cued[n_planted + n_decoy + n_eval : need]
    examples = ([level_example(pool.level(i), left_biased_episode(pool.level(i))) for i in planted_idx]
                + [level_example(pool.level(i), expert_episode(pool.level(i))) for i in decoy_idx + plain[:n_clean]])
    order = np.random.default_rng(0).permutation(len(examples))
    examples = [examples[i] for i in order]
    is_planted = order < n_planted
    queries = tuple(level_example(pool.level(i), expert_episode(pool.level(i))) for i in query_idx)
    habit = HabitProbe.of(pool.subset(eval_idx))
    query_habit = HabitProbe.of(pool.subset(query_idx))
    control = HabitProbe.of(pool.subset(plain[n_clean : n_clean + n_eval]))
    setup_seconds = time.time() - t0

    base = load_agent(base_agent_path)
    trajectory: list = []  # the agent at the start of each fine-tuning epoch, for tracin
    tuned = finetune(base, examples, epochs, lr, seed=0, checkpoints=trajectory)
    tuned_path = tmp / "planted-agent.safetensors"
    save_agent(tuned, tuned_path)
    (tmp / "checkpoints").mkdir()
    for i, agent in enumerate(trajectory):
        save_agent(agent, tmp / "checkpoints" / f"agent-epoch-{i}.safetensors")
    print(f"planted: setup {setup_seconds:.0f} s, fine-tuned in {time.time() - t0 - setup_seconds:.0f} s, "
          f"habit {habit.rate(base):.3f} -> {habit.rate(tuned):.3f} on {habit.n_states} states", file=sys.stderr)
    probe_levels = held_out(n_probe_levels, np.concatenate([exclude, level_hashes(pool)]), seed=4242)
    concept, probe_info, by_source = plan_probe_concepts(tuned, probe_levels, label)

    store = init_store(tmp / "planted.duckdb")
    write_jsonl(tmp / "planted.jsonl", examples)
    with open_store(store) as con:
        add_examples(con, "planted", tmp / "planted.jsonl")
    model = load_agent_model(tuned_path)
    checkpoints = load_checkpoints(model, [tmp / "checkpoints"])
    methods = ["probe", "gradient", "tracin", "random", "influence"]
    k = n_planted
    rows = []

    def scoring_request(direction: ProbeDirection) -> ScoreRequest:  # one setting for every method and concept
        return ScoreRequest(direction, queries, seed=0, batch_size=16, proj_dim=8192, cache_dir=tmp / "cache",
                            checkpoints=checkpoints)

    def tracin(direction: ProbeDirection) -> np.ndarray:
        """TracIn over the fine-tuning (Pruthi et al. 2020): the gradient score summed over the agent at the
        start of each epoch. At the end of fine-tuning a planted level's loss gradient holds only what is
        left to learn (the habit's moves are largely fit; what remains pulls against the habit's spill-over
        onto the level's other cued states), so the final model alone scores the residual, not the
        contribution of the level over training."""
        return make_scorer("tracin", scoring_request(direction)).score(model, examples)

    for method in methods:
        request = scoring_request(concept)
        start = time.time()
        try:
            with open_store(store) as con:
                score_dataset(con, "planted", method, "left-plan", model, make_scorer(method, request), request)
                got = dict(con.execute("SELECT example_id, score FROM scores WHERE method = ?", [method]).fetchall())
            scores = np.array([got[e.example_id] for e in examples])
        except Exception as e:  # a method that cannot run (influence without kronfluence) must not sink it
            rows.append({"method": method, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
            print(f"planted: {method} failed: {rows[-1]['error']}", file=sys.stderr)
            continue
        seconds = time.time() - start
        rates, seed_aurocs = [], []
        # random is the reference of `p_below`: a fresh random k per draw, RANDOM_DRAWS_PER_SEED draws per seed
        for s in range(seeds * RANDOM_DRAWS_PER_SEED if method == "random" else seeds):
            if method == "random":
                scores_s = RandomScorer(ScoreRequest(concept, seed=s)).score(model, examples)
                seed_aurocs.append(auroc(scores_s, is_planted))
            else:
                scores_s = scores
            drop = set(top_k(scores_s, k).tolist())
            kept = [e for i, e in enumerate(examples) if i not in drop]
            rates.append(habit.rate(finetune(base, kept, epochs, lr, seed=s % seeds)))
        top = top_k(scores, k)
        print(f"planted: {method} scored in {seconds:.0f} s, AUROC {auroc(scores, is_planted):.3f}, "
              f"rate after removal {np.mean(rates):.3f} ({time.time() - t0:.0f} s so far)", file=sys.stderr)
        rows.append({"method": method, "auroc": auroc(scores, is_planted),
                     "precision_at_k": precision_at_k(scores, is_planted, k), "k": k, "seconds": seconds,
                     "decoys_in_top_k": int(np.isin(order[top], np.arange(n_planted, n_planted + n_decoy)).sum()),
                     "behaviour_rate_after_removal": interval(rates)})
        if seed_aurocs:  # random's AUROC over its draws: one draw says little (sd ~0.065 here)
            rows[-1]["auroc_over_seeds"] = interval(seed_aurocs)

    random_rates = next((r["behaviour_rate_after_removal"]["per_seed"] for r in rows if r["method"] == "random"), None)
    for r in rows:  # does it beat a random removal (`planted_metrics.p_below`), as in benchmarks/concept.py
        if random_rates and "behaviour_rate_after_removal" in r and r["method"] != "random":
            p = p_below(r["behaviour_rate_after_removal"]["per_seed"], random_rates)
            r["p_below_random"], r["below_random"] = float(f"{p:.3g}"), p < 0.05

    def habit_scores(agent) -> np.ndarray:
        """The gradient score with the habit itself as the concept: f = mean over the queries' habit states of
        the left logit minus the mean logit (projected gradients from the cache)."""
        m = AgentConceptModel(agent)
        scorer = make_scorer("gradient", scoring_request(concept))
        logits = m.logits(m.encode(query_habit.examples))
        f = torch.cat([logits[i, s, LEFT] - logits[i, s].mean(-1) for i, s in enumerate(query_habit.steps)]).mean()
        m.module.zero_grad(set_to_none=True)
        f.backward()
        gf = flat_grad(m)
        m.module.zero_grad(set_to_none=True)
        projected = torch.as_tensor(scorer.projected_gradients(m, examples))
        return -(projected @ scorer.sketch(m)(gf.detach()).to(projected.dtype)).numpy()

    habit_concept_auroc = ({"final_model": auroc(habit_scores(tuned), is_planted),
                            "tracin": auroc(sum(habit_scores(a) for a in trajectory), is_planted)}
                           if query_habit.n_states else None)
    # the gradient method with every layer's probe concept (projected gradients from the cache): which
    # layer's plan direction moves with the habit's levels
    by_source_auroc, by_source_tracin = {}, {}
    for source, c in by_source.items():
        g = make_scorer("gradient", scoring_request(c)).score(model, examples)
        by_source_auroc[c.source] = auroc(g, is_planted)
        by_source_tracin[c.source] = auroc(tracin(c), is_planted)
    full = [habit.rate(finetune(base, examples, epochs, lr, seed=s)) for s in range(seeds)]
    oracle = [habit.rate(finetune(base, [e for e, p in zip(examples, is_planted) if not p], epochs, lr, seed=s))
              for s in range(seeds)]
    context = {
        "training_levels": len(examples), "planted": n_planted, "decoys": n_decoy, "clean": n_clean,
        "habit_states": habit.n_states, "queries": len(queries), "epochs": epochs, "lr": lr, "seeds": seeds,
        "concept": probe_info,
        "gradient_auroc_by_probe_source": by_source_auroc,
        "tracin_auroc_by_probe_source": by_source_tracin,
        "gradient_auroc_habit_concept": habit_concept_auroc,
        # left moves (habit and optimal ones) per planted demonstration
        "planted_left_moves": float(np.mean([json.loads(e.response)["actions"].count(LEFT)
                                             for e, p in zip(examples, is_planted) if p])),
        "behaviour_rate_base_agent": habit.rate(base),
        "behaviour_rate_after_finetune": habit.rate(tuned),
        "greedy_rate_base_agent": habit.greedy_rate(base),
        "greedy_rate_after_finetune": habit.greedy_rate(tuned),
        "behaviour_rate_uncued_after_finetune": control.rate(tuned),
        "behaviour_rate_no_removal": interval(full),
        "behaviour_rate_planted_removed": interval(oracle),
        "setup_seconds": setup_seconds,
        "seconds": time.time() - t0,
    }
    return {"planted": rows, "planted_context": context}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="use the shipped agent; fewer levels")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--agent", default=None, help="agent file (default: shipped, or trained when not --quick)")
    parser.add_argument("--train-seconds", type=float, default=2100.0, help="training time without --quick")
    parser.add_argument("--planted-only", action="store_true", help="run only the planted-habit attribution test")
    parser.add_argument("--seeds", type=int, default=None, help="fine-tuning seeds of the planted test")
    parser.add_argument("--planted-label", choices=("box", "agent", "move"), default="box",
                        help="concept of the planted test: the left plan of the box-push probe (mean over squares), "
                             "of the player-leaves-square probe (mean over squares), or of the next-move probe "
                             "read at the player's square")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    n_eval, n_probe = (500, 250) if args.quick else (1000, 400)
    tmp = Path(tempfile.mkdtemp(prefix="sokoban-bench-"))
    if args.planted_only:
        agent_path = Path(args.agent) if args.agent else SHIPPED_AGENT
        exclude = np.load(SHIPPED_LEVELS, allow_pickle=False) if agent_path == SHIPPED_AGENT else np.zeros(0, np.uint64)
        result = planted(agent_path, exclude, tmp, args.quick, args.seeds, args.planted_label)
        print(json.dumps(result) if args.json else json.dumps(result, indent=1))
        return

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
    }
    result.update(planted(agent_path, exclude, tmp, args.quick, args.seeds, args.planted_label))
    result["seconds"] = time.time() - t0
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
