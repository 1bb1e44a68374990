"""A vectorised Boxoban environment: a batch of boards stepped by numpy array operations.

Rewards (Boxoban): -0.1 per step, +1 when a box is pushed onto a target, -1 when pushed off one,
+10 when the level is solved. An episode ends when solved (terminated) or after `max_steps`
steps (truncated). Observations are (4, H, W) float planes: wall, target, box, player.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

from attribution.sokoban.levels import LevelSet, state_key

STEP_REWARD = -0.1
BOX_ON_REWARD = 1.0
BOX_OFF_REWARD = -1.0
SOLVED_REWARD = 10.0


@dataclass
class Boards:
    """Mutable batch state on flat squares: walls/targets/boxes (B, H*W) bool, player (B,) square."""

    walls: np.ndarray
    targets: np.ndarray
    boxes: np.ndarray
    player: np.ndarray
    width: int

    @classmethod
    def from_levels(cls, levels: LevelSet, idx: np.ndarray) -> Boards:
        n = len(idx)
        return cls(
            levels.walls[idx].reshape(n, -1).copy(),
            levels.targets[idx].reshape(n, -1).copy(),
            levels.boxes[idx].reshape(n, -1).copy(),
            levels.player[idx].copy(),
            levels.shape[1],
        )

    def copy(self) -> Boards:
        return Boards(self.walls, self.targets, self.boxes.copy(), self.player.copy(), self.width)

    def observation(self) -> np.ndarray:
        """(B, 4, H, W) float32 planes: wall, target, box, player."""
        n, sq = self.boxes.shape
        obs = np.zeros((n, 4, sq), np.float32)
        obs[:, 0] = self.walls
        obs[:, 1] = self.targets
        obs[:, 2] = self.boxes
        obs[np.arange(n), 3, self.player] = 1.0
        return obs.reshape(n, 4, sq // self.width, self.width)

    def solved(self) -> np.ndarray:
        return ~(self.boxes & ~self.targets).any(1)

    def keys(self) -> np.ndarray:
        """State keys (see `levels.state_key`) of every board."""
        n, sq = self.boxes.shape
        squares = np.nonzero(self.boxes)[1].reshape(n, -1)
        return state_key(self.player, squares, sq)


def step_boards(boards: Boards, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply one action per board in place; returns (reward, solved, pushed_from) with pushed_from -1 if no push."""
    n, sq = boards.boxes.shape
    rows = np.arange(n)
    offset = np.array([-boards.width, boards.width, -1, 1])[actions]
    q = boards.player + offset
    beyond = np.clip(q + offset, 0, sq - 1)
    wall_q = boards.walls[rows, q]
    box_q = boards.boxes[rows, q]
    free_beyond = ~(boards.walls[rows, beyond] | boards.boxes[rows, beyond])
    push = box_q & free_beyond & ~wall_q
    move = ~wall_q & (~box_q | push)
    boards.boxes[rows[push], q[push]] = False
    boards.boxes[rows[push], beyond[push]] = True
    boards.player = np.where(move, q, boards.player)
    on = boards.targets[rows, beyond] & push
    off = boards.targets[rows, q] & push
    solved = boards.solved()
    reward = STEP_REWARD + BOX_ON_REWARD * on + BOX_OFF_REWARD * off + SOLVED_REWARD * solved
    return reward.astype(np.float32), solved, np.where(push, q, -1)


class SokobanVecEnv(VectorEnv):
    """`num_envs` Boxoban boards; finished boards restart at once on a new level (same-step autoreset).

    `reset(options={"level_ids": ids})` starts given levels; otherwise levels are drawn at random
    from `levels`. `info["level_id"]` is each board's current level; on an episode end
    `info["episode"]` holds `level_id`, `return`, `length`, `solved` of the ended episodes (NaN/-1 elsewhere)
    and `info["final_obs"]` the last observation of the ended episode.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, levels: LevelSet, num_envs: int, max_steps: int = 120, seed: int | None = None):
        self.levels = levels
        self.num_envs = num_envs
        self.max_steps = max_steps
        h, w = levels.shape
        self.single_observation_space = gym.spaces.Box(0.0, 1.0, (4, h, w), np.float32)
        self.single_action_space = gym.spaces.Discrete(4)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (num_envs, 4, h, w), np.float32)
        self.action_space = gym.spaces.MultiDiscrete(np.full(num_envs, 4))
        self._rng = np.random.default_rng(seed)
        self.level_ids = np.zeros(num_envs, np.int64)
        self.boards = Boards.from_levels(levels, self.level_ids)
        self.steps = np.zeros(num_envs, np.int64)
        self.returns = np.zeros(num_envs, np.float64)

    def restart(self, envs: np.ndarray) -> None:
        """End the episodes of boards `envs` (e.g. deadlocked ones) and start them on new random levels."""
        self._start(envs, self._rng.integers(len(self.levels), size=len(envs)))

    def _start(self, envs: np.ndarray, level_ids: np.ndarray) -> None:
        fresh = Boards.from_levels(self.levels, level_ids)
        self.boards.walls[envs] = fresh.walls
        self.boards.targets[envs] = fresh.targets
        self.boards.boxes[envs] = fresh.boxes
        self.boards.player[envs] = fresh.player
        self.level_ids[envs] = level_ids
        self.steps[envs] = 0
        self.returns[envs] = 0.0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        ids = (options or {}).get("level_ids")
        if ids is None:
            ids = self._rng.integers(len(self.levels), size=self.num_envs)
        ids = np.asarray(ids, np.int64)
        self.boards = Boards.from_levels(self.levels, ids)
        self.level_ids = ids.copy()
        self.steps[:] = 0
        self.returns[:] = 0.0
        return self.boards.observation(), {"level_id": self.level_ids.copy()}

    def step(self, actions):
        actions = np.asarray(actions, np.int64)
        reward, solved, pushed_from = step_boards(self.boards, actions)
        self.steps += 1
        self.returns += reward
        truncated = ~solved & (self.steps >= self.max_steps)
        done = solved | truncated
        info: dict = {"pushed_from": pushed_from}
        if done.any():
            ended = np.flatnonzero(done)
            episode = {
                "level_id": np.where(done, self.level_ids, -1),
                "return": np.where(done, self.returns, np.nan),
                "length": np.where(done, self.steps, -1),
                "solved": solved.copy(),
            }
            info["final_obs"] = self.boards.observation()
            info["episode"] = episode
            self.restart(ended)
        info["level_id"] = self.level_ids.copy()
        return self.boards.observation(), reward, solved, truncated, info


class Expert:
    """Optimal actions from exact state distances of every level (see `levels.state_distances`)."""

    def __init__(self, keys: np.ndarray, dists: np.ndarray, n_states: int):
        """`keys`/`dists`: per-level arrays concatenated with global keys level_id * n_states + key, sorted."""
        self.keys = keys
        self.dists = dists
        self.n_states = n_states

    @classmethod
    def from_tables(cls, tables: list[tuple[np.ndarray, np.ndarray]], n_squares: int, n_boxes: int) -> Expert:
        n_states = n_squares ** (n_boxes + 1)
        keys = np.concatenate([k + i * n_states for i, (k, _) in enumerate(tables)])
        dists = np.concatenate([d for _, d in tables])
        return cls(keys, dists, n_states)

    def distance(self, level_ids: np.ndarray, boards: Boards) -> np.ndarray:
        """Moves to solve from each board (-1: unsolvable)."""
        g = level_ids * self.n_states + boards.keys()
        pos = np.clip(np.searchsorted(self.keys, g), 0, len(self.keys) - 1)
        return np.where(self.keys[pos] == g, self.dists[pos], -1)

    def optimal_actions(self, level_ids: np.ndarray, boards: Boards) -> tuple[np.ndarray, np.ndarray]:
        """(B, 4) mask of optimal actions, and (B,) distance; rows of unsolvable boards are all False."""
        here = self.distance(level_ids, boards)
        mask = np.zeros((len(here), 4), bool)
        for a in range(4):
            nxt = boards.copy()
            step_boards(nxt, np.full(len(here), a))
            d = self.distance(level_ids, nxt)
            mask[:, a] = (d >= 0) & (d == here - 1)
        mask[here <= 0] = False
        return mask, here
