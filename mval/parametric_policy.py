"""A softmax logging policy over context features, for contexts the log has never seen.

pi1(.|x) = floor + (1 - K floor) softmax(f(features(x))), f linear (hidden = 0) or a small MLP,
trained in torch (float64, full batch, Adam) on the MVAL objective over the logged contexts

    sum_x p(x) sum_a c(x,a) / (alpha pi0(a|x) + (1 - alpha) pi1(a|x)).

Saved weights-only (safetensors, with its config in the metadata); `score_parametric_policy`
compares its objective on held-out contexts with the per-context exact optimum.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from mval.design import MvalProblem, solve_exact
from mval.errors import MvalError
from mval.weights import read_safetensors


@dataclass(frozen=True)
class PolicyConfig:
    """Shape and training settings of the parametric policy."""

    n_features: int
    n_actions: int
    hidden: int = 0  # 0: linear softmax; > 0: one hidden layer of this width (tanh)
    floor: float = 0.0
    epochs: int = 500
    lr: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_features < 1 or self.n_actions < 1 or self.hidden < 0 or self.epochs < 1 or self.lr <= 0:
            raise MvalError(f"parametric policy config {self}: sizes, epochs and lr must be positive")
        if not 0 <= self.floor * self.n_actions <= 1:
            raise MvalError(f"floor {self.floor} x {self.n_actions} actions must be in [0, 1]")


class SoftmaxPolicy(torch.nn.Module):
    """Standardised features -> logits -> floor + (1 - K floor) softmax."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.config = config
        d, k, h = config.n_features, config.n_actions, config.hidden
        layers = [torch.nn.Linear(d, k)] if h == 0 else [torch.nn.Linear(d, h), torch.nn.Tanh(), torch.nn.Linear(h, k)]
        self.net = torch.nn.Sequential(*layers).double()
        self.register_buffer("center", torch.zeros(d, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(d, dtype=torch.float64))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        k, floor = self.config.n_actions, self.config.floor
        return floor + (1 - k * floor) * torch.softmax(self.net((features - self.center) / self.scale), dim=-1)

    def probs(self, features: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self(torch.as_tensor(np.asarray(features, dtype=float))).numpy()

    def save(self, path: str | Path) -> None:
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path),
                  metadata={"config": json.dumps(asdict(self.config))})


def fit_parametric_policy(
    features: np.ndarray, c: np.ndarray, pi0: np.ndarray, alpha: float,
    weights: np.ndarray | None = None, **config,
) -> SoftmaxPolicy:
    """Train pi1 = softmax(f(features)) on the MVAL objective of the logged contexts."""
    features = np.asarray(features, dtype=float)
    problem = MvalProblem(c, pi0, alpha, weights)  # validates c, pi0, alpha, weights
    if features.ndim != 2 or features.shape[0] != problem.shape[0] or not np.isfinite(features).all():
        raise MvalError(
            f"features must be finite with one row per context ({problem.shape[0]}), found {features.shape}"
        )
    cfg = PolicyConfig(features.shape[1], problem.shape[1], **config)
    torch.manual_seed(cfg.seed)
    model = SoftmaxPolicy(cfg)
    x = torch.as_tensor(features)
    model.center.copy_(x.mean(0))
    model.scale.copy_(x.std(0).clamp_min(1e-12) if len(x) > 1 else torch.ones(cfg.n_features, dtype=torch.float64))
    cost = torch.as_tensor(problem.weights[:, None] * problem.c)
    base = torch.as_tensor(alpha * problem.pi0)
    norm = float(problem.objective(solve_exact(problem)))  # the optimum: loss 1 is perfect
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    best, best_state = float("inf"), None
    for _ in range(cfg.epochs):  # the best iterate is kept: a large lr can make Adam diverge late
        optimizer.zero_grad()
        loss = mval_loss(cost, base, alpha, model(x)) / max(norm, 1e-300)
        if loss.item() < best:
            best, best_state = loss.item(), {k: v.clone() for k, v in model.state_dict().items()}
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        if float(mval_loss(cost, base, alpha, model(x)) / max(norm, 1e-300)) > best:
            model.load_state_dict(best_state)
    return model


def mval_loss(cost: torch.Tensor, base: torch.Tensor, alpha: float, pi1: torch.Tensor) -> torch.Tensor:
    """sum_{x,a} cost / (base + (1 - alpha) pi1), with cost already weighted by p(x)."""
    return (cost / (base + (1 - alpha) * pi1)).sum()


def load_parametric_policy(path: str | Path) -> SoftmaxPolicy:
    """Read a policy saved by `SoftmaxPolicy.save` (safetensors only: no pickled code is run)."""
    meta, state = read_safetensors(path, "policy weights file", "save the policy with SoftmaxPolicy.save",
                                   framework="pt")
    if "config" not in meta:
        raise MvalError(f"{path}: no policy config in the safetensors metadata; save it with SoftmaxPolicy.save")
    model = SoftmaxPolicy(PolicyConfig(**json.loads(meta["config"])))
    model.load_state_dict(state)
    return model


@dataclass(frozen=True)
class PolicyScore:
    """Objective of the parametric pi1 vs the per-context exact optimum on the same contexts."""

    objective: float
    optimum: float
    ratio: float  # objective / optimum, >= 1

    def to_dict(self) -> dict:
        return asdict(self)


def score_parametric_policy(
    model: SoftmaxPolicy, features: np.ndarray, c: np.ndarray, pi0: np.ndarray, alpha: float,
    weights: np.ndarray | None = None,
) -> PolicyScore:
    """Ratio of the model's MVAL objective to the exact optimum (floor as in the model)."""
    problem = MvalProblem(c, pi0, alpha, weights, floor=model.config.floor)
    objective = float(problem.objective(model.probs(features)))
    optimum = float(problem.objective(solve_exact(problem)))
    return PolicyScore(objective, optimum, objective / optimum if optimum > 0 else float("nan"))
