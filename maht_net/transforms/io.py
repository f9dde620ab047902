"""Loading X-rays as MONAI ``MetaTensor`` images, with the metadata that maps back to the file.

Data dictionary convention (shared by all MAHT-Net transforms):

- ``d["image"]``: ``MetaTensor`` of shape ``(1, H, W)`` float32 (rows = y, columns = x);
- ``d["landmarks"]``: ``(N, 2)`` float ``(x, y)`` pixels of the *current* image grid, NaN = missing;
- ``d["spacing"]``: ``(sx, sy)`` mm per pixel of the current grid, or ``None``.

Image metadata (``d["image"].meta``), all as numpy arrays so that a DataLoader can collate it:

- ``filename_or_obj``: the file read;
- ``original_size``: ``(W, H)`` of the file's pixel grid (int64);
- ``original_spacing``: ``(sx, sy)`` mm of the file's grid (float64, NaN when unknown);
- ``origin``: ``(x0, y0)`` mm of the file's pixel ``(0, 0)`` (float64);
- ``orig_to_current``: ``(3, 3)`` float64 homogeneous matrix mapping an original ``(x, y, 1)`` to
  the current ``(x, y, 1)``; every geometric transform left-multiplies its own matrix;
- ``nonlinear_warp``: ``True`` once an elastic warp made ``orig_to_current`` inexact;
- ``spacing_fallback``: ``True`` when ``original_spacing`` is the user's default for a file that
  states none (:class:`LoadXRayd`'s ``default_spacing``), not the file's or the item's.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends

from maht_net.errors import InputError
from maht_net.io.image import load_xray

__all__ = [
    "ORIGINAL_SIZE",
    "ORIGINAL_SPACING",
    "ORIGIN",
    "ORIG_TO_CURRENT",
    "NONLINEAR_WARP",
    "SPACING_FALLBACK",
    "xray_meta",
    "spacing_pair",
    "as_landmarks",
    "unwrap_input_error",
    "LoadXRay",
    "LoadXRayd",
]

ORIGINAL_SIZE = "original_size"
ORIGINAL_SPACING = "original_spacing"
ORIGIN = "origin"
ORIG_TO_CURRENT = "orig_to_current"
NONLINEAR_WARP = "nonlinear_warp"
SPACING_FALLBACK = "spacing_fallback"


def xray_meta(
    original_size: Sequence[int],
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] = (0.0, 0.0),
    filename: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Metadata of an image still on its original pixel grid (``orig_to_current`` = identity).

    Args:
        original_size: ``(W, H)`` in pixels.
        spacing: ``(sx, sy)`` mm per pixel or ``None`` (stored as NaN: ``None`` cannot be collated).
        origin: ``(x0, y0)`` mm of pixel ``(0, 0)``.
        filename: the source file, if any.
    """
    if len(original_size) != 2:
        raise ValueError(f"Argument `original_size` must be (W, H), got {original_size!r}.")
    return {
        "filename_or_obj": "" if filename is None else os.fspath(filename),
        ORIGINAL_SIZE: np.asarray(original_size, dtype=np.int64),
        ORIGINAL_SPACING: np.full(2, np.nan) if spacing is None else np.asarray(spacing, dtype=np.float64),
        ORIGIN: np.asarray(origin, dtype=np.float64),
        ORIG_TO_CURRENT: np.eye(3),
        NONLINEAR_WARP: False,
        SPACING_FALLBACK: False,
    }


def as_landmarks(points: Any, name: str = "landmarks") -> np.ndarray:
    """``(N, 2)`` float32 ``(x, y)`` array from an array, tensor or list (``None`` rows -> NaN).

    Raises:
        ValueError: the value is not ``(N, 2)``.
    """
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().numpy()
    elif isinstance(points, (list, tuple)):
        points = [(np.nan, np.nan) if p is None else p for p in points]
    arr = np.asarray(points, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"`{name}` must have shape (N, 2) of (x, y), got {arr.shape}.")
    return arr


# torch's DataLoader re-raises a worker's exception as a new exception carrying only the formatted
# traceback text, so the InputError's own message is recovered from that text.
_INPUT_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?InputError: (.+)$", re.MULTILINE)


def unwrap_input_error(exc: BaseException) -> InputError | None:
    """The :class:`~maht_net.errors.InputError` behind ``exc``, or ``None`` if there is none.

    MONAI's ``apply_transform`` (used by ``Compose`` and the datasets) re-raises any exception
    as ``RuntimeError("applying transform ...")`` chained to the original, and a DataLoader worker
    re-raises it as a new exception holding the traceback as text. This helper follows the
    ``__cause__``/``__context__`` chain, then falls back to the text, so a CLI or server can show
    ``"<path>: <problem>"`` instead of a traceback::

        try:
            batch = next(iter(loader))
        except Exception as e:
            if (err := unwrap_input_error(e)) is None:
                raise
            sys.exit(f"error: {err}")

    Setting the environment variable ``MONAI_DEBUG=1`` makes MONAI re-raise unwrapped instead.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, InputError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    matches = _INPUT_ERROR_LINE.findall(str(exc))
    return InputError(None, matches[-1].strip()) if matches else None


class LoadXRay(Transform):
    """Load a 2-D X-ray file as a ``(1, H, W)`` float32 ``MetaTensor`` in ``[0, 1]``.

    Reads with :func:`maht_net.io.image.load_xray` (PNG, BMP, TIFF, JPEG, DICOM, NIfTI/NRRD/MHA)
    and attaches the metadata described in :mod:`maht_net.transforms.io`.

    Notes:
        - Output shape ``(1, H, W)``: channel first, row index = y, column index = x, so the pixel
          at point ``(x, y)`` is ``image[0, y, x]``.
        - ``meta["original_size"]`` is ``(W, H)`` and ``meta["original_spacing"]`` ``(sx, sy)``
          (x first, like points); NaN spacing when the file states none.

    Raises:
        InputError: the file is missing, unreadable, too small or too large (propagated unchanged;
            see :func:`unwrap_input_error` when it comes through ``Compose``).
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, filename: str | os.PathLike) -> MetaTensor:
        xray = load_xray(filename)
        meta = xray_meta((xray.width, xray.height), xray.spacing, xray.origin, xray.path)
        return MetaTensor(torch.from_numpy(xray.image)[None], meta=meta)


class LoadXRayd(MapTransform):
    """Dictionary-based :class:`LoadXRay` that also prepares the item's landmarks and spacing.

    For the first key (the image the landmarks refer to):

    - ``d[landmarks_key]`` (datalist points, list with ``None`` rows, array or tensor) becomes an
      ``(N, 2)`` float32 numpy array, NaN for missing; absent keys are left absent (inference);
    - ``d[spacing_key]`` becomes the datalist's spacing when given, else the file's, else
      ``default_spacing`` (then ``meta["spacing_fallback"]`` is ``True``), else ``None``. When the
      datalist's and the file's differ by more than ``spacing_rtol``, a warning names the file and
      the datalist's value is used. The chosen spacing is also written to ``meta["original_spacing"]``.

    Args:
        keys: keys of the image paths to load; other keys pass through unchanged.
        landmarks_key: key of the ``(N, 2)`` ``(x, y)`` points, or ``None`` to leave them alone.
        spacing_key: key of the ``(sx, sy)`` mm spacing, or ``None`` to leave it alone.
        spacing_rtol: relative difference between datalist and file spacing that triggers a warning.
        default_spacing: ``(sx, sy)`` mm (or one value for both) of films whose item and file state
            none (``maht-net infer --spacing``, the MONAI Label app's ``default_spacing``).
        allow_missing_keys: don't raise when a key in ``keys`` is missing.

    Notes:
        - Images: ``(1, H, W)``; points: ``(N, 2)`` ``(x, y)`` in pixels of the loaded image.

    Raises:
        ValueError: ``spacing_rtol`` is negative, ``default_spacing`` is not one or two positive
            values, or the landmarks are not ``(N, 2)``.
        InputError: the image file is bad (from :func:`~maht_net.io.image.load_xray`, unchanged).
    """

    backend = LoadXRay.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        landmarks_key: str | None = "landmarks",
        spacing_key: str | None = "spacing",
        spacing_rtol: float = 0.01,
        default_spacing: float | Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if spacing_rtol < 0:
            raise ValueError(f"Argument `spacing_rtol` must be non-negative, got {spacing_rtol}.")
        self.default_spacing = None if default_spacing is None else spacing_pair(default_spacing)
        self.landmarks_key = landmarks_key
        self.spacing_key = spacing_key
        self.spacing_rtol = float(spacing_rtol)
        self.loader = LoadXRay()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first: MetaTensor | None = None
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
            first = d[key] if first is None else first
        if self.landmarks_key is not None and d.get(self.landmarks_key) is not None:
            d[self.landmarks_key] = as_landmarks(d[self.landmarks_key], self.landmarks_key)
        if first is not None and self.spacing_key is not None:
            spacing = self._resolve_spacing(d.get(self.spacing_key), first.meta)
            if spacing is None and self.default_spacing is not None:
                spacing, first.meta[SPACING_FALLBACK] = self.default_spacing, True
            d[self.spacing_key] = spacing
            first.meta[ORIGINAL_SPACING] = np.full(2, np.nan) if spacing is None else np.asarray(spacing)
        return d

    def _resolve_spacing(self, given: Any, meta: Mapping[str, Any]) -> tuple[float, float] | None:
        from_file = np.asarray(meta[ORIGINAL_SPACING], dtype=np.float64)
        file_spacing = tuple(float(s) for s in from_file) if np.all(np.isfinite(from_file)) else None
        if given is None:
            return file_spacing
        given_arr = np.asarray(given, dtype=np.float64).reshape(-1)
        if given_arr.shape != (2,) or not np.all(np.isfinite(given_arr)) or np.any(given_arr <= 0):
            raise ValueError(f"`{self.spacing_key}` must be (sx, sy) positive mm or None, got {given!r}.")
        datalist_spacing = (float(given_arr[0]), float(given_arr[1]))
        if file_spacing is not None and np.any(np.abs(given_arr - from_file) > self.spacing_rtol * from_file):
            warnings.warn(
                f"{meta['filename_or_obj']}: datalist spacing {datalist_spacing} mm differs from the file's "
                f"{file_spacing} mm by more than {self.spacing_rtol:.0%}; using the datalist's",
                stacklevel=2,
            )
        return datalist_spacing


def spacing_pair(spacing: float | Sequence[float], name: str = "default_spacing") -> tuple[float, float]:
    """``(sx, sy)`` positive mm from one value (square pixels) or a pair.

    Raises:
        ValueError: anything else (the message names ``name``).
    """
    values = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if values.size == 1:
        values = np.repeat(values, 2)
    if values.shape != (2,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"{name} must be one or two positive mm values, got {spacing!r}")
    return float(values[0]), float(values[1])
