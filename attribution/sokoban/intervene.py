"""Editing the plan: write a push direction into the agent's state and see whether it follows.

Per level: the unedited agent's first push is (box square s, direction a). We pick another box b and
a direction d that can be pushed from the start position, (b, d) != (s, a), and at every tick add
strength * v_d to the probed layer's state at squares b and b + d, where v_d is the probe's unit
direction for d (`PlanProbe.direction`). Success: the edited agent's first push is box b in direction d.
The control adds a random unit vector of the same size at the same squares.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from attribution.sokoban.agent import DRC
from attribution.sokoban.levels import LevelSet
from attribution.sokoban.play import Rollout, rollout
from attribution.sokoban.probes import PlanProbe
from mval.errors import MvalError


@dataclass(frozen=True)
class EditResult:
    success_rate: float
    control_rate: float
    levels: int
    strength: float
    source: str

    def to_dict(self) -> dict:
        return asdict(self)


def _first_push(r: Rollout) -> tuple[np.ndarray, np.ndarray]:
    """Square and direction of each level's first push (-1, -1 when it never pushes)."""
    pushed = r.pushed_from >= 0
    t = pushed.argmax(0)
    cols = np.arange(pushed.shape[1])
    any_push = pushed.any(0)
    return np.where(any_push, r.pushed_from[t, cols], -1), np.where(any_push, r.actions[t, cols], -1)


def choose_edits(levels: LevelSet, avoid_square: np.ndarray, avoid_dir: np.ndarray, seed: int = 0):
    """Per level a pushable (box square, direction) other than the avoided one: returns squares, dirs, ok mask."""
    n, (h, w) = len(levels), levels.shape
    walls = levels.walls.reshape(n, -1)
    boxes = levels.boxes.reshape(n, -1)
    box_sq = np.nonzero(boxes)[1].reshape(n, -1)
    rows = np.arange(n)[:, None]
    offsets = np.array([-w, w, -1, 1])
    blocked = walls | boxes
    feasible = np.stack(
        [~blocked[rows, box_sq + o] & ~blocked[rows, box_sq - o] for o in offsets], -1
    )  # (L, boxes, 4)
    feasible &= ~((box_sq[:, :, None] == avoid_square[:, None, None]) & (np.arange(4) == avoid_dir[:, None, None]))
    score = np.random.default_rng(seed).random(feasible.shape) * feasible
    flat = score.reshape(n, -1).argmax(1)
    b, d = np.divmod(flat, 4)
    return box_sq[np.arange(n), b], d, feasible.reshape(n, -1).any(1)


def _layer_of(probe: PlanProbe) -> tuple[int, str]:
    src = probe.source
    if src[:1] not in ("h", "c") or not src[1:].isdigit():
        raise MvalError(f"probe on {src!r} cannot be edited; fit the probe on one layer's h or c state (e.g. c2)")
    return int(src[1:]) - 1, src[0]


def edited_rollout(
    agent: DRC, levels: LevelSet, squares: list[np.ndarray], vectors: np.ndarray, layer: int, kind: str, max_steps: int
) -> Rollout:
    """Greedy play with vectors[l] (C,) added to `kind` state of `layer` at squares[l] (list of squares) each tick."""
    h, w = levels.shape
    n = len(levels)
    mask = np.zeros((n, h * w), np.float32)
    for col in squares:
        mask[np.arange(n), col] = 1.0
    add = torch.from_numpy(vectors[:, :, None, None].astype(np.float32) * mask.reshape(n, 1, h, w))

    def edit(d: int, hs: torch.Tensor, cs: torch.Tensor):
        if d != layer:
            return hs, cs
        return (hs + add, cs) if kind == "h" else (hs, cs + add)

    return rollout(agent, levels, 0, max_steps, edit=edit, batch=n)


def edit_plan(
    agent: DRC, levels: LevelSet, probe: PlanProbe, strength: float = 4.0, max_steps: int = 120, seed: int = 0
) -> EditResult:
    """Success rate of probe-direction edits against a random-vector control (see module docstring)."""
    layer, kind = _layer_of(probe)
    if layer >= agent.config.layers or probe.weight.shape[1] != agent.config.channels:
        raise MvalError(f"probe on {probe.source} with {probe.weight.shape[1]} channels does not fit this agent")
    base = rollout(agent, levels, 0, max_steps)
    sq, direction = _first_push(base)
    box, d, ok = choose_edits(levels, sq, direction, seed)
    keep = np.flatnonzero(ok & (sq >= 0))
    if len(keep) == 0:
        raise MvalError("no level has a box to redirect; give levels where the agent pushes a box")
    sub = levels.subset(keep)
    box, d = box[keep], d[keep]
    offsets = np.array([-levels.shape[1], levels.shape[1], -1, 1])
    squares = [box, box + offsets[d]]
    vectors = np.stack([probe.direction(k) for k in range(4)])[d] * strength
    rng = np.random.default_rng(seed + 1)
    noise = rng.normal(size=vectors.shape)
    noise *= strength / np.linalg.norm(noise, axis=1, keepdims=True)

    def success(r: Rollout) -> float:
        s, a = _first_push(r)
        return float(np.mean((s == box) & (a == d)))

    return EditResult(
        success_rate=success(edited_rollout(agent, sub, squares, vectors, layer, kind, max_steps)),
        control_rate=success(edited_rollout(agent, sub, squares, noise, layer, kind, max_steps)),
        levels=len(keep),
        strength=strength,
        source=probe.source,
    )
