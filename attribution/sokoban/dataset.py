"""Training levels as an attribution dataset: one example per level, its episode as JSON.

An example is `prompt` = the level in Boxoban text (what the agent sees first) and `response` = the
episode the agent was trained on for that level (the loss is on the response, as for a language model):

    {"format": "mval-sokoban-episode-1", "source": "expert" | "recorded",
     "actions": [...],   # moves played from the level's start (they give the observations)
     "targets": [...],   # the action the loss teaches at each step (-1: none, e.g. a deadlocked board)
     "rewards": [...]}   # the environment's reward after each move

`source = "expert"`: the solver's optimal solution (actions = targets), the demonstration imitation
learns from. `source = "recorded"`: an episode that `mval sokoban train` played on the level
(`episodes.jsonl` in the run folder): the agent's own moves, and the expert's choice as target during
imitation (DAgger) or the move itself during actor-critic. The example id is `lv-` and a hash of the
level text, so the same level has the same id in every run and file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attribution.examples import Example
from attribution.sokoban.env import Boards, step_boards
from attribution.sokoban.levels import (
    Level, LevelSet, format_levels, level_digest, parse_levels, read_levels, solve, stack_levels,
)
from mval.errors import MvalError

EPISODE_FORMAT = "mval-sokoban-episode-1"
SOURCES = ("expert", "recorded")


def level_id(level: Level) -> str:
    """`lv-` + 16 hex digits of blake2b(level text): stable across runs, files and stores."""
    return "lv-" + level_digest(level).hex()


@dataclass(frozen=True)
class Episode:
    """Moves played from a level's start, the action taught at each step (-1: none), the rewards."""

    actions: tuple[int, ...]
    targets: tuple[int, ...]
    rewards: tuple[float, ...] = ()
    source: str = "expert"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.targets) != len(self.actions):
            raise MvalError(f"episode has {len(self.actions)} actions but {len(self.targets)} targets")
        if not all(0 <= a < 4 for a in self.actions) or not all(-1 <= a < 4 for a in self.targets):
            raise MvalError("episode actions must be 0..3 (up, down, left, right) and targets -1..3")

    def to_json(self) -> str:
        record = {"format": EPISODE_FORMAT, "source": self.source, "actions": list(self.actions),
                  "targets": list(self.targets), "rewards": [round(r, 2) for r in self.rewards], **self.extra}
        return json.dumps(record, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None, where: str) -> Episode:
        try:
            record = json.loads(text) if text is not None else None
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or record.get("format") != EPISODE_FORMAT:
            raise MvalError(f"{where}: response is not a Sokoban episode (JSON with format={EPISODE_FORMAT}); "
                            "make level datasets with `mval sokoban dataset`")
        try:
            return cls(tuple(int(a) for a in record["actions"]), tuple(int(a) for a in record["targets"]),
                       tuple(float(r) for r in record.get("rewards", ())), str(record.get("source", "expert")))
        except (KeyError, TypeError, ValueError) as e:
            raise MvalError(f"{where}: episode JSON needs integer lists 'actions' and 'targets' ({e})") from e


def replay(level: Level, actions: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observations before each move (T, 4, H, W), rewards (T,) and pushed-from squares (T,; -1: no push)."""
    boards = Boards.from_levels(stack_levels([level]), np.array([0]))
    obs, rewards, pushed = [], [], []
    for a in actions:
        obs.append(boards.observation()[0])
        r, _, p = step_boards(boards, np.array([a]))
        rewards.append(float(r[0]))
        pushed.append(int(p[0]))
    h, w = level.shape
    return (np.stack(obs) if obs else np.zeros((0, 4, h, w), np.float32)), np.array(rewards), np.array(pushed)


def expert_episode(level: Level) -> Episode:
    """The solver's optimal solution as a demonstration (actions = targets)."""
    solution = solve(level)
    if solution is None:
        raise MvalError(f"level {level_id(level)} has no solution; remove it from the level file")
    _, rewards, _ = replay(level, solution)
    return Episode(tuple(solution), tuple(solution), tuple(rewards.tolist()), "expert")


def level_example(level: Level, episode: Episode) -> Example:
    return Example(level_id(level), prompt=level.to_text(), response=episode.to_json())


def decode(example: Example) -> tuple[Level, Episode]:
    """The level and episode of a level-dataset example (MvalError naming the example otherwise)."""
    where = f"example {example.example_id!r}"
    if example.prompt is None:
        raise MvalError(f"{where}: no level in 'prompt'; a level dataset is made by `mval sokoban dataset`")
    levels = parse_levels(example.prompt, where)
    if len(levels) != 1:
        raise MvalError(f"{where}: 'prompt' holds {len(levels)} levels; give one level per example")
    return levels[0], Episode.from_json(example.response, where)


def is_level_example(example: Example) -> bool:
    try:
        decode(example)
    except MvalError:
        return False
    return True


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


RECORD_KEYS = ("level_index", "phase", "env_step", "solved", "actions", "targets", "rewards")


def _recorded_episode(line: str, where: str, n_levels: int) -> tuple[int, Episode]:
    """(level index, episode) of one line of episodes.jsonl; MvalError naming `where` otherwise."""
    fix = "delete the line, or use --episodes expert"
    try:
        r = json.loads(line)
    except json.JSONDecodeError as e:
        raise MvalError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); {fix}") from e
    missing = [k for k in RECORD_KEYS if k not in r] if isinstance(r, dict) else list(RECORD_KEYS)
    if missing:
        raise MvalError(f"{where}: a recorded episode needs {', '.join(RECORD_KEYS)}; missing {', '.join(missing)}; {fix}")
    index = r["level_index"]
    if type(index) is not int or not 0 <= index < n_levels:
        raise MvalError(f"{where}: level_index {index!r} is outside 0..{n_levels - 1}, the levels of the run's "
                        f"levels.txt; {fix}")
    try:
        extra = {"phase": str(r["phase"]), "env_step": int(r["env_step"]), "solved": bool(r["solved"])}
        return index, Episode(tuple(int(a) for a in r["actions"]), tuple(int(a) for a in r["targets"]),
                              tuple(float(x) for x in r["rewards"]), "recorded", extra)
    except (TypeError, ValueError) as e:  # ValueError includes Episode's own MvalError
        raise MvalError(f"{where}: actions and targets must be lists of integers, rewards of numbers ({e}); {fix}") from e


def read_recorded(run: Path, n_levels: int) -> dict[int, Episode]:
    """The last recorded episode of each level index (0..n_levels-1) in a run folder's episodes.jsonl.

    A last line that has no newline and is not valid JSON was cut off by a run killed mid-write: it is
    skipped. Any other bad line is refused, naming the file and line.
    """
    path = run / "episodes.jsonl"
    if not path.is_file():
        raise MvalError(f"{run}: no episodes.jsonl; it is written by `mval sokoban train` (use --episodes expert)")
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    if lines and not text.endswith("\n") and not _is_json(lines[-1]):
        lines.pop()
    return dict(_recorded_episode(line, f"{path}: line {n}", n_levels)
                for n, line in enumerate(lines, 1) if line.strip())


def dataset_examples(source: str | Path, episodes: str = "expert") -> tuple[list[Example], int]:
    """Examples of a level file or a training run folder (levels.txt); returns them and the levels skipped.

    `episodes="recorded"` needs a run folder and skips levels the run never played.
    """
    if episodes not in SOURCES:
        raise MvalError(f"--episodes {episodes}: unknown; use expert or recorded")
    source = Path(source)
    level_file = source / "levels.txt" if source.is_dir() else source
    if source.is_dir() and not level_file.is_file():
        raise MvalError(f"{source}: no levels.txt; give a run folder of `mval sokoban train` or a level file")
    levels = read_levels(level_file)
    if episodes == "expert":
        made = [level_example(levels.level(i), expert_episode(levels.level(i))) for i in range(len(levels))]
        return _unique(made), 0
    if not source.is_dir():
        raise MvalError(f"--episodes recorded: {source} is a level file; give the run folder of `mval sokoban train`")
    recorded = read_recorded(source, len(levels))
    made = [level_example(levels.level(i), recorded[i]) for i in sorted(recorded)]
    return _unique(made), len(levels) - len(made)


def _unique(examples: list[Example]) -> list[Example]:
    """One example per level id (a level file may repeat a level): the first."""
    first: dict[str, Example] = {}
    for e in examples:
        first.setdefault(e.example_id, e)
    return list(first.values())


def write_level_file(path: str | Path, examples: Sequence[Example]) -> Path:
    """A Boxoban level file (`; N` headers) of the levels of `examples`, in order."""
    try:
        levels = [decode(e)[0] for e in examples]
    except MvalError as e:
        raise MvalError(f"-o {path}: a .txt output is a Boxoban level file, for Sokoban level datasets only ({e}); "
                        "use a .jsonl output") from e
    if not levels:
        raise MvalError(f"-o {path}: every level was flagged, nothing to write; drop fewer")
    Path(path).write_text(format_levels(levels))
    return Path(path)


def levels_of(examples: Sequence[Example]) -> LevelSet:
    return stack_levels([decode(e)[0] for e in examples])
