"""Influence functions with an EK-FAC Hessian (kronfluence): Concept Influence and classic test influence.

- `influence`:      I(z) = -grad f(theta)^T (H + lambda I)^-1 grad L(z; theta)
  f = the concept score on the query set (`attribution.concept`), L(z) = the training loss of z,
  H = the Gauss-Newton Hessian (true Fisher) of the mean training loss over the dataset, in EK-FAC
  form (George et al. 2018; Grosse et al. 2023, "Studying large language model generalization with
  influence functions"). I(z) is the first-order change of f when z is upweighted in training, so
  higher = pushes the model towards the concept, as for `gradient` (which is I(z) with H = 0, lambda = 1).
- `test-influence`: the classic baseline (Koh & Liang 2017): the influence on the loss of the query
  examples themselves, -mean_q dL(q)/d(upweight z) = mean_q grad L(q)^T (H + lambda I)^-1 grad L(z);
  higher = makes the behaviour-exhibiting answers more likely.

Works for any `ConceptModel`: kronfluence tracks the `nn.Linear` and `nn.Conv2d` modules whose weights
the concept score depends on (the layers up to the concept's layer), found by one backward pass of f;
both methods use these modules and the same factors. Modules called more than once per forward pass
(a recurrent net) switch kronfluence to shared-parameter mode and to its per-sample-gradient scoring
path (in kronfluence 1.0.1 the low-memory path counts only one of the calls). The true Fisher needs labels sampled
from the model: a model may define `sampled_example_losses(batch)`; Hugging Face LMs get it here; other
models fall back to the empirical Fisher (the observed labels).

Factors are fitted once per (model, whole dataset, tracked modules) and kept under
`cache_dir/ekfac/`, so rescoring, resuming and other concepts at the same layer reuse them.

Damping: one lambda for every tracked module, as in the formula. Without `--damping` it is 0.1 x the mean
EK-FAC eigenvalue over all tracked modules (the heuristic of Grosse et al. 2023 applied to H as a whole).
kronfluence's own default damps each module by 0.1 x *its* mean eigenvalue, which reweights the modules
against each other (a module with small curvature counts more) and breaks the large-damping limit
lambda * I(z) -> -grad f . grad L(z) (the `gradient` score) that ties the methods together.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import logging
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from attribution.concept import concept_sum
from attribution.examples import Example, examples_hash
from attribution.models import Batch, ConceptModel, HFCausalLM, check_layer, fingerprint
from attribution.scorers import ScoreRequest, register
from mval.errors import MvalError

Measure = Callable[[ConceptModel, Batch], torch.Tensor]  # a batch's summed measurement, a scalar
DAMPING_SCALE = 0.1  # default lambda = DAMPING_SCALE x the mean EK-FAC eigenvalue over the tracked modules


def require_kronfluence():
    try:
        import kronfluence
    except ImportError as e:
        raise MvalError("influence methods need kronfluence: pip install --no-deps kronfluence==1.0.1") from e
    return kronfluence


def concept_measure(request: ScoreRequest) -> Measure:
    """Sum over the batch of v . pool(h_layer(q)) (f times the number of queries)."""
    return lambda model, batch: concept_sum(model, request.concept, batch)


def loss_measure(model: ConceptModel, batch: Batch) -> torch.Tensor:
    return model.example_losses(batch).sum()


def sampled_losses(model: ConceptModel, batch: Batch) -> torch.Tensor | None:
    """Per-example losses against labels sampled from the model (for the true Fisher), or None if unknown."""
    own = getattr(model, "sampled_example_losses", None)
    if own is not None:
        return own(batch)
    if not isinstance(model, HFCausalLM):
        return None
    ids, w = batch.inputs["input_ids"], batch.inputs["loss_weights"]
    logits = model.module(input_ids=ids).logits[:, :-1]
    with torch.no_grad():
        labels = torch.distributions.Categorical(logits=logits.float()).sample()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    w = w[:, 1:].to(nll.dtype)
    return (nll * w).sum(1) / w.sum(1).clamp(min=1.0)


def tracked_modules(model: ConceptModel, measure: Measure, queries: Sequence[Example]) -> tuple[list[str], bool]:
    """Names of the Linear/Conv2d modules that run and whose weight gets a gradient from `measure` on a few queries,
    and whether any of them runs more than once in that forward pass (shared parameters)."""
    kinds = (torch.nn.Linear, torch.nn.Conv2d)
    modules = {n: m for n, m in model.module.named_modules() if isinstance(m, kinds) and m.weight.requires_grad}
    calls: Counter[str] = Counter()
    hooks = [m.register_forward_hook(lambda *_, name=n: calls.update([name])) for n, m in modules.items()]
    try:
        out = measure(model, model.encode(list(queries[:2])))
        grads = torch.autograd.grad(out, [m.weight for m in modules.values()], allow_unused=True)
    finally:
        for h in hooks:
            h.remove()
    # a module must also run: with tied embeddings, lm_head's weight gets the embeddings' gradient
    names = [n for n, g in zip(modules, grads, strict=True) if g is not None and calls[n] > 0]
    return names, any(calls[n] > 1 for n in names)


class _Examples(torch.utils.data.Dataset):
    def __init__(self, examples: Sequence[Example]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]


def _collate(model: ConceptModel) -> Callable[[list[Example]], tuple]:
    """Examples -> (mask, inputs): kronfluence (accelerate) finds the batch size in the first tensor."""

    def collate(examples: list[Example]) -> tuple:
        batch = model.encode(examples)
        return batch.mask, batch.inputs

    return collate


def _unpack(batch: tuple) -> Batch:
    mask, inputs = batch
    return Batch(inputs, mask)


def _task_class():
    from kronfluence.task import Task

    class ConceptTask(Task):
        """kronfluence's view of a ConceptModel: summed training loss, one measurement, tracked modules."""

        def __init__(self, model: ConceptModel, measure: Measure, modules: list[str], shared: bool):
            self.model, self.measure, self.modules = model, measure, modules
            # kronfluence 1.0.1's low-memory pairwise path keeps only the last call of a module that runs
            # several times per forward; the per-sample-gradient path (an identity post-process) sums them all
            self.enable_post_process_per_sample_gradient = shared

        def compute_train_loss(self, batch: tuple, model: torch.nn.Module, sample: bool = False) -> torch.Tensor:
            batch = _unpack(batch)
            losses = sampled_losses(self.model, batch) if sample else None
            return (losses if losses is not None else self.model.example_losses(batch)).sum()

        def compute_measurement(self, batch: tuple, model: torch.nn.Module) -> torch.Tensor:
            return self.measure(self.model, _unpack(batch))

        def get_influence_tracked_modules(self) -> list[str]:
            return self.modules

        def get_attention_mask(self, batch: tuple) -> torch.Tensor:
            return batch[0].long()  # kronfluence counts tokens with its sum (an integer)

    return ConceptTask


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Around kronfluence calls: it runs `gc.collect()` between stages (0.3 s each in a process holding
    torch and transformers, most of a small run's time), so freeze the objects that exist now (a
    collection skips them; new ones are still collected); and it warns that torch.cuda.amp.GradScaler
    is deprecated, even on CPU."""
    gc.freeze()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*GradScaler", category=FutureWarning)
            yield
    finally:
        gc.unfreeze()


@dataclass
class _Fitted:
    """A prepared copy of the model, its kronfluence analyzer, and the name of its fitted factors."""

    analyzer: object
    factors_name: str
    data_key: str  # hash of the examples the factors were fitted on
    dtype: torch.dtype
    mean_eigenvalue: float  # over every tracked module's EK-FAC eigenvalues


def mean_eigenvalue(analyzer, factors_name: str) -> float:
    """Mean EK-FAC eigenvalue of H over all tracked modules (kronfluence stores per-module sums and counts)."""
    factors = analyzer.load_all_factors(factors_name)
    sums, counts = factors["lambda_matrix"], factors["num_lambda_processed"]
    values = torch.cat([(sums[m].double() / counts[m].double()).reshape(-1) for m in sums])
    return float(values.mean())


@dataclass
class InfluenceScorer:
    """Shared machinery of `influence` and `test-influence`: fit factors once, score chunk by chunk.

    `fit(model, examples)` fits (or reloads) the factors on the whole dataset; `score_dataset` calls it
    before scoring the unscored examples, so a resumed run uses the same H. Without `fit`, `score`
    fits on the examples it is given.
    """

    request: ScoreRequest
    measure_name: str = "concept"
    fits: int = 0  # factor fits this scorer ran (not reloads): tests check the cache with it
    _fitted: dict[str, _Fitted] = field(default_factory=dict)
    _temporary: tempfile.TemporaryDirectory | None = None

    def __post_init__(self) -> None:
        require_kronfluence()

    def measure(self) -> Measure:
        return concept_measure(self.request) if self.measure_name == "concept" else loss_measure

    def _root(self) -> Path:
        if self.request.cache_dir is not None:
            return Path(self.request.cache_dir) / "ekfac"
        if self._temporary is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="mval-ekfac-")
        return Path(self._temporary.name)

    def fit(self, model: ConceptModel, examples: Sequence[Example]) -> None:
        """Fit the EK-FAC factors of `model` on `examples` (the whole dataset), or reload them from the cache."""
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments
        from kronfluence.utils.dataset import DataLoaderKwargs

        check_layer(model, self.request.concept.layer)
        model_key, data_key = fingerprint(model), examples_hash(examples)
        if model_key in self._fitted and self._fitted[model_key].data_key == data_key:
            return
        # which modules: those the *concept* reads, for both methods, so they share one set of factors
        modules, shared = tracked_modules(model, concept_measure(self.request), self.request.queries)
        if not modules:
            raise MvalError(f"--concept: the concept is read at layer {self.request.concept.layer}, which no "
                            "Linear/Conv2d layer feeds (layer 0 is the embeddings); influence needs a concept at "
                            "layer 1 or above (`mval probe train --layer 1`)")
        dtype = next(model.module.parameters()).dtype
        copied = copy.copy(model)  # the analyzer wraps modules in place: work on a copy of the module
        copied.module = copy.deepcopy(model.module)
        task = _task_class()(copied, self.measure(), modules, shared)
        copied.module = prepare_model(copied.module, task)
        analyzer = Analyzer(model_key[:20], copied.module, task, cpu=True, disable_tqdm=True, log_level=logging.WARNING,
                            output_dir=str(self._root()))
        analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=_collate(copied), num_workers=0))
        true_fisher = sampled_losses(model, model.encode(list(examples[:1]))) is not None
        factor_args = FactorArguments(use_empirical_fisher=not true_fisher, has_shared_parameters=shared,
                                      activation_covariance_dtype=dtype, gradient_covariance_dtype=dtype,
                                      per_sample_gradient_dtype=dtype, lambda_dtype=dtype,
                                      covariance_max_examples=None, lambda_max_examples=None)
        modules_key = hashlib.sha256("\n".join(modules).encode()).hexdigest()[:12]
        factors_name = f"{data_key[:20]}-{modules_key}-{'fisher' if true_fisher else 'empirical'}"
        folder = analyzer.factors_output_dir(factors_name)
        if not all((folder / f).is_file() for f in ("lambda_matrix.safetensors", "num_lambda_processed.safetensors")):
            torch.manual_seed(self.request.seed)  # the sampled labels of the true Fisher
            with _quiet():
                analyzer.fit_all_factors(factors_name, _Examples(examples), factor_args=factor_args,
                                         per_device_batch_size=self.request.batch_size, overwrite_output_dir=True)
            self.fits += 1
        self._fitted[model_key] = _Fitted(analyzer, factors_name, data_key, dtype,
                                          mean_eigenvalue(analyzer, factors_name))

    def damping(self, model: ConceptModel) -> float:
        """The lambda used for `model` (fitted): `--damping`, or DAMPING_SCALE x the mean EK-FAC eigenvalue."""
        if self.request.damping is not None:
            return self.request.damping
        return DAMPING_SCALE * self._fitted[fingerprint(model)].mean_eigenvalue

    def preconditioned_scores(self, model: ConceptModel, examples: Sequence[Example]) -> np.ndarray:
        """sum_q grad m(q)^T (H + lambda I)^-1 grad L(z) for each z (m: the measurement), via kronfluence."""
        from kronfluence.arguments import ScoreArguments

        model_key = fingerprint(model)
        if model_key not in self._fitted:
            self.fit(model, examples)
        fitted = self._fitted[model_key]
        analyzer = fitted.analyzer
        score_args = ScoreArguments(damping_factor=self.damping(model), aggregate_query_gradients=True,
                                    per_sample_gradient_dtype=fitted.dtype, precondition_dtype=fitted.dtype,
                                    score_dtype=fitted.dtype)
        name = f"tmp-{fitted.factors_name}-{self.measure_name}"
        with _quiet():
            analyzer.compute_pairwise_scores(
                name, fitted.factors_name, _Examples(self.request.queries), _Examples(examples),
                per_device_query_batch_size=min(self.request.batch_size, len(self.request.queries)),
                per_device_train_batch_size=self.request.batch_size, score_args=score_args, overwrite_output_dir=True)
        scores = analyzer.load_pairwise_scores(name)["all_modules"]
        shutil.rmtree(analyzer.scores_output_dir(name), ignore_errors=True)
        return scores.sum(0).double().numpy()


@register("influence", needs_queries=True)
@dataclass
class ConceptInfluenceScorer(InfluenceScorer):
    """I(z) = -grad f^T (H + lambda I)^-1 grad L(z), f the concept score (mean over the queries)."""

    def score(self, model: ConceptModel, examples: Sequence[Example]) -> np.ndarray:
        return -self.preconditioned_scores(model, examples) / len(self.request.queries)


@register("test-influence", needs_queries=True)
@dataclass
class ClassicInfluenceScorer(InfluenceScorer):
    """mean_q grad L(q)^T (H + lambda I)^-1 grad L(z): z makes the queries' answers more likely."""

    measure_name: str = "loss"

    def score(self, model: ConceptModel, examples: Sequence[Example]) -> np.ndarray:
        return self.preconditioned_scores(model, examples) / len(self.request.queries)
