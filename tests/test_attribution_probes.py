"""Probe directions: projections against a manual forward pass, training, files and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from safetensors.torch import save_file as save_torch_file

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


def test_a_bfloat16_decoder_is_read_as_float32(model, tmp_path):
    """SAE decoders are often saved in bfloat16, which numpy has no type for."""
    rows = torch.arange(-48, 48).reshape(6, 16) / 4  # exact in bfloat16
    save_torch_file({"W_dec": rows.to(torch.bfloat16), "b_dec": torch.zeros(16)}, str(tmp_path / "sae.safetensors"))
    row = direction_from_file(tmp_path / "sae.safetensors", model, 1, key="W_dec", feature=4)
    assert row.vector.dtype == np.float32 and np.array_equal(row.vector, rows[4].numpy())


def bad_direction(tmp_path, kind):
    path = tmp_path / {"pickle": "o.npy", "txt": "v.txt", "multi": "m.safetensors", "empty": "e.npy",
                       "many": "sae.safetensors"}.get(kind, "v.npy")
    if kind == "pickle":
        np.save(path, np.array([{"code": 1}], dtype=object), allow_pickle=True)
    elif kind == "vector":
        np.save(path, np.ones(16, np.float32))
    elif kind == "short":
        np.save(path, np.ones(15, np.float32))
    elif kind == "matrix":
        np.save(path, np.ones((3, 16), np.float32))
    elif kind == "nan":
        np.save(path, np.full(16, np.nan, np.float32))
    elif kind == "strings":
        np.save(path, np.array(["a"] * 16))
    elif kind == "complex":
        np.save(path, np.ones(16) * (1 + 1j))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "txt":
        path.write_text("1 2 3")
    elif kind == "multi":
        save_file({"a": np.ones(16, np.float32), "b": np.ones(16, np.float32)}, str(path))
    elif kind == "many":  # as a model's or an SAE's file: too many names to list in one line
        save_file({f"blocks.{i}.decoder": np.ones((2, 16), np.float32) for i in range(20)}, str(path))
    elif kind == "short-rows":
        np.save(path, np.ones((3, 15), np.float32))
    elif kind == "zeros":
        np.save(path, np.zeros(16, np.float32))
    return path


@pytest.mark.parametrize(("kind", "options", "match"), [
    ("pickle", {}, r"cannot read a plain array"),
    ("empty", {}, r"e.npy: cannot read a plain array"),
    ("short", {}, r"--direction .*v.npy: a vector of 15 values, but the model's activations have 16 dims; bring a "
                  r"vector of the model's width"),
    ("short-rows", {"feature": 1}, r"--direction .*v.npy: a vector of 15 values, but the model's activations"),
    ("zeros", {}, r"--direction .*v.npy: the vector is all zeros, so every example would score 0; bring a nonzero"),
    ("matrix", {}, r"shape \(3, 16\); give one vector, or --feature"),
    ("matrix", {"feature": 7}, r"--feature 7: .* has 3 rows"),
    ("vector", {"feature": 3}, r"--feature 3: .*v.npy holds shape \[16\], not a matrix .*; leave --feature out"),
    ("vector", {"key": "foo"}, r"--key foo: .*v.npy is a .npy file, one array; --key picks a tensor of a .safetensors"),
    ("nan", {}, r"NaN"),
    ("strings", {}, r"v.npy: holds <U1 values, not real numbers"),
    ("complex", {}, r"v.npy: holds complex128 values, not real numbers"),  # a cast would keep the real part only
    ("txt", {}, r"unknown file type .txt"),
    ("multi", {}, r"holds tensors \['a', 'b'\]; pick one with --key"),
    ("multi", {"key": "foo"}, r"--key foo: .*m.safetensors holds tensors \['a', 'b'\]; pick one of them"),
    ("many", {}, r"sae.safetensors: holds tensors \['blocks.0.decoder', .*, 'blocks.13.decoder'\] and 14 more; "
                 r"pick one with --key NAME$"),
    ("many", {"key": "block.3.decoder"}, r"--key block.3.decoder: .*sae.safetensors has no such tensor; pick one of "
                                         r"its 20, the closest being blocks.3.decoder"),
    ("many", {"key": "zzz"}, r"--key zzz: .*sae.safetensors holds tensors \[.*\] and 14 more; pick one of them$"),
    ("short", {"layer": 3}, r"--layer 3: the model has 2 layers; use 0..2"),
], ids=["pickle", "empty", "short", "row-short", "zeros", "matrix", "row-out-of-range", "feature-of-vector",
        "key-of-npy", "nan", "strings", "complex", "txt", "several-tensors", "key-not-there", "many-tensors",
        "key-close-to-one", "key-of-many", "layer-out-of-range"])
def test_bad_directions_are_refused(model, tmp_path, kind, options, match):
    with pytest.raises(MvalError, match=match):
        direction_from_file(bad_direction(tmp_path, kind), model, **{"layer": 1} | options)


PROBE_META = {"format": "mval-probe-1", "layer": "1", "d_model": "4", "position": "mean", "source": "logistic",
              "held_out_accuracy": "0.5"}
PROBE_TENSORS = {"direction": np.ones(4, np.float32), "bias": np.zeros(1, np.float32)}


@pytest.mark.parametrize(("meta", "tensors", "match"), [
    ({"layer": "one"}, {}, r"layer 'one' in the metadata is not a whole number"),
    ({"layer": "-1"}, {}, r"layer '-1' in the metadata is not a whole number"),
    ({"d_model": "5"}, {}, r"d_model 5 in the metadata but the direction has 4 values"),
    ({"position": "first"}, {}, r"position 'first' is not one of mean, last"),
    ({"held_out_accuracy": "high"}, {}, r"held_out_accuracy 'high' is not a number"),
    ({}, {"bias": None}, r"no 'bias' tensor"),
    ({"layer": None}, {}, r"no 'layer' metadata"),
    ({}, {"direction": np.array([1, np.nan, 0, 0], np.float32)}, r"direction has NaN or infinite values"),
    ({}, {"bias": np.array([np.inf], np.float32)}, r"bias is inf, not a finite number"),
    ({}, {"bias": np.zeros(2, np.float32)}, r"bias has shape \[2\], not \[1\]"),
    ({}, {"direction": np.ones((2, 2), np.float32)}, r"direction has shape \[2, 2\], not a vector"),
], ids=["layer-text", "layer-negative", "d_model", "position", "accuracy", "no-bias", "no-layer", "nan-direction",
        "inf-bias", "bias-shape", "direction-matrix"])
def test_hand_edited_probe_files_are_refused_in_one_line(tmp_path, meta, tensors, match):
    """Each says which file and field, and to retrain (a NaN direction would score NaN for every example)."""
    path = tmp_path / "edited.safetensors"
    save_file({k: v for k, v in (PROBE_TENSORS | tensors).items() if v is not None}, str(path),
              metadata={k: v for k, v in (PROBE_META | meta).items() if v is not None})
    with pytest.raises(MvalError, match=rf"--concept .*edited.safetensors: {match}.*; retrain the probe") as refused:
        load_probe(path)
    assert "\n" not in str(refused.value)
    save_file(PROBE_TENSORS, str(path), metadata=PROBE_META)
    assert load_probe(path).layer == 1  # the same file unedited loads


def test_a_bfloat16_probe_file_loads(tmp_path):
    path = tmp_path / "bf16.safetensors"
    save_torch_file({"direction": torch.ones(4, dtype=torch.bfloat16), "bias": torch.zeros(1, dtype=torch.bfloat16)},
                    str(path), metadata=PROBE_META)
    assert np.array_equal(load_probe(path).vector, np.ones(4, np.float32))


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
    with pytest.raises(MvalError, match=r"--concept: the concept's direction has 4 dims"):
        probe_logits(model, ProbeDirection(np.ones(4, np.float32), 1, "mean"), examples)
