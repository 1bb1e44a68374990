"""Levels: Boxoban text in and out, refusals with line numbers, the exact solver, reverse-play generation."""

import numpy as np
import pytest

from attribution.sokoban.env import Boards, step_boards
from attribution.sokoban.levels import (
    format_levels,
    generate_levels,
    parse_levels,
    read_levels,
    solve,
    state_distances,
    write_levels,
)
from mval.errors import MvalError

CORRIDOR = "#####\n#@$.#\n#####"
CORRIDOR_2 = "######\n#@ $.#\n######"
TURN = "#######\n#.    #\n#  $  #\n#   @ #\n#######"  # 3 pushes + 1 move + a 2-move turn = 6
DEAD = "#####\n#$ .#\n#@  #\n#####"  # box stuck in a corner
ON_TARGET = "######\n#+$  #\n#  * #\n# $. #\n######"


def one(text):
    return parse_levels(text)[0]


@pytest.mark.parametrize("text,length", [(CORRIDOR, 1), (CORRIDOR_2, 2), (TURN, 6)])
def test_solver_optimal_lengths_on_hand_made_levels(text, length):
    level = one(text)
    assert len(solve(level)) == length
    keys, dist = state_distances(level)
    start = np.searchsorted(keys, Boards.from_levels(read_text_set(text), np.array([0])).keys()[0])
    assert dist[start] == length


def read_text_set(text):
    from attribution.sokoban.levels import stack_levels

    return stack_levels(parse_levels(text))


def test_solver_finds_no_solution_for_a_dead_box():
    assert solve(one(DEAD)) is None


def test_solutions_of_generated_levels_are_optimal_and_solve_them():
    levels = generate_levels(12, size=6, boxes=2, min_length=4, seed=3)
    boards = Boards.from_levels(levels, np.arange(len(levels)))
    for i in range(len(levels)):
        actions = solve(levels.level(i))
        assert len(actions) == levels.optimal_length[i] >= 4
        keys, dist = state_distances(levels.level(i))  # exhaustive BFS agrees with A*
        assert dist[np.searchsorted(keys, boards.keys()[i])] == len(actions)
        single = Boards.from_levels(levels, np.array([i]))
        for a in actions:
            _, solved, _ = step_boards(single, np.array([a]))
        assert solved[0]


def test_generated_levels_are_distinct_and_filtered_by_length():
    levels = generate_levels(10, size=6, boxes=2, min_length=8, max_length=10, seed=5)
    texts = {levels.level(i).to_text() for i in range(len(levels))}
    assert len(texts) == 10
    assert ((levels.optimal_length >= 8) & (levels.optimal_length <= 10)).all()
    assert (levels.boxes.sum((1, 2)) == 2).all() and (levels.targets.sum((1, 2)) == 2).all()
    assert not (levels.boxes & levels.targets).any()


def test_boxoban_files_round_trip(tmp_path):
    text = f"; 0\n{CORRIDOR}\n\n; 1\n{CORRIDOR}\n\n"
    assert format_levels(parse_levels(text)) == text
    on_target = one(ON_TARGET)
    assert on_target.player == (1, 1) and on_target.targets[1, 1] and on_target.boxes[2, 3]
    assert on_target.to_text() == ON_TARGET
    generated = generate_levels(5, size=6, boxes=2, seed=1)
    write_levels(tmp_path / "l.txt", generated)
    back = read_levels(tmp_path / "l.txt")
    for name in ("walls", "targets", "boxes", "player"):
        assert np.array_equal(getattr(back, name), getattr(generated, name))


BAD = [
    ("; 0\n#####\n# $.#\n#####\n", r"line 2: level has no player"),
    ("; 0\n#####\n#@@.#\n#$  #\n#####\n", r"line 2: level has 2 players"),
    ("; 0\n#####\n#@$.#\n#$  #\n#####\n", r"line 2: level has 2 boxes and 1 targets"),
    ("; 0\n#####\n#@$.#\n#####\n\n; 1\n#####\n#@$. \n#####\n", r"line 8, column 5: room is not closed"),
    ("; 0\n#####\n#@$.#\n###\n", r"line 4, column 4: room is not closed"),
    ("; 0\n#####\n#@$x.#\n#####\n", r"line 3, column 4: unknown character 'x'"),
    ("; nothing here\n\n", r"no levels found"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_malformed_files_are_refused_with_line_numbers(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(MvalError, match=message):
        read_levels(path)


def test_a_file_not_in_utf8_is_refused_with_its_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("; 0\n#####\n#@$.#\n#####\n\n; caf\u00e9\n".encode("latin-1"))
    with pytest.raises(MvalError, match=r"latin1.txt line 6: not UTF-8 text \(byte 6\)"):
        read_levels(path)
