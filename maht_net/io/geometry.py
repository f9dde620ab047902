"""Where a 2-D image's pixels lie in a viewer's physical space (LPS mm), read as ITK reads it.

A viewer (3D Slicer, OHIF) places a 2-D image the way ITK reads its file: pixel ``(x, y)`` is ITK
index ``(x, y, 0)`` at ``origin + direction @ (spacing * index)``. ITK reads no spacing from a
PNG, JPEG or BMP: such a film is shown at 1 mm per pixel with origin 0, whatever its real pixel
spacing; DICOM, NRRD, NIfTI and MetaImage carry their spacing, origin and direction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maht_net.errors import InputError
from maht_net.io.image import IMAGE_SUFFIXES, _looks_like_dicom, _suffix, load_xray

__all__ = ["ImageGeometry", "read_geometry", "itk_geometry"]


@dataclass(frozen=True)
class ImageGeometry:
    """Where a 2-D image's pixels lie in a viewer's physical (LPS, mm) space.

    Attributes:
        width, height: pixels (``x`` ranges over ``[0, width)``, ``y`` over ``[0, height)``).
        spacing: ``(sx, sy, sz)`` mm per index step, as the viewer reads it.
        origin: ``(x0, y0, z0)`` physical position of pixel ``(0, 0)``.
        direction: ``3 x 3`` direction cosines (columns = index axes), row-major nested tuples.
        source: ``"itk"`` when read from the file header by ITK, ``"fallback"`` otherwise.
    """

    width: int
    height: int
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    source: str = "itk"

    @property
    def matrix(self) -> np.ndarray:
        """``3 x 3`` index -> physical matrix ``direction @ diag(spacing)``."""
        return np.asarray(self.direction, dtype=float) @ np.diag(np.asarray(self.spacing, dtype=float))

    def to_physical(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` pixel ``(x, y)`` -> ``(N, 3)`` physical LPS mm."""
        pts = np.asarray(points, dtype=float).reshape(-1, 2)
        index = np.concatenate([pts, np.zeros((len(pts), 1))], axis=1)
        return index @ self.matrix.T + np.asarray(self.origin, dtype=float)

    def to_pixels(self, physical: np.ndarray) -> np.ndarray:
        """``(N, 3)`` physical LPS mm -> ``(N, 2)`` pixel ``(x, y)`` (the third index is dropped)."""
        phys = np.asarray(physical, dtype=float).reshape(-1, 3)
        index = np.linalg.solve(self.matrix, (phys - np.asarray(self.origin, dtype=float)).T).T
        return index[:, :2]

    def as_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": [list(r) for r in self.direction],
        }


def itk_geometry(image, path) -> ImageGeometry:
    """The :class:`ImageGeometry` of an ITK image (2-D, or 3-D with one slice; ``path`` names it
    in errors)."""
    dim = int(image.GetImageDimension())
    size = [int(s) for s in image.GetLargestPossibleRegion().GetSize()]
    spacing = [float(s) for s in image.GetSpacing()]
    origin = [float(o) for o in image.GetOrigin()]
    import itk

    direction = np.asarray(itk.array_from_matrix(image.GetDirection()), dtype=float)
    if dim == 2:
        spacing, origin = spacing + [1.0], origin + [0.0]
        d3 = np.eye(3)
        d3[:2, :2] = direction
        direction, size = d3, size + [1]
    elif dim != 3:
        raise InputError(path, f"image has {dim} dimensions; a single 2-D slice is expected")
    if size[2] != 1:
        raise InputError(path, f"image has {size[2]} slices; a single 2-D slice is expected")
    return ImageGeometry(
        width=size[0],
        height=size[1],
        spacing=tuple(spacing),
        origin=tuple(origin),
        direction=tuple(tuple(float(v) for v in row) for row in direction),
        source="itk",
    )


def _read_itk_header(path: Path):
    import itk

    reader = itk.ImageFileReader.New(FileName=str(path))
    reader.UpdateOutputInformation()
    return reader.GetOutput()


def read_geometry(path: str | os.PathLike) -> ImageGeometry:
    """The geometry a viewer gives the image file (ITK header; see :class:`ImageGeometry`).

    Falls back to :func:`~maht_net.io.image.load_xray` (file spacing or 1 mm, origin 0) when ITK
    cannot read the header (e.g. a DICOM transfer syntax GDCM lacks).

    Raises:
        InputError: missing or unreadable file, or not a single 2-D image.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    suffix = _suffix(path)
    if suffix not in IMAGE_SUFFIXES and not _looks_like_dicom(path):
        raise InputError(path, f"unsupported file type {suffix!r}; supported: {', '.join(IMAGE_SUFFIXES)}")
    try:
        return itk_geometry(_read_itk_header(path), path)
    except InputError:
        raise
    except Exception:  # ITK raises RuntimeError with long messages; try our own readers
        xray = load_xray(path)
        sx, sy = xray.spacing if xray.spacing is not None else (1.0, 1.0)
        return ImageGeometry(xray.width, xray.height, (sx, sy, 1.0), (xray.origin[0], xray.origin[1], 0.0), source="fallback")
