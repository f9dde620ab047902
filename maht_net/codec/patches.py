"""The refinement stage's codec: film <-> patch coordinates, patch sampling, patch heatmaps.

The second (refinement) stage looks at the film near its full resolution in a ``P x P`` patch
around each first-stage landmark. :class:`PatchCodec` is the one place that knows where a patch
lies on the film: it samples the patches (:meth:`~PatchCodec.sample`), makes the training targets
(:meth:`~PatchCodec.encode`) and turns the refinement network's logits back into film pixels
(:meth:`~PatchCodec.decode`), so sampling, targets and decoding cannot drift apart.

Notes:
    Points are ``(x, y)`` (x = column, y = row), pixel centres at integer coordinates.

    - **Film pixels**: the image as read from its file (see ``docs/architecture.md``), spacing
      ``(sx, sy)`` mm/px. When the file states none, :meth:`PatchCodec.resolve_spacing` estimates
      it from the size of the anatomy (the first stage's landmarks against ``landmark_rms_mm``),
      else takes ``default_spacing``.
    - **Patch pixels** ``(u, v)``: a ``P x P`` grid axis-aligned with the film, ``mm_per_px``
      millimetres per pixel along both axes (physical units: the same anatomy covers the same
      patch area on films of any spacing). The patch of a landmark is centred on its
      first-stage estimate ``c``; its centre pixel coordinate is ``(P - 1) / 2``. With
      ``k = mm_per_px / spacing`` film pixels per patch pixel::

          film = c + (patch - (P - 1) / 2) * k        patch = (film - c) / k + (P - 1) / 2

    - **Patch heatmap cells**: patch / ``stride`` (:class:`~maht_net.codec.heatmap_codec.HeatmapCodec`
      with the same ``input_to_heatmap`` convention as the first stage).

    Shapes: ``centres`` ``(B, N, 2)`` film pixels (one patch per landmark), ``spacing`` ``(B, 2)``
    ``(sx, sy)`` mm/px (NaN = unknown), patches ``(B, N, P, P)``, logits ``(B, N, P/s, P/s)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from maht_net.codec.heatmap_codec import HeatmapCodec
from maht_net.codec.heatmaps import DecodedLandmarks
from maht_net.io.checkpoint import PATCH_CODEC_KEYS

__all__ = ["PatchCodec", "DEFAULT_FILM_SPACING", "MIN_SCALE_LANDMARKS", "landmark_rms", "landmark_rms_mm"]

DEFAULT_FILM_SPACING = 0.1
"""mm per film pixel assumed when a film's spacing is unknown (ISBI 2015's 0.1 mm/px; most
cephalostats' detectors are 0.1-0.15 mm/px)."""

MIN_SCALE_LANDMARKS = 5
"""Fewest finite landmarks from which a film's scale is estimated (:meth:`PatchCodec.resolve_spacing`)."""


def landmark_rms(points: torch.Tensor) -> torch.Tensor:
    """RMS distance of each film's finite points ``(B, N, 2)`` from their centroid ``(B,)``, in the
    points' unit (NaN for a film with fewer than :data:`MIN_SCALE_LANDMARKS` finite points)."""
    points = torch.as_tensor(points, dtype=torch.float64)
    ok = torch.isfinite(points).all(-1)  # (B, N)
    n = ok.sum(-1)
    p = torch.where(ok[..., None], points, torch.zeros_like(points))
    centroid = p.sum(1) / n.clamp_min(1)[:, None]
    sq = torch.where(ok, ((p - centroid[:, None]) ** 2).sum(-1), torch.zeros_like(ok, dtype=points.dtype))
    rms = (sq.sum(-1) / n.clamp_min(1)).sqrt()
    return torch.where(n >= MIN_SCALE_LANDMARKS, rms, torch.full_like(rms, float("nan")))


def landmark_rms_mm(landmarks: Sequence[torch.Tensor], spacings: Sequence[torch.Tensor]) -> float | None:
    """Mean over films of :func:`landmark_rms` in mm: ``landmarks`` ``(N, 2)`` film pixels and
    ``spacing`` ``(2,)`` mm/px each; films of unknown spacing or with missing landmarks are skipped
    (a partial set has another RMS). ``None`` when no film qualifies."""
    sizes = []
    for points, spacing in zip(landmarks, spacings, strict=True):
        points, spacing = torch.as_tensor(points, dtype=torch.float64), torch.as_tensor(spacing, dtype=torch.float64).reshape(2)
        if torch.isfinite(points).all() and torch.isfinite(spacing).all() and (spacing > 0).all():
            sizes.append(float(landmark_rms((points * spacing)[None])[0]))
    sizes = [s for s in sizes if math.isfinite(s)]
    return float(sum(sizes) / len(sizes)) if sizes else None


@dataclass(frozen=True)
class PatchCodec:
    """Patches around first-stage landmarks and their heatmaps.

    Args:
        patch_size: ``P``, the side of the square patch in patch pixels.
        mm_per_px: the patch's physical resolution; the field of view is ``P * mm_per_px`` mm.
        stride: the refinement network's output stride (heatmap cell = ``stride`` patch pixels).
        sigma: std of the Gaussian targets in patch pixels.
        decoder: heatmap decoder (``"dark"``, ``"soft_argmax"``, ``"argmax"``).
        default_spacing: mm per film pixel when a film's spacing is unknown and cannot be
            estimated (no ``landmark_rms_mm``, or fewer than :data:`MIN_SCALE_LANDMARKS` points).
        landmark_rms_mm: the RMS distance of a film's landmarks from their centroid, in mm, on
            the training films (:func:`landmark_rms_mm`; ``None``: unknown, e.g. a stage trained
            before it was recorded). A film of unknown spacing is then taken to show anatomy of
            this size: spacing = ``landmark_rms_mm`` / the RMS distance of its landmarks in pixels.

    Raises:
        ValueError: ``patch_size`` is not a positive multiple of ``stride``, or a non-positive
            ``mm_per_px``/``default_spacing``/``landmark_rms_mm``.
    """

    patch_size: int = 64
    mm_per_px: float = 0.2
    stride: int = 2
    sigma: float = 2.0
    decoder: str = "dark"
    default_spacing: float = DEFAULT_FILM_SPACING
    landmark_rms_mm: float | None = None

    def __post_init__(self) -> None:
        if self.landmark_rms_mm is not None:
            object.__setattr__(self, "landmark_rms_mm", float(self.landmark_rms_mm))
            if not self.landmark_rms_mm > 0:
                raise ValueError(f"Argument `landmark_rms_mm` must be positive or None, got {self.landmark_rms_mm}.")
        object.__setattr__(self, "patch_size", int(self.patch_size))
        object.__setattr__(self, "stride", int(self.stride))
        for name in ("mm_per_px", "sigma", "default_spacing"):
            object.__setattr__(self, name, float(getattr(self, name)))
            if getattr(self, name) <= 0:
                raise ValueError(f"Argument `{name}` must be positive, got {getattr(self, name)}.")
        if self.stride < 1 or self.patch_size < self.stride or self.patch_size % self.stride:
            raise ValueError(f"Argument `patch_size` must be a positive multiple of `stride`, got {self.patch_size} and {self.stride}.")
        HeatmapCodec(self.stride, self.sigma, self.decoder)  # validates the decoder

    # ---- checkpoint ---------------------------------------------------------------------------
    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> PatchCodec:
        """The codec a refinement stage's ``info`` records (:data:`~maht_net.io.checkpoint.PATCH_CODEC_KEYS`)."""
        return cls(**{k: info[k] for k in PATCH_CODEC_KEYS if k in info})

    def info(self) -> dict[str, Any]:
        """The checkpoint-info fields of this codec."""
        return {k: getattr(self, k) for k in PATCH_CODEC_KEYS}

    @property
    def heatmap_codec(self) -> HeatmapCodec:
        """Patch pixels <-> patch heatmap cells (targets and decoding)."""
        return HeatmapCodec(self.stride, self.sigma, self.decoder, confidence_radius=max(1.0, 1.0 / self.mm_per_px))

    @property
    def field_mm(self) -> float:
        """Side of the patch in mm."""
        return self.patch_size * self.mm_per_px

    @property
    def heatmap_size(self) -> int:
        return self.patch_size // self.stride

    # ---- coordinates --------------------------------------------------------------------------
    def film_spacing(self, spacing: torch.Tensor | Sequence | None, batch: int = 1) -> torch.Tensor:
        """``(B, 2)`` float64 mm/px of the films: ``spacing`` with NaN/``None`` -> ``default_spacing``."""
        if spacing is None:
            return torch.full((batch, 2), self.default_spacing, dtype=torch.float64)
        sp = torch.as_tensor(spacing, dtype=torch.float64).reshape(-1, 2)
        sp = torch.where(torch.isfinite(sp) & (sp > 0), sp, torch.full_like(sp, self.default_spacing))
        return sp.expand(batch, 2) if sp.shape[0] == 1 else sp

    def resolve_spacing(self, spacing: torch.Tensor | Sequence | None, centres: torch.Tensor) -> torch.Tensor:
        """``(B, 2)`` float64 mm/px of ``B`` films whose landmarks lie near ``centres`` ``(B, N, 2)``
        film pixels (NaN where unknown): a known ``spacing`` as it is; an unknown one (NaN/``None``)
        estimated from the size of the anatomy when :attr:`landmark_rms_mm` is recorded and at
        least :data:`MIN_SCALE_LANDMARKS` centres are finite, else ``default_spacing``.

        Why: a patch must show the anatomy at the scale the network was trained on; PNG/JPEG films
        state no spacing, and assuming ``default_spacing`` (0.1 mm/px) shows a 0.127 mm/px film's
        anatomy 27 % too large. Skull size varies about 6 % between patients (the estimate's error).
        """
        raw, known, estimate = self._spacing_candidates(spacing, centres)
        return self.film_spacing(torch.where(known, raw, estimate), raw.shape[0])

    def spacing_sources(self, spacing: torch.Tensor | Sequence | None, centres: torch.Tensor) -> list[str]:
        """Per film, where :meth:`resolve_spacing` takes its mm/px from: ``"given"`` (``spacing``:
        the file's, or one the user stated), ``"estimated"`` (the anatomy's size) or ``"default"``."""
        _, known, estimate = self._spacing_candidates(spacing, centres)
        return ["given" if k.all() else "estimated" if torch.isfinite(e).all() else "default" for k, e in zip(known, estimate)]

    def _spacing_candidates(self, spacing: torch.Tensor | Sequence | None, centres: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(B, 2)`` stated spacing, whether it is known, and the estimate from ``centres`` (NaN:
        none, too few points, or no :attr:`landmark_rms_mm`)."""
        centres = torch.as_tensor(centres, dtype=torch.float64)
        b = centres.shape[0]
        nan = torch.full((b, 2), float("nan"), dtype=torch.float64)
        raw = nan if spacing is None else torch.as_tensor(spacing, dtype=torch.float64).reshape(-1, 2).expand(b, 2)
        known = torch.isfinite(raw) & (raw > 0)
        estimate = nan if self.landmark_rms_mm is None else (self.landmark_rms_mm / landmark_rms(centres))[:, None].expand(b, 2)
        return raw, known, torch.where(torch.isfinite(estimate) & (estimate > 0), estimate, nan)

    def scale(self, spacing: torch.Tensor | Sequence | None, batch: int = 1) -> torch.Tensor:
        """``(B, 1, 2)`` film pixels per patch pixel, ``k = mm_per_px / spacing`` per axis."""
        return (self.mm_per_px / self.film_spacing(spacing, batch))[:, None, :]

    def film_to_patch(self, points: torch.Tensor, centres: torch.Tensor, spacing: torch.Tensor | Sequence | None) -> torch.Tensor:
        """``(B, N, 2)`` film pixels -> patch pixels of the patches centred at ``centres``."""
        points, centres = torch.as_tensor(points, dtype=torch.float64), torch.as_tensor(centres, dtype=torch.float64)
        return (points - centres) / self.scale(spacing, centres.shape[0]) + (self.patch_size - 1) / 2

    def patch_to_film(self, points: torch.Tensor, centres: torch.Tensor, spacing: torch.Tensor | Sequence | None) -> torch.Tensor:
        """``(B, N, 2)`` patch pixels of the patches centred at ``centres`` -> film pixels."""
        points, centres = torch.as_tensor(points, dtype=torch.float64), torch.as_tensor(centres, dtype=torch.float64)
        return centres + (points - (self.patch_size - 1) / 2) * self.scale(spacing, centres.shape[0])

    def check_shift(self, shift_mm: float) -> float:
        """``shift_mm`` as a float, if a shifted patch still holds its centre (``0 <= shift_mm <``
        half the field).

        Raises:
            ValueError: otherwise.
        """
        if not 0 <= float(shift_mm) < self.field_mm / 2:
            raise ValueError(f"Argument `shift_mm` must be in [0, {self.field_mm / 2:g}) mm (half the patch field), got {shift_mm}.")
        return float(shift_mm)

    def shifts(self, spacing: torch.Tensor | Sequence | None, shift_mm: float, batch: int = 1) -> torch.Tensor:
        """``(K, B, 1, 2)`` film-pixel offsets of the patch centres of test-time shifted patches for
        films of ``spacing`` (``(B, 2)`` mm/px): ``K = 1`` (no offset) for ``shift_mm`` 0, else
        ``K = 5``: none, and ``shift_mm`` along -x, +x, -y, +y."""
        directions = torch.tensor([[0.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]], dtype=torch.float64)
        mm = directions[: 1 if self.check_shift(shift_mm) == 0 else None] * shift_mm
        return (mm[:, None, :] / self.film_spacing(spacing, batch)[None])[:, :, None, :]

    # ---- sampling -----------------------------------------------------------------------------
    def sample(self, film: torch.Tensor, centres: torch.Tensor, spacing: torch.Tensor | Sequence | None = None) -> torch.Tensor:
        """The ``(N, P, P)`` patches of one film around ``centres`` ``(N, 2)`` film pixels.

        One batched bilinear ``grid_sample`` for all ``N`` patches; outside the film reads 0.
        When a patch pixel covers more than one film pixel (``k > 1``, e.g. 0.2 mm patches of
        a 0.1 mm film), each is the mean of ``ceil(k) x ceil(k)`` bilinear samples spread over
        it (a box filter against aliasing).

        Args:
            film: ``(H, W)`` or ``(1, H, W)`` film, already intensity-normalised.
            centres: ``(N, 2)`` ``(x, y)`` film pixels.
            spacing: ``(sx, sy)`` mm/px of the film, or ``None``/NaN for ``default_spacing``.
        """
        img = torch.as_tensor(film)
        img = img.reshape(img.shape[-2:]) if img.ndim == 3 and img.shape[0] == 1 else img
        if img.ndim != 2:
            raise ValueError(f"Argument `film` must be (H, W) or (1, H, W), got {tuple(torch.as_tensor(film).shape)}.")
        c = torch.as_tensor(centres, dtype=torch.float64).reshape(-1, 2)
        n, p = c.shape[0], self.patch_size
        k = self.scale(spacing)[0, 0]  # (2,)
        sub = max(1, math.ceil(float(k.max()) - 1e-6))
        # sub-sample positions in patch pixels: u + (j + 0.5) / sub - 0.5
        grid_1d = (torch.arange(p * sub, dtype=torch.float64) + 0.5) / sub - 0.5 - (p - 1) / 2
        gx = c[:, 0, None] + grid_1d[None, :] * k[0]  # (N, P*sub) film x
        gy = c[:, 1, None] + grid_1d[None, :] * k[1]
        h, w = img.shape
        nx, ny = (2 * gx + 1) / w - 1, (2 * gy + 1) / h - 1  # align_corners=False normalisation
        grid = torch.stack(torch.broadcast_tensors(nx[:, None, :], ny[:, :, None]), -1)  # (N, Ps, Ps, 2)
        grid = grid.reshape(1, n * p * sub, p * sub, 2).to(torch.float32)
        out = F.grid_sample(img[None, None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out = out.reshape(n, 1, p * sub, p * sub)
        if sub > 1:
            out = F.avg_pool2d(out, sub)
        return out[:, 0]

    def sample_batch(self, films: Sequence[torch.Tensor], centres: torch.Tensor, spacing: torch.Tensor | Sequence | None = None) -> torch.Tensor:
        """``(B, N, P, P)`` patches of ``B`` films (of any sizes) around ``centres`` ``(B, N, 2)``."""
        sp = self.film_spacing(spacing, len(films))
        return torch.stack([self.sample(f, c, s) for f, c, s in zip(films, torch.as_tensor(centres), sp, strict=True)])

    # ---- targets and decoding -----------------------------------------------------------------
    def encode(self, points: torch.Tensor, centres: torch.Tensor, spacing: torch.Tensor | Sequence | None) -> torch.Tensor:
        """Gaussian targets ``(B, N, P/s, P/s)`` (peak 1) for film-pixel ``points`` ``(B, N, 2)`` in
        the patches around ``centres``; NaN points give all-zero maps."""
        uv = self.film_to_patch(points, centres, spacing).float()
        return self.heatmap_codec.encode(uv, (self.heatmap_size, self.heatmap_size))

    def decode(self, logits: torch.Tensor, centres: torch.Tensor, spacing: torch.Tensor | Sequence | None) -> DecodedLandmarks:
        """Landmarks in film pixels from the patch logits ``(B, N, P/s, P/s)``.

        ``points`` ``(B, N, 2)`` float64 film pixels; ``covariance`` ``(B, N, 2, 2)`` over film
        ``(x, y)`` pixels (the patch covariance times ``k k^T``, patch axes being film axes);
        ``confidence`` the softmax mass within 1 mm (at least one patch pixel) of the point.
        """
        decoded = self.heatmap_codec.decode(logits)
        centres = torch.as_tensor(centres, dtype=torch.float64)
        k = self.scale(spacing, centres.shape[0]).to(decoded.covariance.dtype)  # (B, 1, 2)
        covariance = decoded.covariance * k[..., :, None] * k[..., None, :]
        return DecodedLandmarks(self.patch_to_film(decoded.points, centres, spacing), decoded.confidence, covariance)
