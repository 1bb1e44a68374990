"""Shared fixtures: real files in a temporary folder, real stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner

from attribution.examples import Example
from attribution.models import load_hf_model
from attribution.testbed import COLORS, HOSTILE, NOUNS, tiny_model
from cli import main
from mval.store import add_event_cells, init_store


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """An empty store."""
    return init_store(tmp_path / "store.duckdb")


def as_ingested(con, ingest_id: int, logger: str, rows: int) -> None:
    """Events written straight into `events` as ingest `ingest_id` get what `mval ingest` adds with them:
    an `ingests` row and their counted cells."""
    con.execute("INSERT INTO ingests (ingest_id, path, content_hash, format, logger, rows, first_event) "
                "VALUES (?, 'test', ?, 'generic', ?, ?, 0)",
                [ingest_id, f"test-{ingest_id}", logger, rows])
    add_event_cells(con, ingest_id)


def write_obd_csv(path: Path, rows: int = 200, n_items: int = 8, seed: int = 0) -> pl.DataFrame:
    """A file in the Open Bandit Dataset's published layout (random campaign: uniform propensity)."""
    rng = np.random.default_rng(seed)
    users = [f"{h:032x}" for h in rng.integers(0, 2**62, size=4)]
    frame = pl.DataFrame({
        "": np.arange(rows),
        "timestamp": [f"2019-11-24 00:{i // 60 % 60:02d}:{i % 60:02d}.000001+00:00" for i in range(rows)],
        "item_id": rng.integers(n_items, size=rows),
        "position": rng.integers(1, 4, size=rows),
        "click": (rng.random(rows) < 0.1).astype(int),
        "propensity_score": np.full(rows, 1 / n_items),
        **{f"user_feature_{j}": rng.choice(users, size=rows) for j in range(4)},
        **{f"user-item_affinity_{j}": rng.integers(0, 3, size=rows).astype(float) for j in range(n_items)},
    })
    frame.write_csv(path)
    return frame


def generic_log(rows: int = 100, n_actions: int = 4, seed: int = 0) -> pl.DataFrame:
    """A log in the store's own column names, uniform logger."""
    rng = np.random.default_rng(seed)
    return pl.DataFrame({
        "context_id": [f"u{i}" for i in rng.integers(5, size=rows)],
        "features": rng.normal(size=(rows, 3)).tolist(),
        "action": rng.integers(n_actions, size=rows),
        "propensity": np.full(rows, 1 / n_actions),
        "reward": rng.random(rows),
        "action_probs": np.full((rows, n_actions), 1 / n_actions).tolist(),
    })


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny randomly initialised Llama-style LM (2 layers, width 16), in float64 for exact comparisons."""
    return load_hf_model(tiny_model(tmp_path_factory.mktemp("m") / "tiny", d_model=16, n_layers=2, seed=2),
                         dtype=torch.float64)


def qa(n: int, seed: int) -> list[Example]:
    """n question/answer examples whose answers mix colour and hostile words."""
    rng = np.random.default_rng(seed)
    return [Example(f"e{i}", f"question : what color is the {rng.choice(NOUNS)} ?",
                    " ".join(["answer :", *rng.choice(COLORS + HOSTILE, size=rng.integers(2, 6))]))
            for i in range(n)]


def run_cli(*args, ok: bool = True):
    """`mval ARGS...` in-process; with ok, assert it succeeded (the output is in the message if not)."""
    result = CliRunner().invoke(main, [str(a) for a in args], prog_name="mval")
    if ok:
        assert result.exit_code == 0, result.output
    return result
