"""Probe directions: projections against a manual forward pass, training, files and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from attribution.examples import Example, read_jsonl
from attribution.models import load_hf_model
from attribution.probes import (ProbeDirection, direction_from_file, held_out_split, load_probe, probe_logits,
                                train_probe)
from attribution.testbed import COLORS, FRIENDLY, HOSTILE, NOUNS, tiny_model
from mval.errors import MvalError


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_hf_model(tiny_model(tmp_path_factory.mktemp("m") / "tiny", d_model=16, n_layers=2, seed=1))


def sentences(n: int, seed: int = 0) -> list[Example]:
    rng = np.random.default_rng(seed)
    return [Example(f"s{i}", text=" ".join(rng.choice(NOUNS + COLORS + FRIENDLY + HOSTILE, size=rng.integers(3, 9))))
            for i in range(n)]


@pytest.mark.parametrize("position", ["mean", "last"])
@pytest.mark.parametrize("layer", [0, 2])
def test_probe_projection_equals_manual_forward_pass(model, position, layer):
    examples = sentences(5)
    v = np.random.default_rng(3).normal(size=16).astype(np.float32)
    direction = ProbeDirection(v, layer, position, bias=0.5)
    expected = []
    for e in examples:
        ids = torch.tensor([model.tokenizer(e.text)["input_ids"]])
        h = model.module(input_ids=ids, output_hidden_states=True).hidden_states[layer][0].detach()
        pooled = h.mean(0) if position == "mean" else h[-1]
        expected.append(float(pooled @ torch.from_numpy(v)) + 0.5)
    assert np.allclose(probe_logits(model, direction, examples), expected, atol=1e-5)


def test_trained_probe_separates_a_known_linear_concept(model):
    from attribution.concept import activations

    examples = sentences(400, seed=1)
    x = activations(model, examples, 1, "mean").double().numpy()
    u = np.random.default_rng(0).normal(size=16)
    labels = (x @ u > np.median(x @ u)).astype(int).tolist()
    concept, report = train_probe(model, examples, labels, layer=1, position="mean", c=100.0)
    assert report.held_out_accuracy >= 0.9 and report.n_held_out == 80
    fresh = sentences(200, seed=2)
    xf = activations(model, fresh, 1, "mean").double().numpy()
    truth = xf @ u > np.median(x @ u)
    assert ((probe_logits(model, concept, fresh) > 0) == truth).mean() >= 0.9


def labelled_with_copies(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """n distinct sentences with random labels (half 1), each 1 to 4 times, rows shuffled."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(NOUNS + COLORS + FRIENDLY + HOSTILE, size=6)) for _ in range(n)]
    rows = rng.permutation(np.repeat(np.arange(n), rng.integers(1, 5, size=n)))
    return [texts[i] for i in rows], [int(i % 2) for i in rows]


def test_held_out_split_keeps_every_copy_of_a_text_on_one_side(tmp_path):
    """A labelled file full of duplicates (and one text labelled both ways): no held-out text is trained on."""
    texts, labels = labelled_with_copies(40)
    records = [{"text": t, "label": y} for t, y in zip(texts, labels)]
    records += [{"text": "the cat is rude .", "label": 1}, {"text": "the cat is rude .", "label": 0}]
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    examples, labels = read_jsonl(path, with_id=False, label=True)
    train, test = held_out_split(examples, labels, held_out=0.2, seed=3)
    text = np.array([e.text for e in examples])
    assert sorted([*train, *test]) == list(range(len(examples)))
    assert not set(text[test]) & set(text[train])
    assert "the cat is rude ." in set(text[train])
    held = {t: y for t, y in zip(text[test], np.asarray(labels)[test])}
    assert sorted(held.values()) == [0] * 4 + [1] * 4  # 20% of the 20 distinct texts of each label
    again, other = held_out_split(examples, labels, 0.2, seed=3), held_out_split(examples, labels, 0.2, seed=4)
    assert np.array_equal(again[1], test) and not np.array_equal(other[1], test)


def test_held_out_accuracy_is_measured_on_unseen_texts(tmp_path):
    """Random labels on copied texts: the probe memorises its training texts, and scores near chance on
    texts it never saw (a row split would hold out copies of training texts and report 1.0)."""
    wide = load_hf_model(tiny_model(tmp_path / "wide", d_model=64, n_layers=2, seed=1))
    texts, labels = labelled_with_copies(60, seed=1)
    _, report = train_probe(wide, [Example(f"r{i}", text=t) for i, t in enumerate(texts)], labels, layer=1, c=1e4)
    assert report.train_accuracy == 1.0 and report.held_out_accuracy < 0.8


def test_probe_file_round_trip(tmp_path):
    concept = ProbeDirection(np.arange(4, dtype=np.float32), 2, "last", -1.5, "logistic", 0.875)
    loaded = load_probe(concept.save(tmp_path / "p.safetensors"))
    assert np.array_equal(loaded.vector, concept.vector)
    assert (loaded.layer, loaded.position, loaded.bias, loaded.held_out_accuracy) == (2, "last", -1.5, 0.875)


def test_directions_from_npy_and_safetensors(model, tmp_path):
    v = np.linspace(-1, 1, 16, dtype=np.float32)
    np.save(tmp_path / "v.npy", v)
    save_file({"decoder": np.stack([v * 0, v, v * 2])}, str(tmp_path / "sae.safetensors"))
    assert np.array_equal(direction_from_file(tmp_path / "v.npy", model, 1).vector, v)
    row = direction_from_file(tmp_path / "sae.safetensors", model, 1, "last", feature=2)
    assert np.array_equal(row.vector, 2 * v) and row.position == "last"


def bad_direction(tmp_path, kind):
    path = tmp_path / {"pickle": "o.npy", "txt": "v.txt", "multi": "m.safetensors"}.get(kind, "v.npy")
    if kind == "pickle":
        np.save(path, np.array([{"code": 1}], dtype=object), allow_pickle=True)
    elif kind == "short":
        np.save(path, np.ones(15, np.float32))
    elif kind == "matrix":
        np.save(path, np.ones((3, 16), np.float32))
    elif kind == "nan":
        np.save(path, np.full(16, np.nan, np.float32))
    elif kind == "txt":
        path.write_text("1 2 3")
    elif kind == "multi":
        save_file({"a": np.ones(16, np.float32), "b": np.ones(16, np.float32)}, str(path))
    return path


@pytest.mark.parametrize(("kind", "layer", "feature", "match"), [
    ("pickle", 1, None, r"cannot read a plain array"),
    ("short", 1, None, r"direction has 15 dims but the model's activations have 16"),
    ("matrix", 1, None, r"shape \(3, 16\); give one vector, or --feature"),
    ("matrix", 1, 7, r"--feature 7: .* has 3 rows"),
    ("nan", 1, None, r"NaN"),
    ("txt", 1, None, r"unknown file type .txt"),
    ("multi", 1, None, r"holds tensors \['a', 'b'\]; pick one with --key"),
    ("short", 3, None, r"--layer 3: the model has 2 layers; use 0..2"),
])
def test_bad_directions_are_refused(model, tmp_path, kind, layer, feature, match):
    with pytest.raises(MvalError, match=match):
        direction_from_file(bad_direction(tmp_path, kind), model, layer, feature=feature)


def test_other_refusals(model, tmp_path):
    examples = sentences(20)
    with pytest.raises(MvalError, match=r"--layer -1: the model has 2 layers"):
        train_probe(model, examples, [0, 1] * 10, layer=-1)
    with pytest.raises(MvalError, match=r"at least 4 of each"):
        train_probe(model, examples, [0] * 18 + [1] * 2, layer=1)
    copies = [Example(f"c{i}", text=f"the {NOUNS[i % 3]} is {COLORS[i % 2]} .") for i in range(24)]
    with pytest.raises(MvalError, match=r"3 distinct texts of label 0 and 3 of label 1 .*at least 4 of each"):
        train_probe(model, copies, [i % 2 for i in range(24)], layer=1)
    save_file({"x": np.ones(3, np.float32)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(MvalError, match=r"not an mval probe file"):
        load_probe(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(MvalError, match=r"not a safetensors probe file"):
        load_probe(tmp_path / "junk.safetensors")
    with pytest.raises(MvalError, match=r"direction has 4 dims"):
        probe_logits(model, ProbeDirection(np.ones(4, np.float32), 1, "mean"), examples)
