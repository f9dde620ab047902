"""The prediction output format: JSON (the reference), 3D Slicer markups and CSV.

One image gives ``<id>_landmarks.json``::

    {"format": "maht-net-landmarks", "format_version": 1, "image": path, "id": str,
     "width": W, "height": H, "spacing": [sx, sy] | null, "origin": [x0, y0],
     "spacing_source": "fallback",   # only when spacing is the user's default for files stating none
     "landmark_set": "isbi2015", "coordinate_convention": str,
     "landmarks": [{"index": 1, "name": "sella", "abbreviation": "S", "x": float, "y": float,
                    "x_mm": float | null, "y_mm": float | null,
                    "uncertainty_px": float | null, "uncertainty_mm": float | null,
                    "covariance_px": [[cxx, cxy], [cxy, cyy]] | null,
                    "confidence": float | null,
                    "coarse_x": float | null, "coarse_y": float | null,   # two-stage models only
                    "coarse_uncertainty_px": float | null}, ...],
     "stages": ["coarse", "refine"],   # two-stage models only
     "refinement": {"film_spacing_mm": [sx, sy], "film_spacing_from": "given" | "estimated" | "default",
                    "patch_shift_mm": float},  # likewise
     "uncertainty_calibration": {...} | null,
     "measurements": {...}}   # optional: maht_net.clinical.analysis.analyze_prediction (SNA, ANB, ...)

``spacing`` is the film's file's (DICOM, NRRD...) or the datalist item's; a film stating none takes
the user's default when one is set (``maht-net infer --spacing``, the app's ``default_spacing``:
:class:`~maht_net.inference.predictor.Predictor`'s ``default_spacing``), and the document then
says ``"spacing_source": "fallback"``.

``x``/``y`` are pixels of the original image (x = column, y = row, origin top-left pixel
centre); a landmark that could not be placed has ``x = y = null``. Beside it,
``<id>_landmarks.mrk.json`` (Slicer markups point list, LPS mm, in the geometry 3D Slicer gives the
image file: see :func:`to_slicer_markups`) and ``<id>_landmarks.csv``.

Uncertainty (:mod:`maht_net.codec.uncertainty`): ``covariance_px`` is the landmark's Gaussian error
model over ``(x, y)`` original pixels (its 95 % ellipse is what reports draw) and
``uncertainty_px = sqrt(cxx + cyy)`` its RMS radial size. When ``uncertainty_calibration`` is
set (the fitted record: method, per-landmark ``scale``, the section it was fitted on), both
are calibrated: ``uncertainty_px`` is the expected RMS error; when it is ``null`` they are the
network's raw spread, which over-states the error on real films.

Two stages (``docs/refinement.md``): when the model refines the first stage's landmarks on the
full-resolution film, ``x``/``y``, the uncertainty and the confidence are the two stages' combined
ones (``uncertainty_calibration``: the refinement stage's record, fitted on that combination),
the document lists ``"stages": ["coarse", "refine"]`` and each landmark keeps the first stage's
point and spread as ``coarse_x``/``coarse_y``/``coarse_uncertainty_px``. ``refinement`` says at
which mm per film pixel the second stage cut its patches: the film's spacing (``given``: its file
or the user's), else ``estimated`` from the size of the first stage's landmark constellation (PNG,
JPEG: the ``mm`` fields stay ``null``, only the patches use it), else the stage's ``default``, and
``patch_shift_mm`` its test-time patch shifts (0: one centred patch per landmark). Documents of
single-stage models have none of these keys (unchanged from before the refinement stage).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maht_net.errors import InputError
from maht_net.io.atomic import atomic_write, write_json_atomic
from maht_net.io.geometry import ImageGeometry, read_geometry
from maht_net.io.jsonfile import read_json
from maht_net.landmarks import COORDINATE_CONVENTION, LandmarkSet, get_landmark_set

__all__ = [
    "PREDICTION_SUFFIX",
    "MARKUPS_SUFFIX",
    "CSV_SUFFIX",
    "SLICER_MARKUPS_SCHEMA",
    "build_prediction",
    "prediction_points",
    "prediction_uncertainty",
    "read_prediction",
    "to_slicer_markups",
    "to_csv",
    "write_prediction",
    "find_predictions",
]

PREDICTION_SUFFIX = "_landmarks.json"
MARKUPS_SUFFIX = "_landmarks.mrk.json"
CSV_SUFFIX = "_landmarks.csv"
SLICER_MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)


def _opt(v: Any) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def build_prediction(
    image: str | os.PathLike,
    width: int,
    height: int,
    points: np.ndarray,
    spacing: Sequence[float] | None = None,
    uncertainty_px: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    landmark_set: str | LandmarkSet = "isbi2015",
    item_id: str | None = None,
    origin: Sequence[float] = (0.0, 0.0),
    covariance_px: np.ndarray | None = None,
    uncertainty_calibration: dict[str, Any] | None = None,
    coarse_points: np.ndarray | None = None,
    coarse_uncertainty_px: np.ndarray | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Assemble the prediction document for one image.

    Args:
        points: ``(N, 2)`` ``(x, y)`` pixels of the original image; NaN rows = not placed.
        spacing: ``(sx, sy)`` mm/px or ``None`` (then every ``*_mm`` field is ``null``).
        uncertainty_px: ``(N,)`` radial spread in pixels, converted to mm with the mean spacing.
        confidence: ``(N,)`` in ``[0, 1]``.
        covariance_px: ``(N, 2, 2)`` over ``(x, y)`` pixels (``null`` where not finite).
        uncertainty_calibration: the calibration record applied to both, or ``None`` (raw).
        coarse_points, coarse_uncertainty_px: the first stage's ``(N, 2)`` points and ``(N,)``
            spread when ``points`` are the refinement stage's (adds ``coarse_*`` and ``stages``).
    """
    lset = get_landmark_set(landmark_set)
    points = np.asarray(points, dtype=float)
    if points.shape != (len(lset), 2):
        raise ValueError(f"points must have shape ({len(lset)}, 2), got {points.shape}")
    sx, sy = (float(spacing[0]), float(spacing[1])) if spacing is not None else (None, None)
    rows = []
    for k, lm in enumerate(lset):
        x, y = (_opt(points[k, 0]), _opt(points[k, 1]))
        if x is None or y is None:
            x = y = None
        unc = None if uncertainty_px is None else _opt(uncertainty_px[k])
        cov = None if covariance_px is None or not np.all(np.isfinite(covariance_px[k])) else np.asarray(covariance_px[k], dtype=float).tolist()
        rows.append(
            {
                "index": lm.index,
                "name": lm.name,
                "abbreviation": lm.abbreviation,
                "x": x,
                "y": y,
                "x_mm": None if x is None or sx is None else origin[0] + x * sx,
                "y_mm": None if y is None or sy is None else origin[1] + y * sy,
                "uncertainty_px": unc,
                "uncertainty_mm": None if unc is None or sx is None else unc * (sx + sy) / 2.0,
                "covariance_px": cov,
                "confidence": None if confidence is None else _opt(confidence[k]),
            }
        )
        if coarse_points is not None:
            cx, cy = _opt(coarse_points[k][0]), _opt(coarse_points[k][1])
            rows[-1].update(
                coarse_x=None if cy is None else cx,
                coarse_y=None if cx is None else cy,
                coarse_uncertainty_px=None if coarse_uncertainty_px is None else _opt(coarse_uncertainty_px[k]),
            )
    if coarse_points is not None:
        extra = {"stages": ["coarse", "refine"], **extra}
    image = os.fspath(image)
    return {
        "format": "maht-net-landmarks",
        "format_version": 1,
        "image": image,
        "id": item_id if item_id is not None else Path(image).name.split(".")[0],
        "width": int(width),
        "height": int(height),
        "spacing": None if sx is None else [sx, sy],
        "origin": [float(origin[0]), float(origin[1])],
        "landmark_set": lset.key,
        "coordinate_convention": COORDINATE_CONVENTION,
        "landmarks": rows,
        "uncertainty_calibration": None if uncertainty_calibration is None else {
            k: v for k, v in uncertainty_calibration.items() if k != "landmark_names"
        },
        **extra,
    }


def prediction_points(pred: dict[str, Any]) -> np.ndarray:
    """``(N, 2)`` ``(x, y)`` pixel array of a prediction document (NaN where not placed)."""
    return np.array(
        [[np.nan, np.nan] if r["x"] is None or r["y"] is None else [r["x"], r["y"]] for r in pred["landmarks"]],
        dtype=float,
    )


def prediction_uncertainty(pred: dict[str, Any]) -> np.ndarray:
    """``(N,)`` ``uncertainty_px`` of a prediction document (NaN where unknown)."""
    return np.array([np.nan if r.get("uncertainty_px") is None else r["uncertainty_px"] for r in pred["landmarks"]], dtype=float)


def read_prediction(path: str | os.PathLike, landmark_set: str | LandmarkSet | None = None) -> dict[str, Any]:
    """Read and check a prediction JSON file; adds ``points`` (``(N, 2)`` array)."""
    path = Path(path)
    pred = read_json(path, "prediction JSON")
    if not isinstance(pred, dict) or not isinstance(pred.get("landmarks"), list):
        raise InputError(path, "not a prediction file: no 'landmarks' list")
    lset = get_landmark_set(landmark_set or pred.get("landmark_set", "isbi2015"))
    if len(pred["landmarks"]) != len(lset):
        raise InputError(path, f"has {len(pred['landmarks'])} landmarks, expected {len(lset)} ({lset.key})")
    for r in pred["landmarks"]:
        for key in ("x", "y"):
            v = r.get(key) if isinstance(r, dict) else None
            if v is not None and not (isinstance(v, (int, float)) and np.isfinite(v)):
                raise InputError(path, f"landmark {r.get('name', '?')}: {key} must be a number or null, got {v!r}")
            if isinstance(r, dict):
                r.setdefault(key, None)
    pred["points"] = prediction_points(pred)
    return pred


def _geometry_note(geometry: ImageGeometry, pred: dict[str, Any]) -> str:
    """What the markups' positions assume, for their description."""
    sx, sy, _ = geometry.spacing
    where = {
        "itk": "the viewer's geometry of the image file (its header as ITK and 3D Slicer read it; a PNG/JPEG/BMP has 1 mm pixels and origin 0)",
        "fallback": "the image's geometry as MAHT-Net reads it (ITK could not read the header)",
    }.get(geometry.source, "the prediction's spacing and origin")
    origin = ", ".join(f"{v:g}" for v in geometry.origin)
    note = f"positions in {where}: {sx:g} x {sy:g} mm pixels, origin ({origin}) LPS"
    if not pred.get("spacing"):
        return note + "; no physical pixel spacing known: 1 mm per pixel assumed for measurements"
    return note + f"; measurements use {pred['spacing'][0]:g} x {pred['spacing'][1]:g} mm pixels"


def to_slicer_markups(pred: dict[str, Any], geometry: ImageGeometry | None = None) -> dict[str, Any]:
    """A 3D Slicer markups point list (schema v1.0.3) for a prediction document.

    Positions are LPS millimetres where the viewer shows pixel ``(x, y)``:
    ``geometry.to_physical`` (``origin + direction @ (spacing * (x, y, 0))``), for ``geometry``
    the viewer's geometry of the image (:func:`~maht_net.io.geometry.read_geometry`). Without it,
    the prediction's own spacing (1 mm/px when unknown) and origin are used. The markup's
    ``description`` states the geometry assumed and the spacing of the measurements.
    """
    if geometry is None:
        sx, sy = pred.get("spacing") or (1.0, 1.0)
        x0, y0 = pred.get("origin") or (0.0, 0.0)
        geometry = ImageGeometry(pred.get("width", 0), pred.get("height", 0), (sx, sy, 1.0), (x0, y0, 0.0), source="prediction")
    points = []
    for r in pred["landmarks"]:
        placed = r["x"] is not None and r["y"] is not None
        desc = r["name"].replace("_", " ")
        if r.get("uncertainty_mm") is not None:
            desc += f"; uncertainty {r['uncertainty_mm']:.2f} mm"
        points.append(
            {
                "id": str(r["index"]),
                "label": r["name"],
                "description": desc,
                "position": [float(v) for v in geometry.to_physical(np.array([[r["x"], r["y"]]]))[0]] if placed else [0.0, 0.0, 0.0],
                "orientation": [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0],
                "selected": True,
                "locked": False,
                "visibility": placed,
                "positionStatus": "defined" if placed else "undefined",
            }
        )
    return {
        "@schema": SLICER_MARKUPS_SCHEMA,
        "markups": [
            {
                "type": "Fiducial",
                "name": f"{pred.get('id', 'landmarks')}_landmarks",
                "coordinateSystem": "LPS",
                "coordinateUnits": "mm",
                "locked": False,
                "fixedNumberOfControlPoints": False,
                "labelFormat": "%N-%d",
                "controlPoints": points,
                "measurements": [],
                "description": f"MAHT-Net landmarks; {_geometry_note(geometry, pred)}",
            }
        ],
    }


def to_csv(pred: dict[str, Any]) -> str:
    """One row per landmark: index, name, abbreviation, x, y, x_mm, y_mm, uncertainty, confidence."""
    buf = io.StringIO()
    cols = ["index", "name", "abbreviation", "x", "y", "x_mm", "y_mm", "uncertainty_px", "uncertainty_mm", "confidence"]
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in pred["landmarks"]:
        writer.writerow({k: "" if r.get(k) is None else r[k] for k in cols})
    return buf.getvalue()


def _viewer_geometry(image: str | None) -> ImageGeometry | None:
    try:
        return read_geometry(image) if image else None
    except InputError:  # moved or unreadable since it was predicted: the prediction's geometry
        return None


def write_prediction(
    pred: dict[str, Any], out_dir: str | os.PathLike, formats: Sequence[str] = ("json", "mrk", "csv")
) -> dict[str, Path]:
    """Write the prediction as ``<id>_landmarks.json`` (+ ``.mrk.json``, ``.csv``), each atomically.

    The markups are placed in the viewer's geometry of ``pred["image"]`` (read from its header,
    :func:`~maht_net.io.geometry.read_geometry`), so they land on the anatomy when the film is
    opened in 3D Slicer; when that file cannot be read, in the prediction's own spacing and origin.
    """
    out_dir = Path(out_dir)
    stem = str(pred["id"])
    if not stem or "/" in stem or "\\" in stem or stem in (".", ".."):
        raise ValueError(f"unsafe prediction id {stem!r}")
    doc = {k: v for k, v in pred.items() if k != "points"}
    paths = {}
    if "json" in formats:
        paths["json"] = out_dir / f"{stem}{PREDICTION_SUFFIX}"
        write_json_atomic(paths["json"], doc)
    if "mrk" in formats:
        paths["mrk"] = out_dir / f"{stem}{MARKUPS_SUFFIX}"
        write_json_atomic(paths["mrk"], to_slicer_markups(doc, _viewer_geometry(doc.get("image"))))
    if "csv" in formats:
        paths["csv"] = out_dir / f"{stem}{CSV_SUFFIX}"
        with atomic_write(paths["csv"], "w", encoding="utf-8", newline="") as f:
            f.write(to_csv(doc))
    return paths


def find_predictions(folder: str | os.PathLike) -> dict[str, Path]:
    """Map image id -> prediction JSON path for every ``*_landmarks.json`` in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "predictions folder not found")
    return {
        p.name[: -len(PREDICTION_SUFFIX)]: p
        for p in sorted(folder.glob(f"*{PREDICTION_SUFFIX}"))
        if not p.name.endswith(MARKUPS_SUFFIX)
    }
