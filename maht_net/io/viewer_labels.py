"""Landmarks as viewer labels: disc label maps, Slicer markups and landmark JSON, both ways.

This is the shared, viewer-facing side of the MONAI Label app (``monailabel_app/``), kept here so
the app stays a thin shell and the conversions can be tested without a server.

Geometry. A viewer (3D Slicer, OHIF) places a 2-D image in physical space the way ITK reads
it (:mod:`maht_net.io.geometry`): pixel ``(x, y)`` is ITK index ``(x, y, 0)`` at
``origin + direction @ (spacing * index)`` (LPS mm). :class:`ImageGeometry` holds exactly that
(always 3-D, a 2-D image gets a unit third axis), read from the image file by
:func:`read_geometry`. Label maps written by
:func:`write_label_map` carry the same geometry, so they overlay the image; Slicer markups built
by :func:`viewer_markups` use it for their positions. Note that this is the *viewer's* spacing:
Slicer shows a PNG at 1 mm per pixel whatever the film's real spacing is, while millimetre
measurements (``x_mm``, ``uncertainty_mm``) use the physical spacing known from the DICOM header,
the datalist or the app's configuration.

Label maps. Landmark ``k`` (1-based, the landmark set's order) is a small disc of value ``k``
(:func:`render_label_map`); reading a map back takes the centroid of each value
(:func:`label_map_landmarks`). Every landmark keeps at least its centre pixel even when discs
overlap, so a map from :func:`render_label_map` always holds all values.

Submitted labels (:func:`read_landmark_label`): a disc label map (NRRD, NIfTI, MHA, or PNG/TIFF
of the image's size), a Slicer markups JSON (``*.mrk.json``), a MAHT-Net prediction JSON, or a
plain ``{"landmarks": [[x, y], ...]}`` / ``[[x, y], ...]`` list. Anything incomplete, outside
the image or unreadable raises :class:`~maht_net.errors.InputError` with a message meant for
the annotator.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maht_net.errors import InputError
from maht_net.io.datalist import points_from_json
from maht_net.io.geometry import ImageGeometry, itk_geometry, read_geometry
from maht_net.io.jsonfile import read_json
from maht_net.io.predictions import to_slicer_markups
from maht_net.landmarks import LandmarkSet, get_landmark_set

__all__ = [
    "ImageGeometry",
    "read_geometry",
    "default_disc_radius",
    "render_label_map",
    "label_map_landmarks",
    "write_label_map",
    "read_landmark_label",
    "landmarks_from_json",
    "check_landmarks",
    "viewer_markups",
    "label_names",
    "LABEL_MAP_SUFFIXES",
]

LABEL_MAP_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha", ".mhd", ".png", ".tif", ".tiff", ".bmp")
"""File types accepted as submitted disc label maps (JSON is accepted too, see :func:`read_landmark_label`)."""

_GEOMETRIC = (".nrrd", ".nii", ".nii.gz", ".mha", ".mhd")


def _suffix(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    for s in (".nii.gz", ".mrk.json"):
        if name.endswith(s):
            return s
    return Path(name).suffix


def label_names(landmark_set: str | LandmarkSet = "isbi2015") -> dict[str, int]:
    """``{name: value}`` of the disc label map (value ``k`` = landmark ``k``, 1-based)."""
    lset = get_landmark_set(landmark_set)
    return {lm.name: lm.index for lm in lset}


def default_disc_radius(width: int, height: int) -> int:
    """Disc radius in pixels: about 0.7 % of the shorter side, at least 2 (13 px on a 1935 x 2400 film)."""
    return max(2, int(round(min(width, height) / 150.0)))


def render_label_map(points: np.ndarray, width: int, height: int, radius: float | None = None) -> np.ndarray:
    """``(H, W)`` label map with a disc of value ``k + 1`` around ``points[k]`` (NaN rows skipped).

    Later landmarks are drawn over earlier ones, then every landmark's centre pixel is set again,
    so each placed landmark keeps at least one pixel.
    """
    pts = np.asarray(points, dtype=float)
    radius = float(default_disc_radius(width, height) if radius is None else radius)
    dtype = np.uint8 if len(pts) < 256 else np.uint16
    label = np.zeros((int(height), int(width)), dtype=dtype)
    yy, xx = np.mgrid[0:height, 0:width]
    centres = []
    for k, (x, y) in enumerate(pts):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        x0, x1 = max(0, int(math.floor(x - radius))), min(width, int(math.ceil(x + radius)) + 1)
        y0, y1 = max(0, int(math.floor(y - radius))), min(height, int(math.ceil(y + radius)) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        disc = (xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2 <= radius**2
        label[y0:y1, x0:x1][disc] = k + 1
        centres.append((k, min(max(int(round(x)), 0), width - 1), min(max(int(round(y)), 0), height - 1)))
    counts = np.bincount(label.ravel(), minlength=len(pts) + 1)
    for k, cx, cy in centres:
        if counts[k + 1]:
            continue
        # nearest pixel that is background or whose landmark keeps other pixels
        for r in range(0, max(width, height)):
            y0, y1, x0, x1 = max(0, cy - r), min(height, cy + r + 1), max(0, cx - r), min(width, cx + r + 1)
            window = label[y0:y1, x0:x1]
            free = (window == 0) | (counts[window] > 1)
            if free.any():
                fy, fx = np.nonzero(free)
                i = int(np.argmin((fy + y0 - cy) ** 2 + (fx + x0 - cx) ** 2))
                y, x = fy[i] + y0, fx[i] + x0
                counts[label[y, x]] -= 1
                label[y, x] = k + 1
                counts[k + 1] += 1
                break
    return label


def label_map_landmarks(label: np.ndarray, values: Mapping[int, int], num_landmarks: int, where: Any = None) -> np.ndarray:
    """Centroids ``(x, y)`` (index space) of each value of a 2-D label map.

    Args:
        label: ``(H, W)`` integer label map.
        values: label value -> 0-based landmark position.

    Returns:
        ``(num_landmarks, 2)`` array, NaN for landmarks whose value is absent.
    """
    out = np.full((num_landmarks, 2), np.nan)
    for value, k in values.items():
        ys, xs = np.nonzero(label == value)
        if len(xs):
            out[k] = (xs.mean(), ys.mean())
    return out


def write_label_map(path: str | os.PathLike, label: np.ndarray, geometry: ImageGeometry, compression: bool = True) -> Path:
    """Write an ``(H, W)`` label map as a single-slice 3-D image with the image's geometry.

    The format follows the suffix (``.nrrd``, ``.nii.gz``, ``.nii``, ``.mha``). A 3-D file is
    written on purpose: MONAI Label's stock writer drops the spacing of 2-D arrays, and Slicer
    treats a 2-D image as one slice of a volume anyway.
    """
    import itk

    label = np.asarray(label)
    if label.shape != (geometry.height, geometry.width):
        raise ValueError(f"label map shape {label.shape} does not match the image ({geometry.height}, {geometry.width})")
    image = itk.image_from_array(np.ascontiguousarray(label[None]))
    image.SetSpacing([float(s) for s in geometry.spacing])
    image.SetOrigin([float(o) for o in geometry.origin])
    image.SetDirection(itk.matrix_from_array(np.asarray(geometry.direction, dtype=np.float64)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    itk.imwrite(image, str(path), compression=compression)
    return path


def _value_map(label_info: Any, lset: LandmarkSet) -> dict[int, int] | None:
    """Label value -> landmark position from Slicer's ``label_info`` ([{"name", "idx"}, ...])."""
    if not label_info:
        return None
    if not isinstance(label_info, list) or not all(isinstance(e, Mapping) and "name" in e and "idx" in e for e in label_info):
        raise InputError(None, "label_info must be a list of {'name': segment name, 'idx': label value}")
    values: dict[int, int] = {}
    for entry in label_info:
        name = str(entry["name"])
        if name.strip().lower() == "background":
            continue
        try:
            k = lset.position_of(name)
        except KeyError:
            raise InputError(None, f"segment {name!r} is not a landmark name of {lset.key!r} (expected e.g. {lset.names[0]!r})") from None
        try:
            value = int(entry["idx"])
        except (TypeError, ValueError):
            raise InputError(None, f"segment {name!r}: label value {entry['idx']!r} is not an integer") from None
        if k in values.values():
            raise InputError(None, f"landmark {lset[k].name!r} appears twice in the segments")
        values[value] = k
    return values


def _read_label_array(path: Path, geometry: ImageGeometry) -> tuple[np.ndarray, ImageGeometry | None]:
    """A submitted label map as ``(H', W')`` integers plus its own geometry (None for PNG & co)."""
    import itk

    suffix = _suffix(path)
    try:
        image = itk.imread(str(path))
    except Exception:  # ITK raises RuntimeError with long messages naming the (temporary) file
        raise InputError(None, f"label map is not a readable {suffix} image (corrupt, truncated or another format)") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(None, "label map must have one integer value per pixel (got a multi-component image)")
    array = np.asarray(itk.array_from_image(image))
    lgeom = None
    if suffix in _GEOMETRIC:
        lgeom = itk_geometry(image, path)
    array = np.squeeze(array)
    if array.ndim != 2:
        raise InputError(None, f"label map has shape {array.shape}; a single 2-D slice is expected")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise InputError(None, "label map must hold integer label values (found fractional or NaN values)")
    elif array.dtype.kind not in "iub":
        raise InputError(None, f"label map has unsupported pixel type {array.dtype}")
    return array.astype(np.int64), lgeom


def read_landmark_label(
    path: str | os.PathLike,
    geometry: ImageGeometry,
    landmark_set: str | LandmarkSet = "isbi2015",
    label_info: Any = None,
) -> tuple[np.ndarray, str]:
    """Landmarks ``(N, 2)`` ``(x, y)`` in the image's pixels from a submitted label file.

    Args:
        path: a disc label map (see :data:`LABEL_MAP_SUFFIXES`) or a JSON file (Slicer markups,
            MAHT-Net prediction, ``{"landmarks": [[x, y], ...]}`` or ``[[x, y], ...]``).
        geometry: the image's :class:`ImageGeometry` (label maps and markups are mapped through
            physical space; PNG/TIFF/BMP maps must have the image's size).
        label_info: Slicer's segment list ``[{"name", "idx"}, ...]`` naming label values;
            without it value ``k`` is landmark ``k`` (1-based).

    Returns:
        ``(points, kind)`` with ``kind`` one of ``"labelmap"``, ``"markups"``, ``"json"``.

    Raises:
        InputError: unreadable file, wrong or missing landmarks, points outside the image.
    """
    lset = get_landmark_set(landmark_set)
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise InputError(None, "label file is missing or empty")
    suffix = _suffix(path)
    n = len(lset)
    if suffix in (".json", ".mrk.json"):
        points, kind = landmarks_from_json(read_json(path, "label JSON", name_file=False), geometry, lset)
    elif suffix in LABEL_MAP_SUFFIXES:
        array, lgeom = _read_label_array(path, geometry)
        values = _value_map(label_info, lset) or {k + 1: k for k in range(n)}
        present = set(np.unique(array).tolist()) - {0}
        unknown = sorted(present - set(values))
        if unknown:
            raise InputError(None, f"label map holds values {unknown[:10]} that name no landmark (expected 1..{n}, 0 = background)")
        found = {values[v] for v in present}
        missing = [lset[k].name for k in range(n) if k not in found]
        if missing:
            raise InputError(None, f"label map has {n - len(missing)} of {n} landmarks; missing: {', '.join(missing)}")
        points = label_map_landmarks(array, values, n)
        if lgeom is not None:
            points = geometry.to_pixels(lgeom.to_physical(points))
        elif array.shape != (geometry.height, geometry.width):
            raise InputError(
                None,
                f"label map is {array.shape[1]}x{array.shape[0]} px but the image is {geometry.width}x{geometry.height} px",
            )
        kind = "labelmap"
    else:
        raise InputError(None, f"unsupported label file type {suffix!r}; send a label map ({', '.join(LABEL_MAP_SUFFIXES)}) or a JSON file")
    check_landmarks(points, geometry.width, geometry.height, lset)
    return points, kind


def _markups_points(doc: Mapping[str, Any], geometry: ImageGeometry, lset: LandmarkSet) -> np.ndarray:
    markups = doc.get("markups")
    if not isinstance(markups, list) or not markups:
        raise InputError(None, "markups JSON has no 'markups' list")
    entries: list[tuple[str, np.ndarray]] = []
    for m in markups:
        if not isinstance(m, Mapping) or m.get("type", "Fiducial") != "Fiducial":
            continue
        system = str(m.get("coordinateSystem", "LPS")).upper()
        if system not in ("LPS", "RAS"):
            raise InputError(None, f"markups coordinateSystem {system!r} is not supported (LPS or RAS)")
        if str(m.get("coordinateUnits", "mm")) != "mm":
            raise InputError(None, f"markups coordinateUnits {m.get('coordinateUnits')!r} is not supported (mm)")
        for cp in m.get("controlPoints") or []:
            if not isinstance(cp, Mapping):
                raise InputError(None, "a markups control point is not an object")
            if cp.get("positionStatus", "defined") != "defined":
                continue
            pos = cp.get("position")
            if (
                not isinstance(pos, (list, tuple))
                or len(pos) != 3
                or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in pos)
            ):
                raise InputError(None, f"control point {cp.get('label', '?')!r}: position must be 3 finite numbers")
            p = np.asarray(pos, dtype=float)
            if system == "RAS":
                p[:2] = -p[:2]
            entries.append((str(cp.get("label", "")), p))
    if not entries:
        raise InputError(None, "markups JSON has no defined fiducial points")
    positions = _assign(entries, lset, "control point")
    points = np.full((len(lset), 2), np.nan)
    for k, p in positions.items():
        points[k] = geometry.to_pixels(p[None])[0]
    return points


def _assign(entries: Sequence[tuple[str, Any]], lset: LandmarkSet, what: str) -> dict[int, Any]:
    """Landmark position -> value, by label when every label names a landmark, else by order."""
    n = len(lset)
    by_label: dict[int, Any] = {}
    labelled = True
    for label, value in entries:
        try:
            k = lset.position_of(label)
        except KeyError:
            labelled = False
            break
        if k in by_label:
            raise InputError(None, f"landmark {lset[k].name!r} is given twice")
        by_label[k] = value
    if labelled:
        missing = [lset[k].name for k in range(n) if k not in by_label]
        if missing:
            raise InputError(None, f"{len(by_label)} of {n} landmarks given; missing: {', '.join(missing)}")
        return by_label
    if len(entries) != n:
        bad = next(label for label, _ in entries if not _names_landmark(label, lset))
        raise InputError(None, f"{len(entries)} {what}s given, expected {n}; {what} {bad!r} is not a landmark name of {lset.key!r}")
    return {k: value for k, (_, value) in enumerate(entries)}


def _names_landmark(label: str, lset: LandmarkSet) -> bool:
    try:
        lset.position_of(label)
        return True
    except KeyError:
        return False


def landmarks_from_json(doc: Any, geometry: ImageGeometry, landmark_set: str | LandmarkSet = "isbi2015") -> tuple[np.ndarray, str]:
    """Pixel landmarks from a parsed JSON label (see :func:`read_landmark_label`); not range-checked."""
    lset = get_landmark_set(landmark_set)
    n = len(lset)
    if isinstance(doc, Mapping) and "markups" in doc:
        return _markups_points(doc, geometry, lset), "markups"
    rows = doc.get("landmarks") if isinstance(doc, Mapping) else doc
    if not isinstance(rows, list):
        raise InputError(None, "label JSON must be Slicer markups, a prediction with 'landmarks', or a list of [x, y]")
    if rows and all(isinstance(r, Mapping) for r in rows):
        entries = []
        for i, r in enumerate(rows):
            x, y = r.get("x"), r.get("y")
            if x is None or y is None:
                raise InputError(None, f"landmark {r.get('name', i + 1)!r} has no position (x/y null)")
            if not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in (x, y)):
                raise InputError(None, f"landmark {r.get('name', i + 1)!r}: x and y must be finite numbers")
            label = r.get("name") or r.get("abbreviation") or (str(r["index"]) if "index" in r else "")
            entries.append((str(label), (float(x), float(y))))
        positions = _assign(entries, lset, "landmark")
        return np.array([positions[k] for k in range(n)], dtype=float), "json"

    points = points_from_json(rows, n, None, what="label landmarks")
    missing = [lset[k].name for k in range(n) if not np.all(np.isfinite(points[k]))]
    if missing:
        raise InputError(None, f"{n - len(missing)} of {n} landmarks given; missing: {', '.join(missing)}")
    return points, "json"


def check_landmarks(points: np.ndarray, width: int, height: int, landmark_set: str | LandmarkSet = "isbi2015") -> None:
    """Every landmark present and inside the image (pixel centres span ``[-0.5, W - 0.5]``).

    Raises:
        InputError: naming the first offending landmarks.
    """
    lset = get_landmark_set(landmark_set)
    points = np.asarray(points, dtype=float)
    if points.shape != (len(lset), 2):
        raise InputError(None, f"expected {len(lset)} landmarks, got {points.shape[0] if points.ndim else 0}")
    missing = [lset[k].name for k in range(len(lset)) if not np.all(np.isfinite(points[k]))]
    if missing:
        raise InputError(None, f"missing landmarks: {', '.join(missing)}")
    outside = [
        f"{lset[k].index} {lset[k].name} at ({x:.1f}, {y:.1f})"
        for k, (x, y) in enumerate(points)
        if not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5)
    ]
    if outside:
        raise InputError(None, f"landmarks outside the {width}x{height} px image: {'; '.join(outside[:5])}")


def viewer_markups(pred: Mapping[str, Any], geometry: ImageGeometry) -> dict[str, Any]:
    """Slicer markups (LPS mm) for a prediction, placed with the *viewer's* geometry of the image
    (:func:`~maht_net.io.predictions.to_slicer_markups` with ``geometry``), so the fiducials sit
    on the anatomy even where the physical spacing used for ``*_mm`` differs from what the viewer
    assumes (PNG)."""
    return to_slicer_markups(dict(pred), geometry)
