"""The refinement network: one small patch encoder-decoder shared by every landmark, one head per landmark.

The second stage sees, for each landmark, a patch of the film around its first-stage estimate
(:class:`maht_net.codec.patches.PatchCodec`). Anatomy near the 19 landmarks differs, but edges,
corners and cortical outlines are common to all, so the features are shared (19 times the
training data per weight) and only the last layers, which decide *which* edge is the landmark,
are per landmark (grouped 1x1 convolutions: landmark ``l``'s head reads only patch ``l``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from maht_net.models.registry import CONV_MEMORY_FORMAT, register_network

__all__ = ["RefineNet"]


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class RefineNet(nn.Module):
    """Patch heatmaps for every landmark.

    Args:
        num_landmarks: ``N``, patches per film and output channels.
        channels: encoder widths at patch strides 1, 2, 4, 8.
        decoder_channels: width of the (FPN-style) decoder and of each landmark's features.
        head_channels: hidden width of each landmark's head.
        output_stride: 1 or 2: the heatmaps are ``1/output_stride`` of the patch.
        dropout: dropout on the decoder features before the heads (also used for MC-dropout).

    Notes:
        Input ``(B, N, P, P)``: channel ``l`` is the patch around landmark ``l`` (``P`` divisible
        by 8). Output logits ``(B, N, P/s, P/s)``: channel ``l`` is landmark ``l``'s heatmap in
        its own patch. Each patch runs through the shared encoder-decoder as one image of a
        ``B * N`` batch.
    """

    def __init__(
        self,
        num_landmarks: int = 19,
        channels: Sequence[int] = (16, 24, 48, 64),
        decoder_channels: int = 24,
        head_channels: int = 16,
        output_stride: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if output_stride not in (1, 2):
            raise ValueError(f"Argument `output_stride` must be 1 or 2, got {output_stride}.")
        if len(channels) != 4:
            raise ValueError(f"Argument `channels` must give 4 widths (strides 1, 2, 4, 8), got {list(channels)}.")
        c, d, n = [int(v) for v in channels], int(decoder_channels), int(num_landmarks)
        self.stem = _conv(1, c[0])
        self.down = nn.ModuleList(nn.Sequential(_conv(c[i], c[i + 1], stride=2), _conv(c[i + 1], c[i + 1])) for i in range(3))
        self.levels = [0, 1, 2, 3] if output_stride == 1 else [1, 2, 3]
        self.lateral = nn.ModuleList(nn.Conv2d(c[i], d, 1) for i in self.levels)
        self.smooth = nn.ModuleList(_conv(d, d) for _ in self.levels[:-1])
        self.dropout = nn.Dropout2d(dropout)
        self.head = nn.Sequential(
            nn.Conv2d(n * d, n * head_channels, 1, groups=n),
            nn.ReLU(inplace=True),
            nn.Conv2d(n * head_channels, n, 1, groups=n),
        )
        self.num_landmarks = n
        self.in_channels = 1
        self.input_channels = n  # the network's input is (B, N, P, P): one patch per landmark
        self.stride = int(output_stride)
        self.config = {
            "num_landmarks": n, "channels": c, "decoder_channels": d,
            "head_channels": int(head_channels), "output_stride": self.stride, "dropout": float(dropout),
        }  # fmt: skip
        self.to(memory_format=CONV_MEMORY_FORMAT)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        b, n, p, q = patches.shape
        if n != self.num_landmarks:
            raise ValueError(f"expected {self.num_landmarks} patches per film, got {n}")
        x = self.stem(patches.reshape(b * n, 1, p, q))
        feats = [x]
        for block in self.down:
            x = block(x)
            feats.append(x)
        feats = [feats[i] for i in self.levels]
        y = self.lateral[-1](feats[-1])
        for j in range(len(feats) - 2, -1, -1):
            skip = self.lateral[j](feats[j])
            y = self.smooth[j](skip + F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False))
        h, w = y.shape[-2:]
        y = self.dropout(y).reshape(b, n * y.shape[1], h, w)
        return self.head(y).contiguous()


@register_network("refine_net")
def refine_net(**kwargs: Any) -> RefineNet:
    """The refinement network (encoder widths 16-24-48-64, 24-wide decoder, output stride 2)."""
    return RefineNet(**kwargs)


@register_network("refine_net_small")
def refine_net_small(**kwargs: Any) -> RefineNet:
    """A smaller refinement network (widths 8-16-24-32, 16-wide decoder, 8-wide heads)."""
    defaults: dict[str, Any] = dict(channels=(8, 16, 24, 32), decoder_channels=16, head_channels=8)
    return RefineNet(**{**defaults, **kwargs})
