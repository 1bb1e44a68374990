"""Sokoban levels: the Boxoban text format in and out, a reverse-play generator, and an exact solver.

Boxoban text: `#` wall, space floor, `.` target, `$` box, `*` box on target, `@` player,
`+` player on target; each level is preceded by a `; N` line and followed by a blank line.
Actions are 0 up, 1 down, 2 left, 3 right (the 4-action Boxoban set of the planning papers).
A state is (player square, box squares); squares are flat indices r * W + c.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mval.errors import MvalError
from mval.files import utf8_line

ACTIONS = ("up", "down", "left", "right")
DELTAS = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])
_CHARS = {"#", " ", ".", "$", "*", "@", "+"}


@dataclass(frozen=True)
class Level:
    """One level: boolean (H, W) grids and the player's (row, col). Squares outside the room are walls."""

    walls: np.ndarray
    targets: np.ndarray
    boxes: np.ndarray
    player: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return self.walls.shape

    def to_text(self) -> str:
        """The level's rows in Boxoban characters (no `; N` header)."""
        grid = np.full(self.shape, " ")
        grid[self.walls] = "#"
        grid[self.targets] = "."
        grid[self.boxes] = "$"
        grid[self.boxes & self.targets] = "*"
        r, c = self.player
        grid[r, c] = "+" if self.targets[r, c] else "@"
        return "\n".join("".join(row) for row in grid)


@dataclass(frozen=True)
class LevelSet:
    """Levels stacked for batch work: (L, H, W) grids, player flat squares (L,), optimal lengths (-1: unknown)."""

    walls: np.ndarray
    targets: np.ndarray
    boxes: np.ndarray
    player: np.ndarray
    optimal_length: np.ndarray

    def __len__(self) -> int:
        return len(self.player)

    @property
    def shape(self) -> tuple[int, int]:
        return self.walls.shape[1:]

    @property
    def n_boxes(self) -> int:
        return int(self.boxes[0].sum())

    def same_as(self, other: LevelSet) -> bool:
        """The same boards in the same order (optimal lengths aside: a file may leave them unknown)."""
        return all(np.array_equal(getattr(self, k), getattr(other, k)) for k in ("walls", "targets", "boxes", "player"))

    def level(self, i: int) -> Level:
        w = self.shape[1]
        return Level(self.walls[i], self.targets[i], self.boxes[i], divmod(int(self.player[i]), w))

    def subset(self, idx: np.ndarray | Sequence[int]) -> LevelSet:
        idx = np.asarray(idx)
        return LevelSet(self.walls[idx], self.targets[idx], self.boxes[idx], self.player[idx], self.optimal_length[idx])


def stack_levels(levels: Sequence[Level], optimal_length: Sequence[int] | None = None) -> LevelSet:
    """Stack levels of one box count, padding smaller ones with walls on the bottom/right."""
    if not levels:
        raise MvalError("no levels given; generate some with `mval sokoban levels`")
    counts = [int(lv.boxes.sum()) for lv in levels]
    if len(set(counts)) > 1:
        other = next(i for i, c in enumerate(counts) if c != counts[0])
        raise MvalError(f"levels have different box counts (level 0 has {counts[0]}, level {other} has "
                        f"{counts[other]}); use one box count per level file")
    h = max(lv.shape[0] for lv in levels)
    w = max(lv.shape[1] for lv in levels)

    def pad(a: np.ndarray, fill: bool) -> np.ndarray:
        out = np.full((h, w), fill)
        out[: a.shape[0], : a.shape[1]] = a
        return out

    walls = np.stack([pad(lv.walls, True) for lv in levels])
    targets = np.stack([pad(lv.targets, False) for lv in levels])
    boxes = np.stack([pad(lv.boxes, False) for lv in levels])
    player = np.array([lv.player[0] * w + lv.player[1] for lv in levels])
    opt = np.full(len(levels), -1) if optimal_length is None else np.asarray(optimal_length)
    return LevelSet(walls, targets, boxes, player, opt)


# ---------------------------------------------------------------- text format


def _check_level(rows: list[str], first_line: int, source: str) -> Level:
    """Build one level from its text rows (line numbers from `first_line`), refusing malformed ones."""
    h, w = len(rows), max(len(r) for r in rows)
    grid = np.full((h, w), " ")
    inside = np.zeros((h, w), bool)
    for i, row in enumerate(rows):
        for j, ch in enumerate(row):
            if ch not in _CHARS:
                raise MvalError(
                    f"{source}: line {first_line + i}, column {j + 1}: unknown character {ch!r}; "
                    "use # wall, space floor, . target, $ box, * box on target, @ player, + player on target"
                )
            grid[i, j] = ch
            inside[i, j] = True
    players = np.argwhere((grid == "@") | (grid == "+"))
    if len(players) != 1:
        what = "no player" if len(players) == 0 else f"{len(players)} players"
        raise MvalError(f"{source}: line {first_line}: level has {what}; put exactly one @ (or + on a target)")
    boxes = (grid == "$") | (grid == "*")
    targets = (grid == ".") | (grid == "*") | (grid == "+")
    if boxes.sum() != targets.sum() or boxes.sum() == 0:
        raise MvalError(
            f"{source}: line {first_line}: level has {int(boxes.sum())} boxes and {int(targets.sum())} targets; "
            "a level needs as many boxes as targets, at least one"
        )
    walls = grid == "#"
    r0, c0 = (int(x) for x in players[0])
    seen = np.zeros((h, w), bool)
    seen[r0, c0] = True
    queue = deque([(r0, c0)])
    while queue:
        r, c = queue.popleft()
        if r in (0, h - 1) or c in (0, w - 1) or not inside[r, c]:
            raise MvalError(
                f"{source}: line {first_line + r}, column {c + 1}: room is not closed (the player can walk "
                "off the map here); surround the room with # walls"
            )
        for dr, dc in DELTAS:
            rr, cc = r + dr, c + dc
            if not seen[rr, cc] and not walls[rr, cc]:
                seen[rr, cc] = True
                queue.append((rr, cc))
    outside = ~seen & ~walls
    stray = np.argwhere(outside & (boxes | targets))
    if len(stray):
        r, c = stray[0]
        raise MvalError(
            f"{source}: line {first_line + r}, column {c + 1}: box or target outside the player's room; "
            "move it inside or remove it"
        )
    return Level(walls | outside, targets, boxes, (r0, c0))


def parse_levels(text: str, source: str = "<text>") -> list[Level]:
    """Levels from Boxoban text: `; N` lines and blank lines separate levels."""
    levels: list[Level] = []
    rows: list[str] = []
    first = 0
    for number, raw in enumerate(text.splitlines() + [""], start=1):
        line = raw.rstrip("\r\n")
        if line.startswith(";") or not line.strip():
            if rows:
                levels.append(_check_level(rows, first, source))
                rows = []
            continue
        if not rows:
            first = number
        rows.append(line)
    if not levels:
        raise MvalError(f"{source}: no levels found; a Boxoban file has `; N` lines each followed by a level's rows")
    return levels


def read_levels(path: str | Path) -> LevelSet:
    path = Path(path)
    if not path.is_file():
        raise MvalError(f"{path}: no such level file; make one with `mval sokoban levels -o {path}`")
    lines = path.read_bytes().splitlines(keepends=True)
    text = "".join(utf8_line(raw, f"{path} line {n}") for n, raw in enumerate(lines, start=1))
    try:
        return stack_levels(parse_levels(text, str(path)))
    except MvalError as e:
        if str(e).startswith(str(path)):
            raise
        raise MvalError(f"{path}: {e}") from e


def format_levels(levels: Iterable[Level], start: int = 0) -> str:
    """Boxoban text: `; N`, the rows, a blank line, per level."""
    return "".join(f"; {start + i}\n{lv.to_text()}\n\n" for i, lv in enumerate(levels))


def write_levels(path: str | Path, levels: LevelSet | Iterable[Level]) -> None:
    if isinstance(levels, LevelSet):
        levels = [levels.level(i) for i in range(len(levels))]
    Path(path).write_text(format_levels(levels))


# ---------------------------------------------------------------- solver


@dataclass(frozen=True)
class _Board:
    """Static part of a level for search: successor square per (square, action), -1 for a wall."""

    step: list[list[int]]
    targets: frozenset[int]
    n_squares: int

    @classmethod
    def of(cls, level: Level) -> _Board:
        h, w = level.shape
        flat = ~level.walls.ravel()
        offsets = (-w, w, -1, 1)
        step = [[s + o if flat[s] and 0 <= s + o < h * w and flat[s + o] else -1 for o in offsets] for s in range(h * w)]
        return cls(step, frozenset(np.flatnonzero(level.targets.ravel()).tolist()), h * w)

    def move(self, player: int, boxes: tuple[int, ...], action: int) -> tuple[int, tuple[int, ...]] | None:
        """Next (player, sorted boxes) or None when the move is blocked."""
        q = self.step[player][action]
        if q < 0:
            return None
        if q in boxes:
            r = self.step[q][action]
            if r < 0 or r in boxes:
                return None
            return q, tuple(sorted(r if b == q else b for b in boxes))
        return q, boxes

    def push_distance(self) -> list[int]:
        """Fewest pushes from each square to the nearest target for a lone box (-1: dead square)."""
        dist = [-1] * self.n_squares
        queue = deque(self.targets)
        for t in self.targets:
            dist[t] = 0
        while queue:
            s = queue.popleft()
            for a in range(4):
                # a box at p = s - d is pushed to s by a player standing at p - d
                p = self.step[s][a ^ 1]
                if p >= 0 and dist[p] < 0 and self.step[p][a ^ 1] >= 0:
                    dist[p] = dist[s] + 1
                    queue.append(p)
        return dist


def _start(level: Level) -> tuple[int, tuple[int, ...]]:
    w = level.shape[1]
    return level.player[0] * w + level.player[1], tuple(np.flatnonzero(level.boxes.ravel()).tolist())


def solve(level: Level, max_states: int = 2_000_000) -> list[int] | None:
    """An optimal (fewest moves) action list by A*; None when unsolvable or `max_states` is reached.

    Heuristic h = sum over boxes of the fewest pushes to the nearest target (each move changes it by at
    most 1, so h is consistent and A* returns an optimal solution); dead squares are pruned.
    """
    board = _Board.of(level)
    dead = board.push_distance()
    player, boxes = _start(level)

    def h(bs: tuple[int, ...]) -> int:
        return sum(dead[b] for b in bs)

    if any(dead[b] < 0 for b in boxes):
        return None
    start = (player, boxes)
    parent: dict[tuple[int, tuple[int, ...]], tuple[tuple[int, tuple[int, ...]], int] | None] = {start: None}
    g = {start: 0}
    heap = [(h(boxes), 0, start)]
    while heap:
        _, cost, state = heapq.heappop(heap)
        if cost > g[state]:
            continue
        if board.targets.issuperset(state[1]):
            actions = []
            while parent[state] is not None:
                state, a = parent[state]
                actions.append(a)
            return actions[::-1]
        for a in range(4):
            nxt = board.move(*state, a)
            if nxt is None or (nxt[1] is not state[1] and any(dead[b] < 0 for b in nxt[1])):
                continue
            if cost + 1 < g.get(nxt, 1 << 30):
                g[nxt] = cost + 1
                parent[nxt] = (state, a)
                if len(g) > max_states:
                    return None
                heapq.heappush(heap, (cost + 1 + h(nxt[1]), cost + 1, nxt))
    return None


def state_key(player: np.ndarray, box_squares: np.ndarray, n_squares: int) -> np.ndarray:
    """Integer key of states: player + n * sum_j box_j * n^j with box squares sorted ascending, shape (..., B)."""
    powers = n_squares ** np.arange(1, box_squares.shape[-1] + 1, dtype=np.int64)
    return player.astype(np.int64) + (box_squares.astype(np.int64) * powers).sum(-1)


def state_distances(level: Level, max_states: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """Every state reachable from the start: sorted keys and moves-to-solve (-1 where unsolvable).

    The expert for imitation: an action is optimal in s iff dist(next(s, a)) == dist(s) - 1.
    """
    board = _Board.of(level)
    start = _start(level)
    index = {start: 0}
    states = [start]
    src: list[int] = []
    dst: list[int] = []
    i = 0
    while i < len(states):
        state = states[i]
        for a in range(4):
            nxt = board.move(*state, a)
            if nxt is None or nxt == state:
                continue
            j = index.get(nxt)
            if j is None:
                j = index[nxt] = len(states)
                states.append(nxt)
                if len(states) > max_states:
                    raise MvalError(
                        f"level has more than {max_states} reachable states; imitation needs small levels "
                        "(6x6 or 7x7 with 2-3 boxes), train larger ones with --imitation-steps 0"
                    )
            src.append(i)
            dst.append(j)
        i += 1
    n = len(states)
    goal = np.array([board.targets.issuperset(bs) for _, bs in states])
    dist = np.where(goal, 0, np.iinfo(np.int32).max // 2).astype(np.int64)
    src_a, dst_a = np.array(src, np.int64), np.array(dst, np.int64)
    while True:
        cand = np.full(n, np.iinfo(np.int32).max // 2, np.int64)
        np.minimum.at(cand, src_a, dist[dst_a] + 1)
        new = np.minimum(dist, cand)
        if (new == dist).all():
            break
        dist = new
    dist[dist >= np.iinfo(np.int32).max // 2] = -1
    keys = state_key(np.array([p for p, _ in states]), np.array([bs for _, bs in states]), board.n_squares)
    order = np.argsort(keys)
    return keys[order], dist[order].astype(np.int32)


# ---------------------------------------------------------------- generator


def _room(size: int, rng: np.random.Generator) -> np.ndarray:
    """Floor carved by a random walk of small brushes inside a wall border (Boxoban-style topology)."""
    brushes = [
        [(0, 0)],
        [(0, 0), (0, 1)],
        [(0, 0), (1, 0)],
        [(0, 0), (0, 1), (1, 0), (1, 1)],
        [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)],
    ]
    floor = np.zeros((size, size), bool)
    lo, hi = 1, size - 2
    r, c = (int(x) for x in rng.integers(lo, hi + 1, 2))
    dr, dc = DELTAS[rng.integers(4)].tolist()
    for _ in range(int(1.7 * 2 * size)):
        if rng.random() < 0.35:
            dr, dc = DELTAS[rng.integers(4)].tolist()
        r, c = min(max(r + dr, lo), hi), min(max(c + dc, lo), hi)
        for br, bc in brushes[rng.integers(len(brushes))]:
            floor[min(max(r + br, lo), hi), min(max(c + bc, lo), hi)] = True
    return floor


def _reverse_play(floor: np.ndarray, n_boxes: int, rng: np.random.Generator, n_moves: int) -> Level | None:
    """Targets and player at random, boxes pulled off the targets by random reverse moves.

    Keeps the state along the walk with the largest total box displacement (all boxes off their start).
    """
    size = floor.shape[0]
    cells = np.argwhere(floor)
    if len(cells) < n_boxes + 3:
        return None
    pick = rng.choice(len(cells), n_boxes + 1, replace=False)
    targets = [tuple(c) for c in cells[pick[:n_boxes]]]
    player = tuple(cells[pick[-1]])
    boxes = list(targets)
    best, best_score = None, 0
    for _ in range(n_moves):
        a = rng.integers(4)
        dr, dc = DELTAS[a]
        q = (player[0] + dr, player[1] + dc)
        if not floor[q] or q in boxes:
            continue
        behind = (player[0] - dr, player[1] - dc)
        if behind in boxes and rng.random() < 0.8:
            boxes[boxes.index(behind)] = player
        player = q
        moved = [abs(b[0] - t[0]) + abs(b[1] - t[1]) for b, t in zip(boxes, targets)]
        if min(moved) > 0 and sum(moved) > best_score and not set(boxes) & set(targets):
            best, best_score = (list(boxes), player), sum(moved)
    if best is None:
        return None
    tgt = np.zeros((size, size), bool)
    bx = np.zeros((size, size), bool)
    tgt[tuple(np.array(targets).T)] = True
    bx[tuple(np.array(best[0]).T)] = True
    return Level(~floor, tgt, bx, (int(best[1][0]), int(best[1][1])))


def generate_levels(
    n: int,
    size: int = 6,
    boxes: int = 2,
    min_length: int = 1,
    max_length: int = 10_000,
    seed: int = 0,
    max_states: int = 200_000,
) -> LevelSet:
    """`n` distinct solvable levels whose optimal solution length lies in [min_length, max_length]."""
    if size < 5 or boxes < 1:
        raise MvalError(f"--size {size} --boxes {boxes}: need size >= 5 and at least one box")
    rng = np.random.default_rng(seed)
    found: list[Level] = []
    lengths: list[int] = []
    seen: set[str] = set()
    tries = 0
    while len(found) < n:
        tries += 1
        if tries > 200 * n + 1000:
            raise MvalError(
                f"found only {len(found)} of {n} levels with optimal length in [{min_length}, {max_length}] "
                f"for size {size} and {boxes} boxes; relax --min-length/--max-length or change --size/--boxes"
            )
        level = _reverse_play(_room(size, rng), boxes, rng, n_moves=20 * size)
        if level is None:
            continue
        text = level.to_text()
        if text in seen:
            continue
        solution = solve(level, max_states=max_states)
        if solution is None or not min_length <= len(solution) <= max_length:
            continue
        seen.add(text)
        found.append(level)
        lengths.append(len(solution))
    return stack_levels(found, lengths)


def level_digest(level: Level) -> bytes:
    """8 bytes of blake2b(level text): a level's identity across runs, files and stores."""
    import hashlib

    return hashlib.blake2b(level.to_text().encode(), digest_size=8).digest()


def level_hashes(levels: LevelSet) -> np.ndarray:
    """A uint64 fingerprint of each level (to keep held-out levels out of a training set)."""
    return np.array([int.from_bytes(level_digest(levels.level(i)), "little") for i in range(len(levels))],
                    dtype=np.uint64)
