"""Landmark losses on heatmap logits, with missing landmarks masked out.

Notes:
    ``logits``: ``(B, N, h, w)`` network output at stride ``s`` (``h = H / s``).
    ``target`` dict: ``"landmarks"`` ``(B, N, 2)`` ``(x, y)`` in input pixels (NaN = missing),
    ``"mask"`` ``(B, N)`` (1 = present), optional ``"spacing"`` ``(B, 2)`` ``(sx, sy)`` mm/px of
    the input grid, optional ``"heatmap"`` ``(B, N, h, w)`` Gaussian targets with peak 1 (made
    on the fly from the landmarks when absent, which lets ``sigma`` change during training).
    Every loss averages over present landmarks only; a batch with none present gives 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from maht_net.codec.heatmap_codec import HeatmapCodec
from maht_net.codec.heatmaps import heatmap_to_input, soft_argmax

__all__ = [
    "spatial_kl",
    "heatmap_mse",
    "adaptive_wing",
    "coordinate_l1",
    "LandmarkLoss",
    "LOSS_TERMS",
]

LOSS_TERMS = ("kl", "mse", "awing", "coord")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``(B, N)`` values over ``mask`` > 0 (0 when nothing is present)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def spatial_kl(logits: torch.Tensor, heatmap: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL divergence from the normalised target to ``softmax(logits)`` over each map.

    Cross-entropy of the spatial softmax minus the target's entropy, so a perfect prediction
    scores 0. Unlike per-pixel MSE on a sparse target (which an all-zero output nearly
    minimises), every pixel's logit competes for the same mass, so the peak must move to the
    landmark.
    """
    b, n = logits.shape[:2]
    logp = F.log_softmax(logits.float().reshape(b, n, -1), -1)
    q = heatmap.float().reshape(b, n, -1)
    q = q / q.sum(-1, keepdim=True).clamp_min(1e-12)
    kl = (q * (torch.log(q.clamp_min(1e-12)) - logp)).sum(-1)
    return _masked_mean(kl, mask)


def heatmap_mse(logits: torch.Tensor, heatmap: torch.Tensor, mask: torch.Tensor, foreground_weight: float = 10.0) -> torch.Tensor:
    """MSE between ``sigmoid(logits)`` and the target, pixels weighted ``1 + w * target``
    (the foreground weighting keeps the peak from drowning in background pixels)."""
    err = (torch.sigmoid(logits.float()) - heatmap) ** 2 * (1.0 + foreground_weight * heatmap)
    return _masked_mean(err.mean((-2, -1)), mask)


def adaptive_wing(
    logits: torch.Tensor,
    heatmap: torch.Tensor,
    mask: torch.Tensor,
    alpha: float = 2.1,
    omega: float = 14.0,
    epsilon: float = 1.0,
    theta: float = 0.5,
    foreground_weight: float = 10.0,
) -> torch.Tensor:
    """Adaptive wing loss (Wang et al., ICCV 2019) on ``sigmoid(logits)``, with its weighted
    map (``foreground_weight`` on the dilated foreground)."""
    y, p = heatmap.float(), torch.sigmoid(logits.float())
    diff = (y - p).abs()
    power = alpha - y
    a = omega * (1 / (1 + (theta / epsilon) ** power)) * power * ((theta / epsilon) ** (power - 1)) / epsilon
    c = theta * a - omega * torch.log1p((theta / epsilon) ** power)
    loss = torch.where(diff < theta, omega * torch.log1p((diff / epsilon) ** power), a * diff - c)
    fg = F.max_pool2d(y, 3, stride=1, padding=1) > 0.2
    loss = loss * (1.0 + foreground_weight * fg)
    return _masked_mean(loss.mean((-2, -1)), mask)


def coordinate_l1(
    logits: torch.Tensor, landmarks: torch.Tensor, mask: torch.Tensor, stride: int, spacing: torch.Tensor | None = None
) -> torch.Tensor:
    """L1 distance between the soft-argmax of ``softmax(logits)`` and the truth, per axis, in mm
    when ``spacing`` ``(B, 2)`` is given (else input pixels)."""
    pred = heatmap_to_input(soft_argmax(logits, beta=1.0), stride)
    truth = torch.nan_to_num(landmarks.to(pred.dtype))
    diff = (pred - truth).abs()
    if spacing is not None:
        diff = diff * spacing.to(diff.dtype)[:, None, :]
    return _masked_mean(diff.sum(-1), mask)


class LandmarkLoss(nn.Module):
    """Weighted sum of :data:`LOSS_TERMS`; weights can change between training stages.

    Args:
        weights: e.g. ``{"kl": 1.0, "coord": 0.05}``; missing terms weigh 0.
        sigma: target Gaussian std in input pixels (used when the target has no heatmap).
        stride: network output stride.
        aux_weight: weight of each auxiliary (deep-supervision) head's loss.

    ``forward(pred, target)`` takes the network output (tensor, or dict with ``"heatmaps"``
    and ``"aux"``) and the target dict; the terms of the last call are in ``last_terms``.
    """

    def __init__(self, weights: Mapping[str, float] | None = None, sigma: float = 2.0, stride: int = 4, aux_weight: float = 0.4) -> None:
        super().__init__()
        self.weights: dict[str, float] = {}
        self.set_weights(weights or {"kl": 1.0, "coord": 0.02})
        self.codec = HeatmapCodec(stride=stride, sigma=sigma)
        self.aux_weight = float(aux_weight)
        self.last_terms: dict[str, float] = {}

    @property
    def sigma(self) -> float:
        """Target width in input pixels (the codec's; training stages may change it)."""
        return self.codec.sigma

    @sigma.setter
    def sigma(self, value: float) -> None:
        self.codec = replace(self.codec, sigma=float(value))

    @property
    def stride(self) -> int:
        return self.codec.stride

    @stride.setter
    def stride(self, value: int) -> None:
        self.codec = replace(self.codec, stride=int(value))

    def set_weights(self, weights: Mapping[str, float]) -> None:
        unknown = set(weights) - set(LOSS_TERMS)
        if unknown:
            raise ValueError(f"unknown loss terms {sorted(unknown)}; known: {LOSS_TERMS}")
        self.weights = {k: float(weights.get(k, 0.0)) for k in LOSS_TERMS}

    def _terms(self, logits: torch.Tensor, target: Mapping[str, torch.Tensor], stride: int, heatmap: torch.Tensor | None) -> dict[str, torch.Tensor]:
        mask = target["mask"]
        if heatmap is None and any(self.weights[k] for k in ("kl", "mse", "awing")):
            heatmap = self.codec.at_stride(stride).encode(target["landmarks"], tuple(logits.shape[-2:])).to(logits.device)
        terms = {}
        if self.weights["kl"]:
            terms["kl"] = spatial_kl(logits, heatmap, mask)
        if self.weights["mse"]:
            terms["mse"] = heatmap_mse(logits, heatmap, mask)
        if self.weights["awing"]:
            terms["awing"] = adaptive_wing(logits, heatmap, mask)
        if self.weights["coord"]:
            terms["coord"] = coordinate_l1(logits, target["landmarks"], mask, stride, target.get("spacing"))
        return terms

    def forward(self, pred: torch.Tensor | Mapping, target: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits, aux = (pred["heatmaps"], pred.get("aux", [])) if isinstance(pred, Mapping) else (pred, [])
        terms = self._terms(logits, target, self.stride, target.get("heatmap"))
        total = sum(self.weights[k] * v for k, v in terms.items())
        for aux_logits, aux_stride in aux:
            aux_terms = self._terms(aux_logits, target, aux_stride, None)
            total = total + self.aux_weight * sum(self.weights[k] * v for k, v in aux_terms.items())
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        return total
