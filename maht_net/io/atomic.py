"""Atomic file writing: a reader sees the old file or the complete new one, never a part."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["TEMP_SUFFIX", "atomic_write", "write_json_atomic", "remove_unfinished_writes"]

TEMP_SUFFIX = ".tmp"
"""Suffix of the hidden temporary file ``.<name>.<random>.tmp`` that :func:`atomic_write` renames."""


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched. The file gets
    the mode ``open(path, "w")`` gives a new file (``0o666`` less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, _new_file_mode())
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _new_file_mode() -> int:
    """``0o666`` less the process umask (which can only be read by setting it: the strict value
    set in between can tighten, never loosen, a file another thread creates meanwhile)."""
    umask = os.umask(0o077)
    os.umask(umask)
    return 0o666 & ~umask


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (NaN is refused: use ``None``)."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, allow_nan=False)
        f.write("\n")


def remove_unfinished_writes(directory: str | os.PathLike, target: str = "*", recursive: bool = False, suffix: str = TEMP_SUFFIX) -> list[Path]:
    """Delete the hidden temporary files ``.<target>.<random><suffix>`` that writes killed before
    their rename left in ``directory`` (and below it when ``recursive``); returns them."""
    pattern = f".{target}.*{suffix}"
    found = [p for p in (Path(directory).rglob(pattern) if recursive else Path(directory).glob(pattern)) if p.is_file()]
    for path in found:
        path.unlink(missing_ok=True)
    return found
