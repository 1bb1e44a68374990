"""Loading models weights-only, and the LM's encoding and loss against hand computations."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from attribution.examples import Example
from attribution.models import ConceptModel, fingerprint, load_hf_model, load_model
from attribution.testbed import tiny_model
from conftest import qa
from mval.errors import MvalError


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("m") / "tiny", d_model=16, n_layers=2, seed=0)


def test_load_round_trip_is_exact_and_fits_the_interface(model_dir):
    a, b = load_hf_model(model_dir), load_hf_model(model_dir)
    assert isinstance(a, ConceptModel)
    assert (a.n_layers, a.d_model) == (2, 16)
    assert fingerprint(a) == fingerprint(b)


def test_weights_only_bin_loads_like_safetensors(model_dir, tmp_path):
    reference = load_hf_model(model_dir)
    folder = tmp_path / "bin"
    shutil.copytree(model_dir, folder)
    (folder / "model.safetensors").unlink()
    torch.save(reference.module.state_dict(), folder / "pytorch_model.bin")
    assert fingerprint(load_hf_model(folder)) == fingerprint(reference)


def test_fingerprint_sees_the_config_and_tokenizer_not_the_folder(model_dir, tmp_path):
    """Same weights, other norm epsilon or vocabulary: other outputs, so another fingerprint (cached
    gradients and score runs must not be reused); the same files in another folder: the same one."""
    reference = fingerprint(load_hf_model(model_dir))
    moved = tmp_path / "moved"
    shutil.copytree(model_dir, moved)
    assert fingerprint(load_hf_model(moved)) == reference
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps(config | {"rms_norm_eps": 1e-3}))
    assert fingerprint(load_hf_model(moved)) != reference
    (moved / "config.json").write_text(json.dumps(config))
    tokenizer = json.loads((moved / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["the"], vocab["a"] = vocab["a"], vocab["the"]  # "the" now reads as "a" did
    (moved / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert fingerprint(load_hf_model(moved)) != reference


def test_examples_longer_than_the_model_reads_are_refused(model_dir):
    """Cut at max_position_embeddings, an example would lose its response's loss (scoring 0) silently."""
    model = load_hf_model(model_dir)
    long = Example("long-one", prompt="tell me " * model.max_length, response="fine")
    with pytest.raises(MvalError, match=r"example 'long-one': \d+ tokens, more than the 64 the model reads"):
        model.encode([*qa(2, 0), long])
    assert model.encode(qa(2, 0)).size == 2


class Payload:
    """Any pickled object that is not plain tensors: weights_only loading must refuse it."""


DOWN = "model.layers.0.mlp.down_proj.weight"


def edit_weights(folder, change, fmt="safetensors"):
    """Rewrite the folder's weights after `change(state)`, as model.safetensors or as pytorch_model.bin alone."""
    state = load_file(folder / "model.safetensors")
    change(state)
    if fmt == "bin":
        bin_only(folder, state)
    else:
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def bin_only(folder, content):
    (folder / "model.safetensors").unlink()
    torch.save(content, folder / "pytorch_model.bin")


def truncate(path, keep):
    path.write_bytes(path.read_bytes()[:keep(path.stat().st_size)])


@pytest.mark.parametrize(("make", "match"), [
    (lambda d: bin_only(d, {"w": Payload()}),
     r"pytorch_model.bin: holds pickled code \(test_attribution_models.Payload\), which loading would run, so it is "
     r"refused; save the model with save_pretrained\(safe_serialization=True\)"),
    (lambda d: bin_only(d, [torch.zeros(2)]), r"expected a dict of tensors"),
    (lambda d: (d / "model.safetensors").unlink(), r"no weights"),
    (lambda d: (d / "config.json").unlink(), r"no config.json"),
    # weights that do not fit the config: transformers would initialise them at random, and scores be made up
    (lambda d: edit_weights(d, lambda s: s.pop(DOWN)),
     rf"--model .*: the weights in model.safetensors lack '{DOWN}', which config.json asks for; save model, config"),
    (lambda d: edit_weights(d, lambda s: s.pop(DOWN), "bin"), rf"the weights in pytorch_model.bin lack '{DOWN}'"),
    (lambda d: edit_weights(d, lambda s: s.update(extra=torch.zeros(2))),
     r"the weights in model.safetensors hold 'extra', which config.json has no place for"),
    (lambda d: edit_weights(d, lambda s: s.update({DOWN: torch.zeros(16, 7)})),
     rf"the weights in model.safetensors have '{DOWN}' of shape \[16, 7\], but config.json asks for \[16, 32\]"),
    (lambda d: edit_weights(d, lambda s: s.update({DOWN: torch.zeros(16, 7)}), "bin"),
     rf"the weights in pytorch_model.bin have '{DOWN}' of shape \[16, 7\]"),
    # broken files
    (lambda d: (d / "model.safetensors").write_bytes(b"garbage" * 100),
     r"model.safetensors: not a readable safetensors file \(.*header too large\); save the model again"),
    (lambda d: truncate(d / "model.safetensors", lambda n: n // 2), r"model.safetensors: not a readable .*incomplete"),
    (lambda d: truncate(d / "model.safetensors", lambda n: 5), r"model.safetensors: not a readable safetensors"),
    (lambda d: (d / "tokenizer.json").unlink(),
     r"--model .*: no tokenizer files \(none of tokenizer.json, .*\); save the tokenizer with tokenizer.save_pre"),
    (lambda d: (d / "tokenizer.json").write_text("{garbage"),
     r"tokenizer.json: not valid JSON \(Expecting property name.*\); save the tokenizer with"),
    (lambda d: (d / "tokenizer_config.json").write_bytes(b"\xff\xfe"), r"tokenizer_config.json: not valid JSON"),
], ids=["pickled-bin", "bin-not-a-dict", "no-weights", "no-config", "missing-tensor", "bin-missing-tensor",
        "unexpected-tensor", "wrong-shape", "bin-wrong-shape", "garbage", "half", "5-bytes", "no-tokenizer",
        "tokenizer-json", "tokenizer-config-bytes"])
def test_unsafe_incomplete_or_broken_folders_are_refused_in_one_line(model_dir, tmp_path, make, match):
    folder = tmp_path / "bad"
    shutil.copytree(model_dir, folder)
    make(folder)
    with pytest.raises(MvalError, match=match) as refused:
        load_hf_model(folder)
    assert "\n" not in str(refused.value)


def legacy_bin(folder, keep):
    """The folder's pytorch_model.bin again in torch's format from before 1.6 (a plain pickle), cut to keep(size)."""
    path = folder / "pytorch_model.bin"
    torch.save(torch.load(path, weights_only=True), path, _use_new_zipfile_serialization=False)
    truncate(path, keep)


CUT_OFF = "cannot be read as PyTorch weights"
AGAIN = r"; copy or download it again, or save the model with save_pretrained\(safe_serialization=True\)$"


@pytest.mark.parametrize(("make", "match"), [
    # a download or copy that stopped half-way: it was "not a weights-only file ...; it may unpickle code"
    (lambda d: truncate(d / "pytorch_model.bin", lambda n: n // 2),
     rf"pytorch_model.bin: {CUT_OFF} \(a zip archive cut off before its end: the file is incomplete\){AGAIN}"),
    (lambda d: truncate(d / "pytorch_model.bin", lambda n: n - 10), r"a zip archive cut off before its end"),
    (lambda d: truncate(d / "pytorch_model.bin", lambda n: 0), rf"{CUT_OFF} \(the file is empty\){AGAIN}"),
    (lambda d: (d / "pytorch_model.bin").write_bytes(b"<html>not found</html>"),
     rf"{CUT_OFF} \(not a file that torch.save writes: it starts with b'<htm'\){AGAIN}"),
    (lambda d: legacy_bin(d, lambda n: n // 2), rf"{CUT_OFF} \(unexpected EOF, expected \d+ more bytes"),
    # a pickle that names code is the one refused for safety, in either of torch's formats
    (lambda d: torch.save({"w": Payload()}, d / "pytorch_model.bin", _use_new_zipfile_serialization=False),
     r"pytorch_model.bin: holds pickled code \(test_attribution_models.Payload\), which loading would run"),
    (lambda d: (d / "pytorch_model.bin").write_bytes(pickle.dumps(os.system, protocol=2)),
     r"pytorch_model.bin: holds pickled code \((posix|nt).system\), which loading would run"),
], ids=["half", "all-but-10-bytes", "empty", "html-page", "legacy-half", "legacy-pickled-class", "pickled-function"])
def test_a_cut_off_bin_is_told_apart_from_an_unsafe_one(model_dir, tmp_path, make, match):
    """Both are refused in one line; only a pickle that names code is called unsafe."""
    folder = tmp_path / "bin"
    shutil.copytree(model_dir, folder)
    bin_only(folder, load_file(folder / "model.safetensors"))
    assert fingerprint(load_hf_model(folder)) == fingerprint(load_hf_model(model_dir))  # whole, it loads
    make(folder)
    with pytest.raises(MvalError, match=match) as refused:
        load_hf_model(folder)
    assert "\n" not in str(refused.value)
    if "holds pickled code" not in match:
        assert "pickle" not in str(refused.value) and "code" not in str(refused.value)


@pytest.mark.parametrize(("path", "match"), [
    ("{model}/model.safetensors", r"--model .*model.safetensors: the weights of a Hugging Face model folder; give the "
                                  r"folder itself \(--model .*tiny\)"),
    ("{model}/config.json", r"--model .*config.json: a file; give a Hugging Face model folder"),
], ids=["weights-file", "config-file"])
def test_a_file_of_a_model_folder_as_model_names_the_folder(model_dir, path, match):
    """It said "not an mval agent file" (a Sokoban agent's) and "no config.json there"."""
    with pytest.raises(MvalError, match=match):
        load_model(path.format(model=model_dir))


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_a_tied_output_layer_may_be_absent_from_the_file(model_dir, tmp_path, fmt):
    """tie_word_embeddings: save_pretrained leaves lm_head.weight out, as it is the embedding matrix."""
    folder = tmp_path / "tied"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"tie_word_embeddings": True}))
    edit_weights(folder, lambda s: s.pop("lm_head.weight"), fmt)
    module = load_hf_model(folder).module
    assert module.lm_head.weight is module.model.embed_tokens.weight
    assert torch.equal(module.lm_head.weight, load_file(model_dir / "model.safetensors")["model.embed_tokens.weight"])


def test_a_bin_next_to_safetensors_is_not_read(model_dir, tmp_path, monkeypatch):
    """The safetensors hold the model; the .bin beside them (here a pickle) is never opened."""
    folder = tmp_path / "both"
    shutil.copytree(model_dir, folder)
    torch.save({"w": Payload()}, folder / "pytorch_model.bin")

    def no_torch_load(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_torch_load)
    assert fingerprint(load_hf_model(folder)) == fingerprint(load_hf_model(model_dir))


def test_loss_is_mean_response_nll_and_padding_changes_nothing(model_dir):
    model = load_hf_model(model_dir)
    short = Example("s", "question : what color is the cat ?", "answer : the cat is red .")
    long = Example("l", text="the dog lives in the forest . the cat is big and red .")
    batch = model.encode([short, long])
    losses = model.example_losses(batch)
    ids = model.tokenizer(short.prompt + " " + short.response)["input_ids"]
    n_prompt = len(model.tokenizer(short.prompt)["input_ids"])
    logits = model.module(input_ids=torch.tensor([ids])).logits[0]
    nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")
    assert torch.allclose(losses[0], nll[n_prompt - 1:].mean(), atol=1e-6)
    alone = model.example_losses(model.encode([short]))
    assert torch.allclose(losses[0], alone[0], atol=1e-6)  # right padding does not touch real positions
    assert batch.mask.sum(1).tolist() == [len(ids), len(long.text.split())]
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == "llama"


def test_hidden_states_stop_at_the_layer_and_match_the_full_forward(tmp_path):
    """Every layer, 0..n_layers, equals Hugging Face's hidden_states of a full forward pass (the early
    stop below the last layer changes nothing), in values and in gradients."""
    model = load_hf_model(tiny_model(tmp_path / "deep", d_model=16, n_layers=3, seed=1), dtype=torch.float64)
    batch = model.encode(qa(3, seed=4))
    full = model.module(input_ids=batch.inputs["input_ids"], output_hidden_states=True).hidden_states
    assert len(full) == model.n_layers + 1
    for layer in range(model.n_layers + 1):
        torch.testing.assert_close(model.hidden_states(batch, layer), full[layer], rtol=0, atol=1e-12)
    calls = []
    handle = model.module.base_model.layers[2].register_forward_hook(lambda *args: calls.append(1))
    model.hidden_states(batch, 2)
    assert calls == []  # block 3 never ran
    model.hidden_states(batch, 3)
    handle.remove()
    assert calls == [1]
    weight = model.module.base_model.layers[0].mlp.down_proj.weight
    ours = torch.autograd.grad(model.hidden_states(batch, 1).sum(), weight)[0]
    reference = torch.autograd.grad(model.module(input_ids=batch.inputs["input_ids"], output_hidden_states=True)
                                    .hidden_states[1].sum(), weight)[0]
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)


def test_fingerprint_follows_in_place_changes_of_the_weights(model_dir):
    """Outside a scoring run (`pinned_fingerprints`) every call hashes the weights: an in-place edit (also
    through .data), an optimizer step, a load_state_dict and a replaced parameter each give a new
    fingerprint; undoing the edit the old one."""
    model = load_hf_model(model_dir)
    first = fingerprint(model)
    assert fingerprint(model) == first
    weight = model.module.lm_head.weight
    saved = weight.detach().clone()
    weight.data.add_(1.0)  # .data writes move no version counter: a cache keyed on them would miss this
    edited = fingerprint(model)
    with torch.no_grad():
        weight.copy_(saved)
    assert edited != first and fingerprint(model) == first
    torch.optim.SGD(model.module.parameters(), lr=0.1).zero_grad()
    model.example_losses(model.encode(qa(2, 0))).sum().backward()
    torch.optim.SGD(model.module.parameters(), lr=0.1).step()
    stepped = fingerprint(model)
    assert stepped not in (first, edited)
    model.module.load_state_dict(load_hf_model(model_dir).module.state_dict())
    assert fingerprint(model) == first
    model.module.lm_head.weight = torch.nn.Parameter(weight.detach() * 2)
    assert fingerprint(model) not in (first, edited, stepped)
