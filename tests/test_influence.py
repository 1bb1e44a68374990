"""Concept Influence and test influence (EK-FAC via kronfluence) against independent computations.

- On a one-layer linear model whose Fisher is exactly Kronecker-factored, EK-FAC is exact: the scores
  equal -grad f^T (H + lambda I)^-1 grad L(z) with H built densely from the per-example gradients.
- On a tiny Llama, and on a recurrent model whose tracked layer runs at every step, with a damping so
  large that (H + lambda I)^-1 = I / lambda: lambda * influence is the exact (unprojected) gradient
  score over the tracked modules, computed with plain autograd.
- Through the store and the CLI: factors come from the whole dataset (a resumed run scores like a clean
  one), are cached next to the store and reused; missing queries and kronfluence are refused in one line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from attribution.commands import examples, score
from attribution.concept import concept_score
from attribution.curate import curate as curate_dataset
from attribution.examples import Example, add_examples
from attribution.influence import concept_measure, tracked_modules
from attribution.models import Batch
from attribution.probes import ProbeDirection
from attribution.scorers import ScoreRequest, make_scorer
from attribution.scoring import score_dataset
from attribution.testbed import tiny_model
from cli import MvalGroup
from conftest import qa
from mval.errors import MvalError
from mval.store import open_store

pytest.importorskip("kronfluence")


class LinearRegression:
    """A ConceptModel that is one nn.Linear(4, 1): example text "x1 x2 x3 x4 y", loss (w . x - y)^2 / 2,
    layer 1 = the output. Not a Hugging Face model, so kronfluence uses the empirical Fisher."""

    n_layers, d_model = 1, 1

    def __init__(self, seed: int = 0):
        torch.manual_seed(seed)
        self.module = torch.nn.Sequential(torch.nn.Linear(4, 1, bias=False)).double()

    def encode(self, examples: Sequence[Example]) -> Batch:
        values = torch.tensor([[float(v) for v in e.text.split()] for e in examples], dtype=torch.float64)
        return Batch({"x": values[:, None, :4], "y": values[:, 4]}, torch.ones(len(examples), 1, dtype=torch.bool))

    def hidden_states(self, batch: Batch, layer: int) -> torch.Tensor:
        return self.module(batch.inputs["x"]) if layer else batch.inputs["x"][..., :1]

    def example_losses(self, batch: Batch) -> torch.Tensor:
        return 0.5 * (self.module(batch.inputs["x"])[:, 0, 0] - batch.inputs["y"]) ** 2


def regression_data(model: LinearRegression, n: int, seed: int) -> tuple[list[Example], np.ndarray]:
    """Examples whose residual w . x - y is +-1: every per-example Fisher is x x^T, so H = mean x x^T is
    the K-FAC product (A = mean x x^T, G = 1) and EK-FAC is exact."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)) * np.array([2.0, 1.0, 0.5, 0.3])
    w = model.module[0].weight.detach().numpy()[0]
    y = x @ w - rng.choice([-1.0, 1.0], size=n)
    return [Example(f"r{i}", text=" ".join(f"{v:.17g}" for v in [*row, t])) for i, (row, t) in enumerate(zip(x, y))], x


def test_ekfac_is_exact_on_a_kronecker_factored_model():
    model = LinearRegression()
    train, x = regression_data(model, 40, 0)
    queries, xq = regression_data(model, 5, 1)
    damping = 0.3
    request = ScoreRequest(ProbeDirection(np.ones(1, np.float32), 1, "mean"), tuple(queries), batch_size=8,
                           damping=damping)
    got = make_scorer("influence", request).score(model, train)

    residual = x @ model.module[0].weight.detach().numpy()[0] - np.array([float(e.text.split()[4]) for e in train])
    grad_l = residual[:, None] * x  # grad of (w . x - y)^2 / 2
    grad_f = xq.mean(0)  # f = mean over queries of w . x_q
    hessian = x.T @ x / len(x)  # Gauss-Newton of the mean loss (= the empirical Fisher here)
    expected = -grad_l @ np.linalg.solve(hessian + damping * np.eye(4), grad_f)
    assert np.allclose(got, expected, rtol=1e-8, atol=1e-10)



class TwoLinear:
    """Two nn.Linear heads summed, a(x[:4]) + b(x[4:]): example text "x1 .. x6 y", loss (pred - y)^2 / 2,
    layer 1 = the prediction. With residuals +-1 each module's Fisher block is exactly mean x_m x_m^T
    (EK-FAC is exact per block; like kronfluence, the cross-module blocks are left out)."""

    n_layers, d_model = 1, 1

    def __init__(self):
        torch.manual_seed(2)
        self.module = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 1, bias=False),
                                           "b": torch.nn.Linear(2, 1, bias=False)}).double()

    def encode(self, examples: Sequence[Example]) -> Batch:
        values = torch.tensor([[float(v) for v in e.text.split()] for e in examples], dtype=torch.float64)
        return Batch({"x": values[:, None, :6], "y": values[:, 6]}, torch.ones(len(examples), 1, dtype=torch.bool))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.module["a"](x[..., :4]) + self.module["b"](x[..., 4:])

    def hidden_states(self, batch: Batch, layer: int) -> torch.Tensor:
        return self.predict(batch.inputs["x"]) if layer else batch.inputs["x"][..., :1]

    def example_losses(self, batch: Batch) -> torch.Tensor:
        return 0.5 * (self.predict(batch.inputs["x"])[:, 0, 0] - batch.inputs["y"]) ** 2


def test_default_damping_is_one_lambda_from_the_mean_eigenvalue_of_all_modules():
    model = TwoLinear()
    w = torch.cat([model.module["a"].weight, model.module["b"].weight], 1).detach().numpy()[0]

    def data(n: int, seed: int) -> tuple[list[Example], np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, 6)) * np.array([2.0, 1.0, 0.5, 0.3, 6.0, 4.0])  # module b: 20x the curvature
        residual = rng.choice([-1.0, 1.0], size=n)
        texts = [" ".join(f"{v:.17g}" for v in [*row, t]) for row, t in zip(x, x @ w - residual)]
        return [Example(f"r{seed}-{i}", text=t) for i, t in enumerate(texts)], x, residual

    train, x, residual = data(40, 0)
    queries, xq, _ = data(5, 1)
    request = ScoreRequest(ProbeDirection(np.ones(1, np.float32), 1, "mean"), tuple(queries), batch_size=8)
    scorer = make_scorer("influence", request)
    got = scorer.score(model, train)

    blocks = [slice(0, 4), slice(4, 6)]
    hessians = [x[:, b].T @ x[:, b] / len(x) for b in blocks]  # per-module Gauss-Newton of the mean loss
    damping = 0.1 * np.concatenate([np.linalg.eigvalsh(h) for h in hessians]).mean()
    grad_l, grad_f = residual[:, None] * x, xq.mean(0)
    expected = -sum(grad_l[:, b] @ np.linalg.solve(h + damping * np.eye(h.shape[0]), grad_f[b])
                    for b, h in zip(blocks, hessians, strict=True))
    assert scorer.damping(model) == pytest.approx(damping, rel=1e-9)
    assert np.allclose(got, expected, rtol=1e-8, atol=1e-10)


CONCEPT = ProbeDirection(np.random.default_rng(0).normal(size=16).astype(np.float32), 1, "mean")


def grads(model, scalar: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(scalar, weights)])


def test_with_a_huge_damping_influence_is_the_exact_gradient_score_over_lambda(model):
    train, queries, damping = qa(10, 3), qa(4, 4), 1e9
    request = ScoreRequest(CONCEPT, tuple(queries), batch_size=3, damping=damping)  # 2 query batches
    names, shared = tracked_modules(model, concept_measure(request), queries)
    assert names and all(n.startswith("model.layers.0.") for n in names) and not shared  # blocks before layer 1
    modules = dict(model.module.named_modules())
    weights = [modules[n].weight for n in names]

    def concept_f() -> torch.Tensor:
        model.module.zero_grad(set_to_none=True)
        concept_score(model, CONCEPT, queries, backward=True)
        return torch.cat([w.grad.reshape(-1) for w in weights])

    grad_f = concept_f()
    model.module.zero_grad(set_to_none=True)
    grad_l = torch.stack([grads(model, model.example_losses(model.encode([z]))[0], weights) for z in train])
    grad_q = torch.stack([grads(model, model.example_losses(model.encode([q]))[0], weights) for q in queries])

    influence = make_scorer("influence", request).score(model, train)
    classic = make_scorer("test-influence", request).score(model, train)
    assert np.allclose(influence * damping, -(grad_l @ grad_f).numpy(), rtol=1e-6, atol=1e-12)
    assert np.allclose(classic * damping, (grad_l @ grad_q.mean(0)).numpy(), rtol=1e-6, atol=1e-12)
    assert all(p.requires_grad for p in model.module.parameters())  # kronfluence worked on a copy


class TinyRNN:
    """A ConceptModel whose one tracked Linear runs at every step (shared parameters, as in the Sokoban
    agent): h_t = tanh(cell(h_{t-1}) + x_t), layer 1 = the h_t, loss (readout(h_T) - y)^2 / 2.
    Example text: T*3 inputs and a target."""

    n_layers, d_model = 1, 3

    def __init__(self):
        torch.manual_seed(1)
        self.module = torch.nn.ModuleDict({"cell": torch.nn.Linear(3, 3), "readout": torch.nn.Linear(3, 1)}).double()

    def encode(self, examples: Sequence[Example]) -> Batch:
        values = torch.tensor([[float(v) for v in e.text.split()] for e in examples], dtype=torch.float64)
        return Batch({"x": values[:, :-1].reshape(len(examples), -1, 3), "y": values[:, -1]},
                     torch.ones(len(examples), (values.shape[1] - 1) // 3, dtype=torch.bool))

    def hidden_states(self, batch: Batch, layer: int) -> torch.Tensor:
        x = batch.inputs["x"]
        if layer == 0:
            return x
        h, out = torch.zeros_like(x[:, 0]), []
        for t in range(x.shape[1]):
            h = torch.tanh(self.module["cell"](h) + x[:, t])
            out.append(h)
        return torch.stack(out, 1)

    def example_losses(self, batch: Batch) -> torch.Tensor:
        last = self.hidden_states(batch, 1)[:, -1]
        return 0.5 * (self.module["readout"](last)[:, 0] - batch.inputs["y"]) ** 2


def test_shared_parameters_of_a_recurrent_model_sum_over_steps():
    model, damping = TinyRNN(), 1e9
    rng = np.random.default_rng(2)
    examples = [Example(f"s{i}", text=" ".join(f"{v:.6f}" for v in rng.normal(size=13))) for i in range(9)]
    request = ScoreRequest(ProbeDirection(np.array([1.0, -0.5, 0.2], np.float32), 1, "mean"), tuple(examples[:3]),
                           batch_size=4, damping=damping)
    assert tracked_modules(model, concept_measure(request), request.queries) == (["cell"], True)
    cell = model.module["cell"]
    params = [cell.weight, cell.bias]  # kronfluence's Linear gradient includes the bias
    grad_f = grads(model, concept_measure(request)(model, model.encode(examples[:3])) / 3, params)
    grad_l = torch.stack([grads(model, model.example_losses(model.encode([z]))[0], params) for z in examples])
    grad_q = grad_l[:3].mean(0)
    influence = make_scorer("influence", request).score(model, examples)
    classic = make_scorer("test-influence", request).score(model, examples)
    assert np.allclose(influence * damping, -(grad_l @ grad_f).numpy(), rtol=1e-6, atol=1e-12)
    assert np.allclose(classic * damping, (grad_l @ grad_q).numpy(), rtol=1e-6, atol=1e-12)


class CrashAfter:
    def __init__(self, scorer, n: int):
        self.scorer, self.left = scorer, n

    def fit(self, model, all_examples):
        self.scorer.fit(model, all_examples)

    def score(self, model, batch):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return self.scorer.score(model, batch)


def stored(con, concept: str) -> list[tuple]:
    return con.execute("SELECT example_id, score FROM scores WHERE method = 'influence' AND concept = ? "
                       "ORDER BY example_id", [concept]).fetchall()


def test_resumed_run_uses_the_whole_datasets_factors_and_reuses_them(model, store, tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(e.to_json()) + "\n" for e in qa(12, 5)))
    request = ScoreRequest(CONCEPT, tuple(qa(4, 6)), batch_size=5, cache_dir=tmp_path / "cache")
    with open_store(store) as con:
        add_examples(con, "sft", tmp_path / "train.jsonl")
        first = make_scorer("influence", request)
        with pytest.raises(KeyboardInterrupt):
            score_dataset(con, "sft", "influence", "c", model, CrashAfter(first, 1), request)
        assert len(stored(con, "c")) == 5 and first.fits == 1
        resumed = make_scorer("influence", request)  # a new process: factors from the cache, not refitted
        summary = score_dataset(con, "sft", "influence", "c", model, resumed, request)
        clean = make_scorer("influence", request)
        score_dataset(con, "sft", "influence", "clean", model, clean, request)
        assert (summary.scored, summary.already_scored, resumed.fits, clean.fits) == (7, 5, 0, 0)
        assert np.allclose([s for _, s in stored(con, "c")], [s for _, s in stored(con, "clean")], rtol=1e-9)


def test_adding_examples_refuses_to_resume_influence_on_the_old_hessian(model, store, tmp_path):
    """Influence depends on every example (the Hessian): scores made before `examples add` cannot be
    mixed with scores made after it; gradient scores can (each depends on its own example only)."""
    train = qa(10, 5)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(e.to_json()) + "\n" for e in train[:6]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(e.to_json()) + "\n" for e in train))
    request = ScoreRequest(CONCEPT, tuple(qa(4, 6)), batch_size=5)
    with open_store(store) as con:
        add_examples(con, "sft", tmp_path / "a.jsonl")
        for method in ("influence", "gradient"):
            score_dataset(con, "sft", method, "c", model, make_scorer(method, request), request)
        add_examples(con, "sft", tmp_path / "b.jsonl")
        with pytest.raises(MvalError, match="made with a different training set; .* --replace"):
            score_dataset(con, "sft", "influence", "c", model, make_scorer("influence", request), request)
        with pytest.raises(MvalError, match=r"rerun `mval score` with --replace \(its scores depend on the whole"):
            curate_dataset(con, "sft", "influence", tmp_path / "kept.jsonl", drop_top=1)  # it said "(it resumes)"
        assert score_dataset(con, "sft", "gradient", "c", model, make_scorer("gradient", request), request).scored == 4
        replaced = score_dataset(con, "sft", "influence", "c", model, make_scorer("influence", request), request,
                                 replace=True)
        assert (replaced.scored, len(stored(con, "c"))) == (10, 10)


@pytest.fixture
def cli():
    group = MvalGroup(commands={"examples": examples, "score": score})
    return lambda *args: CliRunner().invoke(group, [str(a) for a in args])


def test_score_command_writes_caches_and_resumes(cli, store, tmp_path):
    model_dir = tiny_model(tmp_path / "model", d_model=16, n_layers=2, seed=4)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(e.to_json()) + "\n" for e in qa(10, 7)))
    queries = [{"prompt": e.prompt, "response": e.response} for e in qa(3, 8)]
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    CONCEPT.save(tmp_path / "hostile.safetensors")
    assert cli("examples", "add", store, "sft", tmp_path / "train.jsonl").exit_code == 0
    args = ["score", store, "--model", model_dir, "--dataset", "sft", "--concept", tmp_path / "hostile.safetensors",
            "--method", "influence", "--queries", tmp_path / "queries.jsonl", "--batch-size", 4, "--format", "json"]

    result = cli(*args, "--top", 3)
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)
    assert len(top) == 3 and top[0]["score"] >= top[1]["score"] >= top[2]["score"]
    assert "10 examples scored now, 0 already scored" in result.stderr
    factors = sorted((tmp_path / "store.duckdb.cache" / "ekfac").glob("*/factors_*/*.safetensors"))
    assert factors, "EK-FAC factors are cached next to the store"
    written = {f: f.stat().st_mtime_ns for f in factors}

    assert "0 examples scored now, 10 already scored" in cli(*args).stderr  # a rerun has nothing left to do
    result = cli(*args, "--concept-name", "again")
    assert result.exit_code == 0 and "10 examples scored now" in result.stderr
    assert {f: f.stat().st_mtime_ns for f in factors} == written  # same factors, not refitted
    with open_store(store, read_only=True) as con:
        rows = con.execute("SELECT concept, count(*), count(DISTINCT score) FROM scores WHERE method = 'influence' "
                           "GROUP BY concept ORDER BY concept").fetchall()
    assert rows == [("again", 10, 10), ("hostile", 10, 10)]


@pytest.mark.parametrize("method", ["influence", "test-influence"])
def test_refuses_without_queries(method):
    with pytest.raises(MvalError, match=rf"--method {method} needs a query set: give --queries"):
        make_scorer(method, ScoreRequest(CONCEPT))


def test_refuses_without_kronfluence(monkeypatch):
    monkeypatch.setitem(sys.modules, "kronfluence", None)  # import kronfluence raises ImportError
    with pytest.raises(MvalError, match=r"pip install --no-deps kronfluence==1\.0\.1"):
        make_scorer("influence", ScoreRequest(CONCEPT, tuple(qa(2, 0))))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"damping": 0.0}, r"--damping 0.0: must be positive"),
    ({"damping": -1.0}, r"--damping -1.0: must be positive"),
])
def test_bad_damping_is_refused(kwargs, match):
    with pytest.raises(MvalError, match=match):
        ScoreRequest(CONCEPT, tuple(qa(2, 0)), **kwargs)


def test_concept_on_the_embeddings_is_refused(model):
    request = ScoreRequest(ProbeDirection(CONCEPT.vector, 0, "mean"), tuple(qa(2, 0)))
    with pytest.raises(MvalError, match=r"--concept: the concept is read at layer 0, which no Linear/Conv2d layer feeds"):
        make_scorer("influence", request).score(model, qa(3, 1))


def test_tied_embeddings_do_not_track_the_lm_head():
    """With tie_word_embeddings, lm_head's weight is the embedding matrix: it gets a gradient from a
    concept below the head although lm_head never runs, and kronfluence failed on it (a traceback)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from attribution.models import HFCausalLM
    from attribution.testbed import build_tokenizer, vocabulary

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocabulary()), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=None, eos_token_id=None)
    tied = HFCausalLM(LlamaForCausalLM(config).double(), build_tokenizer())
    request = ScoreRequest(CONCEPT, tuple(qa(4, 4)), batch_size=4)
    names, _ = tracked_modules(tied, concept_measure(request), request.queries)
    assert "lm_head" not in names and names
    scores = make_scorer("influence", request).score(tied, qa(6, 3))
    assert scores.shape == (6,) and np.isfinite(scores).all()
