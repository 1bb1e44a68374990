"""Models that attribution can read: the `ConceptModel` interface, and Hugging Face causal LMs.

Any torch module works if it is wrapped in an object with the `ConceptModel` methods below:
`encode` turns examples into a `Batch`, `hidden_states` gives the activations at a layer and
`example_losses` the training loss of each example. Scorers only use these, so the Sokoban agent
or a custom network plugs in the same way as a language model.

Model files are read weights-only: `model.safetensors` (or its shards), or, in a folder without
one, a `pytorch_model.bin` that `torch.load(..., weights_only=True)` accepts. A pickle that would run
code is refused, and so is a file cut off or damaged (each with its own message), and weights that do not
fit the config (a missing, extra or mis-shaped tensor), which transformers would otherwise initialise at
random and run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from mval.errors import MvalError

if TYPE_CHECKING:
    from attribution.examples import Example


@dataclass(frozen=True)
class Batch:
    """Encoded examples: `inputs` for the module, `mask` [B, T] marks real (non-padding) positions."""

    inputs: dict[str, torch.Tensor]
    mask: torch.Tensor

    @property
    def size(self) -> int:
        return self.mask.shape[0]


@runtime_checkable
class ConceptModel(Protocol):
    """What attribution needs from a model.

    - `module`: the torch module whose parameters gradients are taken for.
    - `n_layers`, `d_model`: valid layers are 0..n_layers (0 = embeddings), activations have d_model dims.
    - `encode(examples)`: a `Batch`; padding must not change the outputs at real positions.
    - `hidden_states(batch, layer)`: [B, T, d_model] activations, differentiable in the parameters.
    - `example_losses(batch)`: [B] training loss of each example (mean token NLL for an LM).
    - optional `settings()`: a JSON-able dict of what else decides the outputs (config, tokenizer); it
      enters the model's fingerprint, so cached gradients and score runs notice a change.
    - optional `check_concept(concept)`: raise MvalError for a concept (`ProbeDirection`) made for another
      model, beyond layer range and width (e.g. a Sokoban plan concept from another agent).
    """

    module: torch.nn.Module
    n_layers: int
    d_model: int

    def encode(self, examples: Sequence[Example]) -> Batch: ...

    def hidden_states(self, batch: Batch, layer: int) -> torch.Tensor: ...

    def example_losses(self, batch: Batch) -> torch.Tensor: ...


class _StopForward(Exception):
    """Raised by a forward hook once the wanted layer's output is kept: the rest of the pass is skipped."""


def check_layer(model: ConceptModel, layer: int) -> int:
    if not 0 <= layer <= model.n_layers:
        raise MvalError(f"--layer {layer}: the model has {model.n_layers} layers; use 0..{model.n_layers} (0 = embeddings)")
    return layer


_PINNED: dict[int, str] | None = None  # module id -> weights digest, while `pinned_fingerprints` is active


@contextmanager
def pinned_fingerprints() -> Iterator[None]:
    """Within the block, each module's weights are hashed once (scorers ask once per batch, and hashing a
    1B-parameter model takes seconds): for a run in which the model does not change, e.g. `score_dataset`."""
    global _PINNED
    outer, _PINNED = _PINNED, ({} if _PINNED is None else _PINNED)
    try:
        yield
    finally:
        _PINNED = outer


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of the module's parameters and buffers (names, shapes, values)."""
    if _PINNED is not None and id(module) in _PINNED:
        return _PINNED[id(module)]
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    if _PINNED is not None:
        _PINNED[id(module)] = digest.hexdigest()
    return digest.hexdigest()


def fingerprint(model: ConceptModel) -> str:
    """sha256 of the module's weights (`weights_digest`) and of whatever else decides its outputs
    (`model.settings()`, if it has one: an LM's config and tokenizer): the key of cached gradients."""
    digest = hashlib.sha256(weights_digest(model.module).encode())
    settings = getattr(model, "settings", None)
    if settings is not None:
        digest.update(json.dumps(settings(), sort_keys=True, default=str).encode())
    return digest.hexdigest()


class HFCausalLM:
    """A Hugging Face causal LM and its tokenizer as a `ConceptModel`.

    An example is `prompt + response` (loss on the response tokens only) or `text` (loss on all tokens).
    Sequences are right-padded and run without an attention mask: with causal attention, padding at
    the end cannot change any real position, and the forward pass stays free of data-dependent
    branches so `torch.func.vmap` can take per-example gradients.
    """

    def __init__(self, module: torch.nn.Module, tokenizer, max_length: int | None = None):
        self.module = module.eval()
        self.tokenizer = tokenizer
        config = module.config
        self.n_layers = int(config.num_hidden_layers)
        self.d_model = int(config.hidden_size)
        self.max_length = max_length or int(getattr(config, "max_position_embeddings", 512))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def settings(self) -> dict:
        """What decides the outputs besides the weights: the config (without the folder's path and the
        transformers version), the tokenizer's vocabulary and the length limit."""
        config = {k: v for k, v in self.module.config.to_dict().items()
                  if k not in ("_name_or_path", "transformers_version")}
        return {"config": config, "tokenizer": self._tokenizer_digest, "max_length": self.max_length}

    @cached_property
    def _tokenizer_digest(self) -> str:
        vocab = json.dumps([type(self.tokenizer).__name__, sorted(self.tokenizer.get_vocab().items())])
        return hashlib.sha256(vocab.encode()).hexdigest()

    def _ids(self, texts: list[str], special: bool) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=special)["input_ids"] if texts else []

    def encode(self, examples: Sequence[Example]) -> Batch:
        """One tokenizer call per part (texts, prompts, responses) for the whole batch, then right-padding."""
        plain = [i for i, ex in enumerate(examples) if ex.text is not None]
        paired = [i for i, ex in enumerate(examples) if ex.text is None]
        rows: list[list[int]] = [[] for _ in examples]
        heads = [0] * len(examples)  # tokens without loss at the start of each row
        for i, ids in zip(plain, self._ids([examples[i].text for i in plain], True), strict=True):
            rows[i], heads[i] = ids, 1
        prompts = self._ids([examples[i].prompt for i in paired], True)
        responses = self._ids([" " + examples[i].response for i in paired], False)
        for i, head, tail in zip(paired, prompts, responses, strict=True):
            rows[i], heads[i] = head + tail, len(head)
        lengths = np.array([len(r) for r in rows])
        self._check_lengths(examples, lengths)
        positions = np.arange(lengths.max())
        mask = positions[None] < lengths[:, None]
        ids = np.full(mask.shape, self.pad_id, dtype=np.int64)
        ids[mask] = np.concatenate(rows)
        loss_w = (mask & (positions[None] >= np.array(heads)[:, None])).astype(np.float32)
        return Batch(inputs={"input_ids": torch.from_numpy(ids), "loss_weights": torch.from_numpy(loss_w)},
                     mask=torch.from_numpy(mask))

    def _check_lengths(self, examples: Sequence[Example], lengths: np.ndarray) -> None:
        """Refuse examples longer than the model reads: cut, their loss (or all of it) would silently vanish."""
        long = np.flatnonzero(lengths > self.max_length)
        if long.size:
            first = examples[long[0]]
            raise MvalError(f"example {first.example_id!r}: {lengths[long[0]]} tokens, more than the {self.max_length} "
                            f"the model reads (max_position_embeddings){f' ({long.size} such in this batch)' if long.size > 1 else ''}; "
                            "shorten or remove it")

    def hidden_states(self, batch: Batch, layer: int) -> torch.Tensor:
        """Hugging Face's hidden_states[layer]: the output of block `layer` (0: the embeddings; the last
        layer is the final normalised output). Below the last layer the forward stops there: a hook on
        the block keeps its output and ends the pass, so later blocks and the LM head cost nothing
        (a probe at layer 6 of 32 runs 6 blocks)."""
        ids = batch.inputs["input_ids"]
        blocks = self._blocks()
        if layer in (0, self.n_layers) or blocks is None:
            return self.module.base_model(input_ids=ids, output_hidden_states=True).hidden_states[layer]
        kept: list[torch.Tensor] = []

        def keep_and_stop(module: torch.nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
            kept.append(output[0] if isinstance(output, tuple) else output)
            raise _StopForward

        handle = blocks[layer - 1].register_forward_hook(keep_and_stop)
        try:
            self.module.base_model(input_ids=ids)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return kept[0]

    def _blocks(self) -> torch.nn.ModuleList | None:
        """The base model's list of transformer blocks (the ModuleList with n_layers entries), if found."""
        for child in self.module.base_model.children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == self.n_layers:
                return child
        return None

    def example_losses(self, batch: Batch) -> torch.Tensor:
        """Mean next-token NLL over the weighted target positions of each example: [B]."""
        ids, w = batch.inputs["input_ids"], batch.inputs["loss_weights"]
        logits = self.module(input_ids=ids).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        w = w[:, 1:].to(nll.dtype)
        return (nll * w).sum(1) / w.sum(1).clamp(min=1.0)


# torch's weights-only unpickler on a pickle that names code (a class or function it does not allow): the
# pickle-safety refusals, as opposed to a file it cannot parse (cut off, damaged, not written by torch.save)
_UNSAFE_PICKLE = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)|allowlisted|"
                            r"unrecognized function")


def _weights_only_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a `pytorch_model.bin`, through torch.load(weights_only=True). Refused in one line
    each: a pickle that names code (loading it would run that code), a file that cannot be read (cut off by an
    interrupted download or copy, damaged, or no torch.save file), and anything but a dict of tensors."""
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": two lines of noise before our one
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, OSError, EOFError, ... for these files
        unsafe = _UNSAFE_PICKLE.search(str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if unsafe is not None:
            what = f"pickled code ({unsafe.group(1)})" if unsafe.group(1) else "pickled objects other than tensors"
            raise MvalError(f"{path}: holds {what}, which loading would run, so it is refused; "
                            "save the model with save_pretrained(safe_serialization=True)") from e
        raise MvalError(f"{path}: cannot be read as PyTorch weights ({_unreadable(path, e)}); copy or download it "
                        "again, or save the model with save_pretrained(safe_serialization=True)") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MvalError(f"{path}: expected a dict of tensors (a state dict); save the model with save_pretrained")
    return state


def _unreadable(path: Path, error: Exception) -> str:
    """Why torch.load could not parse `path`, in a few words (torch's own are "Invalid argument", or a paragraph)."""
    with path.open("rb") as f:
        head = f.read(4)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        return "a zip archive cut off before its end: the file is incomplete"
    if not head.startswith((b"PK", b"\x80")):  # torch.save writes a zip archive, or (before 1.6) a pickle
        return f"not a file that torch.save writes: it starts with {head!r}"
    if isinstance(error, pickle.UnpicklingError):  # torch's message is a paragraph; the unpickler's own is its cause
        error = error.__context__ or error
    return _first_line(error).split(". This is an internal")[0] or type(error).__name__


def quiet_transformers() -> None:
    """transformers' own progress bars print even into pipes; ours show on a terminal only."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


SAVE_MODEL = "save model, config and tokenizer together with save_pretrained(folder)"
SAVE_TOKENIZER = "save the tokenizer with tokenizer.save_pretrained(folder)"
TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                  "vocab.json")
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def load_hf_model(model_dir: str | Path, dtype: torch.dtype = torch.float32) -> HFCausalLM:
    """A causal LM from a local folder (config.json, tokenizer files, weights), read weights-only:
    `model*.safetensors` when there are any (a `pytorch_model.bin` beside them is not read), else
    `pytorch_model*.bin` through torch.load(weights_only=True). Each problem is one MvalError naming the file."""
    from transformers import AutoConfig

    quiet_transformers()
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise MvalError(f"--model {model_dir}: no config.json there; give a folder written by save_pretrained")
    safetensors = sorted(model_dir.glob("model*.safetensors"))
    bins = [] if safetensors else sorted(model_dir.glob("pytorch_model*.bin"))
    if not safetensors and not bins:
        raise MvalError(f"--model {model_dir}: no weights (model.safetensors or pytorch_model.bin) in the folder")
    try:
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise MvalError(f"--model {model_dir}: cannot read config.json ({_first_line(e)}); {SAVE_MODEL}") from e
    tokenizer = _load_tokenizer(model_dir)
    return HFCausalLM(_load_module(model_dir, config, safetensors or bins, dtype), tokenizer)


def _load_tokenizer(model_dir: Path):
    """AutoTokenizer from the folder; on failure, say which file is corrupt or that there is none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    except Exception as e:  # the tokenizers library raises a bare Exception for a file it cannot parse
        for path in (model_dir / name for name in TOKENIZER_JSON if (model_dir / name).is_file()):
            try:
                json.loads(path.read_bytes())
            except ValueError as bad:  # JSONDecodeError and UnicodeDecodeError both are
                raise MvalError(f"{path}: not valid JSON ({_first_line(bad)}); {SAVE_TOKENIZER}") from e
        if not any((model_dir / name).is_file() for name in VOCABULARY_FILES):
            raise MvalError(f"--model {model_dir}: no tokenizer files (none of {', '.join(VOCABULARY_FILES)}); "
                            f"{SAVE_TOKENIZER}") from e
        raise MvalError(f"--model {model_dir}: cannot load the tokenizer ({_first_line(e)}); {SAVE_TOKENIZER}") from e


def _check_safetensors(path: Path) -> None:
    """Reads the header only: a garbage or truncated file is refused before transformers maps it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as e:
        raise MvalError(f"{path}: not a readable safetensors file ({_first_line(e)}); "
                        "save the model again with save_pretrained(folder)") from e


@contextmanager
def _no_load_report() -> Iterator[None]:
    """transformers logs a multi-line LOAD REPORT of missing, unexpected and mis-shaped weights and goes
    on; `_check_fit` refuses each of those in one line instead. (A filter, not a higher level: at
    WARNING or above, from_pretrained logs its tensor-parallel plan.)"""
    logger = logging.getLogger("transformers.modeling_utils")

    def not_the_report(record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()

    logger.addFilter(not_the_report)
    try:
        yield
    finally:
        logger.removeFilter(not_the_report)


def _load_module(model_dir: Path, config, files: list[Path], dtype: torch.dtype) -> torch.nn.Module:
    """The causal LM of `config` with the weights of `files` (safetensors, or weights-only .bin state
    dicts), through from_pretrained either way: it ties the output layer to the embeddings when the config
    says so (a tied lm_head.weight may be absent from the file) and reports what does not fit."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise MvalError(f"--model {model_dir}: config.json's model_type {config.model_type!r} is not a causal LM "
                        "that transformers knows; give a causal LM folder")
    names = files[0].name if len(files) == 1 else f"{files[0].name} .. {files[-1].name}"
    where = f"--model {model_dir}: the weights in {names}"
    try:
        if files[0].suffix == ".safetensors":
            for path in files:
                _check_safetensors(path)
            weights = {"pretrained_model_name_or_path": model_dir, "use_safetensors": True, "local_files_only": True}
        else:
            state = {k: v for path in files for k, v in _weights_only_state(path).items()}
            weights = {"pretrained_model_name_or_path": None, "state_dict": state}
        with _no_load_report():
            module, info = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].from_pretrained(
                **weights, config=config, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True)
    except (OSError, RuntimeError, SafetensorError, ValueError) as e:
        if isinstance(e, MvalError):
            raise
        raise MvalError(f"{where} cannot be loaded ({_first_line(e)}); {SAVE_MODEL}") from e
    _check_fit(info, where)
    return module


def _check_fit(info: dict, where: str) -> None:
    """Refuse weights that do not fit the config: transformers initialises a missing or mis-shaped tensor at
    random (and drops an unexpected one), so the model would score as something it is not."""
    missing, unexpected, mismatched = (sorted(info[k]) for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))

    def more(keys: list) -> str:
        return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""

    if missing:
        problem = f"lack {missing[0]!r}{more(missing)}, which config.json asks for"
    elif unexpected:
        problem = f"hold {unexpected[0]!r}{more(unexpected)}, which config.json has no place for"
    elif mismatched:
        key, found, wanted = mismatched[0]
        problem = f"have {key!r} of shape {list(found)}{more(mismatched)}, but config.json asks for {list(wanted)}"
    else:
        return
    raise MvalError(f"{where} {problem}; {SAVE_MODEL}")


def load_model(path: str | Path) -> ConceptModel:
    """The model behind `--model`: a Hugging Face folder, or a Sokoban agent's `.safetensors` file."""
    path = Path(path)
    if path.is_file() and path.match("model*.safetensors") and (path.parent / "config.json").is_file():
        raise MvalError(f"--model {path}: the weights of a Hugging Face model folder; give the folder itself "
                        f"(--model {path.parent})")
    if path.is_file() and path.suffix == ".safetensors":
        from attribution.sokoban.concept_model import load_agent_model

        return load_agent_model(path)
    if path.is_file():
        raise MvalError(f"--model {path}: a file; give a Hugging Face model folder (config.json, tokenizer and "
                        "weights, as save_pretrained writes them) or a Sokoban agent's .safetensors")
    return load_hf_model(path)
