"""Concept directions: a logistic probe on activations at a layer, or a vector brought from a file.

A `ProbeDirection` is saved as safetensors: tensors `direction` [d_model] and `bias` [1], and
metadata `layer`, `d_model`, `position`, `source`, `held_out_accuracy`. The probe's logit for an
example is v . pool(h_layer(z)) + b (see `attribution.concept`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from sklearn.linear_model import LogisticRegression

from attribution.concept import POSITIONS, activations
from attribution.examples import Example
from attribution.models import ConceptModel, check_layer
from mval.errors import MvalError
from mval.weights import read_safetensors

FORMAT = "mval-probe-1"


@dataclass(frozen=True)
class ProbeDirection:
    """A direction v in the activations at `layer`, read at `position` ("mean" or "last")."""

    vector: np.ndarray
    layer: int
    position: str
    bias: float = 0.0
    source: str = "logistic"
    held_out_accuracy: float | None = None
    model: str | None = None  # fingerprint of the model it only fits (Sokoban plan concepts); None: any model

    @property
    def d_model(self) -> int:
        return int(self.vector.shape[0])

    def to_dict(self) -> dict:
        return {"layer": self.layer, "d_model": self.d_model, "position": self.position, "source": self.source,
                "held_out_accuracy": self.held_out_accuracy, "norm": float(np.linalg.norm(self.vector))}

    def check_fits(self, model: ConceptModel) -> None:
        """Layer and width, and whatever else the model checks (`model.check_concept`, if it has one)."""
        if not 0 <= self.layer <= model.n_layers:
            raise MvalError(f"--concept: the concept is read at layer {self.layer}, but the model has layers "
                            f"0..{model.n_layers}; train or bring a concept for this model")
        if self.d_model != model.d_model:
            raise MvalError(f"--concept: the concept's direction has {self.d_model} dims but the model's activations "
                            f"have {model.d_model}; train or bring a concept for this model")
        check_concept = getattr(model, "check_concept", None)
        if check_concept is not None:
            check_concept(self)

    def save(self, path: str | Path) -> Path:
        meta = {"format": FORMAT, **{k: str(v) for k, v in self.to_dict().items() if k != "norm"}}
        if self.model is not None:
            meta["model"] = self.model
        save_file({"direction": self.vector.astype(np.float32), "bias": np.array([self.bias], np.float32)},
                  str(path), metadata=meta)
        return Path(path)


RETRAIN = "retrain the probe with `mval probe train` (or --direction FILE to bring a vector)"


def load_probe(path: str | Path) -> ProbeDirection:
    """A `ProbeDirection` saved by `ProbeDirection.save` (safetensors: never unpickles). A hand-edited or
    broken file (a tensor or metadata field missing or unreadable, NaN values) is refused in one line."""
    meta, tensors = read_safetensors(path, "probe file", RETRAIN, FORMAT, label="--concept ", framework="pt")
    where = f"--concept {path}"
    missing = [f"{k!r} tensor" for k in ("direction", "bias") if k not in tensors]
    missing += [f"{k!r} metadata" for k in ("layer", "d_model", "position") if k not in meta]
    if missing:
        raise MvalError(f"{where}: no {missing[0]}; {RETRAIN}")
    vector, bias = (_real_float32(tensors[k], f"{where}: {k}", RETRAIN) for k in ("direction", "bias"))
    layer, d_model = (_metadata_int(meta, k, where) for k in ("layer", "d_model"))
    accuracy = meta.get("held_out_accuracy", "None")
    problem = _probe_problem(vector, bias, d_model, meta["position"], accuracy)
    if problem:
        raise MvalError(f"{where}: {problem}; {RETRAIN}")
    return ProbeDirection(vector, layer, meta["position"], bias.item(), meta.get("source", "logistic"),
                          None if accuracy == "None" else float(accuracy), meta.get("model"))


def _probe_problem(vector: np.ndarray, bias: np.ndarray, d_model: int, position: str, accuracy: str) -> str | None:
    """What makes a probe file's contents unusable, if anything (a NaN direction would score NaN)."""
    if vector.ndim != 1:
        return f"direction has shape {list(vector.shape)}, not a vector"
    if bias.size != 1:
        return f"bias has shape {list(bias.shape)}, not [1]"
    if d_model != vector.size:
        return f"d_model {d_model} in the metadata but the direction has {vector.size} values"
    if position not in POSITIONS:
        return f"position {position!r} is not one of {', '.join(POSITIONS)}"
    if not np.isfinite(vector).all():
        return "direction has NaN or infinite values"
    if not np.isfinite(bias).all():
        return f"bias is {bias.item()}, not a finite number"
    if accuracy != "None" and not _is_float(accuracy):
        return f"held_out_accuracy {accuracy!r} is not a number"
    return None


def _metadata_int(meta: dict[str, str], key: str, where: str) -> int:
    value = meta[key]
    if not (value.isascii() and value.isdigit()):  # "²" is a digit to isdigit but not to int()
        raise MvalError(f"{where}: {key} {value!r} in the metadata is not a whole number (0 or more); {RETRAIN}")
    return int(value)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _real_float32(values: np.ndarray | torch.Tensor, where: str, fix: str = "save a float array") -> np.ndarray:
    """Real numbers of any float or integer dtype (bfloat16 and float16 included) as float32; complex,
    boolean or text values are refused rather than cast (a cast would drop the imaginary part)."""
    if isinstance(values, torch.Tensor):
        real = not (values.dtype.is_complex or values.dtype == torch.bool)
    else:
        real = values.dtype.kind in "iuf"
    if not real:
        raise MvalError(f"{where}: holds {values.dtype} values, not real numbers; {fix}")
    return values.to(torch.float32).numpy() if isinstance(values, torch.Tensor) else values.astype(np.float32)


@dataclass(frozen=True)
class ProbeReport:
    """How well a probe separates the labels: accuracy on its training split and on the held-out split."""

    train_accuracy: float
    held_out_accuracy: float
    n_train: int
    n_held_out: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _text_groups(examples: Sequence[Example], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's distinct text (a group number, in order of content hash) and each group's label:
    0 or 1, or -1 when its copies are labelled both ways."""
    _, group = np.unique([e.content_hash for e in examples], return_inverse=True)
    ones, copies = np.bincount(group, weights=labels), np.bincount(group)
    return group, np.where(ones == 0, 0, np.where(ones == copies, 1, -1))


def held_out_split(examples: Sequence[Example], labels: Sequence[int], held_out: float,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, held out), split by distinct text: a `held_out` share (at least one) of each
    label's distinct texts is held out with all its copies, so held-out accuracy is on unseen texts.
    A text labelled both 0 and 1 stays in training (both labels), as it has no right answer to score."""
    group, group_label = _text_groups(examples, np.asarray(labels))
    counts = [int((group_label == cls).sum()) for cls in (0, 1)]
    if min(counts) < 4:
        raise MvalError(f"labelled data has {counts[0]} distinct texts of label 0 and {counts[1]} of label 1 "
                        "(copies count once); give at least 4 of each (more for a reliable held-out accuracy)")
    rng = np.random.default_rng(seed)
    test = np.zeros(group_label.size, dtype=bool)
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(group_label == cls))
        test[idx[: max(1, round(held_out * idx.size))]] = True
    return np.flatnonzero(~test[group]), np.flatnonzero(test[group])


def train_probe(model: ConceptModel, examples: Sequence[Example], labels: Sequence[int], layer: int,
                position: str = "mean", held_out: float = 0.2, seed: int = 0,
                c: float = 1.0) -> tuple[ProbeDirection, ProbeReport]:
    """Logistic regression of the label on standardised pool(h_layer(z)); v = w / sd maps back to raw activations."""
    y = np.asarray(labels)
    train, test = held_out_split(examples, y, held_out, seed)
    x = activations(model, examples, layer, position).double().numpy()
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-8
    fit = LogisticRegression(C=c, max_iter=2000).fit((x[train] - mu) / sd, y[train])
    w = fit.coef_[0] / sd
    b = float(fit.intercept_[0] - w @ mu)
    predict = (x @ w + b > 0).astype(int)
    report = ProbeReport(float((predict[train] == y[train]).mean()), float((predict[test] == y[test]).mean()),
                         int(train.size), int(test.size))
    return ProbeDirection(w.astype(np.float32), layer, position, b, "logistic", report.held_out_accuracy), report


def direction_from_file(path: str | Path, model: ConceptModel, layer: int, position: str = "mean",
                        key: str | None = None, feature: int | None = None) -> ProbeDirection:
    """A direction from `.npy` or `.safetensors` (e.g. an SAE decoder row): a [d] vector, or row `feature` of [n, d]."""
    path = Path(path)
    check_layer(model, layer)
    if not path.is_file():
        raise MvalError(f"--direction {path}: no such file")
    array = _read_direction_array(path, key)
    if feature is not None:
        if array.ndim != 2:
            raise MvalError(f"--feature {feature}: {path} holds shape {list(array.shape)}, not a matrix "
                            "[n_features, d_model]; leave --feature out for a vector")
        if not 0 <= feature < array.shape[0]:
            raise MvalError(f"--feature {feature}: {path} has {array.shape[0]} rows; use 0..{array.shape[0] - 1}")
        array = array[feature]
    array = np.squeeze(array)
    if array.ndim != 1:
        raise MvalError(f"--direction {path}: shape {array.shape}; give one vector, or --feature I for a row of a matrix")
    if array.size != model.d_model:
        raise MvalError(f"--direction {path}: a vector of {array.size} values, but the model's activations have "
                        f"{model.d_model} dims; bring a vector of the model's width (its hidden_size)")
    if not np.isfinite(array).all():
        raise MvalError(f"--direction {path}: has NaN or infinite values")
    if not array.any():
        raise MvalError(f"--direction {path}: the vector is all zeros, so every example would score 0; "
                        "bring a nonzero vector (a row of an SAE decoder, a probe's weights)")
    direction = ProbeDirection(array, layer, position, 0.0, f"file:{path.name}", None)
    direction.check_fits(model)
    return direction


SHOWN = 6  # tensor names listed in a message (a model's weights file holds hundreds)


def _some(names: list[str]) -> str:
    return str(names) if len(names) <= SHOWN else f"{names[:SHOWN]} and {len(names) - SHOWN} more"


def _read_direction_array(path: Path, key: str | None) -> np.ndarray:
    """The array of a `.npy` file, or tensor `key` of a `.safetensors` file ("direction", or its only
    tensor, without a key), as float32. Never unpickles; bfloat16 (common for SAE decoders) is read by torch."""
    where = f"--direction {path}"
    try:
        if path.suffix == ".npy":
            if key is not None:
                raise MvalError(f"--key {key}: {path} is a .npy file, one array; "
                                "--key picks a tensor of a .safetensors file")
            return _real_float32(np.load(path, allow_pickle=False), where)
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                names = list(f.keys())
                name = key or ("direction" if "direction" in names else names[0] if len(names) == 1 else None)
                if name not in names:
                    if key is None:
                        raise MvalError(f"{where}: holds tensors {_some(names)}; pick one with --key NAME")
                    close = difflib.get_close_matches(key, names, n=3) if len(names) > SHOWN else []
                    if close:
                        raise MvalError(f"--key {key}: {path} has no such tensor; pick one of its {len(names)}, "
                                        f"the closest being {', '.join(close)}")
                    raise MvalError(f"--key {key}: {path} holds tensors {_some(names)}; pick one of them")
                return _real_float32(f.get_tensor(name), where)
    except (ValueError, EOFError, OSError, SafetensorError) as e:
        if isinstance(e, MvalError):
            raise
        raise MvalError(f"{where}: cannot read a plain array ({str(e).splitlines()[0]}); "
                        "save it with numpy.save or safetensors") from e
    raise MvalError(f"{where}: unknown file type {path.suffix or '(none)'}; use .npy or .safetensors")


def probe_logits(model: ConceptModel, direction: ProbeDirection, examples: Sequence[Example]) -> np.ndarray:
    """v . pool(h_layer(z)) + b for each example (forward passes only)."""
    direction.check_fits(model)
    x = activations(model, examples, direction.layer, direction.position)
    return (x @ torch.as_tensor(direction.vector).to(x.dtype)).numpy() + direction.bias
