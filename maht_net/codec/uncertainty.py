"""Landmark uncertainty: covariance ellipses and calibration of the predicted spread.

The decoder (:func:`maht_net.codec.heatmaps.decode_logits`) reports, per landmark, the second moments
of the network's probability map around the decoded point: a ``2 x 2`` covariance over
``(x, y)`` pixels (``covariance_px`` in a prediction) whose trace is the squared RMS radial
spread (``uncertainty_px``). Read as a Gaussian error model this says where the true landmark
probably is, but the raw map is not calibrated: on real films it over-states the error about
twofold (``docs/analysis.md``).

Calibration (:func:`fit_uncertainty_calibration`) is *sigma scaling* (Laves et al., MIDL 2020):
one factor ``s_k`` per landmark multiplies the spread (``s_k^2`` the covariance) so that the
calibrated spread is the expected RMS error: ``s^2 = mean(|e|^2 / u^2)`` over held-out
landmarks (``e`` true radial error, ``u`` raw spread), the maximum-likelihood scale of a
Gaussian error model. Each landmark's factor is shrunk towards the all-landmark factor with
``prior_strength`` pseudo-observations, because a validation split has few films. The fitted
record lives in the checkpoint info (``uncertainty_calibration``) and is applied by
:class:`~maht_net.transforms.targets.DecodeLandmarksd` wherever inference runs (CLI, bundle,
MONAI Label), for the inference mode it was fitted with (plain, MC-dropout or TTA).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from maht_net.io.predictions import prediction_uncertainty

__all__ = [
    "CHI2_2DOF_95",
    "CALIBRATION_KEY",
    "isotropic_covariance",
    "landmark_covariances",
    "ellipse_axes",
    "fit_uncertainty_calibration",
    "calibration_for",
]

logger = logging.getLogger(__name__)

CHI2_2DOF_95 = -2.0 * math.log(0.05)
"""95 % quantile of chi-square with 2 degrees of freedom (5.99): the 95 % region of a 2-D
Gaussian with covariance ``C`` is ``d^T C^-1 d <= CHI2_2DOF_95``."""

CALIBRATION_KEY = "uncertainty_calibration"
"""Key of the calibration record in a checkpoint's info and in a prediction document."""


def isotropic_covariance(uncertainty_px: np.ndarray) -> np.ndarray:
    """``(N, 2, 2)`` covariance of an isotropic Gaussian whose RMS radial spread is ``uncertainty_px``
    (per-axis variance ``u^2 / 2``); NaN where the spread is unknown."""
    u = np.asarray(uncertainty_px, dtype=float)
    return (u**2 / 2.0)[..., None, None] * np.eye(2)


def landmark_covariances(pred: Mapping[str, Any]) -> np.ndarray:
    """``(N, 2, 2)`` covariance over ``(x, y)`` px of each landmark of a prediction document.

    Uses ``covariance_px`` when present, else the isotropic covariance of ``uncertainty_px``
    (older predictions); NaN where neither is known.
    """
    covariance = isotropic_covariance(prediction_uncertainty(pred))
    for k, r in enumerate(pred["landmarks"]):
        if r.get("covariance_px") is not None:
            covariance[k] = np.asarray(r["covariance_px"], dtype=float)
    return covariance


def ellipse_axes(covariance: np.ndarray, chi2: float = CHI2_2DOF_95) -> tuple[float, float, float]:
    """Semi-axes and orientation of the region ``d^T C^-1 d <= chi2`` of one ``(2, 2)`` covariance.

    Returns:
        ``(semi_major, semi_minor, angle_deg)`` in the covariance's pixels; ``angle_deg`` is the
        major axis' direction from ``+x`` towards ``+y`` (clockwise on screen, since y grows
        downward), as matplotlib's ``Ellipse(angle=...)`` takes it in data coordinates.
    """
    values, vectors = np.linalg.eigh(np.asarray(covariance, dtype=float))
    values = np.clip(values, 0.0, None)
    major = vectors[:, 1]
    return float(np.sqrt(chi2 * values[1])), float(np.sqrt(chi2 * values[0])), float(np.degrees(np.arctan2(major[1], major[0])))


def fit_uncertainty_calibration(
    pred_points: np.ndarray,
    uncertainty_px: np.ndarray,
    truth_points: np.ndarray,
    landmark_names: Sequence[str],
    prior_strength: float = 10.0,
) -> dict[str, Any]:
    """Sigma-scaling factors from held-out predictions (see the module docstring).

    Args:
        pred_points, truth_points: ``(B, N, 2)`` ``(x, y)`` pixels of the same images (NaN = missing).
        uncertainty_px: ``(B, N)`` raw RMS radial spread in the same pixels.
        landmark_names: the ``N`` names (stored with the factors, checked when applied).
        prior_strength: pseudo-observations pulling each landmark's factor towards the common one.

    Returns:
        The calibration record: ``{"method": "sigma_scaling", "scale": [N factors],
        "common_scale", "landmark_names", "prior_strength", "n_landmarks", "n_images",
        "raw_rms_spread_px", "actual_rms_error_px"}``.

    Raises:
        ValueError: fewer than 2 landmarks with an error and a positive spread.
    """
    pred, truth = np.asarray(pred_points, dtype=float), np.asarray(truth_points, dtype=float)
    u = np.asarray(uncertainty_px, dtype=float)
    if pred.shape != truth.shape or pred.shape[:-1] != u.shape or pred.shape[1] != len(landmark_names):
        raise ValueError(f"shapes disagree: points {pred.shape}, truth {truth.shape}, uncertainty {u.shape}, {len(landmark_names)} names")
    err2 = np.sum((pred - truth) ** 2, -1)
    ok = np.isfinite(err2) & np.isfinite(u) & (u > 0)
    if ok.sum() < 2:
        raise ValueError("need at least 2 landmarks with a true error and a positive predicted spread to calibrate")
    ratio = np.where(ok, err2 / np.where(ok, u, 1.0) ** 2, 0.0)
    common = float(ratio[ok].mean())
    n_k = ok.sum(0)
    per_landmark = (ratio.sum(0) + prior_strength * common) / (n_k + prior_strength)
    return {
        "method": "sigma_scaling",
        "scale": [float(math.sqrt(v)) for v in per_landmark],
        "common_scale": math.sqrt(common),
        "landmark_names": list(landmark_names),
        "prior_strength": float(prior_strength),
        "n_landmarks": int(ok.sum()),
        "n_images": int(ok.any(1).sum()),
        "raw_rms_spread_px": float(np.sqrt(np.mean(u[ok] ** 2))),
        "actual_rms_error_px": float(np.sqrt(np.mean(err2[ok]))),
    }


def calibration_for(info: Mapping[str, Any], mc_samples: int = 0, tta: bool = False) -> dict[str, Any] | None:
    """The checkpoint's calibration record if it was fitted for this inference mode, else ``None``.

    MC-dropout and test-time shifts widen the decoded spread (it then includes the disagreement
    between passes), so factors fitted on plain passes would not fit them; in that case the
    uncertainty is reported raw and a warning says so.
    """
    record = info.get(CALIBRATION_KEY)
    if not record:
        return None
    if (int(record.get("mc_samples", 0)), bool(record.get("tta", False))) != (int(mc_samples), bool(tta)):
        logger.warning(
            "uncertainty calibration was fitted with mc_samples=%s, tta=%s; this run uses mc_samples=%s, tta=%s: "
            "uncertainties are reported uncalibrated (run 'maht-net calibrate' with these settings)",
            record.get("mc_samples", 0), record.get("tta", False), mc_samples, tta,
        )
        return None
    if list(record.get("landmark_names", [])) != list(info.get("landmark_names", [])):
        raise ValueError("uncertainty calibration names other landmarks than the checkpoint")
    return dict(record)


