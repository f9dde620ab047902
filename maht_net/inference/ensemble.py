"""Ensembles: average several checkpoints' heatmaps as one network (one recipe, checked)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from maht_net.codec.heatmaps import mix_log_probs, spatial_log_softmax
from maht_net.codec.uncertainty import CALIBRATION_KEY
from maht_net.errors import InputError
from maht_net.inference.predictor import load_model
from maht_net.io.checkpoint import PREPROCESSING_KEYS

ENSEMBLE_KEYS = (*PREPROCESSING_KEYS, "stride", "decoder")
"""Checkpoint-info fields every member of an ensemble must share."""


class EnsembleNetwork(nn.Module):
    """Mean of the members' spatial-softmax heatmaps, returned as log-probabilities ``(B, N, h, w)``.

    Members must share input size and output stride.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        strides = {int(getattr(m, "stride", 1)) for m in members}
        if len(strides) != 1:
            raise ValueError(f"ensemble members have different output strides {sorted(strides)}")
        self.stride = strides.pop()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [m(x) for m in self.members]
        return mix_log_probs([spatial_log_softmax(o["heatmaps"] if isinstance(o, Mapping) else o) for o in outputs])


def load_ensemble(checkpoints: Sequence[str | os.PathLike], device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """An :class:`EnsembleNetwork` of several checkpoints (e.g. the k fold models) and its inference spec.

    The members must share what preprocessing and decoding depend on (landmarks, input size,
    normalisation, stride, decoder). Their uncertainty calibrations do not describe the
    mixture, so the ensemble reports the raw spread (``uncertainty_calibration`` null).

    Raises:
        InputError: naming the first checkpoint that does not match the first one.
    """
    members, identities, info = [], [], None
    for path in checkpoints:
        network, member_info = load_model(path, device)
        identities.append(member_info["model"])
        if info is None:
            info = member_info
        else:
            differs = [k for k in ENSEMBLE_KEYS if member_info.get(k) != info.get(k)]
            if differs:
                raise InputError(path, f"cannot join the ensemble: its {', '.join(differs)} differ from {checkpoints[0]}'s")
        members.append(network)
    if info is None:
        raise ValueError("an ensemble needs at least one checkpoint")
    info = {k: v for k, v in info.items() if k != CALIBRATION_KEY}
    info["ensemble"] = [os.fspath(p) for p in checkpoints]
    info["model"] = {"ensemble": identities}
    return EnsembleNetwork(members).to(device).eval(), info
