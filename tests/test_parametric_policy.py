"""The softmax policy learns the MVAL optimum on a synthetic instance and round-trips weights-only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mval.errors import MvalError
from mval.parametric_policy import fit_parametric_policy, load_parametric_policy, score_parametric_policy

torch.set_num_threads(1)


def synthetic(rng, w, n):
    """sqrt(c) = exp(x W): at alpha = 0 the optimum softmax(x W) is exactly a linear softmax."""
    x = rng.normal(size=(n, w.shape[0]))
    return x, np.exp(2 * x @ w), np.full((n, w.shape[1]), 1 / w.shape[1])


@pytest.mark.parametrize(("alpha", "hidden", "bound"), [(0.0, 0, 1.001), (0.3, 0, 1.02), (0.3, 8, 1.02)])
def test_close_to_optimum_on_held_out(alpha, hidden, bound):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4))
    train, test = synthetic(rng, w, 300), synthetic(rng, w, 150)
    model = fit_parametric_policy(*train, alpha, hidden=hidden, epochs=300)
    score = score_parametric_policy(model, *test, alpha)
    assert 1 - 1e-9 <= score.ratio < bound


def test_save_load_weights_only(tmp_path):
    rng = np.random.default_rng(1)
    x, c, pi0 = synthetic(rng, rng.normal(size=(2, 3)), 50)
    model = fit_parametric_policy(x, c, pi0, 0.2, hidden=4, floor=0.05, epochs=20)
    model.save(tmp_path / "pi1.safetensors")
    loaded = load_parametric_policy(tmp_path / "pi1.safetensors")
    np.testing.assert_array_equal(loaded.probs(x), model.probs(x))
    assert loaded.probs(x).min() >= 0.05


def test_refuses_a_pickle(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "model.pt")
    with pytest.raises(MvalError, match="not a safetensors"):
        load_parametric_policy(tmp_path / "model.pt")


def test_refuses_misshaped_features():
    with pytest.raises(MvalError, match="one row per context"):
        fit_parametric_policy(np.ones((3, 2)), np.ones((4, 2)), np.full((4, 2), 0.5), 0.1)


def test_a_diverging_fit_returns_its_best_iterate():
    """lr 0.5 for 3,000 epochs on a c the features cannot represent diverged: the last Adam iterate scored
    6.6e24 times the optimum. The best one is returned, which the first iterate alone bounds."""
    rng = np.random.default_rng(0)
    n, k = 200, 4
    x = rng.normal(size=(n, 3)) * 50
    c = np.exp(rng.normal(size=(n, k)))
    c[:, 0] = 0.0
    pi0 = np.full((n, k), 1 / k)
    first = score_parametric_policy(fit_parametric_policy(x, c, pi0, 0.0, epochs=1, lr=0.5), x, c, pi0, 0.0)
    long = score_parametric_policy(fit_parametric_policy(x, c, pi0, 0.0, epochs=3000, lr=0.5), x, c, pi0, 0.0)
    assert long.ratio <= first.ratio + 1e-9 and np.isfinite(long.ratio)
