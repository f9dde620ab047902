"""U-Net heatmap baseline behind the same interface as MAHT-Net (MONAI ``BasicUNet``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.networks.nets import BasicUNet

from maht_net.models.registry import register_network

__all__ = ["UNetHeatmap"]


class UNetHeatmap(nn.Module):
    """MONAI ``BasicUNet`` producing full-resolution heatmap logits ``(B, N, H, W)`` (stride 1).

    Args:
        features: the six BasicUNet widths (encoder levels, then the last decoder level).
        dropout: dropout in the U-Net blocks (also enables MC-dropout).
    """

    def __init__(
        self,
        num_landmarks: int = 19,
        in_channels: int = 1,
        features: Sequence[int] = (16, 32, 64, 128, 256, 16),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.unet = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=num_landmarks, features=tuple(features), dropout=dropout)
        self.num_landmarks = num_landmarks
        self.in_channels = in_channels
        self.stride = 1
        self.config = {"num_landmarks": num_landmarks, "in_channels": in_channels, "features": list(features), "dropout": dropout}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x)


@register_network("unet")
def unet(**kwargs: Any) -> UNetHeatmap:
    return UNetHeatmap(**kwargs)
