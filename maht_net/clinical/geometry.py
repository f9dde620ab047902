"""Plane geometry for cephalometry, vectorised over leading axes: arrays (..., 2) of (x, y) with y down and anterior = +x (see :mod:`maht_net.clinical.analysis` for the conventions)."""

from __future__ import annotations

import numpy as np


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
