"""Helpers the MONAI bundle configs call: where the bundle is, and which datalist to use."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from .errors import InputError

__all__ = ["default_bundle_root", "resolve_datalist", "make_optimizer"]

logger = logging.getLogger("maht_net.bundle")


def default_bundle_root() -> str:
    """The folder holding ``configs/`` of the bundle being run.

    ``python -m monai.bundle run ... --config_file X/configs/train.json`` runs from any working
    directory; the bundle root is then ``X``, taken from the command line, so outputs land in
    the bundle (``X/models``, ``X/eval``) rather than wherever the command was typed. Without
    such a command line (Python API), the working directory is used, as in model-zoo bundles;
    pass ``bundle_root=...`` to override.
    """
    argv = sys.argv
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--config_file" and i + 1 < len(argv) else arg.split("=", 1)[1] if arg.startswith("--config_file=") else None
        if value:
            first = value.strip("[]'\" ").split(",")[0].strip("'\" ")
            configs = Path(first).absolute().parent
            return str(configs.parent if configs.name == "configs" else configs)
    return os.getcwd()


def resolve_datalist(datalist: str | None, phantom_dir: str, phantom_n: int = 100, phantom_seed: int = 0) -> str:
    """The datalist to train on: ``datalist`` when given (it must exist), else the embedded
    phantom set in ``phantom_dir``, generated on first use."""
    if datalist:
        if not Path(datalist).is_file():
            raise InputError(datalist, "datalist not found")
        return str(Path(datalist).absolute())
    from .phantom import ensure_phantom_dataset

    path = ensure_phantom_dataset(phantom_dir, n=int(phantom_n), seed=int(phantom_seed))
    logger.info("using the phantom datalist %s", path)
    return str(path)


def make_optimizer(network, lr: float, weight_decay: float = 1e-4):
    """AdamW over the network's parameter groups (encoder first, for differential LRs), or
    over all parameters for networks without groups."""
    import torch

    params = network.parameter_groups(lr, 1.0) if hasattr(network, "parameter_groups") else network.parameters()
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
