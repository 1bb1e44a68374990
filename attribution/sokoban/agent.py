"""The DRC(D, N) agent (Guez et al. 2019; Sokoban planning papers arXiv 2407.15421, 2506.10138).

D ConvLSTM layers, N ticks per environment step. At tick n layer d reads
[encoded obs e, h_{d-1}^n (for d = 1: h_D^{n-1}, the top-down skip), h_d^{n-1}, pool-and-inject(h_d^{n-1})]
through one 3x3 convolution giving the gates i, f, o, g:
    c_d^n = sigmoid(f) * c_d^{n-1} + sigmoid(i) * tanh(g),  h_d^n = sigmoid(o) * tanh(c_d^n).
Pool-and-inject: a linear map of [spatial max, spatial mean] of h, broadcast over squares.
Heads: MLP over [h_D, e] flattened -> policy logits (4) and value.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from mval.errors import MvalError
from mval.weights import read_safetensors

SHIPPED_AGENT = Path(__file__).resolve().parent / "agent.safetensors"


@dataclass(frozen=True)
class DRCConfig:
    """Shape of a DRC agent: `layers` (D), `ticks` (N), `channels` per layer, board `height` x `width`."""

    layers: int = 2
    ticks: int = 2
    channels: int = 16
    height: int = 6
    width: int = 6
    hidden: int = 256

    def __post_init__(self) -> None:
        for name in ("layers", "ticks", "channels", "height", "width", "hidden"):
            if getattr(self, name) < 1:
                raise MvalError(f"agent config {name}={getattr(self, name)}: must be at least 1")


State = tuple[torch.Tensor, torch.Tensor]  # h, c: (D, B, C, H, W)


class DRC(nn.Module):
    def __init__(self, config: DRCConfig):
        super().__init__()
        self.config = config
        c = config.channels
        self.encoder = nn.Sequential(nn.Conv2d(4, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))
        self.gates = nn.ModuleList(nn.Conv2d(4 * c, 4 * c, 3, padding=1) for _ in range(config.layers))
        self.inject = nn.ModuleList(nn.Linear(2 * c, c) for _ in range(config.layers))
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(2 * c * config.height * config.width, config.hidden), nn.ReLU())
        self.policy = nn.Linear(config.hidden, 4)
        self.value = nn.Linear(config.hidden, 1)
        with torch.no_grad():
            for conv in self.gates:
                conv.bias.zero_()
                conv.bias[c : 2 * c] = 1.0  # forget-gate bias

    def initial_state(self, batch: int) -> State:
        cfg = self.config
        z = torch.zeros(cfg.layers, batch, cfg.channels, cfg.height, cfg.width)
        return z, z.clone()

    def check_board(self, height: int, width: int, levels: str = "", agent: str = "") -> None:
        """Refuse boards of another size than the agent's (`levels`, `agent`: names for the message)."""
        if (height, width) != (self.config.height, self.config.width):
            raise MvalError(
                f"{levels + ': ' if levels else ''}levels are {height}x{width} but the agent"
                f"{' ' + agent if agent else ''} was trained on "
                f"{self.config.height}x{self.config.width} boards; use levels of that size or train an agent for them"
            )

    def tick(self, e: torch.Tensor, state: State, edit=None) -> tuple[State, list[State]]:
        """One tick through all layers; returns the new state and each layer's (h, c)."""
        h_prev, c_prev = state
        below = h_prev[-1]
        hs, cs = [], []
        for d, (conv, inject) in enumerate(zip(self.gates, self.inject)):
            h, c = h_prev[d], c_prev[d]
            pooled = inject(torch.cat([h.amax((2, 3)), h.mean((2, 3))], 1))[:, :, None, None].expand_as(h)
            i, f, o, g = conv(torch.cat([e, below, h, pooled], 1)).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            if edit is not None:
                h, c = edit(d, h, c)
            hs.append(h)
            cs.append(c)
            below = h
        return (torch.stack(hs), torch.stack(cs)), list(zip(hs, cs))

    def step(self, obs: torch.Tensor, state: State, edit=None) -> tuple[torch.Tensor, torch.Tensor, State]:
        """One environment step (N ticks): logits (B, 4), value (B,), new state."""
        e = self.encoder(obs)
        for _ in range(self.config.ticks):
            state, _ = self.tick(e, state, edit)
        z = self.mlp(torch.cat([state[0][-1], e], 1))
        return self.policy(z), self.value(z).squeeze(1), state

    def think(self, obs: torch.Tensor, state: State, steps: int) -> State:
        """`steps` extra steps on the same observation before acting (the papers' thinking steps)."""
        for _ in range(steps):
            _, _, state = self.step(obs, state)
        return state


def reset_where(state: State, starts: torch.Tensor) -> State:
    """Zero the state of boards whose episode starts now (`starts`: (B,) bool)."""
    keep = (~starts).float()[None, :, None, None, None]
    return state[0] * keep, state[1] * keep


def save_agent(agent: DRC, path: str | Path, extra: dict | None = None) -> None:
    meta = {"config": json.dumps(asdict(agent.config)), "format": "mval-sokoban-drc-1"}
    if extra:
        meta.update({k: json.dumps(v) for k, v in extra.items()})
    save_file({k: v.contiguous() for k, v in agent.state_dict().items()}, str(path), metadata=meta)


def agent_fingerprint(agent: DRC) -> str:
    """16 hex digits of blake2b over the agent's config and weights: the same agent, whatever file holds it."""
    digest = hashlib.blake2b(json.dumps(asdict(agent.config), sort_keys=True).encode(), digest_size=8)
    for name, tensor in agent.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_agent(path: str | Path | None = None) -> DRC:
    """A DRC from a safetensors file (weights only, never pickle); None: the shipped agent."""
    path = path if path is not None else SHIPPED_AGENT
    meta, tensors = read_safetensors(path, "agent file", "give a file saved by `mval sokoban train`",
                                     "mval-sokoban-drc-1", "pt")
    try:
        config = DRCConfig(**json.loads(meta.get("config", "")))
        agent = DRC(config)
        agent.load_state_dict(tensors)
    except (ValueError, TypeError, RuntimeError) as e:  # MvalError is a ValueError: a bad config value
        reason = " ".join(str(e).split())
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        raise MvalError(f"{path}: damaged agent file (its config and weights do not make a DRC agent: {reason}); "
                        "give a file saved by `mval sokoban train`") from e
    agent.eval()
    return agent
