"""Fine-tuning an agent on a level dataset by behaviour cloning: the loss is the dataset's own imitation loss.

    theta <- Adam steps on mean_{z in minibatch} L(z; theta),  L = `AgentConceptModel.example_losses`

(the cross-entropy of each level's taught actions along its episode), so the training loss and the loss
whose gradients attribution scores are the same function.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

from attribution.examples import Example
from attribution.sokoban.agent import DRC
from attribution.sokoban.concept_model import AgentConceptModel
from mval.errors import MvalError


def finetune(agent: DRC, examples: Sequence[Example], epochs: int = 10, lr: float = 1e-3, batch_size: int = 32,
             seed: int = 0, checkpoints: list[DRC] | None = None) -> DRC:
    """A copy of `agent` after `epochs` passes over `examples` in seeded random minibatches.

    `checkpoints`, when given, receives a copy of the agent at the start of each epoch (the first is `agent`
    itself): the trajectory that TracIn-style attribution sums gradient scores over.
    """
    if not examples:
        raise MvalError("fine-tuning needs at least one example")
    torch.manual_seed(seed)
    tuned = copy.deepcopy(agent).train()
    model = AgentConceptModel(tuned)
    opt = torch.optim.Adam(tuned.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        if checkpoints is not None:
            checkpoints.append(copy.deepcopy(tuned).eval())
        order = rng.permutation(len(examples))
        for start in range(0, len(order), batch_size):
            chunk = [examples[i] for i in order[start : start + batch_size]]
            loss = model.example_losses(model.encode(chunk)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return tuned.eval()
