"""Plan probe labels from a hand-written episode, the probe fit, F1 and channel ranking."""

import numpy as np
import pytest

from attribution.sokoban.env import Boards, step_boards
from attribution.sokoban.levels import parse_levels, stack_levels
from attribution.sokoban.play import Rollout
from attribution.sokoban.probes import (
    NONE,
    ProbeData,
    f1_per_direction,
    fit_probe,
    future_labels,
    load_probe,
    rank_channels,
)
from mval.errors import MvalError

UP, DOWN, LEFT, RIGHT = range(4)


def hand_rollout(text: str, actions: list[int]) -> Rollout:
    """A one-level Rollout from a fixed action list (no agent), recorded as `play.rollout` does."""
    levels = stack_levels(parse_levels(text))
    boards = Boards.from_levels(levels, np.array([0]))
    rec = {k: [] for k in ("obs", "pushed_from", "player", "moved")}
    for a in actions:
        rec["obs"].append(boards.observation())
        before = boards.player.copy()
        rec["player"].append(before)
        _, _, pushed = step_boards(boards, np.array([a]))
        rec["pushed_from"].append(pushed)
        rec["moved"].append(boards.player != before)
    t = len(actions)
    return Rollout(
        obs=np.stack(rec["obs"]), actions=np.array(actions)[:, None], pushed_from=np.stack(rec["pushed_from"]),
        player=np.stack(rec["player"]), moved=np.stack(rec["moved"]), alive=np.ones((t, 1), bool),
        solved=np.array([True]), steps=np.array([t]), returns=np.zeros(1),
    )


def test_labels_from_a_hand_written_episode():
    # player (1,1), box (1,2). R, R push the box to (1,4); U bumps the wall; D, R, R, U walk round to (1,5);
    # L pushes the box back to (1,3); D, D walk away.
    text = "#######\n#@$   #\n#     #\n#   . #\n#######"
    actions = [RIGHT, RIGHT, UP, DOWN, RIGHT, RIGHT, UP, LEFT, DOWN, DOWN]
    r = hand_rollout(text, actions)
    w = 7
    sq = lambda row, col: row * w + col  # noqa: E731
    box = future_labels(r, "box")[:, 0]
    agent = future_labels(r, "agent")[:, 0]
    pushes = r.pushed_from[:, 0]
    assert pushes.tolist() == [sq(1, 2), sq(1, 3), -1, -1, -1, -1, -1, sq(1, 4), -1, -1]
    assert box[0, sq(1, 2)] == RIGHT and box[0, sq(1, 3)] == RIGHT and box[0, sq(1, 4)] == LEFT
    assert box[1, sq(1, 2)] == NONE and box[1, sq(1, 3)] == RIGHT
    assert box[2, sq(1, 3)] == NONE and box[2, sq(1, 4)] == LEFT
    assert box[8, sq(1, 4)] == NONE and (box[8] == NONE).all()
    on_board = np.count_nonzero(box[0] != NONE)
    assert on_board == 3
    # agent: leaves (1,1) R at t0; (1,2) R at t1; at t2 bumps (stays at (1,3)); leaves (1,3) D at t3
    assert agent[0, sq(1, 1)] == RIGHT and agent[0, sq(1, 2)] == RIGHT and agent[0, sq(1, 3)] == DOWN
    assert agent[3, sq(1, 3)] == DOWN and agent[4, sq(1, 3)] == NONE
    assert agent[4, sq(2, 3)] == RIGHT and agent[5, sq(2, 4)] == RIGHT and agent[6, sq(2, 5)] == UP
    assert agent[7, sq(1, 5)] == LEFT and agent[8, sq(1, 4)] == DOWN and agent[9, sq(2, 4)] == DOWN
    # move: only the player's square is labelled, with the move made there (the bump at t2 included)
    move = future_labels(r, "move")[:, 0]
    assert ((move != NONE).sum(1) == 1).all()
    assert [int(np.flatnonzero(m != NONE)[0]) for m in move] == r.player[:, 0].tolist()
    assert [int(m[p]) for m, p in zip(move, r.player[:, 0])] == actions


def test_f1_against_a_hand_count_and_a_perfect_probe(tmp_path):
    y = np.array([0, 0, 1, 2, 3, 4, 4])
    pred = np.array([0, 1, 1, 2, 4, 4, 0])
    # up: tp 1, predicted 2, true 2 -> 0.5; down: tp 1, pred 2, true 1 -> 2/3; left: 1; right: 0
    assert np.allclose(f1_per_direction(y, pred), [0.5, 2 / 3, 1.0, 0.0])
    rng = np.random.default_rng(0)
    labels = rng.integers(5, size=2000)
    x = rng.normal(size=(2000, 6)) * 0.3
    x[np.arange(2000), labels] += 3.0  # channel k carries class k
    probe = fit_probe(x, labels, "c1", "box")
    assert (probe.predict(x) == labels).mean() > 0.99
    probe.save(tmp_path / "p.safetensors")
    back = load_probe(tmp_path / "p.safetensors")
    assert back.source == "c1" and np.allclose(back.logits(x), probe.logits(x), atol=1e-4)
    ranks = rank_channels(ProbeData({"obs": x, "c1": x, "all": x}, labels, np.zeros(2000, int)), top=1)
    assert [(c.direction, c.channel) for c in ranks] == [("up", 0), ("down", 1), ("left", 2), ("right", 3)]
    assert all(c.auroc > 0.99 and c.sign == 1 for c in ranks)
    d = probe.direction(2)
    assert np.isclose(np.linalg.norm(d), 1.0) and d.argmax() == 2
    (tmp_path / "bad.safetensors").write_bytes(b"not a probe")
    with pytest.raises(MvalError, match="not a safetensors Sokoban plan probe file"):
        load_probe(tmp_path / "bad.safetensors")
    with pytest.raises(MvalError, match="unknown; use box, agent or move"):
        future_labels(hand_rollout("#####\n#@$.#\n#####", [RIGHT]), "boxes")
