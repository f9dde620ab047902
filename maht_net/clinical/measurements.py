"""The measurement table: every cephalometric measurement (SNA, SNB, ANB, ...) with its landmarks, function, unit, definition, ISBI 2015 classes and source; the skeletal classes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from maht_net.clinical.geometry import angle_at, angle_between, anterior_distance, signed_angle

Points = Mapping[str, np.ndarray]


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
