"""Network registry: ``create_network(name, **kwargs)`` is the one entry point, as in timm."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

__all__ = ["CONV_MEMORY_FORMAT", "register_network", "create_network", "list_networks"]

CONV_MEMORY_FORMAT = torch.channels_last
"""The memory format MAHT-Net and the refinement network keep their convolution weights in (so
their activations follow): channels-last runs a training step 1.3 x faster on 2 CPU cores (oneDNN)
and the first stage's batch-1 inference 1.2 x (docs/benchmarks.md, "Channels-last"). Their
outputs are returned contiguous. The U-Net baseline (MONAI ``BasicUNet``) stays contiguous: it is
1.4 x slower in channels-last."""

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_network(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a constructor under ``name`` (lower case, unique)."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"network {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_networks() -> list[str]:
    return sorted(_REGISTRY)


def create_network(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered network, e.g. ``create_network("maht_net", num_landmarks=19)``.

    Every network takes ``(B, in_channels, H, W)`` and returns heatmap logits
    ``(B, num_landmarks, H / s, W / s)`` in eval mode, where ``s = network.stride``.
    """
    try:
        fn = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; available: {list_networks()}") from None
    return fn(**kwargs)
