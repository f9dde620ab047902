"""Active learning support: one uncertainty score per image, and diversity selection.

Used by the MONAI Label app (scoring method) and by ``scripts/simulate_active_learning.py``, so
the server and the simulation measure the same way. :func:`image_uncertainty` runs a
:class:`~maht_net.inference.predictor.Predictor` built with MC-dropout and/or test-time shifts
(``mc_samples``, ``tta``) on one image, seeded, and condenses the per-landmark spread
(``uncertainty_px`` / ``uncertainty_mm``) into one score: the mean over the landmarks, in mm when
the spacing is known (the file's, the item's, or the predictor's ``default_spacing``), else in pixels.

Diversity: :func:`encoder_features` describes each film by the network's deepest encoder
features, and :func:`k_center_greedy` picks films far from everything already labelled (the
core-set strategy of Sener & Savarese, 2018); given a shortlist of uncertain films it is the
hybrid "uncertain, then diverse" selection.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

UNCERTAINTY_KEY = "maht_uncertainty"
"""Image-info key (MONAI Label datastore) holding the image's mean landmark uncertainty (a number)."""


def uncertainty_summary(pred: Mapping[str, Any]) -> dict[str, Any]:
    """``{"score", "unit", "mean", "max", "per_landmark"}`` from a prediction's uncertainties.

    ``score`` is the mean over landmarks of ``uncertainty_mm`` (``unit = "mm"``) when the
    prediction has a spacing, else of ``uncertainty_px`` (``unit = "px"``).
    """
    unit = "mm" if pred.get("spacing") else "px"
    key = f"uncertainty_{unit}"
    values = np.array([np.nan if r.get(key) is None else r[key] for r in pred["landmarks"]], dtype=float)
    finite = values[np.isfinite(values)]
    mean = float(finite.mean()) if len(finite) else float("nan")
    return {
        "score": mean,
        "unit": unit,
        "mean": mean,
        "max": float(finite.max()) if len(finite) else float("nan"),
        "per_landmark": [None if not np.isfinite(v) else round(float(v), 4) for v in values],
    }


def image_uncertainty(
    predictor: Any,
    item: Mapping[str, Any] | str | os.PathLike,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Predict one image with a seeded generator and summarise its uncertainty.

    The seed makes MC-dropout masks reproducible: the same model, image, ``mc_samples``, ``tta``
    and seed give the same score (up to floating-point noise across thread counts).

    Returns:
        ``(prediction, summary)`` (see :func:`uncertainty_summary`).

    Raises:
        InputError: the image cannot be read.
    """
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(int(seed))
        pred = predictor.predict([item])[0]
    finally:
        torch.random.set_rng_state(state)
    return pred, uncertainty_summary(pred)


def encoder_features(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` film descriptors: the deepest encoder feature map of ``(B, C_in, H, W)`` network
    inputs, averaged over space and L2-normalised (MAHT-Net's timm encoder, before the ViT).

    Raises:
        TypeError: the network has no ``encoder`` (e.g. the U-Net baseline or an ONNX session).
    """
    encoder = getattr(network, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"{type(network).__name__} has no 'encoder' module to describe films with")
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            features = encoder(images)[-1].mean((-2, -1))
    finally:
        network.train(was_training)
    return F.normalize(features.float(), dim=1)


def k_center_greedy(features: np.ndarray, labelled: Sequence[int], k: int, candidates: Sequence[int] | None = None) -> list[int]:
    """Greedy k-centre selection: ``k`` row indices of ``features`` ``(M, C)``, each the candidate
    farthest (Euclidean) from every labelled or already chosen row.

    Args:
        labelled: rows already labelled (may be empty: the first pick is then the candidate
            farthest from the candidates' mean).
        candidates: rows that may be chosen (default: every row not labelled).

    Returns:
        ``min(k, len(candidates))`` distinct candidate rows, in the order chosen.
    """
    x = np.asarray(features, dtype=np.float64)
    pool = [i for i in (range(len(x)) if candidates is None else candidates) if i not in set(labelled)]
    if not pool or k <= 0:
        return []
    centres = x[list(labelled)] if len(labelled) else x[pool].mean(0, keepdims=True)
    nearest = np.min(np.linalg.norm(x[pool][:, None] - centres[None], axis=-1), axis=1)
    chosen: list[int] = []
    for _ in range(min(k, len(pool))):
        j = int(np.argmax(nearest))
        chosen.append(pool[j])
        nearest = np.minimum(nearest, np.linalg.norm(x[pool] - x[pool[j]], axis=-1))
        nearest[j] = -np.inf
    return chosen
