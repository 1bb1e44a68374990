"""Per-example gradients, compressed by a seeded random projection, cached on disk.

- `example_gradients`: grad L(z; theta) for each example of a batch, flattened over the trainable
  parameters in `named_parameters` order: [B, P]. `torch.func.vmap` over `torch.func.grad` when the
  model's forward has no data-dependent branches, else one backward pass per example.
- `CountSketch`: S g with S a k x P matrix with one random +-1 per column (Charikar et al. 2002);
  E[(S a) . (S b)] = a . b and Var <= 2 |a|^2 |b|^2 / k, the same JL bound as a Gaussian projection,
  at O(P) cost per example and O(P) memory (a dense P x k matrix would not fit).
- `GradientCache`: projected gradients on disk, keyed by model fingerprint, projection and example
  content, so many concepts reuse one pass over the data.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from torch.func import functional_call, grad, vmap

from attribution.models import Batch, ConceptModel


def trainable(model: ConceptModel) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.module.named_parameters() if p.requires_grad}


def flat_grad(model: ConceptModel) -> torch.Tensor:
    """The `.grad` of every trainable parameter, flattened (zeros where a parameter got none)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in trainable(model).values()])


class _LossOf(torch.nn.Module):
    """The model's per-example loss as a module, so `functional_call` can swap in other parameters."""

    def __init__(self, model: ConceptModel):
        super().__init__()
        self.inner = model.module
        self.model = model

    def forward(self, inputs: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        return self.model.example_losses(Batch(inputs, mask))


def _vmapped(model: ConceptModel, batch: Batch) -> torch.Tensor:
    wrapper = _LossOf(model)
    params = {f"inner.{n}": p.detach() for n, p in trainable(model).items()}

    def one(p: dict, inputs: dict, mask: torch.Tensor) -> torch.Tensor:
        return functional_call(wrapper, p, ({k: v[None] for k, v in inputs.items()}, mask[None]))[0]

    with warnings.catch_warnings():  # torch warns that attention has no batching rule (slower, still exact)
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
        grads = vmap(grad(one), in_dims=(None, 0, 0))(params, batch.inputs, batch.mask)
    return torch.cat([g.reshape(batch.size, -1) for g in grads.values()], dim=1)


def _looped(model: ConceptModel, batch: Batch) -> torch.Tensor:
    params = list(trainable(model).values())
    rows = []
    for i in range(batch.size):
        single = Batch({k: v[i : i + 1] for k, v in batch.inputs.items()}, batch.mask[i : i + 1])
        grads = torch.autograd.grad(model.example_losses(single)[0], params, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                               for g, p in zip(grads, params, strict=True)]))
    return torch.stack(rows)


def example_gradients(model: ConceptModel, batch: Batch, use_vmap: bool = True) -> torch.Tensor:
    """grad L(z_i; theta) for each example of `batch`: [B, P]."""
    if use_vmap:
        try:
            return _vmapped(model, batch)
        except RuntimeError as e:  # data-dependent control flow (e.g. an attention-mask shortcut): fall back
            if "vmap" not in str(e):
                raise
    return _looped(model, batch)


@dataclass(frozen=True)
class CountSketch:
    """S: R^P -> R^k, (S g)_j = sum over i with h(i) = j of s(i) g_i; h, s drawn from `seed`."""

    n_params: int
    dim: int
    seed: int = 0

    @cached_property
    def _hash(self) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(self.seed)
        buckets = torch.from_numpy(rng.integers(0, self.dim, size=self.n_params))
        signs = torch.from_numpy(rng.choice(np.array([-1.0, 1.0]), size=self.n_params))
        return buckets, signs

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        """[B, P] or [P] -> [B, k] or [k]."""
        buckets, signs = self._hash
        rows = g.reshape(-1, self.n_params)
        out = torch.zeros(rows.shape[0], self.dim, dtype=g.dtype).index_add_(1, buckets, rows * signs.to(g.dtype))
        return out.reshape(*g.shape[:-1], self.dim)


class GradientCache:
    """Projected gradients in `root/<key>/chunk-*.safetensors`, looked up by example content hash.

    Each chunk is written to a temporary name and renamed, so a killed run never leaves half a chunk.
    """

    def __init__(self, root: str | Path, key: str):
        self.folder = Path(root) / key
        self.folder.mkdir(parents=True, exist_ok=True)
        self._where: dict[str, tuple[Path, int]] = {}
        for chunk in sorted(self.folder.glob("chunk-*.safetensors")):
            with safe_open(str(chunk), framework="np") as f:
                for row, h in enumerate(json.loads(f.metadata()["keys"])):
                    self._where[h] = (chunk, row)

    def __len__(self) -> int:
        return len(self._where)

    def get(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached rows among `hashes`."""
        found: dict[str, np.ndarray] = {}
        by_chunk: dict[Path, list[tuple[str, int]]] = {}
        for h in hashes:
            if h in self._where:
                chunk, row = self._where[h]
                by_chunk.setdefault(chunk, []).append((h, row))
        for chunk, items in by_chunk.items():
            with safe_open(str(chunk), framework="np") as f:
                grads = f.get_tensor("grads")
            found.update({h: grads[row] for h, row in items})
        return found

    def put(self, hashes: Sequence[str], grads: np.ndarray) -> None:
        name = hashlib.sha256("".join(hashes).encode()).hexdigest()[:24]
        final = self.folder / f"chunk-{name}.safetensors"
        temporary = final.with_suffix(".tmp")
        save_file({"grads": np.ascontiguousarray(grads, dtype=np.float32)}, str(temporary),
                  metadata={"keys": json.dumps(list(hashes))})
        os.replace(temporary, final)
        self._where.update({h: (final, row) for row, h in enumerate(hashes)})
