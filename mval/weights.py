"""Reading mval's own safetensors files (probes, agents, policies): tensors and metadata, never pickle."""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open

from mval.errors import MvalError


def read_safetensors(path: str | Path, kind: str, fix: str, fmt: str | None = None, framework: str = "np",
                     label: str = "") -> tuple[dict[str, str], dict]:
    """(metadata, tensors) of `path`, refused in one line unless it is a safetensors file whose
    metadata has format=`fmt` (when given). `kind` names the file ("probe file"), `fix` says how to
    make one, `label` prefixes the message (e.g. "--concept ")."""
    path = Path(path)
    where = f"{label}{path}"
    if not path.is_file():
        raise MvalError(f"{where}: no such {kind}; {fix}")
    try:
        with safe_open(str(path), framework=framework) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise MvalError(f"{where}: not a safetensors {kind} ({e}); {fix}") from e
    if fmt is not None and meta.get("format") != fmt:
        raise MvalError(f"{where}: not an mval {kind} (no format={fmt} metadata); {fix}")
    return meta, tensors
