"""Gaussian landmark heatmaps and their decoding to sub-pixel coordinates.

Notes:
    Points are ``(x, y)`` (x = column, y = row) in pixels of the grid the heatmap covers,
    pixel centres at integer coordinates. Heatmaps are ``(N, H, W)`` or ``(B, N, H, W)``: one
    channel per landmark, rows = y. A heatmap predicted at ``stride`` s (``H = H_in / s``) maps
    to input pixels by ``x_in = (x_h + 0.5) * s - 0.5`` (:func:`heatmap_to_input`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "gaussian_heatmaps",
    "input_to_heatmap",
    "heatmap_to_input",
    "decode_argmax",
    "soft_argmax",
    "refine_dark",
    "heatmap_covariance",
    "covariance_to_spread",
    "DecodedLandmarks",
    "locate_peaks",
    "decode_logits",
    "spatial_log_softmax",
    "mix_log_probs",
    "DECODERS",
]

DECODERS = ("argmax", "soft_argmax", "dark")
SPREAD_FLOOR = 0.05
"""Fraction of the peak below which probability mass is ignored by the decoded spread."""


def gaussian_heatmaps(
    points: torch.Tensor | np.ndarray, shape: tuple[int, int], sigma: float | torch.Tensor
) -> torch.Tensor:
    """Unnormalised Gaussians (peak 1 at a grid point) centred at each point.

    Args:
        points: ``(N, 2)`` or ``(B, N, 2)`` ``(x, y)`` in heatmap pixels; NaN rows give zero maps.
        shape: heatmap ``(H, W)``.
        sigma: standard deviation in heatmap pixels; a scalar or ``(N,)``/``(B, N)``.

    Returns:
        ``(N, H, W)`` or ``(B, N, H, W)`` float32 (float64 input stays float64).

    Built separably (``exp(-dx^2/2s^2)`` outer ``exp(-dy^2/2s^2)``), which is exact and costs
    ``O(N (H + W))`` exponentials instead of ``O(N H W)``.
    """
    pts = torch.as_tensor(points)
    if not pts.is_floating_point():
        pts = pts.float()
    if pts.shape[-1] != 2 or pts.ndim not in (2, 3):
        raise ValueError(f"points must be (N, 2) or (B, N, 2) (x, y), got shape {tuple(pts.shape)}")
    h, w = int(shape[0]), int(shape[1])
    sigma = torch.as_tensor(sigma, dtype=pts.dtype, device=pts.device)
    if torch.any(sigma <= 0):
        raise ValueError(f"sigma must be positive, got {sigma}")
    sigma = sigma.expand(pts.shape[:-1])[..., None]
    valid = torch.isfinite(pts).all(-1, keepdim=True)
    pts = torch.where(valid, pts, torch.zeros_like(pts))
    xs = torch.arange(w, dtype=pts.dtype, device=pts.device)
    ys = torch.arange(h, dtype=pts.dtype, device=pts.device)
    gx = torch.exp(-((xs - pts[..., 0:1]) ** 2) / (2 * sigma**2)) * valid
    gy = torch.exp(-((ys - pts[..., 1:2]) ** 2) / (2 * sigma**2))
    return gy[..., :, None] * gx[..., None, :]


def input_to_heatmap(points: torch.Tensor | np.ndarray, stride: float) -> torch.Tensor | np.ndarray:
    """``(x, y)`` input pixels -> heatmap pixels at ``stride``: ``(p + 0.5) / s - 0.5``."""
    return (points + 0.5) / stride - 0.5


def heatmap_to_input(points: torch.Tensor | np.ndarray, stride: float) -> torch.Tensor | np.ndarray:
    """``(x, y)`` heatmap pixels at ``stride`` -> input pixels: ``(p + 0.5) * s - 0.5``."""
    return (points + 0.5) * stride - 0.5


def _as_batch(heatmaps: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if heatmaps.ndim == 3:
        return heatmaps[None], True
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (N, H, W) or (B, N, H, W), got {tuple(heatmaps.shape)}")
    return heatmaps, False


def decode_argmax(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer peak of each channel.

    Returns:
        ``points`` ``(B, N, 2)`` ``(x, y)`` float and ``peak`` ``(B, N)`` (batch dim kept only
        when the input had one).
    """
    hm, squeeze = _as_batch(heatmaps)
    b, n, h, w = hm.shape
    peak, idx = hm.reshape(b, n, h * w).max(-1)
    pts = torch.stack([(idx % w).to(hm.dtype), torch.div(idx, w, rounding_mode="floor").to(hm.dtype)], -1)
    return (pts[0], peak[0]) if squeeze else (pts, peak)


def soft_argmax(heatmaps: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Differentiable expected position under ``softmax(beta * heatmap)`` over each channel.

    Numerically stable (the softmax subtracts the maximum), so large ``beta`` or logits cannot
    overflow. Returns ``(B, N, 2)`` (or ``(N, 2)``) ``(x, y)``.
    """
    hm, squeeze = _as_batch(heatmaps)
    b, n, h, w = hm.shape
    prob = torch.softmax(beta * hm.reshape(b, n, h * w).float(), dim=-1).reshape(b, n, h, w)
    xs = torch.arange(w, dtype=prob.dtype, device=prob.device)
    ys = torch.arange(h, dtype=prob.dtype, device=prob.device)
    pts = torch.stack([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], -1)
    return pts[0] if squeeze else pts


def refine_dark(heatmaps: torch.Tensor, points: torch.Tensor, smooth_sigma: float = 0.0) -> torch.Tensor:
    """DARK sub-pixel refinement (Zhang et al., CVPR 2020) of integer peaks.

    Fits a quadratic to ``log(heatmap)`` at the integer peak by finite differences and moves to
    its extremum: ``p - H^-1 g``. Exact for a Gaussian; offsets are clamped to ±1 px so a
    degenerate Hessian (flat or noisy map) cannot throw a point away. ``smooth_sigma > 0``
    first blurs the map with that Gaussian (in pixels), as DARK does for network outputs.

    Args:
        heatmaps: ``(B, N, H, W)``.
        points: ``(B, N, 2)`` integer ``(x, y)`` peaks from :func:`decode_argmax`.
    """
    hm = heatmaps.detach().double()
    if smooth_sigma > 0:
        radius = max(1, int(round(3 * smooth_sigma)))
        k = torch.arange(-radius, radius + 1, dtype=hm.dtype, device=hm.device)
        k = torch.exp(-(k**2) / (2 * smooth_sigma**2))
        k = k / k.sum()
        b, n, h, w = hm.shape
        flat = hm.reshape(b * n, 1, h, w)
        flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
        hm = flat.reshape(b, n, h, w)
    b, n, h, w = hm.shape
    logh = torch.log(hm.clamp_min(1e-10))
    x = points[..., 0].long().clamp(1, w - 2)
    y = points[..., 1].long().clamp(1, h - 2)
    flat = logh.reshape(b, n, h * w)

    def at(dx: int, dy: int) -> torch.Tensor:
        return flat.gather(-1, ((y + dy) * w + (x + dx))[..., None])[..., 0]

    c = at(0, 0)
    dx = 0.5 * (at(1, 0) - at(-1, 0))
    dy = 0.5 * (at(0, 1) - at(0, -1))
    dxx = at(1, 0) - 2 * c + at(-1, 0)
    dyy = at(0, 1) - 2 * c + at(0, -1)
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = dxx * dyy - dxy**2
    ok = (det > 1e-12) & (dxx < 0) & (dyy < 0)  # a maximum of the log map
    safe_det = torch.where(ok, det, torch.ones_like(det))
    off_x = -(dyy * dx - dxy * dy) / safe_det
    off_y = -(dxx * dy - dxy * dx) / safe_det
    off = torch.stack([off_x, off_y], -1).clamp(-1.0, 1.0) * ok[..., None]
    base = torch.stack([x, y], -1).to(off.dtype)
    return (base + off).to(heatmaps.dtype)


def heatmap_covariance(heatmaps: torch.Tensor, centers: torch.Tensor, floor: float | None = 0.1) -> torch.Tensor:
    """Second moments of each channel's mass around ``centers``: ``E[(p - c)(p - c)^T]`` in px^2.

    Mass is the heatmap clipped below at ``floor * peak`` (so a flat noise floor does not
    dominate), over the whole map: a second mode far from the peak makes the moments large,
    which is what flags an ambiguous landmark; an elongated mode gives an elongated ellipse.
    Returns ``(B, N, 2, 2)`` over ``(x, y)``: ``[[Cxx, Cxy], [Cxy, Cyy]]``.
    """
    hm, _ = _as_batch(heatmaps.detach().float())
    b, n, h, w = hm.shape
    peak = hm.reshape(b, n, -1).amax(-1).clamp_min(1e-12)[..., None, None]
    mass = hm.clamp_min(0) if floor is None else torch.where(hm >= floor * peak, hm, torch.zeros_like(hm)).clamp_min(0)
    total = mass.sum((-2, -1)).clamp_min(1e-12)
    c = centers.reshape(b, n, 2).float()
    dx = torch.arange(w, dtype=hm.dtype, device=hm.device) - c[..., 0:1]  # (B, N, W)
    dy = torch.arange(h, dtype=hm.dtype, device=hm.device) - c[..., 1:2]  # (B, N, H)
    cxx = (mass.sum(-2) * dx**2).sum(-1) / total
    cyy = (mass.sum(-1) * dy**2).sum(-1) / total
    cxy = (mass * dy[..., :, None] * dx[..., None, :]).sum((-2, -1)) / total
    return torch.stack([torch.stack([cxx, cxy], -1), torch.stack([cxy, cyy], -1)], -2)


def covariance_to_spread(covariance: torch.Tensor) -> torch.Tensor:
    """Radial spread ``sqrt(E|p - c|^2) = sqrt(Cxx + Cyy)`` from ``(..., 2, 2)`` covariances."""
    return torch.sqrt((covariance[..., 0, 0] + covariance[..., 1, 1]).clamp_min(0))


@dataclass
class DecodedLandmarks:
    """Landmarks decoded from logits by :func:`decode_logits`, in input pixels.

    Attributes:
        points: ``(B, N, 2)`` ``(x, y)``.
        confidence: ``(B, N)`` the one meaning of *confidence* in MAHT-Net: the probability mass
            of the spatial softmax within ``confidence_radius`` input pixels of the point (in
            ``[0, 1]``; it is what prediction files report as ``confidence``).
        covariance: ``(B, N, 2, 2)`` second moments of the softmax around the point over
            ``(x, y)``, in px^2 (:func:`heatmap_covariance`).
    """

    points: torch.Tensor
    confidence: torch.Tensor
    covariance: torch.Tensor

    @property
    def spread(self) -> torch.Tensor:
        """``(B, N)`` radial spread in pixels: ``sqrt(trace(covariance))``."""
        return covariance_to_spread(self.covariance)


def locate_peaks(hm: torch.Tensor, method: str = "dark", beta: float = 50.0, smooth_sigma: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-pixel points ``(B, N, 2)`` (x, y) of ``(B, N, H, W)`` heatmaps by ``method``, and the peak values ``(B, N)``."""
    if method not in DECODERS:
        raise ValueError(f"method must be one of {DECODERS}, got {method!r}")
    peaks, peak_values = decode_argmax(hm)
    if method == "argmax":
        return peaks, peak_values
    if method == "soft_argmax":
        return soft_argmax(hm, beta=beta), peak_values
    return refine_dark(hm, peaks, smooth_sigma=smooth_sigma), peak_values


def decode_logits(
    logits: torch.Tensor, stride: int = 1, method: str = "dark", confidence_radius: float = 4.0
) -> DecodedLandmarks:
    """Decode network logits ``(B, N, h, w)`` (a log-heatmap) to input-pixel landmarks.

    The logits are read as ``log p`` up to a constant, with ``p = softmax`` over each map:
    ``exp(logits - max)`` is the peak-1 heatmap that :func:`locate_peaks` refines, and
    ``p`` gives the uncertainty.

    Returns:
        :class:`DecodedLandmarks` in input pixels (``x_in = (x_h + 0.5) * stride - 0.5``):
        ``covariance`` = second moments of ``p`` around the point (``spread`` its radial RMS),
        counting only pixels
        above :data:`SPREAD_FLOOR` of the peak (the softmax puts a little mass on every pixel of
        the film, and that far-away floor would otherwise make the spread nearly the same for
        every landmark); ``confidence`` = mass of ``p`` within ``confidence_radius`` input pixels
        of the point.
    """
    lg, _ = _as_batch(logits.detach().float())
    b, n, h, w = lg.shape
    heat = torch.exp(lg - lg.reshape(b, n, -1).amax(-1)[..., None, None])
    points, _ = locate_peaks(heat, method)
    prob = torch.softmax(lg.reshape(b, n, -1), -1).reshape(b, n, h, w)
    covariance = heatmap_covariance(prob, points, floor=SPREAD_FLOOR) * stride**2
    xs = torch.arange(w, dtype=prob.dtype, device=prob.device)
    ys = torch.arange(h, dtype=prob.dtype, device=prob.device)
    d2 = (xs - points[..., 0:1])[..., None, :] ** 2 + (ys - points[..., 1:2])[..., :, None] ** 2
    confidence = (prob * (d2 <= (confidence_radius / stride) ** 2)).sum((-2, -1))
    return DecodedLandmarks(points=heatmap_to_input(points, stride), confidence=confidence, covariance=covariance)


def spatial_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``log p`` of the softmax over each map of ``(B, N, h, w)`` logits, in float32."""
    b, n, h, w = logits.shape
    return torch.log_softmax(logits.float().reshape(b, n, -1), -1).reshape(b, n, h, w)


def mix_log_probs(log_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The log of the mean probability of several ``(B, N, h, w)`` log-probability maps: the
    uniform mixture of test-time passes or ensemble members, itself valid logits for
    :func:`decode_logits` (its spread holds each pass's spread and their disagreement)."""
    if len(log_probs) == 1:
        return log_probs[0]
    return torch.logsumexp(torch.stack(list(log_probs)), 0) - math.log(len(log_probs))
