"""Synthetic lateral cephalograms ("phantoms"): the embedded default data set.

Every phantom starts from a landmark configuration sampled from a small shape model (a mean
configuration in mm plus named modes of variation and per-point jitter, see
:func:`sample_landmarks_mm`). The anatomy is then built *through* those points, and landmarks
defined by an extreme of a structure are re-measured on the outline that is actually drawn, so
each of the 19 ISBI 2015 landmarks sits on the structure that defines it:

=============  ================================================================================
S              centre of the round sella turcica fossa
N              frontonasal junction: the concave corner of the bone profile where the frontal
               bone meets the nasal bones
Or             lowest point of the orbital rim (an elliptical ring)
Po             top of the ear-rod ring that marks the external auditory meatus
A, B           deepest points of the anterior maxillary / mandibular contours (from the chords
               ANS-prosthion and infradentale-pogonion)
Pog            tangent point of a line from N to the chin (the most anterior point of the chin)
Me, Gn         lowest point of the symphysis outline; its midpoint (arc length) to Pog
Go             point of the rounded mandibular angle closest to the corner of the ramus and
               lower-border tangents
LIT, UIT       middle of the incisal edge of the drawn lower / upper central incisor
UL, LL, Pog'   most anterior points of the upper lip, lower lip and soft-tissue chin outlines
Sn             the corner of the skin profile where the columella meets the upper lip
PNS, ANS       posterior / anterior tips of the drawn hard palate
Ar             crossing of the posterior ramus border with the lower edge of the basiocciput
=============  ================================================================================

Geometry is built in a *head frame* (mm, origin at sella, x anterior, y inferior, Frankfort
plane about horizontal: the patient faces right as on the real films) and mapped to pixels by a
random similarity transform (small rotation, magnification, shift), so the image and the
landmarks are rotated together. Intensities follow ``1 - exp(-density)`` (bone bright, soft
tissue dim, air dark), then per-image exposure, blur and noise.

Size and spacing: the Hamedan development films are 1340 x 1671 px at a nominal 0.127 mm/px, a
field of view of 170.2 x 212.2 mm. Phantoms cover ``FIELD_OF_VIEW_MM`` = 170 x 212.5 mm: at
the default size ``(W, H) = (512, 640)`` the (isotropic) spacing is 170 / 512 = 212.5 / 640 =
0.33203 mm/px. At another size it is ``max(170 / W, 212.5 / H)`` (:func:`phantom_spacing`;
0.66406 at 256 x 320): the anatomy keeps its physical size in mm and still fits, and another
aspect ratio widens the field of view along one axis (centred).

Points everywhere are ``(x, y)`` pixels (x = column, y = row, origin at the top-left pixel
centre), arrays of shape ``(19, 2)`` in ISBI 2015 order (see :mod:`maht_net.landmarks`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import distance_transform_edt, gaussian_filter

from maht_net.errors import InputError
from maht_net.io.atomic import atomic_write
from maht_net.io.datalist import make_item, read_datalist, write_datalist
from maht_net.io.labelme import write_labelme
from maht_net.landmarks import ISBI2015
from maht_net.progress import progress

__all__ = [
    "FIELD_OF_VIEW_MM",
    "DEFAULT_SIZE",
    "MIN_SIZE",
    "MODE_NAMES",
    "PhantomCase",
    "phantom_spacing",
    "sample_landmarks_mm",
    "render_phantom",
    "make_phantom_dataset",
    "ensure_phantom_dataset",
]

logger = logging.getLogger(__name__)

FIELD_OF_VIEW_MM = (170.0, 212.5)
"""``(width, height)`` in mm that every phantom covers, as the real films (170.2 x 212.2 mm)."""
DEFAULT_SIZE = (512, 640)
"""Default ``(W, H)`` in pixels: 0.33203 mm/px."""
MIN_SIZE = 128
"""Smallest side accepted (px); below this the thin structures vanish."""
PHANTOM_VERSION = 1
"""Bumped whenever the generator's output changes, so cached data sets are remade."""

# ----------------------------------------------------------------------------------------------
# Shape model
# ----------------------------------------------------------------------------------------------

# Mean configuration (mm, head frame: origin sella, x anterior, y inferior), rounded from the mean
# of annotated real films at their nominal spacing. UIA/LIA (incisor root apices) are hidden
# points: the pivots of the incisor-inclination modes and the roots of the drawn incisors.
_MEAN_MM: dict[str, tuple[float, float]] = {
    "S": (0.0, 0.0), "N": (65.0, -9.0), "Or": (51.0, 18.0), "Po": (-18.0, 20.5),
    "A": (64.0, 46.0), "B": (58.0, 86.0), "Pog": (59.0, 97.0), "Me": (51.0, 104.0),
    "Gn": (57.0, 102.5), "Go": (-6.5, 71.5), "LIT": (65.0, 66.0), "UIT": (68.0, 68.0),
    "UL": (80.5, 58.5), "LL": (77.0, 75.5), "Sn": (79.5, 46.0), "Pog'": (70.0, 94.0),
    "PNS": (18.0, 41.0), "ANS": (68.5, 40.5), "Ar": (-13.5, 30.0),
    "UIA": (60.0, 47.0), "LIA": (53.0, 85.0),
}  # fmt: skip
_KEYS = [*ISBI2015.abbreviations, "UIA", "LIA"]
_MEAN = np.array([_MEAN_MM[k] for k in _KEYS])
_JITTER_MM = 0.7
_MODE_CLIP = 2.5  # mode coefficients are standard normal, clipped to +-2.5 sd


def _ix(*keys: str) -> list[int]:
    return [_KEYS.index(k) for k in keys]


def _perp(v: np.ndarray) -> np.ndarray:
    """Rotate vectors ``(..., 2)`` by +90 degrees in the y-down frame: up ``(0, -1)`` -> anterior ``(1, 0)``."""
    return np.stack([-v[..., 1], v[..., 0]], axis=-1)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _build_modes() -> list[tuple[str, np.ndarray]]:
    """Named modes of variation: ``(P, 2)`` displacements (mm) of every point for +1 sd.

    Rotations are linearised (``perp(p - pivot) * angle``): exact enough for a few degrees.
    """
    m = _MEAN
    p = {k: m[i] for i, k in enumerate(_KEYS)}
    rad = np.pi / 180
    modes = []

    def mode(name: str, rows: dict[str, np.ndarray]) -> None:
        d = np.zeros_like(m)
        for key, v in rows.items():
            d[_ix(key)] = v
        modes.append((name, d))

    def rotate(keys: Sequence[str], pivot: np.ndarray, degrees: float, weight: float = 1.0) -> dict:
        return {k: weight * _perp(p[k] - pivot) * degrees * rad for k in keys}

    mandible = ("B", "Pog", "Me", "Gn", "Go", "LIA", "Pog'")
    condyle = p["Ar"] + np.array([4.0, -8.0])
    modes.append(("size", 0.035 * (m - p["S"])))
    mode("anterior_cranial_base", {"N": 2.5 * _unit(p["N"]), "Or": 1.2 * _unit(p["N"])})
    mode("cranial_base_angle", {**rotate(("Po", "Ar"), p["S"], 2.5), **rotate(("Go",), p["S"], 2.5, 0.5)})
    mode("maxillary_protrusion", {**{k: np.array([2.5, 0.0]) for k in ("A", "ANS", "UIT", "UIA", "Sn", "UL")},
                                  "PNS": np.array([1.0, 0.0])})  # fmt: skip
    depth = np.clip((m[:, 1] - p["ANS"][1]) / (p["Me"][1] - p["ANS"][1]), 0, 1)
    modes.append(("lower_face_height", np.stack([np.zeros_like(depth), 4.0 * depth], axis=1)))
    mode("mandibular_rotation", {**rotate(mandible, condyle, 3.0), **rotate(("LIT", "LL"), condyle, 3.0, 0.7)})
    along = _unit(p["Me"] - p["Go"])
    mode("mandibular_length", {**{k: 3.0 * along for k in mandible if k != "Go"},
                               "LIT": 1.5 * along, "LL": 1.8 * along})  # fmt: skip
    upper = rotate(("UIT",), p["UIA"], 5.0)
    mode("upper_incisor_inclination", {**upper, "UL": 0.4 * upper["UIT"]})
    lower = rotate(("LIT",), p["LIA"], 5.0)
    mode("lower_incisor_inclination", {**lower, "LL": 0.4 * lower["LIT"]})
    mode("lip_protrusion", {"UL": np.array([2.0, 0.0]), "LL": np.array([2.0, 0.0]), "Sn": np.array([0.8, 0.0])})
    mode("soft_tissue_chin", {"Pog'": np.array([1.5, 0.0])})
    return modes


_MODES = _build_modes()
MODE_NAMES = tuple(name for name, _ in _MODES)
"""Names of the shape model's modes, in the order of their coefficients."""


def _make_plausible(p: dict[str, np.ndarray]) -> None:
    """Clip relations that independent modes and jitter could break (in place, mm)."""
    uit, lit = p["UIT"], p["LIT"]
    lit[0] = np.clip(lit[0], uit[0] - 6.0, uit[0] - 0.5)  # overjet 0.5..6 mm
    lit[1] = np.clip(lit[1], uit[1] - 4.0, uit[1] + 1.0)  # overbite -1..4 mm
    p["UL"][0] = max(p["UL"][0], uit[0] + 9.0)
    p["LL"][0] = max(p["LL"][0], lit[0] + 9.0)
    p["LL"][1] = max(p["LL"][1], p["UL"][1] + 10.0)
    p["Sn"][0] = max(p["Sn"][0], p["ANS"][0] + 8.0)
    p["Pog'"][0] = max(p["Pog'"][0], p["Pog"][0] + 8.0)
    # incisor roots inside the alveolar bone: apices well behind A and B
    p["UIA"][0] = min(p["UIA"][0], p["A"][0] - 3.5)
    p["LIA"][0] = min(p["LIA"][0], p["B"][0] - 3.5)
    # a chin that bulges beyond the line N-B (else pogonion would not be a tangent point)
    nb = _unit(p["B"] - p["N"])
    ahead = -float(np.dot(p["Pog"] - p["B"], _perp(nb)))
    p["Pog"][0] += max(0.0, 2.5 - ahead)
    p["Gn"][0] += 0.5 * max(0.0, 2.5 - ahead)


def sample_landmarks_mm(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Sample the shape model once.

    Returns:
        ``(coefficients, points)``: the clipped mode coefficients ``(len(MODE_NAMES),)`` in sd,
        and the points in mm (head frame: origin sella, x anterior, y inferior) keyed by ISBI
        2015 abbreviation, plus the hidden incisor apices ``"UIA"`` and ``"LIA"``. These are the
        *control* positions; :func:`render_phantom` re-measures extreme-point landmarks on the
        drawn outlines.
    """
    b = np.clip(rng.standard_normal(len(_MODES)), -_MODE_CLIP, _MODE_CLIP)
    x = _MEAN + np.tensordot(b, np.stack([d for _, d in _MODES]), axes=1)
    x = x + rng.normal(0.0, _JITTER_MM, x.shape)
    points = {k: x[i].copy() for i, k in enumerate(_KEYS)}
    _make_plausible(points)
    return b, points


# ----------------------------------------------------------------------------------------------
# Geometry helpers (mm, head frame)
# ----------------------------------------------------------------------------------------------


def _curve(ctrl: Sequence, closed: bool = False, step: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """Centripetal Catmull-Rom spline through ``ctrl`` ``(K, 2)`` (no cusps, little overshoot).

    Returns the ``(M, 2)`` points, about ``step`` mm apart, and the index of each control point
    among them (the curve passes exactly through every control point).
    """
    ctrl = np.asarray(ctrl, dtype=float)
    if closed:
        ext = np.vstack([ctrl[-1:], ctrl, ctrl[:2]])
    else:  # mirror the end points so the end segments are drawn too
        ext = np.vstack([2 * ctrl[0] - ctrl[1], ctrl, 2 * ctrl[-1] - ctrl[-2]])
    knots = np.concatenate([[0.0], np.cumsum(np.maximum(np.linalg.norm(np.diff(ext, axis=0), axis=1), 1e-6) ** 0.5)])
    n_seg = len(ctrl) if closed else len(ctrl) - 1
    seg_len = np.linalg.norm(ext[2 : n_seg + 2] - ext[1 : n_seg + 1], axis=1)
    counts = np.maximum(2, np.ceil(seg_len / step).astype(int))
    i = np.repeat(np.arange(n_seg), counts) + 1  # segment from ext[i] to ext[i + 1]
    frac = np.concatenate([np.arange(c) / c for c in counts])
    if not closed:  # end exactly on the last control point
        i, frac = np.append(i, n_seg), np.append(frac, 1.0)
    t0, t1, t2, t3 = (knots[i + k - 1] for k in range(4))
    p0, p1, p2, p3 = (ext[i + k - 1] for k in range(4))
    t = (t1 + frac * (t2 - t1))[:, None]
    t0, t1, t2, t3 = (v[:, None] for v in (t0, t1, t2, t3))
    a1 = ((t1 - t) * p0 + (t - t0) * p1) / (t1 - t0)
    a2 = ((t2 - t) * p1 + (t - t1) * p2) / (t2 - t1)
    a3 = ((t3 - t) * p2 + (t - t2) * p3) / (t3 - t2)
    b1 = ((t2 - t) * a1 + (t - t0) * a2) / (t2 - t0)
    b2 = ((t3 - t) * a2 + (t - t1) * a3) / (t3 - t1)
    points = ((t2 - t) * b1 + (t - t1) * b2) / (t2 - t1)
    return points, np.concatenate([[0], np.cumsum(counts)])[: len(ctrl)]


def _normals(line: np.ndarray) -> np.ndarray:
    """Unit normals ``(M, 2)`` of a polyline: its tangent turned by +90 degrees (see :func:`_perp`)."""
    return _perp(_unit(np.gradient(line, axis=0)))


def _ribbon(line: np.ndarray, width: float | np.ndarray, shift: float | np.ndarray = 0.0) -> np.ndarray:
    """Polygon of a band of ``width`` (mm, scalar or per point) along ``line``, centre shifted by ``shift``."""
    n = _normals(line)
    w = np.broadcast_to(np.asarray(width, dtype=float), len(line))[:, None]
    c = line + n * np.broadcast_to(np.asarray(shift, dtype=float), len(line))[:, None]
    return np.vstack([c + n * w / 2, (c - n * w / 2)[::-1]])


def _ellipse(centre: np.ndarray, a: float, b: float, degrees: float = 0.0, n: int = 64) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.asarray(centre) + _rotate(np.stack([a * np.cos(t), b * np.sin(t)], axis=1), degrees)


def _rotate(v: np.ndarray, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return v @ np.array([[c, s], [-s, c]])


def _posterior_normal(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Unit normal of the (roughly vertical) chord ``start``-``end`` pointing posterior."""
    n = _perp(_unit(end - start))
    return n if n[0] < 0 else -n


def _deepest(curve: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Point of ``curve`` farthest behind (posterior to) the chord ``start``-``end``."""
    return curve[np.argmax((curve - start) @ _posterior_normal(start, end))]


def _behind(point: np.ndarray, start: np.ndarray, end: np.ndarray, depth: float) -> np.ndarray:
    """``point`` moved back, if needed, to lie at least ``depth`` mm behind the chord: a concavity."""
    n = _posterior_normal(start, end)
    return point + max(0.0, depth - float(np.dot(point - start, n))) * n


def _arc_midpoint(curve: np.ndarray) -> np.ndarray:
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(curve, axis=0), axis=1))])
    return np.array([np.interp(s[-1] / 2, s, curve[:, 0]), np.interp(s[-1] / 2, s, curve[:, 1])])


@dataclass
class _Incisor:
    """An incisor (mm) from the middle of its incisal edge to its root apex.

    ``labial``/``lingual`` ``(M, 2)`` are its two sides and ``axis_points`` its axis, sampled
    from tip to apex; ``depth`` ``(M,)`` is the distance from the tip along the axis.
    """

    labial: np.ndarray
    lingual: np.ndarray
    axis_points: np.ndarray
    depth: np.ndarray
    crown: float
    lab: np.ndarray  # unit vector towards the labial (anterior) side

    @classmethod
    def build(cls, tip: np.ndarray, apex: np.ndarray, width: float, crown_fraction: float) -> _Incisor:
        length = float(np.linalg.norm(apex - tip))
        axis = (apex - tip) / length
        lab = _perp(axis) if _perp(axis)[0] > 0 else -_perp(axis)
        sr = np.linspace(0.0, 1.0, 40)
        half = width * np.interp(sr, [0.0, 0.06, 0.2, 0.45, 0.6, 0.85, 1.0], [0.1, 0.35, 0.6, 0.5, 0.45, 0.28, 0.05])
        bulge = width * np.interp(sr, [0.0, 0.3, 1.0], [0.0, 0.1, 0.0])  # convex labial face of the crown
        mid = tip + sr[:, None] * length * axis
        return cls(mid + (half + bulge)[:, None] * lab, mid - (half - bulge)[:, None] * lab, mid, sr * length,
                   crown_fraction * length, lab)  # fmt: skip

    def labial_at(self, depth: float, gap: float) -> np.ndarray:
        """Point ``gap`` mm labial of the labial surface, ``depth`` mm from the tip."""
        k = min(int(np.searchsorted(self.depth, depth)), len(self.depth) - 1)
        return self.labial[k] + gap * self.lab

    def lingual_at(self, depth: float, gap: float) -> np.ndarray:
        k = min(int(np.searchsorted(self.depth, depth)), len(self.depth) - 1)
        return self.lingual[k] - gap * self.lab


# Cranial vault outer table (mm, mean head frame), from nasion over the vertex to the occiput.
_VAULT_MM = np.array(
    [[65.0, -9.0], [68.5, -20.0], [69.0, -38.0], [63.0, -60.0], [49.0, -79.0], [26.0, -93.0], [-5.0, -99.0],
     [-40.0, -95.0], [-75.0, -79.0], [-101.0, -50.0], [-113.0, -14.0], [-110.0, 22.0], [-96.0, 47.0],
     [-76.0, 60.0]]
)  # fmt: skip


@dataclass
class _Op:
    """One drawing operation: a polygon ``(K, 2)`` (mm) added to a density layer.

    ``kind`` "fill" adds ``density`` inside; "shell" adds ``cortex`` within ``thickness`` mm of
    the outline and ``density`` deeper inside (cortical bone around cancellous bone).
    """

    layer: str
    polygon: np.ndarray
    density: float
    kind: str = "fill"
    cortex: float = 0.0
    thickness: float = 0.0


def _anatomy(p: dict[str, np.ndarray], rng: np.random.Generator, up: np.ndarray) -> tuple[list[_Op], np.ndarray]:
    """Build the drawing operations and the 19 landmarks ``(19, 2)`` (mm, head frame).

    Args:
        p: control points from :func:`sample_landmarks_mm`.
        up: the image's up direction in the head frame (the ear-rod holder hangs from it).
    """
    u = rng.uniform
    ops: list[_Op] = []

    def fill(layer: str, poly: np.ndarray, density: float) -> None:
        ops.append(_Op(layer, poly, density))

    def shell(poly: np.ndarray, cortex: float, density: float, thickness: float) -> None:
        ops.append(_Op("bone", poly, density, "shell", cortex, thickness))

    lm = {k: p[k].copy() for k in ISBI2015.abbreviations}
    S, N, Ar = p["S"], p["N"], p["Ar"]
    # Similarity mapping the mean S-N onto this S-N: places the template vault and spine.
    sn0, sn = _MEAN[1] - _MEAN[0], N - S
    scale = np.linalg.norm(sn) / np.linalg.norm(sn0)
    turn = np.degrees(np.arctan2(sn[1], sn[0]) - np.arctan2(sn0[1], sn0[0]))

    def place(v: np.ndarray) -> np.ndarray:
        return S + _rotate((np.asarray(v) - _MEAN[0]) * scale, turn)

    # --- cranial vault: outer table through N, diploe, inner table; frontal sinus above N
    outer, _ = _curve(place(_VAULT_MM))
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(outer, axis=0), axis=1))])
    thick = u(5.0, 7.5) + 6.0 * np.exp(-s / 20.0)  # thick frontal bone over the sinus
    normal = _normals(outer)  # outward (anterior at the forehead)
    inner = outer - normal * thick[:, None]
    table = u(1.3, 2.0)
    fill("bone", np.vstack([outer, inner[::-1]]), u(0.45, 0.6))
    fill("bone", _ribbon(outer, table, -table / 2), 0.7)
    fill("bone", _ribbon(inner, table, table / 2), 0.6)
    fill("bone", _ellipse(N + np.array([-4.5, -13.0]), u(3.0, 4.5), u(6.0, 9.0), u(-20, 0)), -0.5)

    # --- sella turcica: round fossa centred on S, dorsum sellae behind, sphenoid body below
    r = u(4.2, 5.8)
    theta = np.radians(np.linspace(-40.0, 220.0, 60))
    fossa = S + r * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    tub, dorsum = fossa[0], fossa[-1]
    dorsum_tip = dorsum + np.array([u(0.5, 2.0), -u(4.0, 6.5)])
    sella_line = np.vstack([_curve([dorsum_tip, dorsum + np.array([-0.6, -2.0]), dorsum])[0], fossa[1:]])
    sphenoid = np.vstack(
        [fossa, S + [-6.0, 9.0], S + [2.0, 22.0], S + [14.0, 21.0], S + [17.0, 6.0], tub + [6.0, 1.0]]
    )
    shell(sphenoid, 0.55, 0.45, 1.0)
    fill("bone", _ellipse(S + np.array([9.0, 12.5]), u(5.0, 7.0), u(4.5, 6.5), u(-20, 20)), -0.35)
    fill("bone", _ribbon(sella_line, u(1.1, 1.6)), 0.75)

    # --- basiocciput: its lower edge runs from the sphenoid through Ar to basion
    p1 = S + np.array([3.0, 22.0])
    c_dir = _unit(Ar - p1)
    ba = Ar + u(6.0, 9.0) * c_dir
    c_up = _perp(c_dir)  # posterior-superior side
    clivus = np.array([p1, Ar, ba, ba + 4.0 * c_up + 1.5 * c_dir, ba + 9.0 * c_up - 3.0 * c_dir,
                       dorsum + [-3.0, 4.0], dorsum + [0.0, 2.0], S + [-1.0, 10.0]])  # fmt: skip
    shell(clivus, 0.75, 0.5, 1.2)

    # --- anterior cranial base and orbital roof
    front = N + np.array([-9.0, -4.0])
    acb, _ = _curve([tub, tub + np.array([10.0, -3.5]), (tub + front) / 2 + [0.0, -4.0], front])
    fill("bone", _ribbon(acb, u(1.5, 2.5)), 0.45)
    roof, _ = _curve([S + [12.0, -6.0], (S + N) / 2 + [8.0, -12.0], N + [-6.0, -14.0]])
    fill("bone", _ribbon(roof, 1.5), 0.35)

    # --- cranium interior: both parietal walls project over the whole brain case
    fill("bone", np.vstack([inner[3:], ba + 6.0 * c_up, dorsum_tip, S + [0.0, -r], tub, front]), u(0.35, 0.5))

    # --- petrous ridge, mastoid; orbit (lowest point of the rim = Or)
    fill("bone", _ellipse(p["Po"] + np.array([1.0, -11.0]), u(14.0, 18.0), u(5.0, 7.0), u(-30, -15)), u(0.5, 0.7))
    fill("bone", _ellipse(p["Po"] + np.array([-9.0, 5.0]), u(7.0, 9.0), u(9.0, 12.0), 20.0), u(0.2, 0.35))
    orbit_b = u(15.0, 18.5)
    orbit = _ellipse(p["Or"] - np.array([0.0, orbit_b]), u(13.0, 16.0), orbit_b, 0.0, 96)
    fill("bone", _ribbon(np.vstack([orbit, orbit[:1]]), u(1.2, 1.8)), u(0.3, 0.45))

    # --- maxilla: nasal floor PNS->ANS (tips are the landmarks), anterior contour ANS-A-Pr
    pns, ans, uit, uia = p["PNS"], p["ANS"], p["UIT"], p["UIA"]
    upper = _Incisor.build(uit, uia, u(6.5, 7.5), 0.45)
    pr = upper.labial_at(upper.crown + 1.0, 0.8)  # prosthion: alveolar crest over the root
    op_angle = 0.4 * np.degrees(np.arctan2(*(p["Me"] - p["Go"])[::-1])) + u(-2.0, 2.0)
    o = (uit + p["LIT"]) / 2
    op_back = _rotate(np.array([-1.0, 0.0]), op_angle)  # occlusal plane, pointing back (and up)
    op_up = _perp(op_back)
    nasal_floor, _ = _curve([pns, (pns + ans) / 2 + [0.0, -1.0], ans])
    a_pt = _behind(p["A"], ans, pr, 1.5)
    a_ctrl = [ans, ans + (a_pt - ans) * 0.45 + [-0.8, 0.0], a_pt, (a_pt + pr) / 2 + [0.6, 0.0], pr]
    anterior, _ = _curve(a_ctrl)
    lm["A"] = _deepest(anterior, ans, pr)
    alveolar, _ = _curve(
        [pr, pr + [-5.0, -0.5], o + 22.0 * op_back + 9.0 * op_up, o + 42.0 * op_back + 9.5 * op_up,
         pns + [4.0, 10.0], pns + [0.5, 2.0], pns]
    )  # fmt: skip
    shell(np.vstack([nasal_floor, anterior[1:], alveolar[1:-1]]), 0.75, 0.4, 1.5)
    palate_w = np.interp(np.linspace(0, 1, len(nasal_floor)), [0.0, 0.15, 0.7, 0.92, 1.0], [0.0, 2.5, 4.0, 3.0, 0.0])
    fill("bone", _ribbon(nasal_floor, palate_w, palate_w / 2), 0.5)  # hard palate, below the nasal floor

    # --- midface: maxillary body, zygoma and ethmoid projected; maxillary sinus (air)
    nasal_tip = N + _rotate(np.array([9.0, 21.0]) * scale, turn)
    midface = np.array([front, N + [-1.0, 2.0], nasal_tip + [-4.0, 2.0], ans + [-6.0, -10.0], ans + [-3.0, 0.0],
                        pns, pns + [-4.0, -14.0], S + [14.0, 21.0], S + [17.0, 6.0], tub + [6.0, 1.0]])  # fmt: skip
    fill("bone", midface, u(0.2, 0.35))
    sinus_c = np.array([p["Or"][0] - 8.0, (p["Or"][1] + ans[1]) / 2 + 1.0])
    sinus = (u(11.0, 14.0), u(8.0, 10.0), u(-10, 10))
    for shrink in (1.0, 0.8, 0.6):  # nested: an air cavity darkens gradually towards its middle
        fill("bone", _ellipse(sinus_c, shrink * sinus[0], shrink * sinus[1], sinus[2]), -0.07)
    nasal_bone, _ = _curve([N + [-1.5, -3.0], N, nasal_tip])
    nasal_w = np.linspace(3.0, 1.0, len(nasal_bone))
    fill("bone", _ribbon(nasal_bone, nasal_w, nasal_w / 2), 0.7)  # anterior surface through N

    # --- mandible: one closed outline through the sampled landmarks, then re-measured
    go, me, lit, lia = p["Go"], p["Me"], p["LIT"], p["LIA"]
    bis = _unit(_unit(go - Ar) + _unit(go - me))
    k_corner = go + u(2.0, 3.5) * bis  # corner of the ramus and lower-border tangents
    v = _unit(Ar - k_corner)  # up the ramus
    nr = _perp(v)  # anterior, across the ramus
    lr = np.linalg.norm(Ar - k_corner)
    ub = _unit(me - k_corner)  # forward along the lower border
    wb = -_perp(ub)  # up from the lower border
    lb = np.linalg.norm(me - k_corner)
    lower = _Incisor.build(lit, lia, u(5.5, 6.5), 0.43)
    idl = lower.labial_at(lower.crown + 1.0, 0.8)  # infradentale
    crest = [o + t * op_back - 9.0 * op_up for t in (14.0, 28.0, 42.0)]
    crest = [c for c in crest if np.dot(c - k_corner, nr) > 36.0]  # only ahead of the ramus

    def ramus(a: float, b: float) -> np.ndarray:
        return k_corner + a * v + b * nr

    def body(a: float, b: float) -> np.ndarray:
        return k_corner + a * ub + b * wb

    ctrl = [ramus(13.0, 0.0), go, body(13.0, 0.0), body(0.35 * lb, 1.3), body(0.7 * lb, -0.2),
            me, p["Gn"], p["Pog"], _behind(p["B"], idl, p["Pog"], 1.5), idl, idl + 4.0 * op_back + 1.0 * op_up, *crest,
            ramus(0.3 * lr, 33.0), ramus(0.65 * lr, 29.0), ramus(lr + 5.0, 26.0), ramus(lr - 5.0, 16.0),
            ramus(lr + 1.0, 8.0), ramus(lr + 7.0, 6.0), ramus(lr + 9.5, 2.0), ramus(lr + 5.0, -1.5), Ar,
            ramus(0.5 * lr, 0.8)]  # fmt: skip
    outline, at = _curve(ctrl, closed=True)
    # outline order: angle, lower border, Me, Gn, Pog, B, infradentale, crest, ramus, condyle, Ar
    rel = outline[at[4] : at[8] + 1] - N
    i_pog = at[4] + int(np.argmax(np.arctan2(rel[:, 0], rel[:, 1])))  # tangent from N
    i_me = at[3] + int(np.argmax(outline[at[3] : i_pog + 1, 1]))
    lm["Pog"], lm["Me"] = outline[i_pog], outline[i_me]
    lm["Gn"] = _arc_midpoint(outline[i_me : i_pog + 1])
    lm["B"] = _deepest(outline[i_pog : at[9] + 1], idl, lm["Pog"])
    lm["Go"] = outline[at[0] + np.argmin(np.linalg.norm(outline[at[0] : at[2] + 1] - k_corner, axis=1))]
    shell(outline, u(0.9, 1.1), u(0.35, 0.5), u(1.8, 2.6))
    border = outline[at[1] : i_me + 1]
    fill("bone", _ribbon(border, u(2.0, 3.0), -1.6), 0.35)  # thick cortex of the lower border
    lingual, _ = _curve([lower.lingual_at(lower.crown + 1.5, 0.8), lower.lingual_at(lower.depth[-1] - 2.0, 2.5),
                         me - 11.0 * ub + 1.5 * wb, body(0.6 * lb, 2.0)])  # fmt: skip
    fill("bone", _ribbon(lingual, 1.8), 0.6)  # lingual cortex of the symphysis

    # --- teeth: incisors from tip to apex (enamel crown, dentin root, pulp); posterior teeth
    def incisor(tooth: _Incisor) -> None:
        fill("bone", np.vstack([tooth.labial, tooth.lingual[::-1]]), 1.0)
        c = tooth.depth <= tooth.crown
        fill("bone", np.vstack([tooth.labial[c], tooth.lingual[c][::-1]]), 0.8)  # enamel
        pulp = (tooth.depth > 0.25 * tooth.depth[-1]) & (tooth.depth < 0.95 * tooth.depth[-1])
        fill("bone", _ribbon(tooth.axis_points[pulp], np.linspace(1.0, 0.3, int(pulp.sum()))), -0.5)

    def molar(base: np.ndarray, up_dir: np.ndarray, width: float, crown: float, root: float) -> None:
        """A posterior tooth standing on ``base`` (occlusal plane), crown and tapered root along ``up_dir``."""
        a = width * np.array([-0.5, -0.5, -0.35, -0.15, 0.15, 0.35, 0.5, 0.5, 0.42, 0.2, 0.0, -0.2, -0.42])
        h = np.array([0.8, 0.8 * crown, crown, crown + root, crown + root, crown, 0.8 * crown,
                      0.8, 0.0, 0.5, 0.0, 0.5, 0.0])  # fmt: skip (cusps at h = 0)
        along = a[:, None] * _perp(up_dir)
        fill("bone", base + along + h[:, None] * up_dir, 0.55)
        fill("bone", base + along + np.minimum(h, crown)[:, None] * up_dir, 0.45)  # enamel

    # posterior teeth start behind the anterior maxillary contour, however proclined the incisors
    t_shift = max(0.0, (o + 9.0 * op_back)[0] + 4.5 - a_pt[0])
    for t, width, crown, root in ((9.0, 7.0, 8.0, 14.0), (16.0, 7.0, 7.0, 12.0), (23.0, 7.0, 7.0, 12.0),
                                  (31.5, 10.0, 6.5, 11.0), (41.5, 9.5, 6.0, 10.0)):  # fmt: skip
        for side in (0.0, u(0.8, 2.5)):  # left and right teeth do not superimpose exactly
            base = o + (t + t_shift + side) * op_back + u(-0.4, 0.4) * op_up
            molar(base + 0.2 * op_up, op_up, width, crown, root)
            molar(base - 0.2 * op_up, -op_up, width, crown, root + 2.0)
    incisor(lower)
    incisor(upper)

    # --- cervical spine, hyoid
    lean = u(8.0, 18.0)
    spine_dir = _rotate(np.array([0.0, 1.0]), lean)  # down, leaning back
    fill("bone", _ellipse(Ar + np.array([-7.0, 8.0]), 3.0, 5.0), 0.6)  # anterior arch of the atlas
    top = Ar + np.array([-16.0, 22.0])  # tip of the dens of C2
    for height in (30.0, 13.0, 13.0, 13.0, 13.0):
        centre = top + spine_dir * height / 2
        box = np.array([[-7.5, -height / 2], [7.5, -height / 2], [7.5, height / 2], [-7.5, height / 2]])
        if height > 20:  # C2: body with the dens on top
            box = np.array([[-3.5, 0.0], [3.5, 0.0], [4.0, 12.0], [7.5, 15.0], [7.5, height], [-7.5, height],
                            [-7.5, 14.0], [-4.0, 11.0]]) - [0.0, height / 2]  # fmt: skip
        shell(centre + _rotate(box, lean + u(-3, 3)), 0.8, 0.35, 1.2)
        top = centre + spine_dir * (height / 2 + u(3.5, 5.0))
    hyoid = np.array([me[0] - u(24.0, 32.0), me[1] + u(12.0, 18.0)])
    shell(_ellipse(hyoid, 5.5, 2.5, -15.0), 0.7, 0.3, 0.8)

    # --- ear rod: metal ring whose top is porion, centre dot, plastic holder up to the film edge
    ring_r = u(3.8, 4.8)
    ring = _ellipse(lm["Po"] + np.array([0.0, ring_r]), ring_r, ring_r, 0.0, 72)
    fill("device", _ribbon(np.vstack([ring, ring[:1]]), 1.2), 3.0)
    fill("device", _ellipse(lm["Po"] + np.array([0.0, ring_r]), 1.2, 1.2, 0.0, 24), 2.0)
    fill("device", _ribbon(np.array([lm["Po"] + 2.0 * up, lm["Po"] + 400.0 * up]), u(5.0, 7.0)), u(0.08, 0.18))

    # --- skin: scalp over the vault, then the face profile through the soft-tissue landmarks
    sn, ul, ll, pogs = p["Sn"], p["UL"], p["LL"], p["Pog'"]
    h = ll[1] - ul[1]
    prn = sn + np.array([u(13.0, 19.0), -u(9.0, 13.0)])
    me_s = me + np.array([-3.0, u(6.5, 9.0)])
    gn_dir = _unit(me_s - pogs)
    b_s = np.array([min(ll[0], pogs[0]) - u(3.0, 6.0), (ll[1] + pogs[1]) / 2])
    face_ctrl = [
        N + [u(5.5, 7.5), 1.0], N + (prn - N) * 0.4 + [1.5, -0.5], N + (prn - N) * 0.75 + [1.0, -0.3], prn,
        sn + [u(6.0, 8.5), -u(2.0, 3.5)], sn, sn + (ul - sn) * 0.45 + [-u(1.2, 2.5), 0.0], ul,
        ul + [-0.2 * h, 0.3 * h], (ul + ll) / 2 + [-0.35 * h, 0.0], ll + [-0.2 * h, -0.3 * h], ll, b_s, pogs,
        (pogs + me_s) / 2 + 3.0 * -_perp(gn_dir), me_s, me_s + [-12.0, 4.0],
        hyoid + [u(6.0, 10.0), u(9.0, 13.0)], hyoid + [u(0.0, 4.0), 60.0],
    ]  # fmt: skip
    face, f_at = _curve(face_ctrl)
    lm["UL"] = face[f_at[6] + np.argmax(face[f_at[6] : f_at[8] + 1, 0])]
    lm["LL"] = face[f_at[10] + np.argmax(face[f_at[10] : f_at[12] + 1, 0])]
    lm["Pog'"] = face[f_at[12] + np.argmax(face[f_at[12] : f_at[14] + 1, 0])]
    i_g = 1 + np.argmin(np.linalg.norm(outer[1:] - (N + [3.0, -11.0]), axis=1))
    scalp = (outer + normal * u(5.0, 7.0))[i_g:][::-1]
    far = 1000.0
    head = np.vstack([scalp, face, [face[-1] + [0.0, far], [-far, far], [-far, -far], scalp[0] + [-far, 0.0]]])
    ops.insert(0, _Op("skin", head, 1.0))
    airway, _ = _curve([pns + [-9.0, -3.0], np.array([go[0] + 3.0, go[1] - 18.0]),
                        np.array([go[0] + 5.0, me[1] + 6.0]), np.array([go[0] + 4.0, me[1] + 60.0])])  # fmt: skip
    fill("soft", _ribbon(airway, np.linspace(u(7.0, 11.0), u(10.0, 15.0), len(airway))), -0.45)

    return ops, np.array([lm[k] for k in ISBI2015.abbreviations])


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


@dataclass
class PhantomCase:
    """One synthetic lateral cephalogram.

    Attributes:
        image: ``(H, W)`` uint8, rows = y; bone bright, air dark.
        landmarks: ``(19, 2)`` float ``(x, y)`` pixels, ISBI 2015 order.
        spacing: ``(sx, sy)`` mm per pixel.
    """

    image: np.ndarray
    landmarks: np.ndarray
    spacing: tuple[float, float]


def phantom_spacing(size: Sequence[int] = DEFAULT_SIZE) -> tuple[float, float]:
    """Isotropic spacing ``(sx, sy)`` (mm/px) for a phantom of ``size = (W, H)``: the smallest that
    fits the 170 x 212.5 mm field of view (0.33203 mm/px at 512 x 640)."""
    s = max(FIELD_OF_VIEW_MM[0] / size[0], FIELD_OF_VIEW_MM[1] / size[1])
    return (s, s)


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(v) != v or v < MIN_SIZE for v in size):
        raise ValueError(f"size must be (W, H) integers of at least {MIN_SIZE} px, got {tuple(size)}")
    return int(size[0]), int(size[1])


class _Canvas:
    """Density layers ``(H, W)`` float32 accumulating anti-aliased polygons (2x2 supersampled)."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.layers = {k: np.zeros((height, width), np.float32) for k in ("skin", "soft", "bone", "device")}

    def coverage(self, poly: np.ndarray, pad: int = 0) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """Fraction of each pixel covered by ``poly`` ``(K, 2)`` (x, y px), over its bounding box."""
        lo = np.maximum(np.floor(poly.min(axis=0)).astype(int) - 1 - pad, 0)
        hi = np.minimum(np.ceil(poly.max(axis=0)).astype(int) + 2 + pad, [self.width, self.height])
        if np.any(hi <= lo):
            return None
        w, h = hi - lo
        mask = Image.new("L", (2 * w, 2 * h))
        # pixel (x, y) is the 2x2 block [2x, 2x + 2) of the fine grid whose pixel k spans [k, k + 1)
        ImageDraw.Draw(mask).polygon((2.0 * (poly - lo) + 1.0).ravel().tolist(), fill=1)
        m = np.asarray(mask)
        cov = (m[0::2, 0::2] + m[0::2, 1::2] + m[1::2, 0::2] + m[1::2, 1::2]).astype(np.float32) * 0.25
        return (slice(lo[1], hi[1]), slice(lo[0], hi[0])), cov

    def draw(self, op: _Op, poly: np.ndarray, mm_per_px: float) -> None:
        got = self.coverage(poly, pad=2 if op.kind == "shell" else 0)
        if got is None:
            return
        box, cov = got
        if op.kind == "shell":
            depth = distance_transform_edt(cov >= 0.5)  # px to the outline, inside
            cortical = np.clip(op.thickness / mm_per_px - depth + 0.5, 0.0, 1.0)
            cov = cov * (op.density + (op.cortex - op.density) * cortical)
        else:
            cov *= op.density
        self.layers[op.layer][box] += cov


def _to_pixels(points: np.ndarray, origin: np.ndarray, scale: float, degrees: float) -> np.ndarray:
    return origin + _rotate(points * scale, degrees)


def render_phantom(seed: int | np.random.Generator, size: Sequence[int] = DEFAULT_SIZE) -> PhantomCase:
    """Render one synthetic lateral cephalogram with its 19 ISBI 2015 landmarks.

    Args:
        seed: an int or a :class:`numpy.random.Generator`; the same seed gives the same case.
        size: ``(W, H)`` in pixels, each at least :data:`MIN_SIZE`.

    Returns:
        :class:`PhantomCase` with ``image`` ``(H, W)`` uint8, ``landmarks`` ``(19, 2)`` ``(x, y)``
        pixels inside the image, ``spacing`` from :func:`phantom_spacing`.
    """
    width, height = _check_size(size)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    spacing = phantom_spacing((width, height))
    mm = spacing[0]

    # head frame -> pixels: sella placed as on the real films, small rotation and magnification
    degrees = float(np.clip(rng.normal(0.0, 3.5), -8.0, 8.0))
    scale = rng.uniform(0.96, 1.04) / mm
    fov_origin = (np.array([width, height]) * mm - FIELD_OF_VIEW_MM) / 2
    origin = (fov_origin + [48.0, 75.0] + rng.uniform(-5.0, 5.0, 2)) / mm
    up = _rotate(np.array([0.0, -1.0]), -degrees)

    _, control = sample_landmarks_mm(rng)
    ops, landmarks_mm = _anatomy(control, rng, up)
    landmarks = _to_pixels(landmarks_mm, origin, scale, degrees)
    # keep every landmark 3% inside the borders (rarely moves anything)
    margin = 0.03 * np.array([width, height])
    low, high = margin - landmarks.min(axis=0), (np.array([width, height]) - 1 - margin) - landmarks.max(axis=0)
    shift = np.where(low > 0, low, np.minimum(high, 0))
    origin, landmarks = origin + shift, landmarks + shift

    canvas = _Canvas(width, height)
    for op in ops:
        canvas.draw(op, _to_pixels(op.polygon, origin, scale, degrees), 1.0 / scale)
    image = _expose(canvas, rng, mm)
    return PhantomCase(image=image, landmarks=landmarks, spacing=spacing)


def _expose(canvas: _Canvas, rng: np.random.Generator, mm: float) -> np.ndarray:
    """Densities -> uint8 X-ray: path length of soft tissue, bone texture, exposure, blur, noise."""
    u = rng.uniform
    layers = canvas.layers
    inside = layers["skin"] >= 0.5
    depth_mm = distance_transform_edt(inside) * mm
    # tissue is thin at the profile and thick deeper in the head: dim at the skin, brighter inside
    soft = layers["skin"] * (0.55 + 0.45 * (1.0 - np.exp(-depth_mm / u(6.0, 12.0)))) * u(0.4, 0.55)
    soft += layers["soft"] * 0.5
    texture = gaussian_filter(rng.standard_normal(soft.shape).astype(np.float32), 1.2 / mm)
    texture *= u(0.1, 0.2) / max(float(texture.std()), 1e-6)
    density = u(0.08, 0.2) + np.maximum(soft, 0) + np.maximum(layers["bone"], 0) * (1.0 + texture)
    density += layers["device"]
    if rng.random() < 0.5:  # collimator overlap: a brighter band along the top of the film
        rows = np.arange(canvas.height)[:, None]
        density += u(0.1, 0.4) / (1.0 + np.exp((rows - u(0.1, 0.3) * canvas.height) * mm / 0.7))
    image = 1.0 - np.exp(-density * u(0.85, 1.15))
    heel = 1.0 + u(-0.08, 0.08) * np.linspace(-1.0, 1.0, canvas.width)[None, :]  # anode heel effect
    image = np.clip(image * heel, 0.0, 1.0) ** u(0.8, 1.25)
    image = gaussian_filter(image, u(0.17, 0.43) / mm)  # focal spot and detector blur, 0.17-0.43 mm
    image += rng.normal(0.0, 1.0, image.shape) * (u(0.005, 0.02) + u(0.01, 0.03) * np.sqrt(image))
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Data set writer and command line
# ----------------------------------------------------------------------------------------------


def _case_rng(seed: int, index: int) -> np.random.Generator:
    """Generator of phantom ``index``: independent of ``n`` and of the number of workers."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def _write_case(job: tuple[Path, int, int, tuple[int, int]]) -> np.ndarray:
    """Render phantom ``index``, write its PNG and LabelMe file; return its ``(19, 2)`` landmarks."""
    out_dir, seed, index, size = job
    case = render_phantom(_case_rng(seed, index), size)
    name = f"phantom_{index:04d}"
    image_path = out_dir / "images" / f"{name}.png"
    with atomic_write(image_path, "wb") as f:
        Image.fromarray(case.image).save(f, format="PNG")
    annotation = out_dir / "annotations" / f"{name}.json"
    relative = Path(os.path.relpath(image_path, annotation.parent)).as_posix()
    write_labelme(annotation, relative, size[0], size[1], case.landmarks)
    return case.landmarks


def _parameters(n: int, seed: int, size: tuple[int, int], fractions: Sequence[float]) -> dict[str, Any]:
    """What a phantom data set was made with (stored as the datalist's ``"phantom"`` key)."""
    return {
        "generator": __name__,
        "version": PHANTOM_VERSION,
        "n": n,
        "seed": seed,
        "size": list(size),
        "fractions": [float(f) for f in fractions],
        "spacing": list(phantom_spacing(size)),
    }


def _check_arguments(n: int, seed: int, size: Sequence[int], fractions: Sequence[float]) -> tuple[int, int]:
    if int(n) != n or n < 1:
        raise ValueError(f"n must be an integer of at least 1, got {n!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {tuple(fractions)}")
    return _check_size(size)


def make_phantom_dataset(
    out_dir: str | os.PathLike,
    n: int = 100,
    seed: int = 0,
    size: Sequence[int] = DEFAULT_SIZE,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    workers: int | None = None,
) -> Path:
    """Write ``n`` phantoms with LabelMe files and a datalist.

    Layout: ``out_dir/images/phantom_0000.png`` (8-bit grayscale), ``out_dir/annotations/
    phantom_0000.json`` (LabelMe, labels ``l1`` .. ``l19``, ``imagePath`` relative to the JSON)
    and ``out_dir/datalist.json`` with sections ``"training"``, ``"validation"``, ``"test"``
    (sizes ``round(f * n)`` for the last two, assignment shuffled by ``seed``), the spacing per
    item and the generation parameters under ``"phantom"``. Phantom ``i`` is
    ``render_phantom(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,))), size)``:
    it depends on ``(seed, i, size)`` only, not on ``n`` or ``workers``. Any old datalist is
    removed first and the new one written last, so an interrupted run never leaves a datalist
    naming missing or half-replaced files.

    Args:
        workers: processes rendering in parallel; default 2 (at most the CPU count) from 16
            phantoms on, else 1.

    Returns:
        The absolute path of ``out_dir/datalist.json``.
    """
    size = _check_arguments(n, seed, size, fractions)
    out_dir = Path(out_dir).absolute()
    datalist = out_dir / "datalist.json"
    datalist.unlink(missing_ok=True)
    jobs = [(out_dir, seed, i, size) for i in range(n)]
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if n >= 16 else 1
    if workers > 1:
        # spawn, not fork: the caller may hold threads (torch) that a forked child would inherit
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            landmarks = list(progress(pool.map(_write_case, jobs, chunksize=max(1, n // (4 * workers))), "phantom", total=n))
    else:
        landmarks = [_write_case(job) for job in progress(jobs, "phantom")]

    order = np.random.default_rng(seed).permutation(n)
    n_test = min(round(fractions[2] * n), n)
    n_val = min(round(fractions[1] * n), n - n_test)
    parts = np.split(order, [n - n_val - n_test, n - n_test])
    spacing = phantom_spacing(size)
    sections = {
        name: [
            make_item(out_dir / "images" / f"phantom_{i:04d}.png", landmarks[i], spacing, f"phantom_{i:04d}")
            for i in sorted(part.tolist())
        ]
        for name, part in zip(("training", "validation", "test"), parts)
    }
    description = f"MAHT-Net synthetic lateral cephalograms (phantoms): n={n}, seed={seed}, size={size[0]}x{size[1]}"
    return write_datalist(datalist, sections, ISBI2015, description, phantom=_parameters(n, seed, size, fractions))


def ensure_phantom_dataset(
    out_dir: str | os.PathLike,
    n: int = 100,
    seed: int = 0,
    size: Sequence[int] = DEFAULT_SIZE,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    workers: int | None = None,
) -> Path:
    """Return ``out_dir/datalist.json``, generating the data set first unless it exists, was
    made with the same parameters (and generator version) and all its images are present."""
    size = _check_arguments(n, seed, size, fractions)
    path = Path(out_dir).absolute() / "datalist.json"
    try:
        doc = read_datalist(path)
    except InputError:
        doc = None
    if doc is not None and doc.get("phantom") == _parameters(n, seed, size, fractions):
        items = [item for name in ("training", "validation", "test") for item in doc.get(name, [])]
        if len(items) == n and all((path.parent / item["image"]).is_file() for item in items):
            return path
    logger.info("generating %d phantoms in %s", n, path.parent)
    return make_phantom_dataset(out_dir, n, seed, size, fractions, workers)


