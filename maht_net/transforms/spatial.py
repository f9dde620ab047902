"""Landmark-aware geometric transforms: letterbox resize, random affine and elastic warps.

Every transform moves the image and its landmarks together, exactly: points are mapped with the
forward transform and the image is resampled with its inverse. Deterministic transforms compose
their ``3 x 3`` matrix into ``meta["orig_to_current"]`` (see :mod:`maht_net.transforms.io`), so a
prediction made at network resolution maps back to the original film with
:func:`current_to_original`.

Pixel-centre convention: pixel ``(i, j)`` has its centre at ``(x, y) = (j, i)``; resizing a side
from ``n`` to ``m`` pixels maps ``x -> (x + 0.5) * m / n - 0.5``, which is what
``torch.nn.functional.interpolate(..., align_corners=False)`` and ``grid_sample(...,
align_corners=False)`` assume.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import TransformBackends, convert_to_tensor

from maht_net.transforms.io import NONLINEAR_WARP, ORIG_TO_CURRENT, ORIGINAL_SPACING, xray_meta

__all__ = [
    "current_to_original",
    "original_to_current",
    "landmarks_inside",
    "LandmarkResizePad",
    "LandmarkResizePadd",
    "RandLandmarkAffineElastic",
    "RandLandmarkAffineElasticd",
    "RandLandmarkAffine",
    "RandLandmarkAffined",
    "RandLandmarkElastic",
    "RandLandmarkElasticd",
    "RandLandmarkReframe",
    "RandLandmarkReframed",
]

Points = np.ndarray | torch.Tensor


# ----------------------------------------------------------------------------- point helpers


def _as_points64(points: Any, name: str = "points") -> np.ndarray:
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().numpy()
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"Argument `{name}` must have shape (N, 2) of (x, y), got {arr.shape}.")
    return arr


def _like(points: np.ndarray, ref: Any) -> Points:
    """``points`` with the container type and floating dtype of ``ref``."""
    if isinstance(ref, torch.Tensor):
        dtype = ref.dtype if ref.dtype.is_floating_point else torch.float32
        return torch.as_tensor(points, dtype=dtype, device=ref.device)
    ref = np.asarray(ref)
    return points.astype(ref.dtype if ref.dtype.kind == "f" else np.float32)


def _apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def _inv_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a ``3 x 3`` affine matrix, in closed form (``np.linalg.inv``'s per-call overhead is ~0.2 ms)."""
    (a, b), (c, d) = matrix[:2, :2]
    inverse = np.eye(3)
    inverse[:2, :2] = np.array([[d, -b], [-c, a]]) / (a * d - b * c)
    inverse[:2, 2] = -inverse[:2, :2] @ matrix[:2, 2]
    return inverse


def _matrix_of(meta: Mapping[str, Any]) -> np.ndarray:
    matrix = meta.get(ORIG_TO_CURRENT)
    if matrix is None:
        return np.eye(3)
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (3, 3):
        raise ValueError(
            f"meta[{ORIG_TO_CURRENT!r}] must be a 3x3 matrix, got shape {matrix.shape} "
            "(decollate a batch before mapping points)."
        )
    return matrix


def _meta_arg(meta: Any) -> Mapping[str, Any]:
    return meta.meta if isinstance(meta, MetaTensor) else meta


def original_to_current(points: Any, meta: Any) -> np.ndarray:
    """Map ``(N, 2)`` ``(x, y)`` points of the original image into the current image grid.

    Args:
        points: ``(N, 2)`` ``(x, y)`` pixels of the original image; NaN rows stay NaN.
        meta: an image's metadata dict, or the ``MetaTensor`` itself (one sample, not a batch).

    Returns:
        ``(N, 2)`` float64 ``(x, y)`` pixels of the current grid.
    """
    return _apply_matrix(_matrix_of(_meta_arg(meta)), _as_points64(points))


def current_to_original(points: Any, meta: Any) -> np.ndarray:
    """Map ``(N, 2)`` ``(x, y)`` points of the current image grid back to the original image.

    Inverts ``meta["orig_to_current"]``; exact (to float64 rounding) for any chain of
    :class:`LandmarkResizePad` and affine transforms.

    Args:
        points: ``(N, 2)`` ``(x, y)`` pixels of the current grid (e.g. network output); NaN stays NaN.
        meta: the image's metadata dict, or the ``MetaTensor`` itself (one sample, not a batch).

    Returns:
        ``(N, 2)`` float64 ``(x, y)`` pixels of the original image.

    Raises:
        ValueError: the image was elastically warped (no matrix describes that), or the matrix is
            not ``3 x 3``.
    """
    meta = _meta_arg(meta)
    matrix = _matrix_of(meta)
    if bool(meta.get(NONLINEAR_WARP, False)):
        raise ValueError("the image was elastically warped; its points cannot be mapped back by a matrix")
    return _apply_matrix(_inv_affine(matrix), _as_points64(points))


def landmarks_inside(points: Any, size: Sequence[int]) -> np.ndarray:
    """``(N,)`` bool: the point is finite and within the pixel centres of a ``(W, H)`` image.

    "Inside" means ``0 <= x <= W - 1`` and ``0 <= y <= H - 1``: where bilinear sampling and
    heatmap peaks are defined.
    """
    pts = _as_points64(points)
    width, height = size
    with np.errstate(invalid="ignore"):
        return (pts[:, 0] >= 0) & (pts[:, 0] <= width - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= height - 1)


def _transform_spacing(spacing: Any, matrix: np.ndarray) -> tuple[float, float] | None:
    """Spacing after the linear map ``matrix``: physical length of one new-pixel step along x and y."""
    if spacing is None:
        return None
    physical = np.diag(np.asarray(spacing, dtype=np.float64).reshape(2)) @ _inv_affine(matrix)[:2, :2]
    sx, sy = np.linalg.norm(physical, axis=0)
    return float(sx), float(sy)


def _current_spacing(meta: Mapping[str, Any]) -> tuple[float, float] | None:
    """``(sx, sy)`` mm of the current grid from the file's spacing and ``orig_to_current``; ``None`` when unknown."""
    original = np.asarray(meta.get(ORIGINAL_SPACING, (np.nan, np.nan)), dtype=np.float64).reshape(-1)
    if original.size != 2 or not np.all(np.isfinite(original)):
        return None
    return _transform_spacing(original, _matrix_of(meta))


def _image_meta(img: Any) -> tuple[torch.Tensor, dict[str, Any], list]:
    """Plain ``(C, H, W)`` float tensor, a copy of its metadata (made for bare tensors), its applied operations."""
    tensor = convert_to_tensor(img, track_meta=False)
    if tensor.ndim != 3:
        raise ValueError(f"image must be channel-first (C, H, W), got shape {tuple(tensor.shape)}.")
    if not tensor.is_floating_point():
        tensor = tensor.float()
    if not isinstance(img, MetaTensor):
        return tensor, xray_meta((tensor.shape[2], tensor.shape[1])), []
    meta = dict(img.meta)
    if ORIG_TO_CURRENT not in meta:
        meta = {**xray_meta((tensor.shape[2], tensor.shape[1])), **meta}
    return tensor, meta, list(img.applied_operations)


def _passthrough(img: Any) -> MetaTensor:
    """``img`` as a ``MetaTensor`` with the full metadata, so applied and skipped samples collate alike."""
    tensor, meta, ops = _image_meta(img)
    return MetaTensor(tensor, meta=meta, applied_operations=ops)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"Argument `{name}` must be one of {list(choices)}, got {value!r}.")
    return value


def _pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or any(int(v) != v or v < 1 for v in pair):
        raise ValueError(f"Argument `{name}` must be a positive int or (W, H), got {value!r}.")
    return int(pair[0]), int(pair[1])


# ----------------------------------------------------------------------------- resize + pad


class LandmarkResizePad(Transform):
    """Letterbox an image to a fixed ``(W, H)``: resize keeping the aspect ratio, then pad.

    The scale is ``min(W / w, H / h)`` for an input of ``w x h`` (the whole film fills the
    input). With ``mm_per_px`` and a known pixel spacing ``(sx, sy)`` the scale is physical
    instead: ``(sx / mm_per_px, sy / mm_per_px)``, so one output pixel covers ``mm_per_px`` mm
    whatever the machine, and the same anatomy has the same size in pixels; a film whose field
    of view is larger than ``W x H`` output pixels at that scale is shrunk further until it fits
    (never cropped). Without a spacing the film is fitted as without ``mm_per_px``. The resized
    side lengths are rounded, and each axis uses its actual factor (``new / old``), so the
    recorded matrix matches the resampled pixels exactly. Down-sampling is anti-aliased.

    Args:
        size: output ``(W, H)`` in pixels (an int for a square).
        mode: interpolation, ``"bilinear"`` or ``"bicubic"``.
        antialias: low-pass filter when shrinking (``torch.nn.functional.interpolate(antialias=...)``).
        pad_mode: ``"constant"`` (fill with ``pad_value``) or ``"edge"`` (repeat the border pixels).
        pad_value: fill value for ``pad_mode="constant"``.
        align: where the resized image sits: ``"center"`` or ``"top-left"``.
        mm_per_px: output pixel size in mm when the spacing is known; ``None``: fit the film.

    Notes:
        - Image: ``(C, H, W)`` in, ``(C, size[1], size[0])`` out (a ``MetaTensor``).
        - Points: ``(N, 2)`` ``(x, y)`` pixels; ``x' = (x + 0.5) * fx - 0.5 + pad_x`` (same for y).
        - Spacing: the ``spacing`` argument, else the image's ``meta["original_spacing"]``
          carried through ``meta["orig_to_current"]`` (NaN: unknown).
        - ``meta["orig_to_current"]`` is left-multiplied by this transform's matrix.

    Raises:
        ValueError: for an invalid ``size``, ``mode``, ``pad_mode``, ``align`` or ``mm_per_px``.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        size: int | Sequence[int],
        mode: str = "bilinear",
        antialias: bool = True,
        pad_mode: str = "constant",
        pad_value: float = 0.0,
        align: str = "center",
        mm_per_px: float | None = None,
    ) -> None:
        self.size = _pair("size", size)
        self.mode = _check_choice("mode", mode, ("bilinear", "bicubic"))
        self.antialias = bool(antialias)
        self.pad_mode = _check_choice("pad_mode", pad_mode, ("constant", "edge"))
        self.pad_value = float(pad_value)
        self.align = _check_choice("align", align, ("center", "top-left"))
        if mm_per_px is not None and not (np.isfinite(mm_per_px) and mm_per_px > 0):
            raise ValueError(f"Argument `mm_per_px` must be a positive number of mm or None, got {mm_per_px!r}.")
        self.mm_per_px = None if mm_per_px is None else float(mm_per_px)

    def plan(
        self, in_size: Sequence[int], spacing: Sequence[float] | None = None
    ) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Geometry for an input of ``(w, h)`` with ``spacing`` ``(sx, sy)`` mm (or ``None``): the
        ``3 x 3`` matrix, resized ``(w', h')``, pad ``(left, top)``."""
        width, height = (int(s) for s in in_size)
        out_w, out_h = self.size
        sx, sy = (np.nan, np.nan) if spacing is None else (float(v) for v in spacing)
        if self.mm_per_px is not None and np.isfinite(sx) and np.isfinite(sy) and sx > 0 and sy > 0:
            fx, fy = sx / self.mm_per_px, sy / self.mm_per_px
            shrink = min(1.0, out_w / (width * fx), out_h / (height * fy))
            fx, fy = fx * shrink, fy * shrink
        else:
            fx = fy = min(out_w / width, out_h / height)
        new_w = min(out_w, max(1, round(width * fx)))
        new_h = min(out_h, max(1, round(height * fy)))
        left, top = ((out_w - new_w) // 2, (out_h - new_h) // 2) if self.align == "center" else (0, 0)
        fx, fy = new_w / width, new_h / height
        matrix = np.array([[fx, 0.0, 0.5 * fx - 0.5 + left], [0.0, fy, 0.5 * fy - 0.5 + top], [0.0, 0.0, 1.0]])
        return matrix, (new_w, new_h), (left, top)

    def __call__(self, img: Any, points: Any = None, spacing: Sequence[float] | None = None) -> MetaTensor | tuple[MetaTensor, Points]:
        """
        Args:
            img: ``(C, H, W)`` image (``MetaTensor``, tensor or array).
            points: optional ``(N, 2)`` ``(x, y)`` pixels of ``img``.
            spacing: ``(sx, sy)`` mm per pixel of ``img``; default: from its metadata (used only
                with ``mm_per_px``).

        Returns:
            The letterboxed ``MetaTensor``, or ``(image, points)`` when ``points`` is given (same
            container type and dtype as the input points).
        """
        tensor, meta, ops = _image_meta(img)
        if spacing is None and self.mm_per_px is not None:
            spacing = _current_spacing(meta)
        matrix, (new_w, new_h), (left, top) = self.plan((tensor.shape[2], tensor.shape[1]), spacing)
        out = tensor[None]
        if (new_h, new_w) != tuple(tensor.shape[1:]):
            out = F.interpolate(
                out, size=(new_h, new_w), mode=self.mode, align_corners=False, antialias=self.antialias
            )
        pad = (left, self.size[0] - new_w - left, top, self.size[1] - new_h - top)
        if any(pad):
            if self.pad_mode == "edge":
                out = F.pad(out, pad, mode="replicate")
            else:
                out = F.pad(out, pad, mode="constant", value=self.pad_value)
        meta[ORIG_TO_CURRENT] = matrix @ _matrix_of(meta)
        result = MetaTensor(out[0], meta=meta, applied_operations=ops)
        if points is None:
            return result
        return result, _like(_apply_matrix(matrix, _as_points64(points)), points)


class LandmarkResizePadd(MapTransform):
    """Dictionary-based :class:`LandmarkResizePad`: images, landmarks and spacing together.

    All ``keys`` must hold images of the same size (they get the same geometry). The landmarks at
    ``landmarks_key`` are mapped, and the spacing at ``spacing_key`` is divided by each axis' factor.

    Args:
        keys: image keys.
        size, mode, antialias, pad_mode, pad_value, align, mm_per_px: see :class:`LandmarkResizePad`.
        landmarks_key: key of the ``(N, 2)`` ``(x, y)`` points (skipped when absent or ``None``).
        spacing_key: key of the ``(sx, sy)`` mm spacing (skipped when absent or ``None``); with
            ``mm_per_px`` it also sets the scale (else the image's metadata does).
        allow_missing_keys: don't raise when an image key is missing.

    Notes:
        - Images ``(C, H, W)`` -> ``(C, size[1], size[0])``; points ``(N, 2)`` ``(x, y)``.
    """

    backend = LandmarkResizePad.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        size: int | Sequence[int] = 256,
        mode: str = "bilinear",
        antialias: bool = True,
        pad_mode: str = "constant",
        pad_value: float = 0.0,
        align: str = "center",
        landmarks_key: str | None = "landmarks",
        spacing_key: str | None = "spacing",
        allow_missing_keys: bool = False,
        mm_per_px: float | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.resizer = LandmarkResizePad(size, mode, antialias, pad_mode, pad_value, align, mm_per_px)
        self.landmarks_key = landmarks_key
        self.spacing_key = spacing_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        spacing = d.get(self.spacing_key) if self.spacing_key is not None else None
        if spacing is None and self.resizer.mm_per_px is not None:
            first = next(iter(self.key_iterator(d)), None)
            spacing = None if first is None else _current_spacing(_image_meta(d[first])[1])
        in_size = None
        for key in self.key_iterator(d):
            shape = tuple(d[key].shape[-2:])
            if in_size is not None and shape != in_size:
                raise ValueError(f"images under {list(self.keys)} differ in size: {in_size} and {shape}.")
            in_size = shape
            d[key] = self.resizer(d[key], spacing=spacing)
        if in_size is None:
            return d
        matrix = self.resizer.plan((in_size[1], in_size[0]), spacing)[0]
        if self.landmarks_key is not None and d.get(self.landmarks_key) is not None:
            pts = d[self.landmarks_key]
            d[self.landmarks_key] = _like(_apply_matrix(matrix, _as_points64(pts, self.landmarks_key)), pts)
        if self.spacing_key is not None and self.spacing_key in d:
            d[self.spacing_key] = _transform_spacing(d[self.spacing_key], matrix)
        return d


# ----------------------------------------------------------------------------- random warps


def _bspline_weights(coords: np.ndarray, length: int, grid: int) -> np.ndarray:
    """``(len(coords), grid + 2)`` cubic B-spline weights of pixel coordinates along one axis.

    The lattice has ``grid`` knots evenly spanning pixel centres ``0 .. length - 1`` plus one
    outside each end, so every pixel sees four controls; coordinates outside the image are
    clamped to the border (constant extension).
    """
    spacing = max(length - 1, 1) / (grid - 1)
    u = np.clip(coords, 0, length - 1) / spacing
    first = np.minimum(np.floor(u).astype(np.int64), grid - 2)
    t = u - first
    basis = np.stack([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3], axis=1) / 6
    weights = np.zeros((len(coords), grid + 2))
    weights[np.arange(len(coords))[:, None], first[:, None] + np.arange(4)] = basis
    return weights


_DENSE_WEIGHTS: dict[tuple[int, int], torch.Tensor] = {}


def _dense_weights(length: int, grid: int) -> torch.Tensor:
    """:func:`_bspline_weights` of every pixel centre as a float32 tensor, cached per size."""
    weights = _DENSE_WEIGHTS.get((length, grid))
    if weights is None:
        weights = _DENSE_WEIGHTS[(length, grid)] = torch.as_tensor(
            _bspline_weights(np.arange(length, dtype=np.float64), length, grid), dtype=torch.float32
        )
    return weights


@dataclass
class _Warp:
    """A drawn warp of an image of ``size`` ``(W, H)``.

    Points: ``p -> q`` with ``q + d(q) = matrix @ p``; image: ``out(q) = in(matrix^-1 (q + d(q)))``,
    where ``d`` is the cubic B-spline displacement (pixels) with controls ``lattice``
    (``(2, g + 2, g + 2)``: ``(dx, dy)`` by lattice row and column), or zero when ``None``.
    """

    matrix: np.ndarray
    lattice: np.ndarray | None
    size: tuple[int, int]

    def displacement(self, points: np.ndarray) -> np.ndarray:
        width, height = self.size
        grid = self.lattice.shape[1] - 2
        wx = _bspline_weights(points[:, 0], width, grid)
        wy = _bspline_weights(points[:, 1], height, grid)
        return np.einsum("ni,cij,nj->nc", wy, self.lattice, wx)

    def points(self, points: np.ndarray, tol: float = 1e-7, max_iter: int = 100) -> np.ndarray:
        target = _apply_matrix(self.matrix, points)
        if self.lattice is None:
            return target
        finite = np.all(np.isfinite(target), axis=1)
        goal = target[finite]
        q = goal.copy()
        # Fixed point of q = goal - d(q): a contraction, as the slopes of d are kept below 1/2.
        for _ in range(max_iter):
            new_q = goal - self.displacement(q)
            done = np.max(np.abs(new_q - q), initial=0.0) < tol
            q = new_q
            if done:
                break
        target[finite] = q
        return target

    def image(self, img: torch.Tensor, padding_mode: str) -> torch.Tensor:
        height, width = img.shape[-2:]
        # Output pixel -> input pixel -> grid_sample's [-1, 1] units (align_corners=False), in one matrix.
        to_unit = np.array([[2.0 / width, 0.0, 1.0 / width - 1.0], [0.0, 2.0 / height, 1.0 / height - 1.0], [0, 0, 1]])
        backward = to_unit @ _inv_affine(self.matrix)
        xs = torch.arange(width, dtype=img.dtype)
        ys = torch.arange(height, dtype=img.dtype)
        grid = torch.empty((1, height, width, 2), dtype=img.dtype)
        if self.lattice is not None:
            # The displacement is linear in its controls, so mapping the controls maps the whole field.
            controls = torch.as_tensor(np.einsum("ck,kij->cij", backward[:2, :2], self.lattice), dtype=img.dtype)
            wx = _dense_weights(width, self.lattice.shape[1] - 2).to(img.dtype)
            wy = _dense_weights(height, self.lattice.shape[1] - 2).to(img.dtype)
        for c in range(2):
            a, b, t = (float(v) for v in backward[c])
            plane = a * xs[None, :] + (b * ys + t)[:, None]
            if self.lattice is not None:
                plane = torch.addmm(plane, wy @ controls[c], wx.T)
            grid[0, ..., c] = plane
        out = F.grid_sample(img[None], grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
        return out[0]


class RandLandmarkAffineElastic(RandomizableTransform):
    """Random affine (rotation, scale, anisotropy, shear, translation) plus a smooth elastic warp.

    One ``grid_sample`` resamples the image for both parts; points move with it exactly. No flips:
    a lateral cephalogram mirrored is a different anatomy (facing the other way).

    Forward map of points: ``p -> A p`` about the image centre, with
    ``A = T(c + t) R(angle) [[1, shear], [0, 1]] diag(s * a, s / a) T(-c)``, followed by the
    elastic part: the output point ``q`` solves ``q + d(q) = A p`` (fixed-point iteration), where
    ``d`` is a smooth random displacement: a cubic B-spline with uniform random controls on a
    coarse lattice of ``elastic_grid`` knots per axis spanning the image (plus one outside each
    end). The image samples ``d`` at pixel centres and the points evaluate the same spline, so both
    move identically; ``|d|`` never exceeds the control bound.

    Args:
        prob: probability of applying the warp at all.
        rotate_range: rotation drawn from ``[-r, r]`` degrees (positive = clockwise on screen, as y
            points down).
        scale_range: isotropic scale ``s`` drawn from ``[1 - r, 1 + r]``.
        aniso_range: anisotropy ``a`` from ``[1 - r, 1 + r]``; x scaled by ``s * a``, y by ``s / a``.
        shear_range: horizontal shear factor drawn from ``[-r, r]`` (``x += shear * y``).
        translate_range: shift drawn from ``[-r, r]`` times the width (x) and height (y).
        elastic_magnitude: maximum elastic displacement as a fraction of the shorter side (0.015 is
            about 4 px at 256); 0 disables the elastic part.
        elastic_grid: knots per axis of the elastic lattice (>= 2); more knots = more local warps.
        padding_mode: ``"zeros"`` or ``"border"`` for samples falling outside the input.
        out_of_image: what to do with a point that ends outside the image (see
            :func:`landmarks_inside`): ``"keep"`` its exact coordinates (heatmap generators ignore
            it; a loss can mask it) or set it to ``"nan"`` (missing).
        keep_inside: if a point that was inside leaves the image, retry with the drawn transform
            halved towards the identity, up to ``max_tries`` times, then use the identity.
        max_tries: number of halvings tried when ``keep_inside`` is set.

    Notes:
        - Image: ``(C, H, W)`` in and out (same size); a ``MetaTensor`` is returned.
        - Points: ``(N, 2)`` ``(x, y)`` pixels; NaN rows stay NaN.
        - ``meta["orig_to_current"]`` is left-multiplied by the affine matrix; when an elastic field
          is applied ``meta["nonlinear_warp"]`` is set, and :func:`current_to_original` refuses it.
        - Randomness comes from ``self.R`` only: ``set_random_state`` makes it reproducible.

    Raises:
        ValueError: for negative ranges, ``scale_range``/``aniso_range`` >= 1, an elastic field that
            could fold (``elastic_magnitude * (elastic_grid - 1) >= 0.25``) or invalid choices.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        prob: float = 1.0,
        rotate_range: float = 10.0,
        scale_range: float = 0.1,
        aniso_range: float = 0.05,
        shear_range: float = 0.05,
        translate_range: float = 0.05,
        elastic_magnitude: float = 0.015,
        elastic_grid: int = 5,
        padding_mode: str = "zeros",
        out_of_image: str = "keep",
        keep_inside: bool = True,
        max_tries: int = 4,
    ) -> None:
        super().__init__(prob)
        ranges = dict(
            rotate_range=rotate_range,
            scale_range=scale_range,
            aniso_range=aniso_range,
            shear_range=shear_range,
            translate_range=translate_range,
            elastic_magnitude=elastic_magnitude,
        )
        for name, value in ranges.items():
            if not value >= 0:
                raise ValueError(f"Argument `{name}` must be non-negative, got {value}.")
        for name in ("scale_range", "aniso_range"):
            if ranges[name] >= 1:
                raise ValueError(f"Argument `{name}` must be below 1, got {ranges[name]}.")
        if int(elastic_grid) != elastic_grid or elastic_grid < 2:
            raise ValueError(f"Argument `elastic_grid` must be an int >= 2, got {elastic_grid}.")
        # Controls in [-m, m] knots size/(g-1) apart bound each slope of d by 2 m (g - 1); below 1/2
        # the Jacobian of q + d(q) stays invertible (no folding) and the point inversion contracts.
        if elastic_magnitude * (elastic_grid - 1) >= 0.25:
            raise ValueError(
                f"Argument `elastic_magnitude` ({elastic_magnitude}) is too large for `elastic_grid` "
                f"({elastic_grid}): the field could fold; keep elastic_magnitude * (elastic_grid - 1) < 0.25."
            )
        if int(max_tries) != max_tries or max_tries < 0:
            raise ValueError(f"Argument `max_tries` must be a non-negative int, got {max_tries}.")
        self.rotate_range = float(rotate_range)
        self.scale_range = float(scale_range)
        self.aniso_range = float(aniso_range)
        self.shear_range = float(shear_range)
        self.translate_range = float(translate_range)
        self.elastic_magnitude = float(elastic_magnitude)
        self.elastic_grid = int(elastic_grid)
        self.padding_mode = _check_choice("padding_mode", padding_mode, ("zeros", "border"))
        self.out_of_image = _check_choice("out_of_image", out_of_image, ("keep", "nan"))
        self.keep_inside = bool(keep_inside)
        self.max_tries = int(max_tries)
        self._affine = np.zeros(6)
        self._controls = np.zeros((2, self.elastic_grid + 2, self.elastic_grid + 2))

    def randomize(self, data: Any = None) -> None:
        """Draw whether to apply and, if so, the affine parameters and the elastic controls."""
        super().randomize(None)
        if not self._do_transform:
            return
        unit = self.R.uniform(-1.0, 1.0, size=6)
        self._affine = unit * np.array(
            [
                self.rotate_range,
                self.scale_range,
                self.aniso_range,
                self.shear_range,
                self.translate_range,
                self.translate_range,
            ]
        )
        self._controls = self.R.uniform(-1.0, 1.0, size=(2, self.elastic_grid + 2, self.elastic_grid + 2))

    def _matrix(self, height: int, width: int, strength: float) -> np.ndarray:
        angle, scale, aniso, shear, tx, ty = self._affine * strength
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        cos, sin = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
        linear = (
            np.array([[cos, -sin], [sin, cos]])
            @ np.array([[1.0, shear], [0.0, 1.0]])
            @ np.diag([(1 + scale) * (1 + aniso), (1 + scale) / (1 + aniso)])
        )
        matrix = np.eye(3)
        matrix[:2, :2] = linear
        matrix[:2, 2] = np.array([cx + tx * width, cy + ty * height]) - linear @ np.array([cx, cy])
        return matrix

    def plan(self, spatial_shape: Sequence[int], points: Any = None) -> tuple[_Warp, np.ndarray | None]:
        """The warp of an ``(H, W)`` image from the last draw and the moved ``points`` (float64, or ``None``).

        With ``keep_inside``, the draw is halved towards the identity until every point that was
        inside stays inside. ``out_of_image`` is not applied here (see :meth:`finish_points`).
        """
        height, width = (int(s) for s in spatial_shape)
        size = (width, height)
        lattice = None
        if self.elastic_magnitude > 0:
            lattice = self._controls * (self.elastic_magnitude * min(height, width))
        warp = _Warp(self._matrix(height, width, 1.0), lattice, size)
        if points is None:
            return warp, None
        pts = _as_points64(points)
        if not self.keep_inside:
            return warp, warp.points(pts)
        was_inside = landmarks_inside(pts, size)
        for k in range(self.max_tries + 1):
            if k:
                strength = 0.5**k
                shrunk = None if lattice is None else lattice * strength
                warp = _Warp(self._matrix(height, width, strength), shrunk, size)
            moved = warp.points(pts)
            if landmarks_inside(moved[was_inside], size).all():
                return warp, moved
        return _Warp(np.eye(3), None, size), pts

    def apply(self, img: Any, warp: _Warp) -> MetaTensor:
        """Resample ``(C, H, W)`` ``img`` with ``warp`` and update its metadata."""
        tensor, meta, ops = _image_meta(img)
        meta[ORIG_TO_CURRENT] = warp.matrix @ _matrix_of(meta)
        if warp.lattice is not None:
            meta[NONLINEAR_WARP] = True
        return MetaTensor(warp.image(tensor, self.padding_mode), meta=meta, applied_operations=ops)

    def finish_points(self, moved: np.ndarray, like: Any, spatial_shape: Sequence[int]) -> Points:
        """Apply ``out_of_image`` to moved ``(N, 2)`` points; return them typed like ``like``."""
        if self.out_of_image == "nan":
            moved = moved.copy()
            moved[~landmarks_inside(moved, (spatial_shape[1], spatial_shape[0]))] = np.nan
        return _like(moved, like)

    def __call__(
        self, img: Any, points: Any = None, randomize: bool = True
    ) -> MetaTensor | tuple[MetaTensor, Points]:
        """
        Args:
            img: ``(C, H, W)`` image.
            points: optional ``(N, 2)`` ``(x, y)`` pixels of ``img``.
            randomize: draw new parameters (``False`` reuses the last draw, e.g. for a second image).

        Returns:
            The warped ``MetaTensor``, or ``(image, points)`` when ``points`` is given.
        """
        if randomize:
            self.randomize()
        if not self._do_transform:
            out = _passthrough(img)
            return out if points is None else (out, points)
        shape = tuple(img.shape[-2:])
        warp, moved = self.plan(shape, points)
        out = self.apply(img, warp)
        return out if points is None else (out, self.finish_points(moved, points, shape))


class RandLandmarkAffine(RandLandmarkAffineElastic):
    """Random affine only: :class:`RandLandmarkAffineElastic` without the elastic field.

    Args:
        prob, rotate_range, scale_range, aniso_range, shear_range, translate_range, padding_mode,
        out_of_image, keep_inside, max_tries: see :class:`RandLandmarkAffineElastic`.

    Notes:
        - Image ``(C, H, W)`` in and out; points ``(N, 2)`` ``(x, y)``; the matrix is composed into
          ``meta["orig_to_current"]``, so :func:`current_to_original` stays exact.
    """

    def __init__(
        self,
        prob: float = 1.0,
        rotate_range: float = 10.0,
        scale_range: float = 0.1,
        aniso_range: float = 0.05,
        shear_range: float = 0.05,
        translate_range: float = 0.05,
        padding_mode: str = "zeros",
        out_of_image: str = "keep",
        keep_inside: bool = True,
        max_tries: int = 4,
    ) -> None:
        super().__init__(
            prob, rotate_range, scale_range, aniso_range, shear_range, translate_range,
            0.0, 2, padding_mode, out_of_image, keep_inside, max_tries,
        )  # fmt: skip


class RandLandmarkElastic(RandLandmarkAffineElastic):
    """Random smooth elastic warp only: :class:`RandLandmarkAffineElastic` with no affine part.

    Args:
        prob: probability of applying the warp.
        magnitude: maximum displacement as a fraction of the shorter side (e.g. 0.015 = 4 px at 256).
        grid_size: control points per axis of the coarse random lattice.
        padding_mode, out_of_image, keep_inside, max_tries: see :class:`RandLandmarkAffineElastic`.

    Notes:
        - Image ``(C, H, W)`` in and out; points ``(N, 2)`` ``(x, y)``, mapped by inverting the
          backward map with a fixed-point iteration.
    """

    def __init__(
        self,
        prob: float = 1.0,
        magnitude: float = 0.015,
        grid_size: int = 5,
        padding_mode: str = "zeros",
        out_of_image: str = "keep",
        keep_inside: bool = True,
        max_tries: int = 4,
    ) -> None:
        super().__init__(
            prob, 0.0, 0.0, 0.0, 0.0, 0.0, magnitude, grid_size, padding_mode, out_of_image, keep_inside, max_tries
        )


class RandLandmarkReframe(RandLandmarkAffineElastic):
    """Random framing: zoom the image and place the anatomy anywhere it fits, landmarks inside.

    Other machines frame the head differently (collimated to the face, or the whole skull with
    the face in a corner), so after the letterbox the same anatomy appears at another size and
    place. This draws a zoom ``z`` log-uniformly from ``zoom_range`` (below 1: more context and
    border, above 1: a tighter crop) and a shift uniformly among those that keep the bounding
    box of the finite, inside landmarks at least ``margin`` (fraction of each side) from the
    edges; ``z`` is lowered when the box would not fit. Without landmarks the whole image is the box.

    Forward map of points: ``p -> z p + t``; the image is resampled with its inverse.

    Args:
        prob: probability of reframing at all.
        zoom_range: ``(low, high)`` zoom, ``0 < low <= high``.
        margin: minimum distance of the landmarks from the edges, as a fraction of the side (``< 0.5``).
        padding_mode: ``"zeros"`` or ``"border"`` for samples falling outside the input.

    Notes:
        - Image ``(C, H, W)`` in and out (same size); points ``(N, 2)`` ``(x, y)`` pixels, NaN
          rows stay NaN, points that were outside move with the map.
        - The matrix is composed into ``meta["orig_to_current"]`` (:func:`current_to_original` stays exact).

    Raises:
        ValueError: for a ``zoom_range`` that is not ``0 < low <= high`` or a ``margin`` outside ``[0, 0.5)``.
    """

    def __init__(
        self,
        prob: float = 1.0,
        zoom_range: Sequence[float] = (0.75, 1.25),
        margin: float = 0.03,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__(prob, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2, padding_mode, "keep", False, 0)
        low, high = (float(v) for v in zoom_range)
        if not 0 < low <= high:
            raise ValueError(f"Argument `zoom_range` must be (low, high) with 0 < low <= high, got {tuple(zoom_range)}.")
        if not 0 <= margin < 0.5:
            raise ValueError(f"Argument `margin` must be in [0, 0.5), got {margin}.")
        self.zoom_range = (low, high)
        self.margin = float(margin)
        self._draw = np.full(3, 0.5)

    def randomize(self, data: Any = None) -> None:
        """Draw whether to reframe and, if so, the zoom and shift (as uniforms in ``[0, 1]``)."""
        RandomizableTransform.randomize(self, None)
        if self._do_transform:
            self._draw = self.R.uniform(0.0, 1.0, size=3)

    def plan(self, spatial_shape: Sequence[int], points: Any = None) -> tuple[_Warp, np.ndarray | None]:
        """The reframing of an ``(H, W)`` image from the last draw and the moved ``points`` (float64, or ``None``)."""
        height, width = (int(s) for s in spatial_shape)
        size = np.array([width - 1.0, height - 1.0])
        pts = None if points is None else _as_points64(points)
        inside = np.zeros(0, bool) if pts is None else landmarks_inside(pts, (width, height))
        low, high = (pts[inside].min(axis=0), pts[inside].max(axis=0)) if inside.any() else (np.zeros(2), size)
        margin = self.margin * size
        zoom = float(np.exp(np.log(self.zoom_range[0]) + self._draw[0] * np.log(self.zoom_range[1] / self.zoom_range[0])))
        extent = high - low
        fits = extent > 0
        if fits.any():
            zoom = min(zoom, float(np.min((size - 2 * margin)[fits] / extent[fits])))
        # Shifts that keep the box inside the margins: z * low + t >= margin, z * high + t <= size - margin.
        first, last = margin - zoom * low, size - margin - zoom * high
        shift = first + self._draw[1:] * np.maximum(last - first, 0.0)
        matrix = np.array([[zoom, 0.0, shift[0]], [0.0, zoom, shift[1]], [0.0, 0.0, 1.0]])
        warp = _Warp(matrix, None, (width, height))
        return warp, None if pts is None else warp.points(pts)


class RandLandmarkAffineElasticd(RandomizableTransform, MapTransform):
    """Dictionary-based :class:`RandLandmarkAffineElastic`: images, landmarks and spacing together.

    All ``keys`` get the same warp (they must share the spatial size). The spacing at
    ``spacing_key`` becomes the physical length of one new pixel step along x and along y (exact
    for rotation and scaling; the elastic part is ignored as it is locally near-identity).

    Args:
        keys: image keys.
        landmarks_key: key of the ``(N, 2)`` ``(x, y)`` points (skipped when absent or ``None``).
        spacing_key: key of the ``(sx, sy)`` mm spacing (skipped when absent or ``None``).
        inside_key: if set, an ``(N,)`` bool array "point finite and inside the image" is stored
            there (also when the warp is not applied), e.g. to mask a coordinate loss.
        prob, rotate_range, ..., max_tries: see :class:`RandLandmarkAffineElastic`.
        allow_missing_keys: don't raise when an image key is missing.

    Notes:
        - Images ``(C, H, W)`` in and out; points ``(N, 2)`` ``(x, y)``.
    """

    backend = RandLandmarkAffineElastic.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        landmarks_key: str | None = "landmarks",
        spacing_key: str | None = "spacing",
        inside_key: str | None = None,
        prob: float = 1.0,
        rotate_range: float = 10.0,
        scale_range: float = 0.1,
        aniso_range: float = 0.05,
        shear_range: float = 0.05,
        translate_range: float = 0.05,
        elastic_magnitude: float = 0.015,
        elastic_grid: int = 5,
        padding_mode: str = "zeros",
        out_of_image: str = "keep",
        keep_inside: bool = True,
        max_tries: int = 4,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.warper = RandLandmarkAffineElastic(
            1.0, rotate_range, scale_range, aniso_range, shear_range, translate_range,
            elastic_magnitude, elastic_grid, padding_mode, out_of_image, keep_inside, max_tries,
        )  # fmt: skip
        self.landmarks_key = landmarks_key
        self.spacing_key = spacing_key
        self.inside_key = inside_key

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandLandmarkAffineElasticd:
        super().set_random_state(seed, state)
        self.warper.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        keys = list(self.key_iterator(d))
        points = d.get(self.landmarks_key) if self.landmarks_key is not None else None
        if not keys:
            return d
        shape = tuple(d[keys[0]].shape[-2:])
        if self._do_transform:
            self.warper.randomize()
            warp, moved = self.warper.plan(shape, points)
            for key in keys:
                if tuple(d[key].shape[-2:]) != shape:
                    raise ValueError(f"images under {keys} differ in size: {shape} and {tuple(d[key].shape[-2:])}.")
                d[key] = self.warper.apply(d[key], warp)
            if points is not None:
                d[self.landmarks_key] = points = self.warper.finish_points(moved, points, shape)
            if self.spacing_key is not None and self.spacing_key in d:
                d[self.spacing_key] = _transform_spacing(d[self.spacing_key], warp.matrix)
        else:
            for key in keys:
                d[key] = _passthrough(d[key])
        if self.inside_key is not None and points is not None:
            d[self.inside_key] = landmarks_inside(points, (shape[1], shape[0]))
        return d


class RandLandmarkAffined(RandLandmarkAffineElasticd):
    """Dictionary-based :class:`RandLandmarkAffine` (no elastic field; the matrix stays exact).

    Args:
        keys, landmarks_key, spacing_key, inside_key, allow_missing_keys: see
        :class:`RandLandmarkAffineElasticd`; the rest: see :class:`RandLandmarkAffineElastic`.

    Notes:
        - Images ``(C, H, W)`` in and out; points ``(N, 2)`` ``(x, y)``.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        landmarks_key: str | None = "landmarks",
        spacing_key: str | None = "spacing",
        inside_key: str | None = None,
        prob: float = 1.0,
        rotate_range: float = 10.0,
        scale_range: float = 0.1,
        aniso_range: float = 0.05,
        shear_range: float = 0.05,
        translate_range: float = 0.05,
        padding_mode: str = "zeros",
        out_of_image: str = "keep",
        keep_inside: bool = True,
        max_tries: int = 4,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(
            keys, landmarks_key, spacing_key, inside_key, prob, rotate_range, scale_range, aniso_range,
            shear_range, translate_range, 0.0, 2, padding_mode, out_of_image, keep_inside, max_tries,
            allow_missing_keys,
        )  # fmt: skip


class RandLandmarkElasticd(RandLandmarkAffineElasticd):
    """Dictionary-based :class:`RandLandmarkElastic`.

    Args:
        keys, landmarks_key, spacing_key, inside_key, allow_missing_keys: see
        :class:`RandLandmarkAffineElasticd`; the rest: see :class:`RandLandmarkElastic`.

    Notes:
        - Images ``(C, H, W)`` in and out; points ``(N, 2)`` ``(x, y)``.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        landmarks_key: str | None = "landmarks",
        spacing_key: str | None = "spacing",
        inside_key: str | None = None,
        prob: float = 1.0,
        magnitude: float = 0.015,
        grid_size: int = 5,
        padding_mode: str = "zeros",
        out_of_image: str = "keep",
        keep_inside: bool = True,
        max_tries: int = 4,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(
            keys, landmarks_key, spacing_key, inside_key, prob, 0.0, 0.0, 0.0, 0.0, 0.0, magnitude, grid_size,
            padding_mode, out_of_image, keep_inside, max_tries, allow_missing_keys,
        )  # fmt: skip


class RandLandmarkReframed(RandLandmarkAffineElasticd):
    """Dictionary-based :class:`RandLandmarkReframe`: images, landmarks and spacing together.

    Args:
        keys, landmarks_key, spacing_key, inside_key, allow_missing_keys: see
        :class:`RandLandmarkAffineElasticd`; the rest: see :class:`RandLandmarkReframe`.

    Notes:
        - Images ``(C, H, W)`` in and out; points ``(N, 2)`` ``(x, y)``; the spacing is divided by the zoom.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        landmarks_key: str | None = "landmarks",
        spacing_key: str | None = "spacing",
        inside_key: str | None = None,
        prob: float = 1.0,
        zoom_range: Sequence[float] = (0.75, 1.25),
        margin: float = 0.03,
        padding_mode: str = "zeros",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, landmarks_key, spacing_key, inside_key, prob, allow_missing_keys=allow_missing_keys)
        self.warper = RandLandmarkReframe(1.0, zoom_range, margin, padding_mode)
