"""Training a DRC agent: imitation of the exact solver (online DAgger), then advantage actor-critic (A2C).

Each update rolls `num_envs` boards for `rollout` steps with gradients on, then takes one Adam step on
    loss = imitation_weight * CE + pg_weight * PG + value_coef * (V - R)^2 - entropy_coef * H
(rewards multiplied by `reward_scale` for the value and advantages, so returns are of order 1)
CE = -log sum_{a optimal} pi(a|s) (the expert's optimal set from exact state distances), PG = -log pi(a|s) A
with GAE(gamma, lambda) advantages A and returns R. Imitation phase: CE only plus the value loss; the boards
follow the expert with probability beta (decaying to 0 over the first half) and the agent's own samples
otherwise (DAgger), and deadlocked boards restart at once. Actor-critic phase: PG + value + entropy.

A run directory holds agent.safetensors, optimizer.safetensors, state.json (resume point; it records the
sha256 of the agent and optimizer files it belongs to; a checkpoint writes and fsyncs all three as .tmp files,
state.json.tmp last, then renames them into place, state.json last: a run killed between the renames rolls
forward to that checkpoint on resume, one killed before them drops its .tmp files and resumes from the one
before, and agent or optimizer files changed by hand are refused),
levels.txt (the training levels, example id = index), episodes.csv (one row per finished episode:
level, phase, env step, length, return, solved) and episodes.jsonl (each finished episode's moves,
taught actions and rewards: the per-level record that attribution builds on). state.json records how
many bytes of each episodes file the checkpoint covers; a resume cuts them back to that (a fresh run
to nothing), so a run killed after its last checkpoint leaves none of the episodes it then played.
A resumed run restarts its boards from the level starts, seeded by the update count.
With `keep_every` (`--keep-every`), the agent is also kept as checkpoints/agent-<env steps>.safetensors at
the start and each time the env steps pass a multiple of it: the checkpoints that `mval score --method
tracin` sums over. A resume deletes those kept after its resume point (a killed run's).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from attribution.sokoban.agent import DRC, DRCConfig, load_agent, reset_where, save_agent
from attribution.sokoban.env import Expert, SokobanVecEnv
from attribution.sokoban.levels import LevelSet, generate_levels, read_levels, state_distances, write_levels
from mval.errors import MvalError
from mval.files import file_sha256
from mval.progress import progress

EPISODE_FILES = ("episodes.csv", "episodes.jsonl")
RUN_MARKER = ".mval-sokoban-run"  # written first into a fresh run folder: its other files are the run's own
CHECKPOINT_FILES = ("agent.safetensors", "optimizer.safetensors")  # state.json records their sha256
KEPT = "checkpoints"  # the agents kept every `keep_every` env steps


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; a resumed run must have the same config except longer phases."""

    levels: str | None = None  # Boxoban file; None: generate `n_levels` levels
    size: int = 6
    boxes: int = 2
    n_levels: int = 5000
    min_length: int = 8
    agent: DRCConfig = field(default_factory=DRCConfig)
    num_envs: int = 128
    rollout: int = 16
    imitation_steps: int = 1_000_000
    rl_steps: int = 0
    max_steps: int = 60
    lr: float = 2e-3
    rl_lr: float = 2e-4
    gamma: float = 0.97
    gae_lambda: float = 0.95
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    reward_scale: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        at_least_one = {"n_levels": self.n_levels, "num_envs": self.num_envs, "rollout": self.rollout,
                        "max_steps": self.max_steps, "size": self.size, "boxes": self.boxes}
        for name, value in at_least_one.items():
            if value < 1:
                raise MvalError(f"--{name.replace('_', '-')} {value}: must be at least 1")
        for name in ("imitation_steps", "rl_steps"):
            if getattr(self, name) < 0:
                raise MvalError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be 0 or more")
        if self.imitation_steps + self.rl_steps == 0:
            raise MvalError("--imitation-steps 0 --rl-steps 0: nothing to train; give either a number of steps")
        for name in ("lr", "rl_lr"):
            if not getattr(self, name) > 0:
                raise MvalError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be more than 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**{**d, "agent": DRCConfig(**d["agent"])})


@dataclass(frozen=True)
class TrainResult:
    out: str
    env_steps: int
    updates: int
    seconds: float
    steps_per_second: float
    recent_solve_rate: float
    imitation_loss: float

    def to_dict(self) -> dict:
        return asdict(self)


def build_expert(levels: LevelSet, source: str = "training levels") -> Expert:
    """Exact distance tables of every level (a few ms per 6x6 two-box level); `source` names the levels in errors."""
    tables = []
    for i in progress(range(len(levels)), "solving levels", len(levels)):
        try:
            tables.append(state_distances(levels.level(i)))
        except MvalError as e:
            raise MvalError(f"{source}: level {i}: {e}") from e
    h, w = levels.shape
    return Expert.from_tables(tables, h * w, levels.n_boxes)


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last: torch.Tensor, gamma: float, lam: float):
    """Advantages A_t = sum_k (gamma lam)^k delta_{t+k}, delta_t = r_t + gamma V_{t+1} (1 - done_t) - V_t; returns A, A + V."""
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(last)
    nxt = last
    for t in range(rewards.shape[0] - 1, -1, -1):
        notdone = 1.0 - dones[t]
        delta = rewards[t] + gamma * nxt * notdone - values[t]
        running = delta + gamma * lam * notdone * running
        adv[t] = running
        nxt = values[t]
    return adv, adv + values


def _flag_change(key: str, saved, given) -> str:
    """`--num-envs 4 (run) vs 8 (now)`: one setting a resume changed, named as its flag."""
    flag = "--levels" if key == "levels" else f"--{key.replace('_', '-')}"
    return f"{flag} {saved} (run) vs {given} (now)" if key != "agent" else f"agent shape {saved} (run) vs {given} (now)"


class _StopFlag:
    asked = False


class _stop_on_interrupt:
    """While active, a first Ctrl-C (SIGINT) only sets `.asked`, so training stops after the current update and
    checkpoints; a second Ctrl-C interrupts at once. A no-op outside the main thread (signals go there only)."""

    def __enter__(self) -> _StopFlag:
        self.flag = _StopFlag()
        self.installed = False
        try:
            previous = signal.signal(signal.SIGINT, self._ask)
        except ValueError:  # not the main thread
            return self.flag
        self.installed = True
        self.previous = previous if previous is not None else signal.default_int_handler  # None: set outside Python
        return self.flag

    def _ask(self, signum, frame) -> None:
        self.flag.asked = True
        signal.signal(signal.SIGINT, self.previous)

    def __exit__(self, *exc) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self.previous)


def _fsync(path: Path) -> None:
    """Flush file `path` to disk, so a power loss cannot leave it renamed into place but empty."""
    with path.open("rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make renames in folder `path` durable; best effort (not every platform or filesystem can)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _adam_state_tensors(opt: torch.optim.Optimizer, agent: DRC) -> dict[str, torch.Tensor]:
    names = {id(p): n for n, p in agent.named_parameters()}
    out = {}
    for p, s in opt.state.items():
        for k in ("exp_avg", "exp_avg_sq", "step"):
            out[f"{names[id(p)]}.{k}"] = torch.as_tensor(s[k]).reshape(-1).clone() if k == "step" else s[k]
    return out


def _load_adam_state(opt: torch.optim.Optimizer, agent: DRC, tensors: dict[str, torch.Tensor]) -> None:
    for n, p in agent.named_parameters():
        if f"{n}.exp_avg" in tensors:
            opt.state[p] = {
                "exp_avg": tensors[f"{n}.exp_avg"],
                "exp_avg_sq": tensors[f"{n}.exp_avg_sq"],
                "step": tensors[f"{n}.step"].reshape(()),
            }


class Trainer:
    """A resumable run in directory `out`."""

    def __init__(self, config: TrainConfig, out: str | Path):
        self.config = config
        self.out = Path(out)
        self.interrupted = False
        self._claim_folder()
        self._finish_checkpoint()
        state_file = self.out / "state.json"
        self.env_steps = 0
        self.updates = 0
        if state_file.is_file():
            saved = json.loads(state_file.read_text())
            run, now = saved["config"], json.loads(json.dumps(config.to_dict()))
            lengths = ("imitation_steps", "rl_steps")  # may grow
            changed = ", ".join(_flag_change(k, run.get(k), now[k]) for k in sorted(now) if k != "levels" and (
                now[k] < run.get(k, 0) if k in lengths else run.get(k) != now[k]))
            if (run.get("levels") is None) != (config.levels is None):  # a --levels path names the same file
                changed = ", ".join(filter(None, [changed, _flag_change("levels", run.get("levels"), config.levels)]))
            if changed:
                raise MvalError(
                    f"{self.out}: holds a run with different settings ({changed}); resume with the "
                    "same options (only --imitation-steps/--rl-steps may grow) or use a new -o"
                )
            self._check_checkpoint(saved.get("sha256", {}))
            levels_digest = saved.get("levels_sha256")
            cached = self.out / "levels.txt"
            if levels_digest is not None and (not cached.is_file() or file_sha256(cached) != levels_digest):
                raise MvalError(f"{cached}: not the training levels this run was checkpointed with (changed or "
                                "removed since); restore them, or train into a new -o")
            if config.levels is not None and cached.is_file() and not read_levels(config.levels).same_as(
                    read_levels(cached)):
                raise MvalError(f"--levels {config.levels}: not the levels this run trained on (its copy is {cached}); "
                                "resume with those levels, or train into a new -o")
            self.env_steps, self.updates = saved["env_steps"], saved["updates"]
            self.agent = load_agent(self.out / "agent.safetensors")
            self.agent.train()
            self._drop_unsaved_episodes(saved.get("episode_bytes", {}))
            self._drop_kept_after(self.env_steps)
        else:  # a fresh start; a run killed before its first checkpoint leaves files that other options made
            torch.manual_seed(config.seed)
            self.agent = DRC(config.agent)
            self._drop_unsaved_episodes(dict.fromkeys(EPISODE_FILES, 0))
            self._drop_kept_after(-1)
            cached = self.out / "levels.txt"
            if config.levels is None or not cached.is_file() or not cached.samefile(config.levels):
                cached.unlink(missing_ok=True)
        self.levels = self._levels()
        self.agent.check_board(*self.levels.shape)
        self.opt = torch.optim.Adam(self.agent.parameters(), lr=config.lr)
        if (self.out / "optimizer.safetensors").is_file() and self.updates:
            _load_adam_state(self.opt, self.agent, load_file(str(self.out / "optimizer.safetensors")))
        self.level_source = config.levels or str(self.out / "levels.txt")  # names the levels in errors
        self.expert = build_expert(self.levels, self.level_source) if config.imitation_steps > self.env_steps else None
        self.solved_recent: list[float] = []
        self.recent_ce: list[float] = []

    def _claim_folder(self) -> None:
        """Create the run folder, or accept an existing one that is empty or holds a run (state.json, or the
        marker a fresh run writes first); refuse any other folder, whose files a fresh run would replace."""
        if self.out.exists() and not self.out.is_dir():
            raise MvalError(f"-o {self.out}: is a file; give a run folder (new, or one to resume)")
        marker = self.out / RUN_MARKER
        if self.out.is_dir() and not marker.exists() and not (self.out / "state.json").exists():
            theirs = sorted(p.name for p in self.out.iterdir())
            if theirs:
                shown = ", ".join(theirs[:3]) + (", ..." if len(theirs) > 3 else "")
                raise MvalError(f"-o {self.out}: folder holds files that are not a training run ({shown}); a run "
                                "writes levels.txt, agent.safetensors, episodes.* there: give a new or empty folder")
        self.out.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def _levels(self) -> LevelSet:
        cached = self.out / "levels.txt"
        if cached.is_file():
            return read_levels(cached)
        cfg = self.config
        if cfg.levels is not None:
            levels = read_levels(cfg.levels)
        else:
            levels = generate_levels(cfg.n_levels, cfg.size, cfg.boxes, cfg.min_length, seed=cfg.seed)
        write_levels(cached, levels)
        return levels

    def _finish_checkpoint(self) -> None:
        """Complete or drop a checkpoint that a kill cut off in save(). state.json.tmp is written (whole JSON)
        only after both other .tmp files are whole, so with it the checkpoint rolls forward: each file is
        renamed in from its .tmp, or kept if already renamed in before the kill, then state.json last.
        Without it (or cut off mid-write) the stray .tmp files are deleted and the old checkpoint stands."""
        staged = self.out / "state.json.tmp"
        try:
            recorded = json.loads(staged.read_text())["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            recorded = None
        if not isinstance(recorded, dict) or set(recorded) != set(CHECKPOINT_FILES):
            for name in (*CHECKPOINT_FILES, "state.json"):
                (self.out / f"{name}.tmp").unlink(missing_ok=True)
            return
        moves = []
        for name in CHECKPOINT_FILES:
            tmp, path = self.out / f"{name}.tmp", self.out / name
            if tmp.is_file() and file_sha256(tmp) == recorded[name]:
                moves.append((tmp, path))
            elif not (path.is_file() and file_sha256(path) == recorded[name]):
                raise MvalError(f"{self.out}: {name} matches neither {name}.tmp nor state.json.tmp (files changed "
                                "mid-save); delete the folder to train afresh, or train into a new -o")
        for tmp, path in moves:
            tmp.replace(path)
        for name in CHECKPOINT_FILES:  # a .tmp that did not match while the file in place did is stale
            (self.out / f"{name}.tmp").unlink(missing_ok=True)
        _fsync_dir(self.out)
        staged.replace(self.out / "state.json")
        _fsync_dir(self.out)

    def _check_checkpoint(self, recorded: dict[str, str]) -> None:
        """Refuse agent or optimizer files other than those state.json was saved with (`recorded`: name -> sha256;
        empty in runs saved before it was recorded)."""
        for name, digest in recorded.items():
            path = self.out / name
            if not path.is_file() or file_sha256(path) != digest:
                raise MvalError(f"{self.out}: {name} is not the one state.json was saved with (changed since "
                                "its checkpoint); delete the folder to train afresh, or train into a new -o")

    def _drop_unsaved_episodes(self, saved_bytes: dict[str, int]) -> None:
        """Cut each episodes file back to the bytes the checkpoint covers (none: remove it)."""
        for name, size in saved_bytes.items():
            path = self.out / name
            if not size:
                path.unlink(missing_ok=True)
            elif path.is_file() and path.stat().st_size > size:
                os.truncate(path, size)

    def save(self) -> None:
        """Checkpoint: write and fsync each file under a temporary name, state.json.tmp last (its being there
        means the others are whole), then rename them into place, state.json last; a kill between the renames
        is rolled forward by the next Trainer (`_finish_checkpoint`)."""
        staged = {name: self.out / f"{name}.tmp" for name in (*CHECKPOINT_FILES, "state.json")}
        staged["state.json"].unlink(missing_ok=True)  # never beside .tmp files it does not describe
        save_agent(self.agent, staged["agent.safetensors"], {"env_steps": self.env_steps})
        save_file(_adam_state_tensors(self.opt, self.agent), str(staged["optimizer.safetensors"]))
        files = {name: self.out / name for name in EPISODE_FILES}
        sizes = {name: path.stat().st_size if path.is_file() else 0 for name, path in files.items()}
        state = {"config": self.config.to_dict(), "env_steps": self.env_steps, "updates": self.updates,
                 "episode_bytes": sizes, "sha256": {name: file_sha256(staged[name]) for name in CHECKPOINT_FILES},
                 "levels_sha256": file_sha256(self.out / "levels.txt")}
        for name in CHECKPOINT_FILES:
            _fsync(staged[name])
        with staged["state.json"].open("w") as f:
            f.write(json.dumps(state, indent=1))
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(self.out)
        for name, path in staged.items():
            path.replace(self.out / name)
        _fsync_dir(self.out)

    def keep(self) -> None:
        """Keep a copy of the agent as checkpoints/agent-<env steps>.safetensors (written whole, then renamed)."""
        folder = self.out / KEPT
        folder.mkdir(exist_ok=True)
        path = folder / f"agent-{self.env_steps:010d}.safetensors"
        staged = path.with_name(path.name + ".tmp")
        save_agent(self.agent, staged, {"env_steps": self.env_steps})
        staged.replace(path)

    def _drop_kept_after(self, env_steps: int) -> None:
        """Delete the kept agents of more than `env_steps` env steps (and any cut-off .tmp file)."""
        for path in (self.out / KEPT).glob("agent-*.safetensors*"):
            kept = re.fullmatch(r"agent-(\d+)\.safetensors(\.tmp)?", path.name)
            if kept is not None and (kept[2] or int(kept[1]) > env_steps):
                path.unlink()

    def _record(self, episode: dict, phase: str) -> None:
        done = episode["level_id"] >= 0
        path = self.out / "episodes.csv"
        new = not path.is_file()
        with path.open("a") as f:
            if new:
                f.write("level_id,phase,env_step,length,return,solved\n")
            for lv, ln, ret, ok in zip(
                episode["level_id"][done], episode["length"][done], episode["return"][done], episode["solved"][done]
            ):
                f.write(f"{lv},{phase},{self.env_steps},{ln},{ret:.2f},{int(ok)}\n")
        self.solved_recent = (self.solved_recent + episode["solved"][done].astype(float).tolist())[-1000:]

    def _record_moves(self, ended: np.ndarray, level_ids: np.ndarray, solved: np.ndarray, phase: str) -> None:
        """Append the moves, taught actions and rewards of the episodes of boards `ended` to episodes.jsonl."""
        with (self.out / "episodes.jsonl").open("a") as f:
            for i in ended:
                moves = self._moves[i]
                f.write(json.dumps({"level_index": int(level_ids[i]), "phase": phase, "env_step": self.env_steps,
                                    "solved": bool(solved[i]), "actions": [m[0] for m in moves],
                                    "targets": [m[1] for m in moves], "rewards": [m[2] for m in moves]},
                                   separators=(",", ":")) + "\n")
                moves.clear()

    def run(self, time_limit: float | None = None, checkpoint_seconds: float = 120.0,
            keep_every: int | None = None) -> TrainResult:
        """Train until the phases' env steps are done or `time_limit` seconds have passed; checkpoint every
        `checkpoint_seconds` and at the end; keep the agent every `keep_every` env steps (see `keep`)."""
        if keep_every is not None and keep_every < 1:
            raise MvalError(f"--keep-every {keep_every}: must be at least 1 env step")
        cfg = self.config
        total = cfg.imitation_steps + cfg.rl_steps
        per_update = cfg.num_envs * cfg.rollout
        rng = np.random.default_rng(cfg.seed + self.updates)
        sampler = torch.Generator().manual_seed(cfg.seed + self.updates)
        env = SokobanVecEnv(self.levels, cfg.num_envs, cfg.max_steps, seed=cfg.seed + self.updates)
        obs, _ = env.reset()
        state = self.agent.initial_state(cfg.num_envs)
        starts = torch.ones(cfg.num_envs, dtype=torch.bool)
        self._moves: list[list[tuple[int, int, float]]] = [[] for _ in range(cfg.num_envs)]
        start_time = last_save = time.time()
        first_steps = self.env_steps
        n_updates = max(0, -(-(total - self.env_steps) // per_update))
        if keep_every is not None and self.env_steps == 0:
            self.keep()
        with _stop_on_interrupt() as stop:
            for _ in progress(range(n_updates), "training", n_updates):
                if stop.asked:  # a Ctrl-C: stop after a whole update and checkpoint
                    break
                imitation = self.env_steps < cfg.imitation_steps
                if imitation and self.expert is None:
                    self.expert = build_expert(self.levels, self.level_source)
                for g in self.opt.param_groups:
                    g["lr"] = cfg.lr if imitation else cfg.rl_lr
                beta = max(0.0, 0.5 - self.env_steps / cfg.imitation_steps) if imitation else 0.0
                logits_l, values_l, actions_l, rewards_l, dones_l, masks_l = [], [], [], [], [], []
                for _ in range(cfg.rollout):
                    state = reset_where(state, starts)
                    logits, value, state = self.agent.step(torch.from_numpy(obs), state)
                    with torch.no_grad():
                        actions = torch.multinomial(logits.softmax(-1), 1, generator=sampler).squeeze(1).numpy()
                    if imitation:
                        mask, dist = self.expert.optimal_actions(env.level_ids, env.boards)
                        follow = (rng.random(cfg.num_envs) < beta) & mask.any(1)
                        choice = (rng.random(mask.shape) * mask).argmax(1)
                        actions = np.where(follow, choice, actions)
                        masks_l.append(torch.from_numpy(mask))
                    playing = env.level_ids.copy()
                    taught = np.where(mask.any(1), choice, -1) if imitation else actions
                    obs, reward, term, trunc, info = env.step(actions)
                    done = term | trunc
                    if imitation:
                        dead = np.flatnonzero((dist < 0) & ~done)
                        if len(dead):
                            ended = np.where(np.isin(np.arange(cfg.num_envs), dead), env.level_ids, -1)
                            lengths = np.where(ended >= 0, env.steps, -1)
                            returns = np.where(ended >= 0, env.returns, np.nan)
                            self._record(
                                {"level_id": ended, "length": lengths, "return": returns, "solved": np.zeros_like(done)},
                                "imitation",
                            )
                            env.restart(dead)
                            obs = env.boards.observation()
                            done[dead] = True
                    if "episode" in info:
                        self._record(info["episode"], "imitation" if imitation else "rl")
                    for i in range(cfg.num_envs):
                        self._moves[i].append((int(actions[i]), int(taught[i]), round(float(reward[i]), 2)))
                    if done.any():
                        self._record_moves(np.flatnonzero(done), playing, term, "imitation" if imitation else "rl")
                    logits_l.append(logits)
                    values_l.append(value)
                    actions_l.append(torch.from_numpy(actions))
                    rewards_l.append(torch.from_numpy(reward))
                    dones_l.append(torch.from_numpy(done.astype(np.float32)))
                    starts = torch.from_numpy(done)
                with torch.no_grad():
                    _, last_value, _ = self.agent.step(torch.from_numpy(obs), reset_where(state, starts))
                logits = torch.stack(logits_l)
                values = torch.stack(values_l)
                rewards = torch.stack(rewards_l) * cfg.reward_scale
                dones = torch.stack(dones_l)
                adv, returns = gae(rewards, values.detach(), dones, last_value, cfg.gamma, cfg.gae_lambda)
                logp = F.log_softmax(logits, -1)
                loss = cfg.value_coef * F.mse_loss(values, returns)
                if imitation:
                    mask = torch.stack(masks_l)
                    rows = mask.any(-1)
                    ce = -(torch.logsumexp(logp.masked_fill(~mask, -1e9), -1))[rows]
                    if len(ce):
                        loss = loss + ce.mean()
                        self.recent_ce = (self.recent_ce + [float(ce.mean().detach())])[-5:]
                else:
                    taken = logp.gather(-1, torch.stack(actions_l)[..., None]).squeeze(-1)
                    norm_adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                    entropy = -(logp.exp() * logp).sum(-1).mean()
                    loss = loss - (taken * norm_adv).mean() - cfg.entropy_coef * entropy
                self.opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.agent.parameters(), cfg.max_grad_norm)
                self.opt.step()
                state = (state[0].detach(), state[1].detach())
                self.env_steps += per_update
                self.updates += 1
                if keep_every is not None and self.env_steps % keep_every < per_update:
                    self.keep()  # the env steps passed a multiple of keep_every in this update
                now = time.time()
                if now - last_save > checkpoint_seconds:
                    self.save()
                    last_save = now
                if time_limit is not None and now - start_time > time_limit:
                    break
        self.interrupted = stop.asked
        self.save()
        seconds = time.time() - start_time
        return TrainResult(
            out=str(self.out),
            env_steps=self.env_steps,
            updates=self.updates,
            seconds=seconds,
            steps_per_second=(self.env_steps - first_steps) / max(seconds, 1e-9),
            recent_solve_rate=float(np.mean(self.solved_recent)) if self.solved_recent else float("nan"),
            imitation_loss=float(np.mean(self.recent_ce)) if self.recent_ce else float("nan"),
        )
