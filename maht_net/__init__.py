"""MAHT-Net: cephalometric landmark detection on lateral skull X-rays.

Submodules load on first attribute access (``maht_net.data``, ``maht_net.networks``, ...), so
``import maht_net`` is cheap and bundle configs can write ``$maht_net.engine.X`` after a single
``$import maht_net``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {
    "active_learning", "analysis", "audit", "benchmark", "bundle_support", "cli", "data", "datalist", "engine", "errors",
    "evaluation", "export", "heatmaps", "inference", "io", "labels", "landmarks", "losses", "metrics", "networks",
    "phantom", "readers", "report", "robustness", "transforms", "uncertainty", "visualize",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
