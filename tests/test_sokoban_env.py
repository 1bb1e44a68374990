"""The vectorised environment against a plain one-board reference written from the Boxoban rules."""

import numpy as np
from gymnasium.vector import AutoresetMode

from attribution.sokoban.env import SokobanVecEnv
from attribution.sokoban.levels import generate_levels, parse_levels, stack_levels

MOVES = {0: (-1, 0), 1: (1, 0), 2: (0, -1), 3: (0, 1)}


class ReferenceSokoban:
    """One board, sets of (row, col), step by step: -0.1 a step, +1 box on, -1 box off, +10 solved."""

    def __init__(self, level, max_steps):
        self.walls = {tuple(x) for x in np.argwhere(level.walls)}
        self.targets = {tuple(x) for x in np.argwhere(level.targets)}
        self.boxes = {tuple(x) for x in np.argwhere(level.boxes)}
        self.player = level.player
        self.max_steps = max_steps
        self.t = 0

    def step(self, action):
        dr, dc = MOVES[action]
        nxt = (self.player[0] + dr, self.player[1] + dc)
        reward = -0.1
        if nxt in self.walls:
            pass
        elif nxt in self.boxes:
            beyond = (nxt[0] + dr, nxt[1] + dc)
            if beyond not in self.walls and beyond not in self.boxes:
                self.boxes = (self.boxes - {nxt}) | {beyond}
                reward += (beyond in self.targets) - (nxt in self.targets)
                self.player = nxt
        else:
            self.player = nxt
        self.t += 1
        solved = self.boxes <= self.targets
        if solved:
            reward += 10
        return reward, solved, (not solved) and self.t >= self.max_steps

    def observation(self):
        shape = (max(r for r, _ in self.walls) + 1, max(c for _, c in self.walls) + 1)
        obs = np.zeros((4, *shape), np.float32)
        for k, cells in enumerate([self.walls, self.targets, self.boxes, {self.player}]):
            for r, c in cells:
                obs[k, r, c] = 1
        return obs


def test_rewards_and_episode_ends_match_the_reference():
    levels = generate_levels(6, size=6, boxes=2, min_length=3, seed=11)
    n_envs, cap = 8, 15
    env = SokobanVecEnv(levels, n_envs, max_steps=cap, seed=0)
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    obs, info = env.reset(options={"level_ids": np.arange(n_envs) % len(levels)})
    refs = [ReferenceSokoban(levels.level(i), cap) for i in info["level_id"]]
    rng = np.random.default_rng(0)
    ends = solved_count = 0
    for _ in range(120):
        actions = rng.integers(4, size=n_envs)
        obs, reward, terminated, truncated, info = env.step(actions)
        for e, ref in enumerate(refs):
            r, solved, trunc = ref.step(actions[e])
            assert np.isclose(reward[e], r) and terminated[e] == solved and truncated[e] == trunc
            if solved or trunc:
                ends += 1
                solved_count += solved
                assert np.array_equal(info["final_obs"][e], ref.observation())
                assert info["episode"]["length"][e] == ref.t
                refs[e] = ReferenceSokoban(levels.level(info["level_id"][e]), cap)
            assert np.array_equal(obs[e], refs[e].observation())
    assert ends >= 50  # the cap ended many episodes


def test_pushing_onto_and_off_targets_and_solving():
    corridor = stack_levels(parse_levels("########\n#@$. $.#\n########"))
    env = SokobanVecEnv(corridor, 1, max_steps=50)
    env.reset(options={"level_ids": [0]})
    assert [round(float(env.step([3])[1][0]), 2) for _ in range(2)] == [0.9, -1.1]  # onto, then off the target

    room = stack_levels(parse_levels("#######\n#@$.  #\n#   $ #\n#   . #\n#######"))
    env = SokobanVecEnv(room, 1, max_steps=50)
    env.reset(options={"level_ids": [0]})
    rewards, ends = [], []
    for a in [3, 1, 1, 3, 3, 3, 0, 0, 2, 1]:  # box A onto its target, walk round, push box B down
        _, r, term, trunc, info = env.step([a])
        rewards.append(round(float(r[0]), 2))
        ends.append((bool(term[0]), bool(trunc[0])))
    assert rewards == [0.9] + [-0.1] * 8 + [10.9]
    assert ends == [(False, False)] * 9 + [(True, False)]
    assert np.isclose(info["episode"]["return"][0], 0.9 - 0.8 + 10.9)
    assert env.observation_space.shape == (1, 4, 5, 7) and env.action_space.nvec.tolist() == [4]
