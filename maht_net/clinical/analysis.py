"""Cephalometric measurements from landmarks: angles, distances, ISBI 2015 classes, intervals.

Conventions (every function here):
    Points are ``(x, y)`` pixels of the original image, ``x`` = column, ``y`` = row, origin at
    the top-left pixel centre, so **y grows downward** (see :mod:`maht_net.landmarks`). The
    patient faces right: **anterior = +x**, superior = -y. Before measuring, pixels are scaled
    by the spacing ``(sx, sy)`` (mm/px) when it is known; without it square pixels are assumed
    (angles and ratios are unaffected) and distances are reported in pixels, not millimetres.

    Angles are in degrees. A *signed* angle from direction ``u`` to direction ``v`` is positive
    when ``v`` is turned **clockwise on screen** from ``u`` (:func:`signed_angle`); for a line
    pointing anteriorly this means its anterior end tips downward. A *signed* distance to a
    line is positive when the point lies on the **anterior** (+x) side (:func:`anterior_distance`).

The single table of measurements is :data:`MEASUREMENTS` (name, landmarks, function, unit,
definition, classes, source); ``docs/analysis.md`` is generated from it
(:func:`measurements_markdown`). Classes of the eight ISBI 2015 task-2 measurements follow the
challenge (Wang et al., Medical Image Analysis 31:63-76, 2016) as implemented by its public
classification script; see ``docs/analysis.md`` for the sources and the one deliberate
deviation (the MW edge-to-edge band).

Uncertainty propagation (:func:`analyze_points`): each landmark is sampled from a Gaussian with
its predicted covariance (``covariance_px``, see :mod:`maht_net.codec.uncertainty`), or, when only
the radial spread ``u`` is known (``uncertainty_px``, the RMS distance ``sqrt(E|p - c|^2)``),
from an isotropic Gaussian with per-axis standard deviation ``u / sqrt(2)``; every measurement
is computed on every sample (seeded), and its central ``level`` interval, its class probability
and a ``needs_review`` flag follow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from maht_net.clinical.measurements import (
    MEASUREMENTS,
    SKELETAL_CLASSES,
    SKELETAL_SOURCE,
    Measurement,
    MeasurementClass,
    class_boundaries,
    classify,
)
from maht_net.codec.uncertainty import isotropic_covariance, landmark_covariances
from maht_net.io.predictions import prediction_points
from maht_net.landmarks import COORDINATE_CONVENTION, LandmarkSet, get_landmark_set

__all__ = [
    "ANALYSIS_FORMAT",
    "ReviewPolicy",
    "compute_measurements",
    "analyze_points",
    "analyze_prediction",
]

ANALYSIS_FORMAT = "maht-net-analysis"


# ---- computing -------------------------------------------------------------------------------
@dataclass
class ReviewPolicy:
    """When a landmark or a measurement needs a human look (every threshold configurable).

    Attributes:
        landmark_uncertainty_mm: a landmark whose predicted RMS radial spread exceeds this is
            flagged (2 mm: the precision range accepted clinically and scored by ISBI 2015).
        landmark_uncertainty_px: the same threshold when no spacing is known.
        max_interval_width: per unit (``deg``, ``mm``, ``px``, ``ratio``), flag a measurement whose
            interval is wider than this. The defaults are about the width of the 95 % limits of
            agreement between two expert annotators (see ``docs/analysis.md``).
    """

    landmark_uncertainty_mm: float = 2.0
    landmark_uncertainty_px: float = 20.0
    max_interval_width: dict[str, float] = field(default_factory=lambda: {"deg": 6.0, "mm": 4.0, "px": 30.0, "ratio": 0.08})


def _spacing(spacing: Sequence[float] | None) -> tuple[float, float] | None:
    if spacing is None:
        return None
    sx, sy = (float(s) for s in spacing)
    if not (math.isfinite(sx) and math.isfinite(sy) and sx > 0 and sy > 0):
        raise ValueError(f"spacing must be positive finite (sx, sy) mm/px or None, got {spacing!r}")
    return sx, sy


def _landmark_arrays(points: np.ndarray, lset: LandmarkSet, scale: np.ndarray) -> dict[str, np.ndarray]:
    """``{name: (..., 2)}`` physical coordinates from ``(..., N, 2)`` pixels."""
    return {lm.name: points[..., k, :] * scale for k, lm in enumerate(lset)}


def _unavailable(m: Measurement, lset: LandmarkSet, points: np.ndarray) -> str | None:
    absent = [n for n in m.landmarks if n not in lset.names]
    if absent:
        return f"needs {', '.join(absent)}, not in landmark set {lset.key!r}"
    missing = [n for n in m.landmarks if not np.isfinite(points[lset.names.index(n)]).all()]
    if missing:
        return f"missing landmark(s): {', '.join(missing)}"
    return None


def compute_measurements(
    points: np.ndarray,
    spacing: Sequence[float] | None = None,
    landmark_set: str | LandmarkSet = "isbi2015",
    measurements: Sequence[Measurement] = MEASUREMENTS,
) -> dict[str, float | None]:
    """Point estimates only: ``{name: value or None}`` (see :func:`analyze_points` for the rest).

    Args:
        points: ``(N, 2)`` ``(x, y)`` pixels (y down; NaN = missing).
        spacing: ``(sx, sy)`` mm/px; ``None`` gives distances in px (square pixels assumed).
    """
    lset = get_landmark_set(landmark_set)
    points = np.asarray(points, dtype=float)
    sp = _spacing(spacing)
    p = _landmark_arrays(points, lset, np.array(sp if sp else (1.0, 1.0)))
    return {m.name: None if _unavailable(m, lset, points) else float(m.function(p)) for m in measurements}


def _float(v: Any) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def _review_band(
    value: float,
    samples: np.ndarray | None,
    interval: tuple[float, float] | None,
    classes: Sequence[MeasurementClass],
    width_limit: float | None,
    level: float,
    unit: str,
) -> tuple[dict[str, str] | None, float | None, list[str]]:
    """Class of ``value``, probability of that class under ``samples`` and review reasons."""
    reasons: list[str] = []
    cls, prob = None, None
    if classes:
        k = int(classify(value, classes))
        if k >= 0:
            cls = {"code": classes[k].code, "label": classes[k].label}
            if samples is not None:
                prob = float(np.mean(classify(samples, classes) == k))
    if interval is not None:
        lo, hi = interval
        crossed = [b for b in class_boundaries(classes) if lo < b < hi]
        if crossed:
            reasons.append(
                f"{level:.0%} interval [{lo:.2f}, {hi:.2f}] {unit} crosses class boundary "
                + ", ".join(f"{b:g}" for b in crossed)
            )
        if width_limit is not None and hi - lo > width_limit:
            reasons.append(f"{level:.0%} interval is {hi - lo:.2f} {unit} wide (limit {width_limit:g})")
    return cls, prob, reasons


def analyze_points(
    points: np.ndarray,
    spacing: Sequence[float] | None = None,
    uncertainty_px: np.ndarray | Sequence[float | None] | None = None,
    landmark_set: str | LandmarkSet = "isbi2015",
    policy: ReviewPolicy | None = None,
    n_samples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    measurements: Sequence[Measurement] = MEASUREMENTS,
    covariance_px: np.ndarray | None = None,
) -> dict[str, Any]:
    """Measure, classify and propagate landmark uncertainty for one image.

    Args:
        points: ``(N, 2)`` ``(x, y)`` pixels of the original image (y down; NaN = missing).
        spacing: ``(sx, sy)`` mm/px, or ``None``: then mm measurements are reported in px with a
            note and without classes, and landmark review uses ``policy.landmark_uncertainty_px``.
        uncertainty_px: ``(N,)`` predicted RMS radial spread per landmark in px (``None``/NaN =
            unknown). Without it no intervals are computed (e.g. for ground truth).
        policy: review thresholds (:class:`ReviewPolicy`).
        n_samples, seed: Monte-Carlo samples and the generator seed (results are reproducible).
        level: central probability of the reported intervals.
        covariance_px: ``(N, 2, 2)`` Gaussian covariance over ``(x, y)`` px per landmark, used for
            the sampling where finite (elongated uncertainty); else isotropic from ``uncertainty_px``.

    Returns:
        A JSON-serialisable dict (format ``maht-net-analysis``): ``measurements`` (one row per
        table entry: ``name``, ``title``, ``unit``, ``value``, ``interval``, ``class``,
        ``class_probability``, ``needs_review``, ``review_reasons``, ``note``), ``skeletal_class``,
        ``landmarks`` (per-landmark uncertainty and review flag), ``needs_review`` and ``notes``.
    """
    lset = get_landmark_set(landmark_set)
    policy = policy or ReviewPolicy()
    points = np.asarray(points, dtype=float)
    if points.shape != (len(lset), 2):
        raise ValueError(f"points must have shape ({len(lset)}, 2), got {points.shape}")
    sp = _spacing(spacing)
    scale = np.array(sp if sp else (1.0, 1.0))
    dist_unit = "mm" if sp else "px"
    unc = np.full(len(lset), np.nan) if uncertainty_px is None else np.array(
        [np.nan if u is None else float(u) for u in uncertainty_px], dtype=float
    )
    if unc.shape != (len(lset),):
        raise ValueError(f"uncertainty_px must have shape ({len(lset)},), got {unc.shape}")
    unc_mm = unc * float(np.mean(scale)) if sp else np.full_like(unc, np.nan)
    limit = policy.landmark_uncertainty_mm if sp else policy.landmark_uncertainty_px
    unc_review = unc_mm if sp else unc
    flagged = np.isfinite(unc_review) & (unc_review > limit)

    estimate = _landmark_arrays(points, lset, scale)
    has_unc = np.isfinite(unc)
    samples = None
    if has_unc.any() and n_samples > 0:
        rng = np.random.default_rng(seed)
        cov = isotropic_covariance(np.where(has_unc, unc, 0.0))
        if covariance_px is not None:
            given = np.asarray(covariance_px, dtype=float)
            if given.shape != (len(lset), 2, 2):
                raise ValueError(f"covariance_px must have shape ({len(lset)}, 2, 2), got {given.shape}")
            cov = np.where((np.isfinite(given).all((1, 2)) & has_unc)[:, None, None], given, cov)
        values, vectors = np.linalg.eigh(cov)
        root = vectors * np.sqrt(np.clip(values, 0.0, None))[:, None, :]  # root @ root.T = cov
        noise = np.einsum("nij,snj->sni", root, rng.standard_normal((int(n_samples), len(lset), 2)))
        samples = _landmark_arrays(points[None] + noise, lset, scale)
    q = ((1 - level) / 2 * 100, (1 + level) / 2 * 100)

    rows = []
    anb_samples = anb_interval = None
    for m in measurements:
        unit = dist_unit if m.unit == "mm" else m.unit
        row: dict[str, Any] = {
            "name": m.name, "title": m.title, "unit": unit, "value": None, "interval": None, "class": None,
            "class_probability": None, "needs_review": False, "review_reasons": [], "note": None,
            "landmarks": list(m.landmarks), "isbi_task2": m.isbi_task2,
        }
        reason = _unavailable(m, lset, points)
        if reason:
            row["note"] = reason
            rows.append(row)
            continue
        value = float(m.function(estimate))
        row["value"] = _float(value)
        idx = [lset.names.index(n) for n in m.landmarks]
        vals = interval = None
        notes = []
        if samples is not None and has_unc[idx].all():
            vals = m.function(samples)
            lo, hi = np.nanpercentile(vals, q)
            interval = (float(lo), float(hi))
            row["interval"] = [interval[0], interval[1]]
        elif samples is not None:
            notes.append("no interval: uncertainty unknown for " + ", ".join(lset.names[i] for i in idx if not has_unc[i]))
        classes = m.classes if unit == m.unit else ()
        if m.classes and not classes:
            notes.append("no pixel spacing: value in px; classes (defined in mm) not applied")
        row["note"] = "; ".join(notes) or None
        cls, prob, reasons = _review_band(value, vals, interval, classes, policy.max_interval_width.get(unit), level, unit)
        reasons = [
            f"landmark {lset.names[i]} uncertain ({unc_review[i]:.2f} {dist_unit} > {limit:g} {dist_unit})" for i in idx if flagged[i]
        ] + reasons
        row.update({"class": cls, "class_probability": prob, "needs_review": bool(reasons), "review_reasons": reasons})
        if m.name == "ANB":
            anb_samples, anb_interval = vals, interval
        rows.append(row)

    skeletal = _skeletal_class(rows, anb_samples, anb_interval, level)
    notes = []
    if not sp:
        notes.append("no pixel spacing: distances are in pixels, square pixels assumed for angles; mm classes not applied")
    landmarks = [
        {
            "index": lm.index, "name": lm.name, "abbreviation": lm.abbreviation,
            "x": _float(points[k, 0]), "y": _float(points[k, 1]),
            "uncertainty_px": _float(unc[k]), "uncertainty_mm": _float(unc_mm[k]), "needs_review": bool(flagged[k]),
        }
        for k, lm in enumerate(lset)
    ]
    return {
        "format": ANALYSIS_FORMAT,
        "format_version": 1,
        "landmark_set": lset.key,
        "coordinate_convention": COORDINATE_CONVENTION + "; y grows downward, anterior = +x",
        "spacing": None if sp is None else [sp[0], sp[1]],
        "distance_unit": dist_unit,
        "uncertainty": None if samples is None else {
            "method": "monte_carlo", "samples": int(n_samples), "seed": int(seed), "level": float(level),
            "model": "Gaussian per landmark with its covariance_px (isotropic, per-axis sigma = uncertainty_px / sqrt(2), where absent)",
        },
        "review_policy": asdict(policy),
        "measurements": rows,
        "skeletal_class": skeletal,
        "landmarks": landmarks,
        "needs_review": bool(any(r["needs_review"] for r in rows) or flagged.any() or skeletal["needs_review"]),
        "notes": notes,
    }


def _skeletal_class(rows: list[dict[str, Any]], samples: np.ndarray | None, interval: tuple[float, float] | None, level: float) -> dict[str, Any]:
    anb = next((r for r in rows if r["name"] == "ANB"), None)
    out: dict[str, Any] = {
        "class": None, "label": None, "anb": None, "interval": None, "class_probability": None,
        "needs_review": False, "review_reasons": [], "source": SKELETAL_SOURCE,
    }
    if anb is None or anb["value"] is None:
        out["note"] = "ANB unavailable" if anb is None else anb["note"]
        return out
    cls, prob, reasons = _review_band(anb["value"], samples, interval, SKELETAL_CLASSES, None, level, "deg")
    reasons = [r for r in anb["review_reasons"] if r.startswith("landmark")] + reasons
    out.update(
        {
            "class": cls["code"], "label": cls["label"], "anb": anb["value"], "interval": anb["interval"],
            "class_probability": prob, "needs_review": bool(reasons), "review_reasons": reasons,
        }
    )
    return out


def analyze_prediction(
    pred: Mapping[str, Any], policy: ReviewPolicy | None = None, n_samples: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Analysis of one prediction document (:mod:`maht_net.io.predictions`), JSON-serialisable.

    The entry point for inference, the bundle and the MONAI Label app: reads the landmarks'
    ``x``/``y``, ``uncertainty_px`` and the document's ``spacing``, and returns
    :func:`analyze_points`' result with ``id`` and ``image`` added.
    """
    lset = get_landmark_set(pred.get("landmark_set", "isbi2015"))
    points = np.asarray(pred["points"], dtype=float) if "points" in pred else prediction_points(pred)  # type: ignore[arg-type]
    unc = [r.get("uncertainty_px") for r in pred["landmarks"]]
    result = analyze_points(points, pred.get("spacing"), unc, lset, policy, n_samples, seed, level, covariance_px=landmark_covariances(pred))
    return {"id": pred.get("id"), "image": pred.get("image"), **result}


