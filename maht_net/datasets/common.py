"""Helpers shared by the data-set readers: bounds checks, cross-validation folds, staged outputs.

Points follow :mod:`maht_net.landmarks`: ``(N, 2)`` arrays of ``(x, y)`` pixels, x = column,
y = row, origin at the centre of the top-left pixel, NaN = missing. An image of ``W x H`` pixels
covers ``-0.5 <= x <= W - 0.5`` and ``-0.5 <= y <= H - 0.5``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maht_net.errors import InputError
from maht_net.landmarks import LandmarkSet

__all__ = ["require_inside", "cross_validation_folds", "fold_sections", "fold_count", "staged_folder", "save_png"]


def require_inside(
    points: np.ndarray, width: int, height: int, lset: LandmarkSet, where: str | os.PathLike
) -> None:
    """Raise unless every present point of ``points`` (``(N, 2)`` ``(x, y)``) lies on the image.

    Raises:
        InputError: naming ``where`` and the first landmark outside the ``width x height`` image.
    """
    for k, (x, y) in enumerate(np.asarray(points, dtype=float)):
        if np.isfinite(x) and np.isfinite(y) and not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5):
            raise InputError(
                where,
                f"landmark {k + 1} ({lset[k].name}) at ({x:g}, {y:g}) is outside the {width}x{height} image",
            )


def cross_validation_folds(ids: Sequence[str], folds: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """Split ``ids`` into ``folds`` disjoint validation parts of near-equal size (seeded shuffle).

    Returns:
        One ``(training_ids, validation_ids)`` pair per fold, each list sorted; every id is in
        exactly one validation part, and training is the rest.
    """
    if not 2 <= folds <= len(ids):
        raise ValueError(f"folds must be between 2 and the number of items ({len(ids)}), got {folds}")
    order = np.random.default_rng(seed).permutation(len(ids))
    parts = [sorted(ids[i] for i in part) for part in np.array_split(order, folds)]
    return [(sorted(i for j, p in enumerate(parts) if j != k for i in p), parts[k]) for k in range(folds)]


def fold_sections(items: Sequence[dict[str, Any]], folds: int, seed: int = 0) -> list[dict[str, list[dict[str, Any]]]]:
    """Datalist items -> one ``{"training": [...], "validation": [...]}`` per fold (see above)."""
    by_id = {item["id"]: item for item in items}
    return [
        {"training": [by_id[i] for i in train], "validation": [by_id[i] for i in val]}
        for train, val in cross_validation_folds(list(by_id), folds, seed)
    ]


def fold_count(text: str) -> int:
    """``argparse`` type for a number of cross-validation folds: 0 (none) or at least 2."""
    folds = int(text)
    if folds == 1 or folds < 0:
        raise argparse.ArgumentTypeError(f"folds must be 0 (no cross-validation) or at least 2, got {folds}")
    return folds


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success move its files into ``target``.

    Files written there appear in ``target`` only if the block completes (each moved with an
    atomic rename, replacing a file of the same name); on an exception the temporary folder is
    removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield stage
        target.mkdir(exist_ok=True)
        for f in sorted(stage.iterdir()):
            os.replace(f, target / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a ``(H, W)`` grey image as PNG: ``uint8``/``uint16`` as is, float ``[0, 1]`` as 8-bit."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype.kind == "f":
        image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    if image.dtype not in (np.uint8, np.uint16) or image.ndim != 2:
        raise ValueError(f"expected a (H, W) uint8, uint16 or float image, got {image.dtype} {image.shape}")
    Image.fromarray(image).save(path, format="PNG")
