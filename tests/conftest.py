"""Shared fixtures. Tests that need the real Hamedan films are marked ``hamedan`` and skip when
``../shared/data/hamedan-ceph`` (or ``$MAHT_NET_HAMEDAN``) is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
HAMEDAN_DIR = Path(os.environ.get("MAHT_NET_HAMEDAN", REPO_ROOT.parent / "shared" / "data" / "hamedan-ceph"))
HAMEDAN_SPACING_MM = 0.127  # nominal, from the ruler on case 001 (see the data set's README)


@pytest.fixture(scope="session")
def hamedan_dir() -> Path:
    if not (HAMEDAN_DIR / "images").is_dir():
        pytest.skip(f"Hamedan cephalograms not found at {HAMEDAN_DIR}")
    return HAMEDAN_DIR


@pytest.fixture(scope="session")
def hamedan_spacing_mm() -> float:
    return HAMEDAN_SPACING_MM


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained ``maht_net_small`` (64x96 input) in the bundle checkpoint format."""
    import torch

    from maht_net.io.checkpoint import CheckpointInfo
    from maht_net.models import create_network

    torch.manual_seed(0)
    net = create_network("maht_net_small", num_landmarks=19)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    info = CheckpointInfo(network="maht_net_small", input_size=(64, 96)).state_dict()
    torch.save({"model": net.state_dict(), "info": info}, path)
    return path
