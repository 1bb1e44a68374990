"""Plan probes: per-square labels from the agent's own future, read by 1x1 linear probes.

Labels (classes 0 up, 1 down, 2 left, 3 right, 4 none), for every step t and floor square s:
- box: the direction of the first push at a step t' >= t whose pushed box stands on s (none if never);
- agent: the direction in which the player first leaves s at a step t' >= t (none if never);
- move: the agent's own next move, read only at the player's square (samples: one per alive step), the
  decision itself; a concept from a move probe is read at the player's square (`plan_concept`).
A 1x1 probe is multinomial logistic regression on the C channels of one layer's hidden (h) or cell (c)
state at that square; the baseline is the same probe on the 4 observation planes.
F1 per direction is one-vs-rest on the argmax class over held-out squares; macro F1 averages the 4 directions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from scipy.stats import rankdata

from attribution.sokoban.agent import DRC, DRCConfig, agent_fingerprint
from attribution.sokoban.levels import ACTIONS
from attribution.sokoban.play import Rollout
from mval.errors import MvalError
from mval.weights import read_safetensors

NONE = 4
CLASSES = (*ACTIONS, "none")
LABEL_KINDS = ("box", "agent", "move")


def future_labels(r: Rollout, kind: str) -> np.ndarray:
    """(T, L, H*W) labels in 0..4 from the rollout's future (see module docstring)."""
    if kind not in LABEL_KINDS:
        raise MvalError(f"--label {kind}: unknown; use box, agent or move")
    t_len, n = r.actions.shape
    squares = r.obs.shape[-2] * r.obs.shape[-1]
    if kind == "move":
        labels = np.full((t_len, n, squares), NONE, np.int64)
        t_idx, l_idx = np.nonzero(r.alive)
        labels[t_idx, l_idx, r.player[t_idx, l_idx]] = r.actions[t_idx, l_idx]
        return labels
    if kind == "box":
        where, happened = r.pushed_from, r.pushed_from >= 0
    else:
        where, happened = r.player, r.moved
    labels = np.full((t_len, n, squares), NONE, np.int64)
    upcoming = np.full((n, squares), NONE, np.int64)
    rows = np.arange(n)
    for t in range(t_len - 1, -1, -1):
        hit = happened[t]
        upcoming[rows[hit], where[t, hit]] = r.actions[t, hit]
        labels[t] = upcoming
    return labels


@dataclass(frozen=True)
class ProbeData:
    """Samples (alive step, floor square): features per source and labels."""

    features: dict[str, np.ndarray]
    labels: np.ndarray
    level: np.ndarray


def square_features(r: Rollout, source: str) -> np.ndarray:
    """(T, L, H*W, C) features of `source`: `obs`, `h{d}`/`c{d}` for layer d (1-based) or `all` (every h and c)."""
    t_len, n = r.actions.shape
    if source == "obs":
        x = r.obs
    elif source == "all":
        x = np.concatenate([r.h, r.c], 2).reshape(t_len, n, -1, *r.h.shape[-2:])
    else:
        layer = int(source[1:]) - 1 if source[1:].isdigit() else -1
        if source[:1] not in ("h", "c") or not 0 <= layer < r.h.shape[2]:
            raise MvalError(f"probe source {source!r}: unknown; use obs, all, or h1..h{r.h.shape[2]} / c1..c{r.h.shape[2]}")
        x = (r.h if source[0] == "h" else r.c)[:, :, layer]
    return x.reshape(t_len, n, x.shape[2], -1).transpose(0, 1, 3, 2)


def probe_data(r: Rollout, kind: str = "box") -> ProbeData:
    """Samples over alive steps and floor squares (`move`: the player's square only), for every source:
    obs, h1.., c1.., all."""
    if r.h is None:
        raise MvalError("probe data needs a rollout with keep_states=True")
    labels = future_labels(r, kind)
    t_len, n, squares = labels.shape
    if kind == "move":
        where = np.arange(squares) == r.player[:, :, None]
    else:
        where = r.obs[:, :, 0].reshape(t_len, n, squares) < 0.5  # floor
    t_idx, l_idx, s_idx = np.nonzero(r.alive[:, :, None] & where)
    layers = r.h.shape[2]
    sources = ["obs"] + [f"{k}{d + 1}" for d in range(layers) for k in "hc"] + ["all"]
    feats = {k: square_features(r, k)[t_idx, l_idx, s_idx].astype(np.float32) for k in sources}
    return ProbeData(feats, labels[t_idx, l_idx, s_idx], l_idx)


SHIPPED = "shipped"  # the agent name recorded for (and shown as) the agent shipped with mval


def source_width(source: str, config: DRCConfig) -> int | None:
    """Features per square of `source` in an agent of shape `config`; None when it has no such source."""
    if source == "obs":
        return 4
    if source == "all":
        return 2 * config.layers * config.channels
    layer = source[1:]
    if source[:1] in ("h", "c") and layer.isdigit() and 1 <= int(layer) <= config.layers:
        return config.channels
    return None


def _agent_label(name: str | None) -> str:
    return "an unrecorded agent" if name is None else "the shipped agent" if name == SHIPPED else name


@dataclass(frozen=True)
class PlanProbe:
    """A 1x1 probe: logits = x @ weight.T + bias over CLASSES, x = (standardised) features of `source`.

    `agent` names the agent it was fit on (its --agent path, or "shipped") and `fingerprint` is that
    agent's `agent_fingerprint`; both None in probe files that do not record them.
    """

    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    source: str
    label: str
    agent: str | None = None
    fingerprint: str | None = None

    def logits(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.weight.T + self.bias

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.logits(x).argmax(-1)

    def direction(self, d: int) -> np.ndarray:
        """Unit vector in raw state units that raises direction d's logit against the mean of the others."""
        w = self.weight / self.scale
        v = w[d] - np.delete(w, d, axis=0).mean(0)
        return v / np.linalg.norm(v)

    def check_agent(self, agent: DRC, name: str, path: str | Path) -> None:
        """Refuse, in one line naming the probe file `path`, an agent (named `name`) other than the one the
        probe was fit on: by weight fingerprint where the file records one, else by the probed layer's width."""
        here, there = _agent_label(name), _agent_label(self.agent)
        agent_option = "" if name == SHIPPED else f" --agent {name}"
        refit = f"refit the probe on {here} with `mval sokoban probe --levels LEVELS{agent_option} -o {path}`"
        use = ("" if self.agent in (None, name) else "omit --agent, or " if self.agent == SHIPPED
               else f"pass --agent {self.agent}, or ")
        if self.fingerprint is not None and self.fingerprint != (found := agent_fingerprint(agent)):
            now = " as it is now" if self.agent == name else ""  # e.g. training went on after the probe was fit
            raise MvalError(f"{path}: probe fit on {there} (weights {self.fingerprint}), not on {here}{now} "
                            f"(weights {found}); {use}{refit}")
        width = source_width(self.source, agent.config)
        if width != self.weight.shape[1]:
            has = f"no {self.source}" if width is None else f"{width} on {self.source}"
            raise MvalError(f"{path}: probe fit on {there} reads {self.weight.shape[1]} features on {self.source}, "
                            f"but {here} has {has}; {use}{refit}")

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        meta = {"format": "mval-sokoban-probe-1", "source": self.source, "label": self.label, "classes": json.dumps(CLASSES)}
        recorded = {"agent": self.agent, "agent_fingerprint": self.fingerprint}
        meta.update({k: json.dumps(v) for k, v in recorded.items() if v is not None})
        meta.update({k: json.dumps(v) for k, v in (extra or {}).items()})
        names = ("weight", "bias", "mean", "scale")
        tensors = {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k), np.float32)) for k in names}
        save_file(tensors, str(path), metadata=meta)


def load_probe(path: str | Path, agent: DRC | None = None, agent_name: str = SHIPPED) -> PlanProbe:
    """The probe in `path`; given the `agent` it will read (named `agent_name`), refused unless fit on it
    (`PlanProbe.check_agent`)."""
    meta, t = read_safetensors(path, "Sokoban plan probe file", f"make one with `mval sokoban probe -o {path}`",
                               "mval-sokoban-probe-1")
    recorded = {k: json.loads(meta[k]) if k in meta else None for k in ("agent", "agent_fingerprint")}
    probe = PlanProbe(t["weight"], t["bias"], t["mean"], t["scale"], meta["source"], meta["label"],
                      recorded["agent"], recorded["agent_fingerprint"])
    if agent is not None:
        probe.check_agent(agent, agent_name, path)
    return probe


def fit_probe(x: np.ndarray, y: np.ndarray, source: str, label: str, l2: float = 1e-3, iters: int = 100) -> PlanProbe:
    """Multinomial logistic regression (L-BFGS) on standardised features, loss CE + l2 * |W|^2."""
    mean = x.mean(0)
    scale = x.std(0) + 1e-6
    xt = torch.from_numpy(((x - mean) / scale).astype(np.float32))
    yt = torch.from_numpy(y)
    w = torch.zeros(len(CLASSES), x.shape[1], dtype=torch.float32, requires_grad=True)
    b = torch.zeros(len(CLASSES), dtype=torch.float32, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xt @ w.T + b, yt) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return PlanProbe(w.detach().numpy(), b.detach().numpy(), mean, scale, source, label)


def f1_per_direction(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """One-vs-rest F1 for each of the 4 directions (0 where a class is never true nor predicted)."""
    out = np.zeros(4)
    for k in range(4):
        tp = np.sum((pred == k) & (y == k))
        denom = np.sum(pred == k) + np.sum(y == k)
        out[k] = 2 * tp / denom if denom else 0.0
    return out


@dataclass(frozen=True)
class ProbeScore:
    source: str
    label: str
    f1: tuple[float, float, float, float]
    macro_f1: float

    def to_dict(self) -> dict:
        return {"source": self.source, "label": self.label, **dict(zip(ACTIONS, self.f1)), "macro_f1": self.macro_f1}


def evaluate_probes(train: ProbeData, test: ProbeData, label: str) -> tuple[list[ProbeScore], dict[str, PlanProbe]]:
    """Fit a probe on every feature source of `train`, score F1 on `test`."""
    scores, probes = [], {}
    for source in train.features:
        probe = fit_probe(train.features[source], train.labels, source, label)
        f1 = f1_per_direction(test.labels, probe.predict(test.features[source]))
        scores.append(ProbeScore(source, label, tuple(float(v) for v in f1), float(f1.mean())))
        probes[source] = probe
    return scores, probes


@dataclass(frozen=True)
class ChannelRank:
    direction: str
    source: str
    channel: int
    auroc: float
    sign: int

    def to_dict(self) -> dict:
        return asdict(self)


def rank_channels(data: ProbeData, top: int = 3) -> list[ChannelRank]:
    """Single channels of every h/c layer ranked per direction by AUROC of channel value for label == d.

    AUROC from ranks: (sum of positive ranks - P(P+1)/2) / (P N); a channel that is low for d scores 1 - AUROC
    with sign -1.
    """
    sources = [k for k in data.features if k not in ("obs", "all")]
    x = np.concatenate([data.features[k] for k in sources], 1)
    names = [(k, j) for k in sources for j in range(data.features[k].shape[1])]
    ranks = rankdata(x, axis=0)
    out = []
    for d in range(4):
        pos = data.labels == d
        p, n = pos.sum(), (~pos).sum()
        if p == 0 or n == 0:
            continue
        auc = (ranks[pos].sum(0) - p * (p + 1) / 2) / (p * n)
        best = np.maximum(auc, 1 - auc)
        for j in np.argsort(-best)[:top]:
            out.append(ChannelRank(ACTIONS[d], names[j][0], names[j][1], float(best[j]), 1 if auc[j] >= 0.5 else -1))
    return out


def split_by_level(data: ProbeData, test_fraction: float, seed: int = 0) -> tuple[ProbeData, ProbeData]:
    """Hold out a fraction of the levels (not of the squares) for testing."""
    levels = np.unique(data.level)
    rng = np.random.default_rng(seed)
    test_levels = rng.choice(levels, max(1, int(round(test_fraction * len(levels)))), replace=False)
    mask = np.isin(data.level, test_levels)

    def part(m: np.ndarray) -> ProbeData:
        return ProbeData({k: v[m] for k, v in data.features.items()}, data.labels[m], data.level[m])

    return part(~mask), part(mask)
