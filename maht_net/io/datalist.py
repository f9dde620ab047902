"""Datalists: MONAI decathlon-style JSON describing images and their landmarks.

File layout::

    {"description": str, "landmark_set": "isbi2015", "num_landmarks": 19,
     "coordinate_convention": str,
     "training": [item, ...], "validation": [...], "test": [...], ...}

    item = {"image": path, "landmarks": [[x, y] | null, ...], "spacing": [sx, sy] | null,
            "id": str}

``"drawn_from": {"validation": "training"}`` (optional) declares a section whose items are taken
from another section on purpose (a model trained on every film, monitored on some of them), so
an audit does not count them as films leaking between sections.

Points are ``(x, y)`` pixels of the original image (see :mod:`maht_net.landmarks`); a missing
landmark is ``null``. Image paths are stored relative to the datalist's folder when they lie
below it or beside it, and are resolved against ``base_dir`` (default: that folder) on loading.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maht_net.errors import InputError
from maht_net.io.atomic import write_json_atomic
from maht_net.io.jsonfile import read_json
from maht_net.landmarks import COORDINATE_CONVENTION, LandmarkSet, get_landmark_set

__all__ = [
    "datalist_root",
    "make_item",
    "points_to_json",
    "points_from_json",
    "write_datalist",
    "read_datalist",
    "datalist_sections",
    "parse_items",
    "load_datalist",
]


def points_to_json(points: np.ndarray) -> list[list[float] | None]:
    """``(N, 2)`` array of ``(x, y)`` with NaN rows for missing -> JSON list with ``None``."""
    points = np.asarray(points, dtype=float)
    return [None if not np.all(np.isfinite(p)) else [float(p[0]), float(p[1])] for p in points]


def points_from_json(
    values: Sequence[Any], num_landmarks: int, where: str | os.PathLike | None = None, what: str = "landmarks"
) -> np.ndarray:
    """JSON list of ``[x, y]`` or ``null`` (or an ``(N, 2)`` array, NaN rows for missing) ->
    ``(N, 2)`` float array, NaN for missing.

    Raises:
        InputError: wrong count, a non-numeric or non-finite coordinate, or a malformed point.
    """
    if isinstance(values, np.ndarray) and values.ndim == 2 and values.shape[1] == 2:
        values = points_to_json(values)
    if not isinstance(values, (list, tuple)):
        raise InputError(where, f"{what} must be a list of [x, y] or null, got {type(values).__name__}")
    if len(values) != num_landmarks:
        raise InputError(where, f"{what} has {len(values)} points, expected {num_landmarks}")
    out = np.full((num_landmarks, 2), np.nan)
    for k, p in enumerate(values):
        if p is None:
            continue
        if (
            not isinstance(p, (list, tuple))
            or len(p) != 2
            or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in p)
            or not all(math.isfinite(c) for c in p)
        ):
            raise InputError(where, f"{what}[{k}] must be [x, y] with finite numbers or null, got {p!r}")
        out[k] = p
    return out


def make_item(
    image: str | os.PathLike,
    landmarks: np.ndarray,
    spacing: Sequence[float] | None,
    item_id: str,
    **extra: Any,
) -> dict[str, Any]:
    """Build one datalist item from an ``(N, 2)`` ``(x, y)`` array (NaN = missing)."""
    item = {
        "image": os.fspath(image),
        "landmarks": points_to_json(landmarks),
        "spacing": None if spacing is None else [float(spacing[0]), float(spacing[1])],
        "id": str(item_id),
    }
    item.update(extra)
    return item


def _relative_to(path: str, folder: Path) -> str:
    p = Path(path)
    if not p.is_absolute():
        return path
    try:
        return os.path.relpath(p, folder)
    except ValueError:  # different drive (Windows)
        return path


def write_datalist(
    path: str | os.PathLike,
    sections: Mapping[str, Iterable[Mapping[str, Any]]],
    landmark_set: str | LandmarkSet = "isbi2015",
    description: str = "",
    relative_paths: bool = True,
    **extra: Any,
) -> Path:
    """Write a datalist atomically; absolute image paths become relative to its folder."""
    path = Path(path).absolute()
    lset = get_landmark_set(landmark_set)
    doc: dict[str, Any] = {
        "description": description,
        "landmark_set": lset.key,
        "num_landmarks": len(lset),
        "coordinate_convention": COORDINATE_CONVENTION,
        **extra,
    }
    for name, items in sections.items():
        rows = []
        for item in items:
            row = dict(item)
            if relative_paths:
                row["image"] = _relative_to(os.fspath(row["image"]), path.parent)
            rows.append(row)
        doc[name] = rows
    write_json_atomic(path, doc)
    return path


def read_datalist(path: str | os.PathLike) -> dict[str, Any]:
    """Read a datalist file as raw JSON, with a clear error when it is missing or malformed."""
    doc = read_json(path, "datalist")
    if not isinstance(doc, dict):
        raise InputError(path, "a datalist must be a JSON object with sections such as 'training'")
    return doc


def datalist_sections(doc: dict[str, Any]) -> list[str]:
    """The section names of a raw datalist: its list values, except lists of names (metadata
    such as ``"sites": ["hamedan", "isbi2015"]``)."""
    return [k for k, v in doc.items() if isinstance(v, list) and not (v and all(isinstance(x, str) for x in v))]


def parse_items(
    items: Sequence[Any],
    num_landmarks: int,
    base_dir: str | os.PathLike | None = None,
    source: str | os.PathLike = "data",
    check_files: bool = False,
) -> list[dict[str, Any]]:
    """Validate datalist items and bring them to the loaded form.

    ``items`` are the entries of a section as the datalist file holds them (``landmarks`` a list
    of ``[x, y]`` or ``null``), or as this function returns them (``landmarks`` an ``(N, 2)``
    array): the bundle's ``train#dataset#data`` takes either, so MONAI Label or MONAI FL can set
    it to their own item lists. Relative image paths are resolved against ``base_dir`` (default:
    the working directory).

    Returns:
        Items with ``image`` as an absolute path string, ``landmarks`` (when given) as an
        ``(N, 2)`` ``(x, y)`` float array (NaN = missing), ``spacing`` as ``(sx, sy)`` floats or
        ``None`` and ``id`` (default: the image's file name without suffix).

    Raises:
        InputError: naming ``source[i]`` and the first problem of that item.
    """
    if not isinstance(items, (list, tuple)):
        raise InputError(source, f"must be a list of items, got {type(items).__name__}")
    base = Path(base_dir) if base_dir is not None else Path()
    out = []
    for i, raw in enumerate(items):
        where = f"{source}[{i}]"
        if not isinstance(raw, Mapping) or "image" not in raw:
            raise InputError(where, "item must be an object with at least an 'image' path")
        item = dict(raw)
        image = Path(os.path.expanduser(str(raw["image"])))
        item["image"] = str(image if image.is_absolute() else (base / image).resolve())
        item["id"] = str(raw.get("id") or Path(raw["image"]).stem)
        if check_files and not Path(item["image"]).is_file():
            raise InputError(where, f"image file not found: {item['image']}")
        if raw.get("landmarks") is not None:
            item["landmarks"] = points_from_json(raw["landmarks"], num_landmarks, where)
        spacing = raw.get("spacing")
        if spacing is not None:
            if (
                not isinstance(spacing, (list, tuple))
                or len(spacing) != 2
                or not all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in spacing)
            ):
                raise InputError(where, f"spacing must be [sx, sy] in mm (positive) or null, got {spacing!r}")
            item["spacing"] = (float(spacing[0]), float(spacing[1]))
        else:
            item["spacing"] = None
        out.append(item)
    return out


def datalist_root(path: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder a datalist's relative image paths start from: ``base_dir`` when given, else the
    file's ``data_root`` entry, relative to the folder above the datalist's own (the repository,
    for ``datalists/*.json``: datalists/README.md), else None (paths relative to the datalist)."""
    if base_dir is not None:
        return Path(base_dir)
    data_root = read_datalist(path).get("data_root")
    return Path(path).absolute().parent.parent / data_root if data_root else None


def load_datalist(
    path: str | os.PathLike,
    section: str | Sequence[str] = "training",
    base_dir: str | os.PathLike | None = None,
    landmark_set: str | LandmarkSet | None = None,
    check_files: bool = False,
) -> list[dict[str, Any]]:
    """Load and validate items of one or more sections (see :func:`parse_items`); image paths are
    resolved against ``base_dir`` (default: the datalist's ``data_root``, else its folder:
    :func:`datalist_root`).

    Raises:
        InputError: naming the datalist and the item for every problem found first.
    """
    path = Path(path)
    doc = read_datalist(path)
    lset = get_landmark_set(landmark_set or doc.get("landmark_set", "isbi2015"))
    n = len(lset)
    if "num_landmarks" in doc and doc["num_landmarks"] != n:
        raise InputError(path, f"num_landmarks is {doc['num_landmarks']}, landmark set {lset.key!r} has {n}")
    base = datalist_root(path, base_dir) or path.absolute().parent
    sections = [section] if isinstance(section, str) else list(section)
    out = []
    for sec in sections:
        if sec not in doc:
            present = datalist_sections(doc)
            raise InputError(path, f"no section {sec!r} (sections present: {present})")
        if not isinstance(doc[sec], list):
            raise InputError(path, f"section {sec!r} must be a list of items")
        out += parse_items(doc[sec], n, base, f"{path} [{sec}]", check_files)
    return out
