"""The checkpoints of a model's training run, for TracIn (`--method tracin`): found, loaded, checked.

A checkpoint is a model that `--model` accepts (a Sokoban agent's `.safetensors` file, or a Hugging Face
folder); a folder can also hold checkpoints: agents' `.safetensors` files, or Hugging Face subfolders (the
Trainer's `checkpoint-500/`; see `checkpoint_paths`). Every checkpoint must be the same model
as `--model` at another point of its training: the same parameters (names and shapes) and, for a language
model, the same config and tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from attribution.models import ConceptModel, fingerprint, load_model
from mval.errors import MvalError

FIX = "give checkpoints saved during the training of --model (e.g. `mval sokoban train --keep-every N`)"


def checkpoint_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Each path as given, or, for a folder, the models in it in name order: its subfolders with a config.json
    (the Trainer's `checkpoint-N/`, which win over a final model saved beside them) and, in a folder that is not
    a Hugging Face model itself, its `.safetensors` agent files."""
    found = []
    for path in map(Path, paths):
        if not path.exists():
            raise MvalError(f"--checkpoint {path}: no such file or folder; {FIX}")
        if path.is_file():
            found.append(path)
            continue
        if (path / "state.json").is_file() and (path / "optimizer.safetensors").is_file():
            raise MvalError(f"--checkpoint {path}: a `mval sokoban train` run folder; give the agents it kept, "
                            f"--checkpoint {path / 'checkpoints'} (trained with --keep-every N)")
        models = sorted(p.parent for p in path.glob("*/config.json"))
        if not (path / "config.json").is_file():
            models += sorted(path.glob("*.safetensors"))
        elif not models:
            models = [path]
        if not models:
            raise MvalError(f"--checkpoint {path}: a folder with no models in it (no agent .safetensors files, no "
                            f"Hugging Face subfolders with a config.json); {FIX}")
        found.extend(models)
    return found


def load_checkpoint(path: Path) -> ConceptModel:
    """`load_model`, its errors naming --checkpoint rather than --model."""
    try:
        return load_model(path)
    except MvalError as e:
        message = str(e)
        raise MvalError("--checkpoint" + message.removeprefix("--model") if message.startswith("--model")
                        else f"--checkpoint {path}: {message}") from e


def check_same_model(model: ConceptModel, checkpoint: ConceptModel, name: str) -> None:
    """Refuse a checkpoint with other parameters (names, shapes) or, for a language model, other settings."""
    mine = {n: tuple(p.shape) for n, p in model.module.named_parameters()}
    theirs = {n: tuple(p.shape) for n, p in checkpoint.module.named_parameters()}
    if mine != theirs:
        differs = sorted(mine.keys() ^ theirs.keys()) or sorted(n for n in mine if mine[n] != theirs[n])
        raise MvalError(f"--checkpoint {name}: not a checkpoint of --model (parameter {differs[0]} differs: "
                        f"{theirs.get(differs[0])} against {mine.get(differs[0])}); {FIX}")
    settings = getattr(model, "settings", None)
    if settings is not None and settings() != checkpoint.settings():
        changed = sorted(k for k in settings() if settings()[k] != checkpoint.settings().get(k))
        raise MvalError(f"--checkpoint {name}: not a checkpoint of --model (its {', '.join(changed)} differs); {FIX}")


def load_checkpoints(model: ConceptModel, paths: Sequence[str | Path]) -> tuple[ConceptModel, ...]:
    """The checkpoints behind the `--checkpoint` paths, each checked against `model` and given once."""
    checkpoints, seen = [], {}
    for path in checkpoint_paths(paths):
        checkpoint = load_checkpoint(path)
        check_same_model(model, checkpoint, str(path))
        key = fingerprint(checkpoint)
        if key in seen:
            raise MvalError(f"--checkpoint {path}: the same weights as {seen[key]}; give each checkpoint once")
        seen[key] = path
        checkpoints.append(checkpoint)
    return tuple(checkpoints)
