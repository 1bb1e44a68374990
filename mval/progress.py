"""Progress bars that appear on a terminal only (never in pipes, CI logs or JSON output)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """Wrap `items` in a tqdm bar on stderr when stderr is a terminal."""
    return tqdm(items, desc=desc, total=total, disable=not sys.stderr.isatty(), leave=False)
