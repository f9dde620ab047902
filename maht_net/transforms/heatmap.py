"""Heatmap targets as MONAI transforms: ``GenerateLandmarkHeatmap`` / ``GenerateLandmarkHeatmapd``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends

from maht_net.codec.heatmaps import gaussian_heatmaps, input_to_heatmap

__all__ = ["GenerateLandmarkHeatmap", "GenerateLandmarkHeatmapd", "sigma_in_pixels"]


def sigma_in_pixels(sigma: float, unit: str, spacing: Sequence[float] | None) -> float:
    """Convert a Gaussian width to image pixels: ``unit`` is ``"px"`` or ``"mm"`` (needs spacing).

    Anisotropic spacing uses the mean of ``(sx, sy)``.
    """
    if unit == "px":
        return float(sigma)
    if unit != "mm":
        raise ValueError(f"sigma unit must be 'px' or 'mm', got {unit!r}")
    if spacing is None:
        raise ValueError("sigma in mm needs the pixel spacing; this image has none (give sigma in px)")
    return float(sigma) / float(np.mean(spacing))


class GenerateLandmarkHeatmap(Transform):
    """Landmark points -> one Gaussian heatmap per landmark, optionally at a coarser stride.

    Unlike MONAI's ``GenerateHeatmap`` (points in array order (y, x), shape taken from a
    reference image), points here are ``(x, y)`` as everywhere in MAHT-Net, missing points (NaN)
    give an all-zero channel, and a ``stride`` places the targets on the grid of a network whose
    output is ``1/stride`` of its input.

    Notes:
        Input: points ``(N, 2)`` ``(x, y)`` in image pixels; ``spatial_shape`` = image ``(H, W)``.
        Output: ``(N, H // stride, W // stride)`` float32 with peak 1 at each point.

    Args:
        sigma: Gaussian standard deviation in image pixels (before the stride).
        stride: integer output stride of the heatmap grid.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, sigma: float = 2.0, stride: int = 1) -> None:
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        if int(stride) != stride or stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride}")
        self.sigma = float(sigma)
        self.stride = int(stride)

    def __call__(self, points: Any, spatial_shape: Sequence[int], sigma: float | None = None) -> torch.Tensor:
        h, w = int(spatial_shape[0]), int(spatial_shape[1])
        if h % self.stride or w % self.stride:
            raise ValueError(f"image size {w}x{h} is not divisible by the stride {self.stride}")
        pts = input_to_heatmap(torch.as_tensor(np.asarray(points, dtype=np.float32)), self.stride)
        s = (self.sigma if sigma is None else float(sigma)) / self.stride
        return gaussian_heatmaps(pts, (h // self.stride, w // self.stride), s)


class GenerateLandmarkHeatmapd(MapTransform):
    """Dictionary wrapper of :class:`GenerateLandmarkHeatmap`.

    Reads ``d[keys]`` (points ``(N, 2)`` ``(x, y)``) and the shape of ``d[image_key]``
    (``(C, H, W)``); writes ``d[heatmap_key]`` ``(N, H/s, W/s)`` and ``d[mask_key]`` ``(N,)``
    (1 = landmark present). With ``sigma_unit="mm"`` the width is converted with
    ``d[spacing_key]`` (the spacing of the current, resized grid).
    """

    backend = GenerateLandmarkHeatmap.backend

    def __init__(
        self,
        keys: KeysCollection = "landmarks",
        image_key: str = "image",
        heatmap_key: str = "heatmap",
        mask_key: str = "landmark_mask",
        sigma: float = 2.0,
        sigma_unit: str = "px",
        spacing_key: str = "spacing",
        stride: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError("GenerateLandmarkHeatmapd takes exactly one points key")
        sigma_in_pixels(1.0, sigma_unit, (1.0, 1.0))  # validates the unit
        self.generator = GenerateLandmarkHeatmap(sigma=sigma, stride=stride)
        self.image_key, self.heatmap_key, self.mask_key = image_key, heatmap_key, mask_key
        self.sigma, self.sigma_unit, self.spacing_key = float(sigma), sigma_unit, spacing_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            points = np.asarray(d[key], dtype=np.float32)
            sigma = sigma_in_pixels(self.sigma, self.sigma_unit, d.get(self.spacing_key))
            d[self.heatmap_key] = self.generator(points, d[self.image_key].shape[-2:], sigma=sigma)
            d[self.mask_key] = torch.as_tensor(np.isfinite(points).all(-1), dtype=torch.float32)
        return d
