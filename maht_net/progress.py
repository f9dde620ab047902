"""Progress bars for long loops over films (tqdm on stderr; silent when stderr is not a terminal)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

__all__ = ["progress"]

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, unit: str = "film", total: int | None = None) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar named ``desc``."""
    return iter(tqdm(items, desc=desc, unit=unit, total=total, disable=None, leave=False, dynamic_ncols=True))
