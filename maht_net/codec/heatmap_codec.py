"""The heatmap codec: stride, target width and decoder of a network's heatmaps, in one object.

In the spirit of mmpose's codecs, :class:`HeatmapCodec` is the one place that turns landmarks into
training targets (:meth:`~HeatmapCodec.encode`, which the loss uses) and network output into
landmarks (:meth:`~HeatmapCodec.decode`, which inference and evaluation use). A checkpoint records
it under its ``stride``, ``sigma`` and ``decoder`` keys (:meth:`~HeatmapCodec.from_info`).

Coordinates: ``(x, y)`` network-input pixels on both sides; heatmap cells are input / ``stride``
(``maht_net.codec.heatmaps.input_to_heatmap`` / ``heatmap_to_input``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from maht_net.codec.heatmaps import DECODERS, DecodedLandmarks, decode_logits, gaussian_heatmaps, input_to_heatmap
from maht_net.io.checkpoint import CODEC_KEYS

__all__ = ["HeatmapCodec"]


@dataclass(frozen=True)
class HeatmapCodec:
    """Landmarks <-> heatmaps at one output stride.

    Args:
        stride: network output stride (heatmap cell = ``stride`` input pixels).
        sigma: standard deviation of the Gaussian targets, in input pixels.
        decoder: one of :data:`~maht_net.codec.heatmaps.DECODERS` (``"argmax"``, ``"soft_argmax"``, ``"dark"``).
        confidence_radius: radius in input pixels of the decoded ``confidence`` (the probability
            mass of the spatial softmax within it; see :func:`~maht_net.codec.heatmaps.decode_logits`).
    """

    stride: int = 4
    sigma: float = 2.0
    decoder: str = "dark"
    confidence_radius: float = 4.0

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"method must be one of {DECODERS}, got {self.decoder!r}")
        object.__setattr__(self, "stride", int(self.stride))
        object.__setattr__(self, "sigma", float(self.sigma))
        object.__setattr__(self, "confidence_radius", float(self.confidence_radius))

    @classmethod
    def from_info(cls, info: Mapping[str, Any], **overrides: Any) -> HeatmapCodec:
        """The codec a checkpoint's ``info`` records (``stride``, ``sigma``, ``decoder``)."""
        fields = {k: info[k] for k in CODEC_KEYS if k in info}
        return cls(**{**fields, **overrides})

    def info(self) -> dict[str, Any]:
        """The checkpoint-info fields of this codec."""
        return {"stride": self.stride, "sigma": self.sigma, "decoder": self.decoder}

    def at_stride(self, stride: int) -> HeatmapCodec:
        """The same targets and decoder on another grid (auxiliary heads)."""
        return self if int(stride) == self.stride else replace(self, stride=int(stride))

    def encode(self, landmarks: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """Gaussian targets (peak 1) ``(B, N, h, w)`` for ``(B, N, 2)`` ``(x, y)`` input-pixel landmarks.

        ``shape`` is the heatmap ``(h, w)``; NaN landmarks give all-zero maps.
        """
        return gaussian_heatmaps(input_to_heatmap(landmarks, self.stride), shape, self.sigma / self.stride)

    def decode(self, logits: torch.Tensor) -> DecodedLandmarks:
        """Landmarks in input pixels, with covariance, spread and confidence, from logits ``(B, N, h, w)``."""
        return decode_logits(torch.as_tensor(logits), self.stride, self.decoder, self.confidence_radius)
