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
its predicted covariance (``covariance_px``, see :mod:`maht_net.uncertainty`), or, when only
the radial spread ``u`` is known (``uncertainty_px``, the RMS distance ``sqrt(E|p - c|^2)``),
from an isotropic Gaussian with per-axis standard deviation ``u / sqrt(2)``; every measurement
is computed on every sample (seeded), and its central ``level`` interval, its class probability
and a ``needs_review`` flag follow.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .datalist import load_datalist, points_from_json, read_datalist
from .errors import InputError
from .io.atomic import atomic_write, write_json_atomic
from .io.predictions import PREDICTION_SUFFIX, find_predictions, prediction_points, prediction_uncertainty, read_prediction
from .landmarks import COORDINATE_CONVENTION, LandmarkSet, get_landmark_set
from .uncertainty import CHI2_2DOF_95, isotropic_covariance, landmark_covariances

__all__ = [
    "ANALYSIS_FORMAT",
    "MeasurementClass",
    "Measurement",
    "MEASUREMENTS",
    "MEASUREMENTS_BY_NAME",
    "ISBI_TASK2",
    "SKELETAL_CLASSES",
    "class_boundaries",
    "describe_classes",
    "ReviewPolicy",
    "angle_between",
    "signed_angle",
    "angle_at",
    "anterior_distance",
    "classify",
    "compute_measurements",
    "analyze_points",
    "analyze_prediction",
    "agreement_table",
    "annotator_agreement",
    "uncertainty_calibration",
    "save_reliability_plot",
    "compare_with_truth",
    "format_measurements",
    "format_agreement",
    "measurements_markdown",
    "update_docs",
    "add_review_arguments",
    "policy_from_args",
    "register",
]

ANALYSIS_FORMAT = "maht-net-analysis"

Points = Mapping[str, np.ndarray]


# ---- geometry (vectorised over leading axes; arrays (..., 2) of (x, y)) -----------------------
def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def angle_between(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Unsigned angle in degrees, ``[0, 180]``, between direction vectors ``u`` and ``v`` ``(..., 2)``."""
    return np.degrees(np.arctan2(np.abs(_cross(u, v)), np.sum(u * v, axis=-1)))


def signed_angle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angle in degrees, ``(-180, 180]``, from direction ``u`` to direction ``v`` ``(..., 2)``.

    Positive when ``v`` is turned clockwise *on screen* from ``u`` (image ``y`` points down):
    ``signed_angle((1, 0), (0, 1)) == 90``. With the patient facing right, a line whose
    anterior end tips downward relative to ``u`` is positive.
    """
    return np.degrees(np.arctan2(_cross(u, v), np.sum(u * v, axis=-1)))


def angle_at(a: np.ndarray, vertex: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Unsigned angle ``a - vertex - b`` in degrees."""
    return angle_between(a - vertex, b - vertex)


def anterior_distance(point: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Perpendicular distance from ``point`` to the line ``start``-``end`` (not horizontal).

    Positive when the point lies on the anterior (+x) side of the line, negative behind it;
    in the units of the coordinates (mm after scaling by the spacing, else px).
    """
    d = end - start
    side = np.where(d[..., 1] < 0, -1.0, 1.0)  # make the normal (d_y, -d_x) point to +x
    return side * _cross(point - start, d) / np.linalg.norm(d, axis=-1)


# ---- the measurement table ---------------------------------------------------------------------
@dataclass(frozen=True)
class MeasurementClass:
    """One class band of a measurement: ``low <= value <= high`` (``None`` = unbounded).

    Bands are tested in the order listed and the first match wins, so a boundary value belongs
    to the band listed first (the ISBI 2015 script checks its normal band as the closed one).
    """

    code: str
    label: str
    low: float | None = None
    high: float | None = None

    def contains(self, value: np.ndarray) -> np.ndarray:
        ok = np.ones(np.shape(value), dtype=bool)
        if self.low is not None:
            ok &= value >= self.low
        if self.high is not None:
            ok &= value <= self.high
        return ok


@dataclass(frozen=True)
class Measurement:
    """One cephalometric measurement: the row of the table that code, report and docs share.

    Attributes:
        name: short key (``"ANB"``).
        title: readable name.
        landmarks: landmark names (:mod:`maht_net.landmarks`) the function reads.
        function: maps ``{name: (..., 2) array}`` of physical ``(x, y)`` to ``(...)`` values.
        unit: ``"deg"``, ``"mm"`` (reported in px without spacing) or ``"ratio"``.
        definition: lines, vertex and sign convention in words.
        classes: ordered bands (empty: no classification, see ``norm``).
        source: where the definition and classes come from.
        norm: a reference value in words (population-dependent), or ``""``.
        isbi_task2: one of the eight measurements classified in the ISBI 2015 challenge.
    """

    name: str
    title: str
    landmarks: tuple[str, ...]
    function: Callable[[Points], np.ndarray]
    unit: str
    definition: str
    classes: tuple[MeasurementClass, ...] = ()
    source: str = ""
    norm: str = ""
    isbi_task2: bool = False


def _sna(p: Points) -> np.ndarray:
    return angle_at(p["sella"], p["nasion"], p["subspinale"])


def _snb(p: Points) -> np.ndarray:
    return angle_at(p["sella"], p["nasion"], p["supramentale"])


def _palatal_to_fh(p: Points) -> np.ndarray:
    return signed_angle(p["orbitale"] - p["porion"], p["anterior_nasal_spine"] - p["posterior_nasal_spine"])


def _odi(p: Points) -> np.ndarray:
    ab_mp = angle_between(p["gonion"] - p["menton"], p["subspinale"] - p["supramentale"])
    return ab_mp + _palatal_to_fh(p)


def _apdi(p: Points) -> np.ndarray:
    facial = angle_between(p["porion"] - p["orbitale"], p["pogonion"] - p["nasion"])
    ab_facial = -signed_angle(p["pogonion"] - p["nasion"], p["supramentale"] - p["subspinale"])
    return facial + ab_facial + _palatal_to_fh(p)


def _fhi(p: Points) -> np.ndarray:
    return np.linalg.norm(p["gonion"] - p["sella"], axis=-1) / np.linalg.norm(p["menton"] - p["nasion"], axis=-1)


def _mw(p: Points) -> np.ndarray:
    d = p["upper_incisal_incision"] - p["lower_incisal_incision"]
    return np.where(d[..., 0] < 0, -1.0, 1.0) * np.linalg.norm(d, axis=-1)


ISBI_SOURCE = "ISBI 2015 challenge task 2 (Wang et al. 2016, Med. Image Anal. 31:63-76)"

MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement(
        "SNA", "SNA angle", ("sella", "nasion", "subspinale"), _sna, "deg",
        "Angle S-N-A at nasion between the lines N-S and N-A. Larger = maxilla further anterior.",
        (MeasurementClass("C1", "normal maxilla", 79.4, 83.2), MeasurementClass("C2", "prognathic maxilla", 83.2, None),
         MeasurementClass("C3", "retrognathic maxilla", None, 79.4)),
        ISBI_SOURCE, "Steiner: 82 deg +/- 2", True,
    ),
    Measurement(
        "SNB", "SNB angle", ("sella", "nasion", "supramentale"), _snb, "deg",
        "Angle S-N-B at nasion between the lines N-S and N-B. Larger = mandible further anterior.",
        (MeasurementClass("C1", "normal mandible", 74.6, 78.7), MeasurementClass("C2", "retrognathic mandible", None, 74.6),
         MeasurementClass("C3", "prognathic mandible", 78.7, None)),
        ISBI_SOURCE, "Steiner: 80 deg +/- 2", True,
    ),
    Measurement(
        "ANB", "ANB angle", ("sella", "nasion", "subspinale", "supramentale"), lambda p: _sna(p) - _snb(p), "deg",
        "SNA - SNB, i.e. the angle A-N-B signed: positive when A point lies anterior to B point "
        "(maxilla ahead of mandible), negative when B is ahead of A.",
        (MeasurementClass("C1", "skeletal class I (normal)", 3.2, 5.7), MeasurementClass("C2", "skeletal class II", 5.7, None),
         MeasurementClass("C3", "skeletal class III", None, 3.2)),
        ISBI_SOURCE, "Steiner: 2 deg +/- 2", True,
    ),
    Measurement(
        "ODI", "Overbite depth indicator", ("menton", "gonion", "subspinale", "supramentale", "porion", "orbitale",
                                            "posterior_nasal_spine", "anterior_nasal_spine"), _odi, "deg",
        "Angle between the A-B line and the mandibular plane (Go-Me) plus the palatal-plane (PNS-ANS) "
        "angle to Frankfort (Po-Or); the palatal term is positive when ANS tips downward (Kim 1974).",
        (MeasurementClass("C1", "normal", 68.4, 80.5), MeasurementClass("C2", "deep bite tendency", 80.5, None),
         MeasurementClass("C3", "open bite tendency", None, 68.4)),
        ISBI_SOURCE, "Kim: 74.5 deg +/- 6.1", True,
    ),
    Measurement(
        "APDI", "Anteroposterior dysplasia indicator", ("porion", "orbitale", "nasion", "pogonion", "subspinale",
                                                        "supramentale", "posterior_nasal_spine", "anterior_nasal_spine"),
        _apdi, "deg",
        "Facial angle (Frankfort Po-Or to facial plane N-Pog) + A-B plane angle to the facial plane "
        "(positive when B lies anterior to A) + palatal-plane angle to Frankfort (positive when ANS "
        "tips downward) (Kim & Vietas 1978).",
        (MeasurementClass("C1", "normal", 77.6, 85.2), MeasurementClass("C2", "class II tendency", None, 77.6),
         MeasurementClass("C3", "class III tendency", 85.2, None)),
        ISBI_SOURCE, "Kim: 81.4 deg +/- 3.8", True,
    ),
    Measurement(
        "FHI", "Facial height index", ("sella", "gonion", "nasion", "menton"), _fhi, "ratio",
        "Posterior face height S-Go divided by anterior face height N-Me.",
        (MeasurementClass("C1", "normal", 0.65, 0.75), MeasurementClass("C2", "short face tendency", 0.75, None),
         MeasurementClass("C3", "long face tendency", None, 0.65)),
        ISBI_SOURCE, "Jarabak: 0.62 to 0.65", True,
    ),
    Measurement(
        "FMA", "Mandibular plane angle (ISBI 'FMA': S-N to Go-Gn)", ("sella", "nasion", "gonion", "gnathion"),
        lambda p: angle_between(p["nasion"] - p["sella"], p["gnathion"] - p["gonion"]), "deg",
        "Angle between the S->N line and the Go->Gn mandibular plane. Named FMA in the ISBI 2015 "
        "challenge, but it is the S-N (not Frankfort) to Go-Gn angle (Steiner's SN-GoGn).",
        (MeasurementClass("C1", "normal", 26.8, 31.4), MeasurementClass("C2", "high angle tendency", 31.4, None),
         MeasurementClass("C3", "low angle tendency", None, 26.8)),
        ISBI_SOURCE, "Steiner SN-GoGn: 32 deg", True,
    ),
    Measurement(
        "MW", "Modified Wits appraisal", ("upper_incisal_incision", "lower_incisal_incision"), _mw, "mm",
        "Distance between the upper (UIT) and lower (LIT) incisal tips, positive when the upper tip "
        "lies anterior to the lower one (x_UIT >= x_LIT), negative otherwise.",
        (MeasurementClass("C1", "normal", 2.0, 4.5), MeasurementClass("C4", "large overjet", 4.5, None),
         MeasurementClass("C2", "edge to edge", 0.0, 2.0), MeasurementClass("C3", "anterior cross bite", None, 0.0)),
        ISBI_SOURCE + "; edge to edge = 0 <= MW < 2 mm (see docs)", "", True,
    ),
    Measurement(
        "FH-MP", "Frankfort mandibular plane angle (Tweed FMA)", ("porion", "orbitale", "gonion", "menton"),
        lambda p: angle_between(p["orbitale"] - p["porion"], p["menton"] - p["gonion"]), "deg",
        "Angle between Frankfort horizontal Po->Or and the mandibular plane Go->Me. Larger = steeper mandible.",
        source="Tweed 1954", norm="Tweed: 25 deg (16 to 35)",
    ),
    Measurement(
        "facial_angle", "Facial angle (Downs)", ("porion", "orbitale", "nasion", "pogonion"),
        lambda p: angle_between(p["porion"] - p["orbitale"], p["pogonion"] - p["nasion"]), "deg",
        "Inner posterior-inferior angle between Frankfort (Or->Po) and the facial plane N->Pog. Larger = chin further anterior.",
        source="Downs 1948", norm="Downs: 87.8 deg +/- 3.6",
    ),
    Measurement(
        "gonial_angle", "Gonial angle", ("articulare", "gonion", "menton"),
        lambda p: angle_at(p["articulare"], p["gonion"], p["menton"]), "deg",
        "Angle Ar-Go-Me at gonion between the ramus (Go-Ar) and the mandibular body (Go-Me).",
        source="Bjork 1969; Jarabak", norm="Jarabak: 130 deg +/- 7",
    ),
    Measurement(
        "U1-NA", "Upper incisor tip to N-A", ("upper_incisal_incision", "nasion", "subspinale"),
        lambda p: anterior_distance(p["upper_incisal_incision"], p["nasion"], p["subspinale"]), "mm",
        "Perpendicular distance from the upper incisal tip (UIT) to the line N-A, positive anterior to it. "
        "Steiner measures to the most labial point of the crown; the ISBI set has only the tip.",
        source="Steiner 1953", norm="Steiner: 4 mm",
    ),
    Measurement(
        "L1-NB", "Lower incisor tip to N-B", ("lower_incisal_incision", "nasion", "supramentale"),
        lambda p: anterior_distance(p["lower_incisal_incision"], p["nasion"], p["supramentale"]), "mm",
        "Perpendicular distance from the lower incisal tip (LIT) to the line N-B, positive anterior to it "
        "(incisal tip in place of Steiner's most labial crown point).",
        source="Steiner 1953", norm="Steiner: 4 mm",
    ),
    Measurement(
        "UL-Eline", "Upper lip to E-line", ("upper_lip", "pronasale", "soft_tissue_pogonion"),
        lambda p: anterior_distance(p["upper_lip"], p["pronasale"], p["soft_tissue_pogonion"]), "mm",
        "Distance from the upper lip to Ricketts' esthetic line (pronasale - soft-tissue pogonion), "
        "positive in front of the line, negative behind. Needs pronasale (not an ISBI 2015 landmark).",
        source="Ricketts 1968", norm="Ricketts: -4 mm (adult)",
    ),
    Measurement(
        "LL-Eline", "Lower lip to E-line", ("lower_lip", "pronasale", "soft_tissue_pogonion"),
        lambda p: anterior_distance(p["lower_lip"], p["pronasale"], p["soft_tissue_pogonion"]), "mm",
        "Distance from the lower lip to the E-line (pronasale - soft-tissue pogonion), positive in front "
        "of the line. Needs pronasale (not an ISBI 2015 landmark).",
        source="Ricketts 1968", norm="Ricketts: -2 mm +/- 2 (adult)",
    ),
    Measurement(
        "UL-SnPog'", "Upper lip to Sn-Pog' line", ("upper_lip", "subnasale", "soft_tissue_pogonion"),
        lambda p: anterior_distance(p["upper_lip"], p["subnasale"], p["soft_tissue_pogonion"]), "mm",
        "Distance from the upper lip to Burstone's line subnasale - soft-tissue pogonion, positive in "
        "front of the line. The lip line available from the 19 ISBI landmarks.",
        source="Burstone 1967; Legan & Burstone 1980", norm="Legan & Burstone: 3 mm +/- 1",
    ),
    Measurement(
        "LL-SnPog'", "Lower lip to Sn-Pog' line", ("lower_lip", "subnasale", "soft_tissue_pogonion"),
        lambda p: anterior_distance(p["lower_lip"], p["subnasale"], p["soft_tissue_pogonion"]), "mm",
        "Distance from the lower lip to the line subnasale - soft-tissue pogonion, positive in front of the line.",
        source="Burstone 1967; Legan & Burstone 1980", norm="Legan & Burstone: 2 mm +/- 1",
    ),
)
"""The measurement table. Order = report order; the eight ``isbi_task2`` rows come first."""

MEASUREMENTS_BY_NAME: dict[str, Measurement] = {m.name: m for m in MEASUREMENTS}
ISBI_TASK2 = tuple(m.name for m in MEASUREMENTS if m.isbi_task2)
"""``("SNA", "SNB", "ANB", "ODI", "APDI", "FHI", "FMA", "MW")``: the ISBI 2015 task-2 measurements."""

SKELETAL_CLASSES: tuple[MeasurementClass, ...] = (
    MeasurementClass("I", "skeletal class I", 0.0, 4.0),
    MeasurementClass("II", "skeletal class II", 4.0, None),
    MeasurementClass("III", "skeletal class III", None, 0.0),
)
"""Skeletal class from ANB with the conventional Steiner/Riedel norm 2 deg +/- 2 (ANB in
[0, 4] = I, > 4 = II, < 0 = III). The ISBI 2015 ANB classes (3.2 to 5.7) are reported with ANB."""
SKELETAL_SOURCE = "ANB with the Steiner/Riedel norm 2 deg +/- 2: I = 0..4, II > 4, III < 0"


def class_boundaries(classes: Sequence[MeasurementClass]) -> list[float]:
    """Finite boundaries of class bands, sorted."""
    return sorted({b for c in classes for b in (c.low, c.high) if b is not None})


def describe_classes(name: str, classes: Sequence[MeasurementClass]) -> list[str]:
    """Each band as an inequality, e.g. ``"C2 prognathic maxilla: SNA > 83.2"``; a bound that an
    earlier band already claims is shown strict."""
    out = []
    for i, c in enumerate(classes):
        earlier = classes[:i]
        low = None if c.low is None else ("<" if any(e.contains(np.float64(c.low)) for e in earlier) else "<=")
        high = None if c.high is None else ("<" if any(e.contains(np.float64(c.high)) for e in earlier) else "<=")
        if low and high:
            text = f"{c.low:g} {low} {name} {high} {c.high:g}"
        elif low:
            text = f"{name} {'>' if low == '<' else '>='} {c.low:g}"
        else:
            text = f"{name} {high} {c.high:g}"
        out.append(f"{c.code} {c.label}: {text}")
    return out


def classify(value: np.ndarray | float, classes: Sequence[MeasurementClass]) -> np.ndarray:
    """Index into ``classes`` of the first band containing each value (``-1`` for NaN or none)."""
    value = np.asarray(value, dtype=float)
    out = np.full(value.shape, -1, dtype=int)
    for i, c in enumerate(classes):
        out = np.where((out < 0) & c.contains(value) & np.isfinite(value), i, out)
    return out


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


# ---- agreement -------------------------------------------------------------------------------
def _kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two label lists (``None`` when undefined)."""
    if not a:
        return None
    labels = sorted(set(a) | set(b))
    po = float(np.mean([x == y for x, y in zip(a, b)]))
    pe = sum((a.count(c) / len(a)) * (b.count(c) / len(b)) for c in labels)
    return None if pe >= 1 else (po - pe) / (1 - pe)


def agreement_table(reference: Sequence[Mapping[str, Any]], other: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Compare paired analyses (``other - reference``), e.g. prediction vs truth or annotator 2 vs 1.

    Args:
        reference, other: :func:`analyze_points` results, paired by position.

    Returns:
        ``{"measurements": [...], "skeletal_class": {...}, "pairs": n}``; each measurement row has
        ``name``, ``unit``, ``n`` (pairs with both values in the same unit), ``mean_abs``,
        ``mean`` (bias), ``sd``, ``max_abs``, and for classified measurements ``class_n``,
        ``class_agreement`` (fraction) and ``kappa`` (Cohen).
    """
    if len(reference) != len(other):
        raise ValueError(f"{len(reference)} reference analyses but {len(other)} others")
    rows = []
    names = [r["name"] for r in reference[0]["measurements"]] if reference else []
    for i, name in enumerate(names):
        diffs, ca, cb, unit = [], [], [], None
        for ra, rb in zip(reference, other):
            a, b = ra["measurements"][i], rb["measurements"][i]
            if a["name"] != name or b["name"] != name:
                raise ValueError("analyses list their measurements in different orders")
            if a["value"] is None or b["value"] is None:
                continue
            unit = unit or a["unit"]
            if a["unit"] != unit or b["unit"] != unit:
                continue
            diffs.append(b["value"] - a["value"])
            if a["class"] is not None and b["class"] is not None:
                ca.append(a["class"]["code"])
                cb.append(b["class"]["code"])
        d = np.array(diffs)
        row: dict[str, Any] = {"name": name, "unit": unit, "n": len(diffs)}
        row.update(
            {
                "mean_abs": float(np.mean(np.abs(d))) if len(d) else None,
                "mean": float(np.mean(d)) if len(d) else None,
                "sd": float(np.std(d, ddof=1)) if len(d) > 1 else None,
                "max_abs": float(np.max(np.abs(d))) if len(d) else None,
                "class_n": len(ca),
                "class_agreement": float(np.mean([x == y for x, y in zip(ca, cb)])) if ca else None,
                "kappa": _kappa(ca, cb),
            }
        )
        rows.append(row)
    sa = [r["skeletal_class"]["class"] for r in reference]
    sb = [r["skeletal_class"]["class"] for r in other]
    pairs = [(x, y) for x, y in zip(sa, sb) if x is not None and y is not None]
    skeletal = {
        "n": len(pairs),
        "agreement": float(np.mean([x == y for x, y in pairs])) if pairs else None,
        "kappa": _kappa([x for x, _ in pairs], [y for _, y in pairs]),
    }
    return {"pairs": len(reference), "measurements": rows, "skeletal_class": skeletal}


def _all_items(datalist: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    doc = read_datalist(datalist)
    sections = [k for k, v in doc.items() if isinstance(v, list) and all(isinstance(i, dict) and "image" in i for i in v)]
    if not sections:
        raise InputError(datalist, "no section with items (e.g. 'training') in the datalist")
    return load_datalist(datalist, sections, base_dir=base_dir)


def annotator_agreement(
    datalist: str | os.PathLike | Sequence[Mapping[str, Any]],
    ids: Sequence[str] | None = None,
    landmark_set: str | LandmarkSet | None = None,
) -> dict[str, Any]:
    """Annotator 1 vs annotator 2: the reference level any model's measurements are read against.

    Args:
        datalist: a datalist path (all sections) or loaded items; items need ``"annotators"``
            ``{name: [[x, y] | null] * N}`` (as ``maht-net prepare labelme`` writes with two
            annotators) and ``spacing``.
        ids: restrict to these item ids (e.g. the images a model was evaluated on).

    Returns:
        ``{"annotators": [first, second], "n_images", "table"}`` where ``table`` is
        :func:`agreement_table` (second - first); measurements in mm when spacing is known.

    Raises:
        InputError: no item carries two annotators.
    """
    where = datalist if isinstance(datalist, (str, os.PathLike)) else None
    if isinstance(datalist, (str, os.PathLike)):
        lset = get_landmark_set(landmark_set or read_datalist(datalist).get("landmark_set", "isbi2015"))
        items = _all_items(datalist)
    else:
        lset = get_landmark_set(landmark_set or "isbi2015")
        items = list(datalist)
    if ids is not None:
        keep = set(ids)
        items = [it for it in items if it.get("id") in keep]
    first, second, names = [], [], None
    for it in items:
        ann = it.get("annotators")
        if not isinstance(ann, Mapping) or len(ann) < 2:
            continue
        keys = list(ann)[:2]
        names = names or keys
        pts = [points_from_json(ann[k], len(lset), where, f"annotators[{k!r}]") for k in keys]
        first.append(analyze_points(pts[0], it.get("spacing"), None, lset))
        second.append(analyze_points(pts[1], it.get("spacing"), None, lset))
    if not first:
        raise InputError(where, "no item has two annotators ('annotators' with two entries, as 'prepare labelme' writes)")
    return {"annotators": list(names), "n_images": len(first), "table": agreement_table(first, second)}


# ---- calibration -----------------------------------------------------------------------------
def uncertainty_calibration(
    pred_points: np.ndarray,
    uncertainty_px: np.ndarray,
    truth_points: np.ndarray,
    spacing: np.ndarray | Sequence[Sequence[float] | None] | None = None,
    n_bins: int = 8,
    policy: ReviewPolicy | None = None,
    covariance_px: np.ndarray | None = None,
) -> dict[str, Any]:
    """Does the predicted uncertainty match the actual error? Binned reliability + flag check.

    Args:
        pred_points, truth_points: ``(B, N, 2)`` ``(x, y)`` pixels (NaN = missing).
        uncertainty_px: ``(B, N)`` predicted RMS radial spread in px.
        spacing: ``(B, 2)`` mm/px (or a list with ``None``); any unknown spacing puts everything in px.
        n_bins: equal-count bins of predicted uncertainty.
        policy: the landmark threshold that decides "flagged" (:class:`ReviewPolicy`).
        covariance_px: ``(B, N, 2, 2)`` predicted covariances over ``(x, y)`` px: adds
            ``ellipse_coverage``, the fraction of true positions inside their 95 % ellipse.

    Returns:
        ``{"unit", "n", "bins": [{"low", "high", "n", "predicted_rms", "actual_rms",
        "actual_mean"}], "flagged": {"threshold", "n", "mean_error", "median_error"},
        "unflagged": {...}, "spearman": rho, "ellipse_coverage": fraction or None}``. A
        calibrated model has ``actual_rms`` close to ``predicted_rms`` in every bin (the
        predicted spread is an RMS radial distance) and a coverage close to 0.95.
    """
    policy = policy or ReviewPolicy()
    pred, truth = np.asarray(pred_points, dtype=float), np.asarray(truth_points, dtype=float)
    unc = np.asarray(uncertainty_px, dtype=float)
    sp_list = None if spacing is None else [None if s is None else np.asarray(s, dtype=float) for s in spacing]
    if sp_list is not None and all(s is not None for s in sp_list):
        scale = np.stack(sp_list)[:, None, :]
        unit, threshold = "mm", policy.landmark_uncertainty_mm
        unc = unc * scale.mean(-1)
    else:
        scale, unit, threshold = np.ones((1, 1, 2)), "px", policy.landmark_uncertainty_px
    err = np.linalg.norm((pred - truth) * scale, axis=-1)
    ok = np.isfinite(err) & np.isfinite(unc)
    e, u = err[ok], unc[ok]
    if not len(e):
        raise ValueError("no landmark has both an error and an uncertainty")
    edges = np.unique(np.quantile(u, np.linspace(0, 1, max(1, int(n_bins)) + 1)))
    which = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, max(len(edges) - 2, 0))
    bins = []
    for b in range(max(len(edges) - 1, 1)):
        sel = which == b
        if not sel.any():
            continue
        bins.append(
            {
                "low": float(edges[b]), "high": float(edges[min(b + 1, len(edges) - 1)]), "n": int(sel.sum()),
                "predicted_rms": float(np.sqrt(np.mean(u[sel] ** 2))), "actual_rms": float(np.sqrt(np.mean(e[sel] ** 2))),
                "actual_mean": float(np.mean(e[sel])),
            }
        )

    def group(sel: np.ndarray) -> dict[str, Any]:
        return {"n": int(sel.sum()), "mean_error": float(np.mean(e[sel])) if sel.any() else None,
                "median_error": float(np.median(e[sel])) if sel.any() else None}

    from scipy.stats import spearmanr

    rho = spearmanr(u, e).statistic if len(e) > 2 and np.ptp(u) > 0 else float("nan")
    coverage = None
    if covariance_px is not None:
        cov = np.asarray(covariance_px, dtype=float)
        d = pred - truth
        valid = np.isfinite(d).all(-1) & np.isfinite(cov).all((-2, -1)) & (np.linalg.det(np.where(np.isfinite(cov), cov, 1.0)) > 0)
        if valid.any():
            m2 = np.einsum("ki,kij,kj->k", d[valid], np.linalg.inv(cov[valid]), d[valid])  # squared Mahalanobis distance
            coverage = float(np.mean(m2 <= CHI2_2DOF_95))
    return {
        "unit": unit, "n": int(len(e)), "bins": bins, "threshold": threshold,
        "flagged": group(u > threshold), "unflagged": group(u <= threshold), "spearman": _float(rho),
        "ellipse_coverage": coverage,
    }


def save_reliability_plot(calibration: Mapping[str, Any], out: str | os.PathLike, title: str | None = None) -> Path:
    """PNG of the reliability curve: predicted RMS uncertainty vs actual RMS error per bin."""
    from .visualize import pyplot, save_figure

    plt = pyplot()
    unit = calibration["unit"]
    x = [b["predicted_rms"] for b in calibration["bins"]]
    y = [b["actual_rms"] for b in calibration["bins"]]
    ym = [b["actual_mean"] for b in calibration["bins"]]
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=110)
    top = max(x + y + [1e-6]) * 1.1
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    ax.plot(x, y, "o-", color="tab:red", label="actual RMS error")
    ax.plot(x, ym, "s:", color="tab:blue", markersize=4, label="actual mean error")
    ax.axvline(calibration["threshold"], color="tab:orange", linewidth=1, label=f"review threshold {calibration['threshold']:g} {unit}")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel(f"predicted uncertainty (RMS radial, {unit})")
    ax.set_ylabel(f"actual radial error ({unit})")
    ax.set_title(title or f"Uncertainty calibration ({calibration['n']} landmarks)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out)


# ---- predictions vs truth --------------------------------------------------------------------
def compare_with_truth(
    preds: Sequence[Mapping[str, Any]],
    datalist: str | os.PathLike,
    policy: ReviewPolicy | None = None,
    n_samples: int = 2000,
    seed: int = 0,
    base_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Measurement error and classification accuracy of predictions against a datalist's truth.

    Items are matched by ``id`` over all sections of the datalist. Both sides are measured with
    the datalist's spacing (else the prediction's), so they share units. When the matched items
    carry two annotators, their agreement on the same images is added as the reference level.

    Returns:
        ``{"n_images", "unmatched", "error": agreement_table(truth, prediction), "calibration",
        "annotator_reference" (or None), "per_image": [{"id", "prediction", "truth"}]}``.

    Raises:
        InputError: no prediction matches a datalist item.
    """
    lset = get_landmark_set(read_datalist(datalist).get("landmark_set", "isbi2015"))
    items = {it["id"]: it for it in _all_items(datalist, base_dir)}
    matched, unmatched = [], []
    for pred in preds:
        (matched if pred.get("id") in items and items[pred["id"]].get("landmarks") is not None else unmatched).append(pred)
    if not matched:
        raise InputError(datalist, f"no prediction id matches a datalist item with landmarks ({len(preds)} predictions)")
    truths, analyses, per_image = [], [], []
    pp, tp, uu, ss, cc = [], [], [], [], []
    for pred in matched:
        item = items[pred["id"]]
        spacing = item["spacing"] if item["spacing"] is not None else pred.get("spacing")
        points = np.asarray(pred["points"], dtype=float) if "points" in pred else prediction_points(pred)  # type: ignore[arg-type]
        unc = prediction_uncertainty(pred)
        a = analyze_points(points, spacing, unc, lset, policy, n_samples, seed, covariance_px=landmark_covariances(pred))
        t = analyze_points(item["landmarks"], spacing, None, lset, policy)
        analyses.append(a)
        truths.append(t)
        per_image.append({"id": pred["id"], "prediction": a, "truth": t})
        pp.append(points)
        tp.append(item["landmarks"])
        uu.append(unc)
        ss.append(spacing)
        cc.append(landmark_covariances(pred))
    calibration = None
    if np.isfinite(np.array(uu)).any():
        calibration = uncertainty_calibration(np.stack(pp), np.stack(uu), np.stack(tp), ss, policy=policy, covariance_px=np.stack(cc))
    reference = None
    if any(isinstance(items[p["id"]].get("annotators"), Mapping) for p in matched):
        reference = annotator_agreement([items[p["id"]] for p in matched], landmark_set=lset)
    return {
        "n_images": len(matched),
        "unmatched": [p.get("id") for p in unmatched],
        "error": agreement_table(truths, analyses),
        "calibration": calibration,
        "annotator_reference": reference,
        "per_image": per_image,
    }


# ---- text ------------------------------------------------------------------------------------
def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_measurements(result: Mapping[str, Any]) -> str:
    """A plain-text measurement table of one analysis (value, interval, class, review)."""
    lines = [f"{'measurement':<14} {'value':>9} {'interval':>19} {'unit':<5} {'class':<32} review"]
    for r in result["measurements"]:
        iv = "" if r["interval"] is None else f"[{r['interval'][0]:.2f}, {r['interval'][1]:.2f}]"
        cls = "" if r["class"] is None else f"{r['class']['code']} {r['class']['label']}"
        if r["class_probability"] is not None:
            cls += f" ({r['class_probability']:.0%})"
        flag = "; ".join((["REVIEW: " + "; ".join(r["review_reasons"])] if r["needs_review"] else []) + ([r["note"]] if r["note"] else []))
        lines.append(f"{r['name']:<14} {_fmt(r['value']):>9} {iv:>19} {r['unit']:<5} {cls:<32} {flag}")
    s = result["skeletal_class"]
    if s["class"]:
        lines.append(f"skeletal class {s['class']} (ANB {s['anb']:.2f} deg; {s['source']})" + (" REVIEW" if s["needs_review"] else ""))
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


def format_agreement(table: Mapping[str, Any], what: str = "difference") -> str:
    """Plain-text agreement table (:func:`agreement_table`)."""
    lines = [f"{'measurement':<14} {'n':>4} {'mean |' + what[:4] + '|':>12} {'bias':>8} {'sd':>7} {'unit':<5} {'class agr.':>10} {'kappa':>6}"]
    for r in table["measurements"]:
        ca = "" if r["class_agreement"] is None else f"{r['class_agreement']:.0%}"
        lines.append(
            f"{r['name']:<14} {r['n']:>4} {_fmt(r['mean_abs']):>12} {_fmt(r['mean']):>8} {_fmt(r['sd']):>7} "
            f"{r['unit'] or '':<5} {ca:>10} {_fmt(r['kappa']):>6}"
        )
    s = table["skeletal_class"]
    if s["n"]:
        lines.append(f"skeletal class agreement: {s['agreement']:.0%} (kappa {_fmt(s['kappa'])}, n={s['n']})")
    return "\n".join(lines)


DOCS_BEGIN = "<!-- BEGIN MEASUREMENT TABLE (generated by maht_net.analysis.measurements_markdown) -->"
DOCS_END = "<!-- END MEASUREMENT TABLE -->"


def measurements_markdown(measurements: Sequence[Measurement] = MEASUREMENTS) -> str:
    """The measurement table as Markdown (what ``docs/analysis.md`` embeds)."""
    units = {"deg": "degrees", "mm": "mm (px without spacing)", "ratio": "ratio"}
    lines = [
        "| Name | Measurement | Landmarks | Unit | Definition and sign | Classes | Reference value | Source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in measurements:
        classes = "<br>".join(describe_classes(m.name, m.classes)) or "-"
        lines.append(
            f"| {m.name} | {m.title} | {', '.join(m.landmarks)} | {units[m.unit]} | {m.definition} | {classes} | "
            f"{m.norm or '-'} | {m.source} |"
        )
    skeletal = "<br>".join(describe_classes("ANB", SKELETAL_CLASSES))
    lines.append(f"| skeletal class | Skeletal class from ANB | (ANB) | class | {SKELETAL_SOURCE} | {skeletal} | - | Steiner 1953; Riedel 1952 |")
    return "\n".join(lines)


def update_docs(path: str | os.PathLike) -> Path:
    """Replace the generated table between the markers of a Markdown file (e.g. ``docs/analysis.md``)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    start, end = text.index(DOCS_BEGIN) + len(DOCS_BEGIN), text.index(DOCS_END)
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text[:start] + "\n" + measurements_markdown() + "\n" + text[end:])
    return path


# ---- command line ----------------------------------------------------------------------------
def _prediction_paths(inputs: Sequence[str]) -> list[Path]:
    paths: list[Path] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            found = find_predictions(p)
            if not found:
                raise InputError(p, f"no *{PREDICTION_SUFFIX} files in the folder")
            paths += list(found.values())
        else:
            paths.append(p)
    return paths


def add_review_arguments(parser: argparse.ArgumentParser) -> None:
    """Monte-Carlo and :class:`ReviewPolicy` options shared by ``analyze`` and ``report``."""
    d = ReviewPolicy()
    parser.add_argument("--samples", type=int, default=2000, help="Monte-Carlo samples per image (0 = no intervals)")
    parser.add_argument("--seed", type=int, default=0, help="Monte-Carlo seed")
    parser.add_argument("--review-landmark-mm", type=float, default=d.landmark_uncertainty_mm, help="flag landmarks whose uncertainty exceeds this (mm)")
    parser.add_argument("--review-landmark-px", type=float, default=d.landmark_uncertainty_px, help="the same without pixel spacing (px)")
    for unit in ("deg", "mm", "px", "ratio"):
        parser.add_argument(
            f"--review-interval-{unit}", type=float, default=d.max_interval_width[unit],
            help=f"flag measurements in {unit} whose 95%% interval is wider than this",
        )


def policy_from_args(args: argparse.Namespace) -> ReviewPolicy:
    """The :class:`ReviewPolicy` given by :func:`add_review_arguments`' options."""
    return ReviewPolicy(
        landmark_uncertainty_mm=args.review_landmark_mm,
        landmark_uncertainty_px=args.review_landmark_px,
        max_interval_width={u: getattr(args, f"review_interval_{u}") for u in ("deg", "mm", "px", "ratio")},
    )


def _run(args: argparse.Namespace) -> int:
    policy = policy_from_args(args)
    preds = [read_prediction(p) for p in _prediction_paths(args.predictions)]
    out: dict[str, Any] = {"analyses": []}
    if args.truth:
        result = compare_with_truth(preds, args.truth, policy, args.samples, args.seed)
        out = {"analyses": [r["prediction"] for r in result["per_image"]], "comparison": {k: v for k, v in result.items() if k != "per_image"}}
        print(f"prediction vs truth on {result['n_images']} image(s) (error = prediction - truth):")
        print(format_agreement(result["error"], "error"))
        ref = result["annotator_reference"]
        if ref:
            a, b = ref["annotators"]
            print(f"\nreference level, {b} - {a} on the same {ref['n_images']} image(s):")
            print(format_agreement(ref["table"]))
        cal = result["calibration"]
        if cal:
            fl, un = cal["flagged"], cal["unflagged"]
            print(
                f"\nuncertainty calibration ({cal['n']} landmarks, Spearman rho {_fmt(cal['spearman'])}): flagged "
                f"(> {cal['threshold']:g} {cal['unit']}) n={fl['n']} mean error {_fmt(fl['mean_error'])} {cal['unit']}; "
                f"unflagged n={un['n']} mean error {_fmt(un['mean_error'])} {cal['unit']}"
                + ("" if cal["ellipse_coverage"] is None else f"; true position inside its 95 % ellipse for {cal['ellipse_coverage']:.1%}")
            )
            if args.reliability_plot:
                save_reliability_plot(cal, args.reliability_plot)
                print(f"wrote {args.reliability_plot}")
        if result["unmatched"]:
            print(f"no truth for: {', '.join(map(str, result['unmatched']))}")
    else:
        for pred in preds:
            a = analyze_prediction(pred, policy, args.samples, args.seed)
            out["analyses"].append(a)
            print(f"{pred.get('id')}:\n{format_measurements(a)}\n")
    if args.out:
        write_json_atomic(args.out, out if len(out["analyses"]) != 1 or args.truth else out["analyses"][0])
        print(f"wrote {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``maht-net analyze`` (measurements, classes, intervals; agreement with ``--truth``)."""
    p = subparsers.add_parser(
        "analyze",
        help="cephalometric measurements (SNA, SNB, ANB, ODI, APDI, FHI, FMA, MW, ...) with classes, intervals and review flags",
        description="Measure angles and distances from predicted landmarks, classify them as in ISBI 2015 task 2, "
        "propagate the landmark uncertainty (Monte-Carlo) and flag what needs review. With --truth: measurement "
        "error and class accuracy against a datalist, the annotator-vs-annotator reference level and the "
        "uncertainty calibration.",
    )
    p.add_argument("predictions", nargs="+", help="prediction JSON file(s) (<id>_landmarks.json) or folders of them")
    p.add_argument("--truth", metavar="DATALIST", help="datalist with ground-truth landmarks (matched by id, all sections)")
    p.add_argument("--out", help="write JSON here: the analysis of one prediction, else {analyses[, comparison]}")
    p.add_argument("--reliability-plot", metavar="PNG", help="with --truth: save the uncertainty reliability curve")
    add_review_arguments(p)
    p.set_defaults(func=_run)
