"""Playing levels with an agent: solve rate, thinking steps, episodes into the store, GIF renders.

Thinking steps (as in the planning papers): before its first action the agent sees the first
observation K extra times, updating only its recurrent state.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from attribution.sokoban.agent import DRC, reset_where
from attribution.sokoban.env import Boards, step_boards
from attribution.sokoban.levels import ACTIONS, LevelSet, solve
from mval.errors import MvalError
from mval.store import load_sql, open_store, transaction


@dataclass(frozen=True)
class Rollout:
    """Greedy episodes of L levels, padded to T steps; `alive[t, l]` marks real steps.

    obs (T, L, 4, H, W) before each action; actions, pushed_from (T, L) (-1: no push); player (T, L) square
    before the action; moved (T, L) whether the player left that square; h, c (T, L, D, C, H, W) after the
    step's last tick (when kept); solved, steps, returns (L,).
    """

    obs: np.ndarray
    actions: np.ndarray
    pushed_from: np.ndarray
    player: np.ndarray
    moved: np.ndarray
    alive: np.ndarray
    solved: np.ndarray
    steps: np.ndarray
    returns: np.ndarray
    h: np.ndarray | None = None
    c: np.ndarray | None = None


@dataclass(frozen=True)
class PlayResult:
    solve_rate: float
    levels: int
    mean_steps: float
    thinking_steps: int
    solved: np.ndarray
    steps: np.ndarray
    returns: np.ndarray

    def to_dict(self) -> dict:
        return {
            "solve_rate": self.solve_rate,
            "levels": self.levels,
            "solved": int(self.solved.sum()),
            "mean_steps": self.mean_steps,
            "thinking_steps": self.thinking_steps,
        }


@torch.no_grad()
def rollout(
    agent: DRC,
    levels: LevelSet,
    thinking_steps: int = 0,
    max_steps: int = 120,
    keep_states: bool = False,
    edit=None,
    batch: int = 512,
) -> Rollout:
    """Greedy play of every level (batches of `batch` boards, finished boards frozen)."""
    agent.check_board(*levels.shape)
    if thinking_steps < 0:
        raise MvalError(f"--thinking-steps {thinking_steps}: must be 0 or more")
    if max_steps < 1:
        raise MvalError(f"--max-steps {max_steps}: must be at least 1")
    chunks = [np.arange(i, min(i + batch, len(levels))) for i in range(0, len(levels), batch)]
    parts = [_rollout_batch(agent, levels, idx, thinking_steps, max_steps, keep_states, edit) for idx in chunks]
    t = max(p.obs.shape[0] for p in parts)

    def cat(name: str, fill) -> np.ndarray | None:
        arrays = [getattr(p, name) for p in parts]
        if arrays[0] is None:
            return None
        padded = [np.concatenate([a, np.full((t - a.shape[0],) + a.shape[1:], fill, a.dtype)]) for a in arrays]
        return np.concatenate(padded, axis=1)

    return Rollout(
        obs=cat("obs", 0),
        actions=cat("actions", -1),
        pushed_from=cat("pushed_from", -1),
        player=cat("player", -1),
        moved=cat("moved", False),
        alive=cat("alive", False),
        solved=np.concatenate([p.solved for p in parts]),
        steps=np.concatenate([p.steps for p in parts]),
        returns=np.concatenate([p.returns for p in parts]),
        h=cat("h", 0),
        c=cat("c", 0),
    )


def _rollout_batch(agent, levels, idx, thinking_steps, max_steps, keep_states, edit) -> Rollout:
    boards = Boards.from_levels(levels, idx)
    n = len(idx)
    state = agent.initial_state(n)
    obs = boards.observation()
    state = agent.think(torch.from_numpy(obs), state, thinking_steps)
    active = np.ones(n, bool)
    solved = np.zeros(n, bool)
    steps = np.zeros(n, np.int64)
    returns = np.zeros(n)
    rec: dict[str, list] = {k: [] for k in ("obs", "actions", "pushed_from", "player", "moved", "alive", "h", "c")}
    for _ in range(max_steps):
        if not active.any():
            break
        obs = boards.observation()
        logits, _, state = agent.step(torch.from_numpy(obs), state, edit)
        actions = logits.argmax(1).numpy()
        before = boards.player.copy()
        nxt = boards.copy()
        reward, now_solved, pushed = step_boards(nxt, actions)
        boards.boxes[active] = nxt.boxes[active]
        boards.player[active] = nxt.player[active]
        rec["obs"].append(obs)
        rec["actions"].append(np.where(active, actions, -1))
        rec["pushed_from"].append(np.where(active, pushed, -1))
        rec["player"].append(before)
        rec["moved"].append(active & (nxt.player != before))
        rec["alive"].append(active.copy())
        if keep_states:
            rec["h"].append(state[0].numpy().transpose(1, 0, 2, 3, 4).copy())
            rec["c"].append(state[1].numpy().transpose(1, 0, 2, 3, 4).copy())
        returns += np.where(active, reward, 0.0)
        steps += active
        solved |= active & now_solved
        active &= ~now_solved
    return Rollout(
        obs=np.stack(rec["obs"]),
        actions=np.stack(rec["actions"]),
        pushed_from=np.stack(rec["pushed_from"]),
        player=np.stack(rec["player"]),
        moved=np.stack(rec["moved"]),
        alive=np.stack(rec["alive"]),
        solved=solved,
        steps=steps,
        returns=returns,
        h=np.stack(rec["h"]) if keep_states else None,
        c=np.stack(rec["c"]) if keep_states else None,
    )


def play(agent: DRC, levels: LevelSet, thinking_steps: int = 0, max_steps: int = 120) -> PlayResult:
    """Greedy solve rate; mean_steps is the mean episode length over solved levels (NaN if none)."""
    r = rollout(agent, levels, thinking_steps, max_steps)
    mean_steps = float(r.steps[r.solved].mean()) if r.solved.any() else float("nan")
    return PlayResult(float(r.solved.mean()), len(levels), mean_steps, thinking_steps, r.solved, r.steps, r.returns)


def thinking_table(agent: DRC, levels: LevelSet, ks=(0, 2, 4, 8), max_steps: int = 120) -> dict[int, float]:
    """Solve rate for each number of thinking steps K."""
    return {k: play(agent, levels, k, max_steps).solve_rate for k in ks}


def action_strings(r: Rollout) -> list[str]:
    """Each level's actions as letters U D L R."""
    letters = np.array([a[0].upper() for a in ACTIONS] + [""])
    return ["".join(letters[col[col >= 0]]) for col in r.actions.T]


def store_episodes(
    store: str | Path,
    agent_name: str,
    level_file: str,
    levels: LevelSet,
    r: Rollout,
    thinking_steps: int,
    max_steps: int,
    solve_states: int = 100_000,
) -> str:
    """Write one `sokoban_episodes` row per level (sql/sokoban.sql); returns the run id.

    optimal_length is the solver's (NULL when the level needs more than `solve_states` search states).
    """
    run_id = uuid.uuid4().hex[:12]
    texts = [levels.level(i).to_text() for i in range(len(levels))]
    optimal = [
        int(levels.optimal_length[i]) if levels.optimal_length[i] >= 0 else _solved_length(levels, i, solve_states)
        for i in range(len(levels))
    ]
    frame = pl.DataFrame(
        {
            "run_id": [run_id] * len(levels),
            "agent": [agent_name] * len(levels),
            "level_file": [level_file] * len(levels),
            "level_index": np.arange(len(levels), dtype=np.int32),
            "level": texts,
            "optimal_length": pl.Series(optimal, dtype=pl.Int32),
            "thinking_steps": [thinking_steps] * len(levels),
            "max_steps": [max_steps] * len(levels),
            "solved": r.solved,
            "steps": r.steps.astype(np.int32),
            "return": r.returns,
            "actions": action_strings(r),
        }
    )
    with open_store(store) as con, transaction(con):
        con.execute(load_sql("sokoban"))
        con.register("staged_episodes", frame)
        con.execute(
            "INSERT INTO sokoban_episodes (run_id, agent, level_file, level_index, level, optimal_length, "
            "thinking_steps, max_steps, solved, steps, return, actions) SELECT * FROM staged_episodes"
        )
        con.unregister("staged_episodes")
    return run_id


def _solved_length(levels: LevelSet, i: int, solve_states: int) -> int | None:
    solution = solve(levels.level(i), max_states=solve_states)
    return None if solution is None else len(solution)


TILE = 24
_COLOURS = {"wall": (70, 70, 80), "floor": (214, 204, 180), "target": (200, 60, 60), "box": (170, 115, 50),
            "box_on_target": (90, 160, 70), "player": (50, 90, 200), "arrow": (20, 20, 20)}


def _frame(obs: np.ndarray, arrows: np.ndarray | None, caption: str):
    """One image of a (4, H, W) observation with optional per-square arrow classes (0-3; 4 none)."""
    from PIL import Image, ImageDraw

    _, h, w = obs.shape
    img = Image.new("RGB", (w * TILE, h * TILE + 16), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    half = TILE // 2
    vec = {0: (0, -1), 1: (0, 1), 2: (-1, 0), 3: (1, 0)}
    for r in range(h):
        for c in range(w):
            x0, y0 = c * TILE, r * TILE
            wall, target, box, player = obs[:, r, c] > 0.5
            draw.rectangle([x0, y0, x0 + TILE - 1, y0 + TILE - 1], fill=_COLOURS["wall" if wall else "floor"])
            if target:
                draw.rectangle([x0 + 8, y0 + 8, x0 + TILE - 9, y0 + TILE - 9], outline=_COLOURS["target"], width=2)
            if box:
                draw.rectangle([x0 + 4, y0 + 4, x0 + TILE - 5, y0 + TILE - 5],
                               fill=_COLOURS["box_on_target" if target else "box"])
            if player:
                draw.ellipse([x0 + 5, y0 + 5, x0 + TILE - 6, y0 + TILE - 6], fill=_COLOURS["player"])
            if arrows is not None and arrows[r, c] < 4:
                dx, dy = vec[int(arrows[r, c])]
                cx, cy = x0 + half, y0 + half
                tip = (cx + dx * (half - 2), cy + dy * (half - 2))
                draw.line([(cx - dx * 4, cy - dy * 4), tip], fill=_COLOURS["arrow"], width=2)
                draw.polygon([tip, (tip[0] - dx * 5 - dy * 4, tip[1] - dy * 5 - dx * 4),
                              (tip[0] - dx * 5 + dy * 4, tip[1] - dy * 5 + dx * 4)], fill=_COLOURS["arrow"])
    draw.text((2, h * TILE + 2), caption, fill=(0, 0, 0))
    return img


def render_gif(agent: DRC, levels: LevelSet, index: int, path: str | Path, thinking_steps: int = 0,
               max_steps: int = 120, probe=None, ms_per_frame: int = 300) -> int:
    """Write a GIF of the agent playing level `index`; with a `PlanProbe`, its predicted direction per square.

    Returns the number of frames.
    """
    from attribution.sokoban.probes import square_features

    if not 0 <= index < len(levels):
        raise MvalError(f"--render-level {index}: the file has levels 0..{len(levels) - 1}")
    one = levels.subset([index])
    r = rollout(agent, one, thinking_steps, max_steps, keep_states=probe is not None)
    h, w = one.shape
    steps = int(r.alive[:, 0].sum())
    arrows = None
    if probe is not None:
        arrows = probe.predict(square_features(r, probe.source)[:steps, 0]).reshape(steps, h, w)
    frames = []
    for t in range(steps):
        caption = f"step {t} {ACTIONS[r.actions[t, 0]]}"
        frames.append(_frame(r.obs[t, 0], None if arrows is None else arrows[t], caption))
    nxt = Boards.from_levels(one, np.array([0]))
    for a in r.actions[:steps, 0]:
        step_boards(nxt, np.array([a]))
    frames.append(_frame(nxt.observation()[0], None, "solved" if r.solved[0] else "not solved"))
    frames[0].save(str(path), save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0)
    return len(frames)
