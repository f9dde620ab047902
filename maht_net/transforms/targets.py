"""The last transform before batching (``PackLandmarksd``) and the first after the network
(``DecodeLandmarksd``): the one place where network grids and original images meet."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from maht_net.codec.heatmap_codec import HeatmapCodec
from maht_net.codec.heatmaps import covariance_to_spread
from maht_net.transforms.io import NONLINEAR_WARP, ORIG_TO_CURRENT, ORIGINAL_SIZE, ORIGINAL_SPACING
from maht_net.transforms.spatial import current_to_original

__all__ = ["PackLandmarksd", "DecodeLandmarksd", "apply_homogeneous"]


def apply_homogeneous(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply ``(B, 3, 3)`` matrices to ``(B, N, 2)`` ``(x, y)`` points."""
    m = matrix.to(points.dtype)
    return points @ m[:, :2, :2].transpose(1, 2) + m[:, None, :2, 2]


class PackLandmarksd(MapTransform):
    """Turn a sample into collatable tensors for training and evaluation.

    Writes:
        ``landmarks`` ``(N, 2)`` float32 ``(x, y)`` in the network-input grid (NaN = missing);
        ``landmark_mask`` ``(N,)`` float32, 1 where the landmark is present and inside the image;
        ``spacing`` ``(2,)`` float32 ``(sx, sy)`` mm of the input grid (NaN when unknown);
        ``to_original`` ``(3, 3)`` float64 input-grid -> original-image matrix (NaN after an
        elastic warp, which no matrix inverts);
        ``orig_landmarks`` ``(N, 2)`` float64 ``(x, y)`` in the original image (NaN after an elastic warp);
        ``orig_spacing`` ``(2,)`` float64 mm of the original image (NaN when unknown);
        ``orig_size`` ``(2,)`` ``(W, H)`` of the original image;
        ``id`` str; each of ``extra_keys`` as a plain tensor (e.g. the full-resolution film the
        refinement stage reads). Other keys (``None`` values, extra datalist fields) are dropped.
    """

    def __init__(
        self,
        image_key: str = "image",
        landmarks_key: str = "landmarks",
        spacing_key: str = "spacing",
        num_landmarks: int = 19,
        extra_keys: tuple[str, ...] = (),
    ) -> None:
        super().__init__([image_key])
        self.image_key, self.landmarks_key, self.spacing_key = image_key, landmarks_key, spacing_key
        self.num_landmarks = int(num_landmarks)
        self.extra_keys = tuple(extra_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        img = data[self.image_key]
        meta = img.meta if isinstance(img, MetaTensor) else {}
        h, w = img.shape[-2:]
        pts = data.get(self.landmarks_key)
        pts = np.full((self.num_landmarks, 2), np.nan) if pts is None else np.asarray(pts, dtype=np.float64)
        inside = np.isfinite(pts).all(-1) & (pts[:, 0] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1)
        spacing = data.get(self.spacing_key)
        warped = bool(meta.get(NONLINEAR_WARP, False))
        to_original = np.full((3, 3), np.nan) if warped else np.linalg.inv(np.asarray(meta.get(ORIG_TO_CURRENT, np.eye(3)), dtype=np.float64))
        orig = np.full_like(pts, np.nan) if warped else current_to_original(pts, meta)
        out = {
            self.image_key: img,
            self.landmarks_key: torch.as_tensor(pts, dtype=torch.float32),
            "landmark_mask": torch.as_tensor(inside, dtype=torch.float32),
            self.spacing_key: torch.as_tensor(np.full(2, np.nan) if spacing is None else spacing, dtype=torch.float32),
            "to_original": torch.as_tensor(to_original, dtype=torch.float64),
            "orig_landmarks": torch.as_tensor(orig, dtype=torch.float64),
            "orig_spacing": torch.as_tensor(np.asarray(meta.get(ORIGINAL_SPACING, np.full(2, np.nan)), dtype=np.float64)),
            "orig_size": torch.as_tensor(np.asarray(meta.get(ORIGINAL_SIZE, (w, h)), dtype=np.float64)),
            "id": str(data.get("id", "")),
        }
        for key in self.extra_keys:
            value = data[key]
            out[key] = value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)
        return out


class DecodeLandmarksd(MapTransform):
    """Decode a batch of heatmap logits into landmarks of the original images.

    Reads ``d[pred_key]`` logits ``(B, N, h, w)`` and ``d["to_original"]`` ``(B, 3, 3)``; writes
    ``pred_points`` ``(B, N, 2)`` float64 ``(x, y)`` original pixels (clamped to the image when
    ``orig_size`` is given), ``pred_covariance`` ``(B, N, 2, 2)`` over ``(x, y)`` original pixels
    (the decoded second moments carried through the affine map, ``A C A^T``), ``pred_spread``
    ``(B, N)`` its radial RMS and ``pred_confidence`` ``(B, N)``; with a ``calibration`` record
    (:mod:`maht_net.codec.uncertainty`) the covariance is scaled by each landmark's factor squared and
    the record is passed on as ``uncertainty_calibration``. Copies the truth (``orig_landmarks``,
    ``orig_spacing``) to ``true_points``/``true_spacing`` when present, since MONAI engines keep
    only new keys in ``engine.state.output`` where the metrics read. Works on batches (MONAI
    engines with ``decollate=False``).
    """

    def __init__(
        self,
        pred_key: str = "pred",
        stride: int = 4,
        method: str = "dark",
        confidence_radius: float = 4.0,
        calibration: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__([pred_key])
        self.codec = HeatmapCodec(stride=stride, decoder=method, confidence_radius=confidence_radius)
        self.pred_key, self.stride, self.method, self.confidence_radius = pred_key, self.codec.stride, method, self.codec.confidence_radius
        self.calibration = dict(calibration) if calibration else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        pred = d[self.pred_key]
        logits = pred["heatmaps"] if isinstance(pred, Mapping) else pred
        decoded = self.codec.decode(logits)
        to_original = torch.as_tensor(d["to_original"]).to(decoded.points.device)
        points = apply_homogeneous(to_original, decoded.points.double())
        if "orig_size" in d:  # a peak in the letterbox padding still names a pixel of the film
            size = torch.as_tensor(d["orig_size"]).to(points)[:, None, :]
            points = torch.minimum(points.clamp_min(0.0), size - 1)
        d["pred_points"] = points
        linear = to_original[:, None, :2, :2].float()
        covariance = linear @ decoded.covariance @ linear.transpose(-1, -2)
        if self.calibration is not None:
            scale = torch.as_tensor(self.calibration["scale"], dtype=covariance.dtype, device=covariance.device)
            if scale.shape != covariance.shape[1:2]:
                raise ValueError(f"calibration has {scale.numel()} factors for {covariance.shape[1]} landmarks")
            covariance = covariance * (scale**2)[None, :, None, None]
            d["uncertainty_calibration"] = self.calibration
        d["pred_covariance"] = covariance
        d["pred_spread"] = covariance_to_spread(covariance)
        d["pred_confidence"] = decoded.confidence
        if "orig_landmarks" in d:
            d["true_points"], d["true_spacing"] = d["orig_landmarks"], d["orig_spacing"]
        return d
