"""Attribution scorers behind one interface, `score(model, examples) -> np.ndarray`, chosen by method name.

Higher scores mean "drives the concept more". Methods:
- `probe`:     v . pool(h_layer(z))                      (one forward pass per example)
- `gradient`:  -(S grad f(theta)) . (S grad L(z; theta))  (S: seeded CountSketch to `proj_dim` dims)
               = the first-order increase of f from one gradient step on z, per unit step; the
               concept influence -grad f^T (H + lambda I)^-1 grad L(z) with H replaced by the identity.
- `tracin`:    sum over checkpoints theta_c of the gradient score at theta_c (TracIn, Pruthi et al. 2020):
               what each example contributed along the training run, not only what is left to learn at
               its end (`request.checkpoints`, see `attribution.checkpoints`)
- `embedding`: cos(pool_mean(h_layer(z)), mean over queries of pool_mean(h_layer(q)))   (baseline)
- `random`:    uniform in [0, 1) from a hash of (seed, example content)              (baseline)
- `influence`, `test-influence`: Concept Influence with an EK-FAC Hessian, and the classic influence on
               the queries' loss (`attribution.influence`, one of the `PLUGINS`).

A new method registers a factory `ScoreRequest -> Scorer` with `@register("name")`; the CLI and
the store glue only ever call `make_scorer(name, request).score(model, examples)`. Methods defined in
another module register when it is imported: list it in `PLUGINS`, and the first lookup imports it.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from attribution.checkpoints import check_same_model
from attribution.concept import activations, batches, concept_score
from attribution.examples import Example
from attribution.gradients import CountSketch, GradientCache, example_gradients, flat_grad, trainable
from attribution.models import ConceptModel, fingerprint
from attribution.probes import ProbeDirection, probe_logits
from mval.errors import MvalError


@dataclass(frozen=True)
class ScoreRequest:
    """What a scorer may use besides the model and the examples."""

    concept: ProbeDirection
    queries: tuple[Example, ...] = ()
    seed: int = field(default=0, metadata={"help": "seed of the projection and of the random baseline"})
    batch_size: int = field(default=16, metadata={"help": "examples per forward/backward pass"})
    proj_dim: int = field(default=4096, metadata={"help": "dimensions of the projected gradients"})
    cache_dir: Path | None = field(default=None, metadata={"help": "where projected gradients are cached"})
    damping: float | None = field(default=None, metadata={
        "help": "lambda of influence's (H + lambda I)^-1, one for all modules; None: 0.1 x the mean EK-FAC "
                "eigenvalue over the tracked modules"})
    checkpoints: tuple[ConceptModel, ...] = field(default=(), metadata={
        "help": "tracin: the model at points of its training (`attribution.checkpoints.load_checkpoints`)"})

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise MvalError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.proj_dim < 1:
            raise MvalError(f"--proj-dim {self.proj_dim}: must be at least 1")
        if self.damping is not None and not self.damping > 0:
            raise MvalError(f"--damping {self.damping}: must be positive (or left out for the heuristic)")


class Scorer(Protocol):
    """Scores examples. A scorer that needs the whole dataset first (influence: the Hessian) also has
    `fit(model, examples)`; `score_dataset` calls it with every example before scoring the unscored ones."""

    def score(self, model: ConceptModel, examples: Sequence[Example]) -> np.ndarray: ...


Factory = Callable[[ScoreRequest], Scorer]
_FACTORIES: dict[str, Factory] = {}
_NEEDS_QUERIES: set[str] = set()
# Modules that register more methods. They import this one (for `register`), so they are imported on the
# first lookup (`registered`), not at the top of this file: that would be an import cycle.
PLUGINS = ("attribution.influence",)


def register(name: str, needs_queries: bool = False) -> Callable[[Factory], Factory]:
    def add(factory: Factory) -> Factory:
        _FACTORIES[name] = factory
        if needs_queries:
            _NEEDS_QUERIES.add(name)
        return factory

    return add


def registered() -> dict[str, Factory]:
    """Every method's factory by name, the `PLUGINS`' included."""
    for module in PLUGINS:
        importlib.import_module(module)  # registers its methods the first time; later, a dict lookup
    return _FACTORIES


def needs_queries(method: str) -> bool:
    registered()
    return method in _NEEDS_QUERIES


def check_method(method: str, request: ScoreRequest) -> None:
    """Refuse an unknown method, or one that needs a query set the request lacks (before any model loads)."""
    factories = registered()
    if method not in factories:
        raise MvalError(f"--method {method}: unknown; use one of {', '.join(sorted(factories))}")
    if needs_queries(method) and not request.queries:
        raise MvalError(f"--method {method} needs a query set: give --queries Q.jsonl (prompts showing the behaviour)")


def make_scorer(method: str, request: ScoreRequest) -> Scorer:
    check_method(method, request)
    return registered()[method](request)


@register("probe")
@dataclass
class ProbeScorer:
    request: ScoreRequest

    def score(self, model: ConceptModel, examples: Sequence[Example]) -> np.ndarray:
        return probe_logits(model, self.request.concept, examples) - self.request.concept.bias


@register("random")
@dataclass
class RandomScorer:
    request: ScoreRequest

    def score(self, model: ConceptModel, examples: Sequence[Example]) -> np.ndarray:
        seed = str(self.request.seed).encode()
        return np.array([int.from_bytes(hashlib.sha256(seed + e.content_hash.encode()).digest()[:8]) / 2.0**64
                         for e in examples])


@register("embedding", needs_queries=True)
@dataclass
class EmbeddingScorer:
    request: ScoreRequest
    _centroid: dict[str, torch.Tensor] = field(default_factory=dict)

    def score(self, model: ConceptModel, examples: Sequence[Example]) -> np.ndarray:
        layer = self.request.concept.layer
        key = fingerprint(model)
        if key not in self._centroid:
            self._centroid[key] = activations(model, self.request.queries, layer, "mean").mean(0)
        x = activations(model, examples, layer, "mean", self.request.batch_size)
        return torch.nn.functional.cosine_similarity(x, self._centroid[key][None], dim=1).numpy()


@register("gradient", needs_queries=True)
@dataclass
class GradientScorer:
    request: ScoreRequest
    _concept_grad: dict[str, torch.Tensor] = field(default_factory=dict)

    def sketch(self, model: ConceptModel) -> CountSketch:
        n_params = sum(p.numel() for p in trainable(model).values())
        if self.request.proj_dim > n_params:  # and a huge one would fill the memory with [batch, k] zeros
            raise MvalError(f"--proj-dim {self.request.proj_dim}: more than the model's {n_params:,} trainable "
                            f"parameters, so projecting would not compress the gradients; give at most {n_params}")
        return CountSketch(n_params, self.request.proj_dim, self.request.seed)

    def concept_gradient(self, model: ConceptModel) -> torch.Tensor:
        """S grad f(theta), once per model."""
        key = fingerprint(model)
        if key not in self._concept_grad:
            model.module.zero_grad(set_to_none=True)
            concept_score(model, self.request.concept, self.request.queries, self.request.batch_size, backward=True)
            self._concept_grad[key] = self.sketch(model)(flat_grad(model))
            model.module.zero_grad(set_to_none=True)
        return self._concept_grad[key]

    def projected_gradients(self, model: ConceptModel, examples: Sequence[Example]) -> np.ndarray:
        """S grad L(z) for each example: [N, proj_dim], from the cache where possible."""
        sketch = self.sketch(model)
        hashes = [e.content_hash for e in examples]
        cache = None
        found: dict[str, np.ndarray] = {}
        if self.request.cache_dir is not None:
            key = f"{fingerprint(model)[:20]}-k{self.request.proj_dim}-s{self.request.seed}"
            cache = GradientCache(self.request.cache_dir, key)
            found = cache.get(hashes)
        missing = [e for e in examples if e.content_hash not in found]
        for chunk in batches(missing, self.request.batch_size):
            g = sketch(example_gradients(model, model.encode(chunk))).detach().numpy()
            found.update({e.content_hash: row for e, row in zip(chunk, g, strict=True)})
            if cache is not None:
                cache.put([e.content_hash for e in chunk], g)
        return np.stack([found[h] for h in hashes])

    def score(self, model: ConceptModel, examples: Sequence[Example]) -> np.ndarray:
        gf = self.concept_gradient(model)
        g = torch.as_tensor(self.projected_gradients(model, examples)).to(gf.dtype)
        return -(g @ gf).numpy()


@register("tracin", needs_queries=True)
@dataclass
class TracInScorer:
    """TracIn on the concept: sum over the checkpoints theta_c of -(S grad f(theta_c)) . (S grad L(z; theta_c)),
    equal weights (a constant learning rate between checkpoints). The concept's direction, made for the final
    model, is read in each checkpoint's activations; projections and caches as for `gradient`, per checkpoint."""

    request: ScoreRequest
    _gradient: GradientScorer = field(init=False)
    _checked: set[int] = field(default_factory=set)  # ids of the models the checkpoints were checked against

    def __post_init__(self) -> None:
        if not self.request.checkpoints:
            raise MvalError("--method tracin needs the model's checkpoints: give --checkpoint PATH (a model saved "
                            "during training, or a folder of them)")
        self._gradient = GradientScorer(self.request)

    def score(self, model: ConceptModel, examples: Sequence[Example]) -> np.ndarray:
        if id(model) not in self._checked:  # once per model, not per batch
            for i, checkpoint in enumerate(self.request.checkpoints):
                check_same_model(model, checkpoint, f"number {i + 1}")
            self._checked.add(id(model))
        return sum(self._gradient.score(c, examples) for c in self.request.checkpoints)
