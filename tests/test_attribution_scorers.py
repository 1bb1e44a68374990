"""The concept score, the gradient similarity and the baselines against independent computations (float64)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from attribution.concept import concept_score
from attribution.examples import Example
from attribution.gradients import CountSketch, _looped, _vmapped, flat_grad, trainable
from attribution.probes import ProbeDirection
from attribution.scorers import ScoreRequest, make_scorer
from conftest import qa
from mval.errors import MvalError




def concept(layer: int = 1, position: str = "mean", seed: int = 0) -> ProbeDirection:
    return ProbeDirection(np.random.default_rng(seed).normal(size=16).astype(np.float32), layer, position)


@torch.no_grad()
def manual_f(model, c: ProbeDirection, queries: list[Example]) -> float:
    """f = mean over queries of pool_t(v . h_layer), each query run alone."""
    v = torch.as_tensor(c.vector, dtype=torch.float64)
    values = []
    for q in queries:
        ids = model.tokenizer(q.prompt + " " + q.response)["input_ids"]
        h = model.module(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[c.layer][0]
        per_token = h @ v
        values.append(per_token.mean() if c.position == "mean" else per_token[-1])
    return float(torch.stack(values).mean())


def params_vector(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in trainable(model).values()])


def set_params(model, flat: torch.Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for p in trainable(model).values():
            p.copy_(flat[offset: offset + p.numel()].reshape(p.shape))
            offset += p.numel()


@pytest.mark.parametrize("position", ["mean", "last"])
def test_concept_score_is_mean_over_queries_of_pooled_projection(model, position):
    queries, c = qa(7, 0), concept(2, position)
    assert concept_score(model, c, queries, batch_size=3) == pytest.approx(manual_f(model, c, queries), abs=1e-10)


def test_concept_gradient_matches_finite_differences(model):
    queries, c = qa(5, 1), concept(1)
    model.module.zero_grad(set_to_none=True)
    concept_score(model, c, queries, batch_size=2, backward=True)
    grad_f = flat_grad(model)
    model.module.zero_grad(set_to_none=True)
    theta = params_vector(model)
    d = torch.as_tensor(np.random.default_rng(0).normal(size=theta.numel()))
    eps = 1e-5
    set_params(model, theta + eps * d)
    up = manual_f(model, c, queries)
    set_params(model, theta - eps * d)
    down = manual_f(model, c, queries)
    set_params(model, theta)
    # rel 1e-4: Llama's rotary tables are float32 even in a float64 model
    assert (up - down) / (2 * eps) == pytest.approx(float(grad_f @ d), rel=1e-4)


def exact_example_gradients(model, examples) -> torch.Tensor:
    """grad L(z) by plain autograd, one example at a time (independent of the vmap path)."""
    params = list(trainable(model).values())
    rows = []
    for e in examples:
        loss = model.example_losses(model.encode([e]))[0]
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


def test_vmap_and_loop_give_the_same_per_example_gradients(model):
    batch = model.encode(qa(6, 2))
    exact = exact_example_gradients(model, qa(6, 2))
    assert torch.allclose(_vmapped(model, batch), exact, atol=1e-10)
    assert torch.allclose(_looped(model, batch), exact, atol=1e-10)


def test_gradient_score_is_the_first_order_change_of_f_and_projection_keeps_it(model):
    examples, queries, c = qa(12, 3), qa(6, 4), concept(1)
    model.module.zero_grad(set_to_none=True)
    concept_score(model, c, queries, backward=True)
    grad_f = flat_grad(model)
    model.module.zero_grad(set_to_none=True)
    g = exact_example_gradients(model, examples)
    exact = -(g @ grad_f).numpy()

    # against f itself: the change of f from a small SGD step on z, over the step size (central difference)
    theta, eta = params_vector(model), 1e-5
    for i in (0, 5):
        set_params(model, theta - eta * g[i])
        descent = manual_f(model, c, queries)
        set_params(model, theta + eta * g[i])
        ascent = manual_f(model, c, queries)
        set_params(model, theta)
        assert (descent - ascent) / (2 * eta) == pytest.approx(exact[i], rel=1e-3)

    k = 4096
    scorer = make_scorer("gradient", ScoreRequest(c, tuple(queries), seed=0, batch_size=5, proj_dim=k))
    projected = scorer.score(model, examples)
    bound = 4 * np.sqrt(2 / k) * g.norm(dim=1).numpy() * float(grad_f.norm())  # 4 standard deviations (JL)
    assert np.all(np.abs(projected - exact) <= bound)
    assert np.corrcoef(projected, exact)[0, 1] > 0.9


def test_count_sketch_is_unbiased_with_the_exact_variance():
    rng = np.random.default_rng(0)
    a, b = torch.as_tensor(rng.normal(size=300)), torch.as_tensor(rng.normal(size=300) + 0.5)
    k, reps = 16, 3000
    dots = np.array([float(CountSketch(300, k, seed)(a) @ CountSketch(300, k, seed)(b)) for seed in range(reps)])
    pair = torch.outer(a, b) + torch.outer(b, a)
    variance = float(torch.triu(pair, diagonal=1).pow(2).sum()) / k  # sum over i<j of (a_i b_j + a_j b_i)^2 / k
    assert abs(dots.mean() - float(a @ b)) < 3 * np.sqrt(variance / reps)
    assert dots.var() == pytest.approx(variance, rel=0.1)


def test_gradient_cache_is_reused_across_concepts(model, tmp_path):
    examples, queries = qa(10, 5), qa(4, 6)
    first = make_scorer("gradient", ScoreRequest(concept(1, seed=0), tuple(queries), proj_dim=256, cache_dir=tmp_path))
    scores = first.score(model, examples)
    chunks = sorted(tmp_path.rglob("chunk-*.safetensors"))
    again = make_scorer("gradient", ScoreRequest(concept(1, seed=0), tuple(queries), proj_dim=256, cache_dir=tmp_path))
    other = make_scorer("gradient", ScoreRequest(concept(2, seed=1), tuple(queries), proj_dim=256, cache_dir=tmp_path))
    assert np.allclose(again.score(model, examples), scores, rtol=1e-5, atol=1e-8)  # cache holds float32
    other_scores = other.score(model, examples[3:])
    assert sorted(tmp_path.rglob("chunk-*.safetensors")) == chunks  # nothing recomputed
    fresh = make_scorer("gradient", ScoreRequest(concept(2, seed=1), tuple(queries), proj_dim=256))
    assert np.allclose(other_scores, fresh.score(model, examples[3:]), rtol=1e-5, atol=1e-8)


def test_embedding_and_random_baselines(model):
    examples, queries, c = qa(6, 7), qa(3, 8), concept(1)
    emb = make_scorer("embedding", ScoreRequest(c, tuple(queries))).score(model, examples)

    def pooled(e):
        ids = model.tokenizer(e.prompt + " " + e.response)["input_ids"]
        return model.module(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0].mean(0)

    centroid = torch.stack([pooled(q) for q in queries]).mean(0)
    manual = [float(torch.nn.functional.cosine_similarity(pooled(e), centroid, dim=0).detach()) for e in examples]
    assert np.allclose(emb, manual, atol=1e-8)
    random = make_scorer("random", ScoreRequest(c, seed=3))
    assert np.array_equal(random.score(model, examples)[2:], random.score(model, examples[2:]))
    assert np.all((0 <= random.score(model, examples)) & (random.score(model, examples) < 1))


@pytest.mark.parametrize(("method", "request_args", "match"), [
    ("influenz", {}, r"--method influenz: unknown; use one of embedding, gradient, influence, probe, random, test-influence, tracin"),
    ("gradient", {}, r"--method gradient needs a query set"),
    ("embedding", {}, r"--method embedding needs a query set"),
    ("probe", {"batch_size": 0}, r"--batch-size 0: must be at least 1"),
    ("gradient", {"proj_dim": 0}, r"--proj-dim 0: must be at least 1"),
])
def test_scorer_refusals(method, request_args, match):
    with pytest.raises(MvalError, match=match):
        make_scorer(method, ScoreRequest(concept(), **request_args))


ALL_METHODS = "['embedding', 'gradient', 'influence', 'probe', 'random', 'test-influence', 'tracin']"


@pytest.mark.parametrize(("first", "then"), [
    # scorers alone: the plugins' methods are there from the first lookup on, not imported before it
    ("import attribution.scorers as s; assert 'attribution.influence' not in sys.modules",
     "print(sorted(s.registered()), s.needs_queries('test-influence'), s.needs_queries('random'))"),
    # the plugin first (it imports scorers for `register`): no cycle, the same registry
    ("import attribution.influence; import attribution.scorers as s", "print(sorted(s.registered()), "
                                                                      "s.needs_queries('test-influence'), "
                                                                      "s.needs_queries('random'))"),
], ids=["scorers-first", "influence-first"])
def test_methods_of_other_modules_register_on_the_first_lookup(first, then):
    """scorers.py ended with `import attribution.influence` to register influence and test-influence; the
    registry now imports its plugin modules when first asked, so the import order does not matter."""
    code = f"import sys; {first}; {then}"
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{ALL_METHODS} True False\n"


def test_tracin_sums_the_gradient_score_over_language_model_checkpoints(tmp_path):
    """Hugging Face checkpoints (a folder of `checkpoint-N/` subfolders, as the Trainer writes them): tracin is
    the sum of the gradient scores at each; another architecture is refused."""
    from attribution.checkpoints import load_checkpoints
    from attribution.models import load_model
    from attribution.testbed import tiny_model

    model = load_model(tiny_model(tmp_path / "final", seed=2))
    for step, seed in ((100, 0), (200, 1)):
        tiny_model(tmp_path / "run" / f"checkpoint-{step}", seed=seed)
    tiny_model(tmp_path / "run", seed=3)  # the final model saved beside its checkpoints: the subfolders win
    checkpoints = load_checkpoints(model, [tmp_path / "run"])
    examples, queries, c = qa(8, 11), tuple(qa(3, 12)), concept(1)
    request = ScoreRequest(c, queries, proj_dim=512, checkpoints=checkpoints)
    tracin = make_scorer("tracin", request).score(model, examples)
    gradient = make_scorer("gradient", ScoreRequest(c, queries, proj_dim=512))
    each = [gradient.score(m, examples) for m in checkpoints]
    assert len(checkpoints) == 2 and np.allclose(tracin, each[0] + each[1], rtol=1e-6, atol=1e-9)
    assert not np.allclose(each[0], each[1])

    tiny_model(tmp_path / "deeper", n_layers=3)
    with pytest.raises(MvalError, match=r"--checkpoint .*deeper: not a checkpoint of --model \(parameter "):
        load_checkpoints(model, [tmp_path / "deeper"])
    deeper = ScoreRequest(c, queries, proj_dim=512, checkpoints=(load_model(tmp_path / "deeper"),))
    with pytest.raises(MvalError, match=r"--checkpoint number 1: not a checkpoint of --model"):  # not loaded by path
        make_scorer("tracin", deeper).score(model, examples)
    (tmp_path / "weightless").mkdir()
    (tmp_path / "weightless" / "config.json").write_text((tmp_path / "final" / "config.json").read_text())
    with pytest.raises(MvalError, match=r"^--checkpoint .*weightless: no weights \(model.safetensors"):
        load_checkpoints(model, [tmp_path / "weightless"])
