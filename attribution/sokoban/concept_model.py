"""The DRC agent as a `ConceptModel`: levels with their episodes in, plan activations and imitation loss out.

- `encode(examples)`: each example (see `attribution.sokoban.dataset`) is replayed from its level's start;
  inputs `obs` [B, T, 4, H, W] (the observation before each move), `targets` [B, T] (the taught action,
  -1: none or padding); `mask` [B, T] marks real steps. Time steps are the T axis.
- `hidden_states(batch, layer)`: for layer d in 1..D, [h_d, c_d] (the ConvLSTM's hidden and cell state
  after the step's last tick) averaged over the board's squares: [B, T, 2C]; layer 0 is the encoder
  output e with C zeros appended. Layers D+1..2D read the same states at the player's square only
  (layer D + d: [h_d, c_d] at the square the player stands on before the step's move, the square the
  move starts from; the policy itself reads the whole top-layer map and the encoder output through an
  MLP, so no single square holds the decision). A per-square plan probe with weights w on h_d (or
  c_d) is, averaged over squares (or at the player's square), v . hidden_states with v = [w, 0] (or
  [0, w]); see `plan_concept`. `n_layers` is therefore 2D.
- `example_losses(batch)`: mean over the taught steps of -log pi(target | history): the imitation
  (cross-entropy) loss of the level's episode, [B].

The forward pass has no data-dependent branches (padding only at the end of the time axis, which a
recurrent net cannot see from earlier steps), so per-example gradients run under `torch.func.vmap`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attribution.examples import Example
from attribution.models import Batch
from attribution.probes import ProbeDirection
from attribution.sokoban.agent import DRC, agent_fingerprint, load_agent
from attribution.sokoban.dataset import decode, replay
from attribution.sokoban.levels import ACTIONS
from attribution.sokoban.probes import PlanProbe
from mval.errors import MvalError


class AgentConceptModel:
    """A DRC agent read through its plan (see the module docstring)."""

    def __init__(self, agent: DRC):
        self.module = agent.eval()
        self.n_layers = 2 * agent.config.layers  # 1..D: mean over squares; D+1..2D: at the player's square
        self.d_model = 2 * agent.config.channels
        self._replays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _replay(self, example: Example) -> tuple[np.ndarray, np.ndarray]:
        key = example.content_hash
        if key not in self._replays:
            level, episode = decode(example)
            self.module.check_board(*level.shape)
            if not episode.actions:
                raise MvalError(f"example {example.example_id!r}: the episode has no moves; give at least one")
            obs, _, _ = replay(level, episode.actions)
            self._replays[key] = (obs, np.asarray(episode.targets, np.int64))
        return self._replays[key]

    def encode(self, examples: Sequence[Example]) -> Batch:
        replays = [self._replay(e) for e in examples]
        width = max(len(t) for _, t in replays)
        cfg = self.module.config
        obs = torch.zeros(len(replays), width, 4, cfg.height, cfg.width)
        targets = torch.full((len(replays), width), -1, dtype=torch.long)
        mask = torch.zeros(len(replays), width, dtype=torch.bool)
        for i, (o, t) in enumerate(replays):
            obs[i, : len(t)] = torch.from_numpy(o)
            targets[i, : len(t)] = torch.from_numpy(t)
            mask[i, : len(t)] = True
        return Batch(inputs={"obs": obs, "targets": targets}, mask=mask)

    def _run(self, obs: torch.Tensor, layer: int | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Per-step features of `layer` ([B, T, 2C], None when layer is None) and policy logits [B, T, 4]."""
        agent = self.module
        state = agent.initial_state(obs.shape[0])
        features, logits = [], []
        for t in range(obs.shape[1]):
            e = agent.encoder(obs[:, t])
            for _ in range(agent.config.ticks):
                state, _ = agent.tick(e, state)
            h_top = state[0][-1]
            logits.append(agent.policy(agent.mlp(torch.cat([h_top, e], 1))))
            if layer is not None:
                features.append(self._read(e, state, layer, obs[:, t]))
        return (torch.stack(features, 1) if layer is not None else None), torch.stack(logits, 1)

    def _read(self, e: torch.Tensor, state, layer: int, obs: torch.Tensor) -> torch.Tensor:
        """[B, 2C] features of `layer` at one step (see the module docstring)."""
        if layer == 0:
            return torch.cat([e, torch.zeros_like(e)], 1).mean((2, 3))
        depth = self.module.config.layers
        d = (layer - 1) % depth
        x = torch.cat([state[0][d], state[1][d]], 1)
        if layer <= depth:
            return x.mean((2, 3))
        player = obs[:, 3].flatten(1).argmax(1)  # padding steps read square 0; the mask drops them
        return x.flatten(2)[torch.arange(x.shape[0]), :, player]

    def hidden_states(self, batch: Batch, layer: int) -> torch.Tensor:
        return self._run(batch.inputs["obs"], layer)[0]

    def check_concept(self, concept: ProbeDirection) -> None:
        """Refuse a plan concept made for another agent: its layer number means other squares at another
        depth (layer D + d), and its fingerprint, where recorded, names the agent it was made for."""
        parsed = _CONCEPT_SOURCE.fullmatch(concept.source)
        remake = "remake it with `mval sokoban concept PROBE --agent THIS_AGENT -o CONCEPT`"
        if parsed is not None:
            depth = self.module.config.layers
            expected = int(parsed["d"]) + (depth if parsed["player"] else 0)
            if int(parsed["d"]) > depth or concept.layer != expected:
                raise MvalError(f"--concept: made from {parsed['state']} of an agent of another depth (layer "
                                f"{concept.layer}; this agent has depth {depth}, layers 1..{depth} and "
                                f"{depth + 1}..{2 * depth} at the player's square); {remake}")
        if concept.model is not None and concept.model != (found := agent_fingerprint(self.module)):
            raise MvalError(f"--concept: made for the agent with weights {concept.model}, not this one "
                            f"(weights {found}); {remake}")

    def logits(self, batch: Batch) -> torch.Tensor:
        """The policy's logits at each step of each example's episode: [B, T, 4]."""
        return self._run(batch.inputs["obs"], None)[1]

    def example_losses(self, batch: Batch) -> torch.Tensor:
        logits = self.logits(batch)
        targets = batch.inputs["targets"]
        taught = ((targets >= 0) & batch.mask).to(logits.dtype)
        nll = -F.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
        return (nll * taught).sum(1) / taught.sum(1).clamp(min=1.0)

    def action_probs(self, examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        """pi(. | history) along each example's episode [B, T, 4], and its mask [B, T]."""
        batch = self.encode(examples)
        with torch.no_grad():
            logits = self.logits(batch)
        return logits.softmax(-1), batch.mask


def load_agent_model(path: str | Path) -> AgentConceptModel:
    """`--model AGENT.safetensors`: a Sokoban agent saved by `mval sokoban train` (weights only)."""
    try:
        agent = load_agent(path)
    except MvalError as e:
        raise MvalError(f"--model {e}") from e
    return AgentConceptModel(agent)


SQUARES = ("all", "player")
_CONCEPT_SOURCE = re.compile(r"sokoban-\w+-probe:(?P<state>[hc](?P<d>\d+)):\w+(?P<player>:player)?")


def plan_concept(probe: PlanProbe, direction: str | int, n_layers: int, squares: str | None = None) -> ProbeDirection:
    """The direction-`direction` plan of a per-square probe on h_d or c_d, as a concept at layer d.

    v = [u, 0] (probe on h_d) or [0, u] (on c_d), u = `probe.direction(d)` (unit, raw state units), so
    v . hidden_states = u . h_d read at `squares`: "all" (layer d: the mean over squares, how strongly the
    agent plans pushes in that direction anywhere on the board) or "player" (layer D + d: at the player's
    square, where the next move is decided). Default: "player" for a `move` probe (it was fit there),
    "all" otherwise. `n_layers` is the agent's depth D. Position "mean": averaged over the episode's steps.
    """
    squares = squares or ("player" if probe.label == "move" else "all")
    if squares not in SQUARES:
        raise MvalError(f"--squares {squares}: unknown; use all or player")
    d = ACTIONS.index(direction) if isinstance(direction, str) and direction in ACTIONS else direction
    if not isinstance(d, int) or not 0 <= d < 4:
        raise MvalError(f"--direction {direction}: unknown; use one of {', '.join(ACTIONS)}")
    kind, layer = probe.source[:1], probe.source[1:]
    if kind not in ("h", "c") or not layer.isdigit() or not 1 <= int(layer) <= n_layers:
        raise MvalError(f"probe on {probe.source!r}: a concept needs a probe on one layer's state (h1..h{n_layers} "
                        f"or c1..c{n_layers}); refit it with `mval sokoban probe`")
    u = probe.direction(d).astype(np.float32)
    zeros = np.zeros_like(u)
    vector = np.concatenate([u, zeros] if kind == "h" else [zeros, u])
    at_player = squares == "player"
    source = f"sokoban-{probe.label}-probe:{probe.source}:{ACTIONS[d]}" + (":player" if at_player else "")
    return ProbeDirection(vector, int(layer) + (n_layers if at_player else 0), "mean", 0.0, source,
                          model=probe.fingerprint)
