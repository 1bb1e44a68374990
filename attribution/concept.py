"""The concept score of a model: f(theta) = mean over queries q of pool_t( v . h_layer(q; theta)_t ).

`pool` is the mean over the real token positions of q, or the last real position ("last").
A concept is a `ProbeDirection` (v, layer, position); since f is linear in the activations,
f = v . mean_q pool(h_layer(q)), and the probe projection of one example z is v . pool(h_layer(z)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from attribution.examples import Example
from attribution.models import Batch, ConceptModel, check_layer

if TYPE_CHECKING:
    from attribution.probes import ProbeDirection

POSITIONS = ("mean", "last")


def pool(hidden: torch.Tensor, mask: torch.Tensor, position: str) -> torch.Tensor:
    """[B, T, d] activations -> [B, d]: mean over real positions, or the last real position."""
    if position == "mean":
        m = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    last = mask.long().sum(1).clamp(min=1) - 1
    return hidden[torch.arange(hidden.shape[0]), last]


def batches(examples: Sequence[Example], batch_size: int) -> list[Sequence[Example]]:
    return [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]


@torch.no_grad()
def activations(
    model: ConceptModel, examples: Sequence[Example], layer: int, position: str, batch_size: int = 32
) -> torch.Tensor:
    """Pooled activations pool(h_layer(z)) of each example: [N, d_model] (forward passes only)."""
    check_layer(model, layer)
    parts = []
    for chunk in batches(examples, batch_size):
        batch = model.encode(chunk)
        parts.append(pool(model.hidden_states(batch, layer), batch.mask, position))
    return torch.cat(parts)


def concept_sum(model: ConceptModel, concept: ProbeDirection, batch: Batch) -> torch.Tensor:
    """sum over the batch of v . pool(h_layer(q)): a scalar, differentiable in the parameters."""
    pooled = pool(model.hidden_states(batch, concept.layer), batch.mask, concept.position)
    return (pooled @ torch.as_tensor(concept.vector).to(pooled.dtype)).sum()


def concept_score(model: ConceptModel, concept: ProbeDirection, queries: Sequence[Example], batch_size: int = 32,
                  backward: bool = False) -> float:
    """f(theta) on `queries`; with `backward`, also accumulates grad f into the parameters' `.grad`."""
    check_layer(model, concept.layer)
    total = 0.0
    for chunk in batches(queries, batch_size):
        batch = model.encode(chunk)
        with torch.set_grad_enabled(backward):
            part = concept_sum(model, concept, batch) / len(queries)
        if backward:
            part.backward()
        total += float(part.detach())
    return total
