"""Progress bars for long loops over films (tqdm on stderr; silent when stderr is not a terminal)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

__all__ = ["progress", "progress_shown"]

T = TypeVar("T")


def progress_shown() -> bool:
    """Whether progress bars are drawn: only on a terminal (not in logs, servers or pipes). Pass
    it to libraries with their own bar, e.g. MONAI's ``CacheDataset(progress=...)``."""
    return sys.stderr.isatty()


def progress(items: Iterable[T], desc: str, unit: str = "film", total: int | None = None) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar named ``desc``."""
    return iter(tqdm(items, desc=desc, unit=unit, total=total, disable=not progress_shown(), leave=False, dynamic_ncols=True))
