"""MAHT-Net: cephalometric landmark detection on lateral skull X-rays.

The packages follow a film through the system, lowest layer first (``docs/architecture.md``):
``io`` (files, formats, checkpoint schema) < ``codec`` (heatmap encode/decode, uncertainty maths)
< ``clinical`` (measurements) < ``transforms`` < ``models`` < ``datasets`` < ``engine`` (training)
< ``inference`` < ``bench`` < ``cli``.

Subpackages load on first attribute access (``maht_net.engine``, ``maht_net.models``, ...), so
``import maht_net`` is cheap; bundle configs import the modules they name
(``$import maht_net.engine.handlers``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {
    "bench", "cli", "clinical", "codec", "datasets", "engine", "errors", "formatting", "inference", "io", "landmarks", "models",
    "progress", "transforms", "visualize",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
