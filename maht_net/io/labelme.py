"""LabelMe point files: reading raw shapes and writing landmark files.

A LabelMe file holds ``shapes``; each landmark is a ``point`` shape with one ``(x, y)`` point in
pixels of the image (x = column, y = row, origin top-left). Labels are ``l1`` .. ``lN`` or
landmark names/abbreviations (see :meth:`maht_net.landmarks.LandmarkSet.position_of`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maht_net.errors import InputError
from maht_net.io.atomic import write_json_atomic
from maht_net.io.jsonfile import read_json
from maht_net.landmarks import LandmarkSet, get_landmark_set

__all__ = ["LabelMePoint", "LabelMeFile", "read_labelme", "write_labelme"]


@dataclass(frozen=True)
class LabelMePoint:
    """One point shape as written: its label, ``(x, y)`` position and order in the file."""

    label: str
    x: float
    y: float
    order: int


@dataclass
class LabelMeFile:
    path: str
    image_path: str | None
    width: int | None
    height: int | None
    points: list[LabelMePoint]
    ignored_shapes: list[str]


def read_labelme(path: str | os.PathLike) -> LabelMeFile:
    """Read every ``point`` shape of a LabelMe JSON file, without interpreting labels.

    Raises:
        InputError: unreadable JSON, no ``shapes`` list, a point without two finite numbers.
    """
    path = Path(path)
    doc = read_json(path, "LabelMe JSON file")
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
        raise InputError(path, "not a LabelMe file: no 'shapes' list")
    points, ignored = [], []
    for order, shape in enumerate(doc["shapes"]):
        label = str(shape.get("label", ""))
        if shape.get("shape_type", "point") != "point":
            ignored.append(f"{label!r} ({shape.get('shape_type')})")
            continue
        pts = shape.get("points")
        if (
            not isinstance(pts, list)
            or len(pts) != 1
            or not isinstance(pts[0], (list, tuple))
            or len(pts[0]) != 2
            or not all(isinstance(c, (int, float)) and math.isfinite(c) for c in pts[0])
        ):
            raise InputError(path, f"shape {order} ({label!r}) must hold exactly one [x, y] point, got {pts!r}")
        points.append(LabelMePoint(label, float(pts[0][0]), float(pts[0][1]), order))

    def _int(v):
        return int(v) if isinstance(v, (int, float)) else None

    return LabelMeFile(
        path=str(path),
        image_path=doc.get("imagePath"),
        width=_int(doc.get("imageWidth")),
        height=_int(doc.get("imageHeight")),
        points=points,
        ignored_shapes=ignored,
    )


def write_labelme(
    path: str | os.PathLike,
    image_path: str,
    width: int,
    height: int,
    points: np.ndarray,
    landmark_set: str | LandmarkSet = "isbi2015",
) -> None:
    """Write landmarks as a LabelMe 5 file with labels ``l1`` .. ``lN`` (NaN rows are left out).

    Args:
        points: ``(N, 2)`` ``(x, y)`` pixels; ``NaN`` for a missing landmark.
        image_path: stored as ``imagePath`` (relative to the JSON file, as LabelMe does).
    """
    lset = get_landmark_set(landmark_set)
    points = np.asarray(points, dtype=float)
    if points.shape != (len(lset), 2):
        raise ValueError(f"points must have shape ({len(lset)}, 2), got {points.shape}")
    shapes = [
        {
            "label": f"l{k + 1}",
            "points": [[float(x), float(y)]],
            "group_id": None,
            "description": lset[k].name,
            "shape_type": "point",
            "flags": {},
        }
        for k, (x, y) in enumerate(points)
        if np.isfinite(x) and np.isfinite(y)
    ]
    doc = {
        "version": "5.0.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": int(height),
        "imageWidth": int(width),
    }
    write_json_atomic(path, doc)
