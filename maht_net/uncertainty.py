"""Landmark uncertainty: covariance ellipses and calibration of the predicted spread.

The decoder (:func:`maht_net.heatmaps.decode_logits`) reports, per landmark, the second moments
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

import argparse
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError
from .io.predictions import prediction_uncertainty

__all__ = [
    "CHI2_2DOF_95",
    "CALIBRATION_KEY",
    "isotropic_covariance",
    "landmark_covariances",
    "ellipse_axes",
    "fit_uncertainty_calibration",
    "calibration_for",
    "calibrate_checkpoint",
    "calibrate_after_training",
    "register",
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


def calibrate_checkpoint(
    checkpoint: str | os.PathLike,
    datalist: str | os.PathLike,
    section: str = "validation",
    out: str | os.PathLike | None = None,
    base_dir: str | os.PathLike | None = None,
    mc_samples: int = 0,
    tta: bool = False,
    prior_strength: float = 10.0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Fit the calibration on a datalist section and store it in the checkpoint's info.

    Predicts the section's images without calibration, fits :func:`fit_uncertainty_calibration`
    and writes the checkpoint (to ``out``, default in place) atomically with
    ``info["uncertainty_calibration"]`` set. Only the chosen section is read, so calibrating on
    ``validation`` never touches the test films.

    Returns:
        The record written (also holding ``section``, ``mc_samples``, ``tta`` and ``date``).

    Raises:
        InputError: unreadable checkpoint/datalist, or a section without enough landmarks.
    """
    from .datalist import load_datalist
    from .engine import load_checkpoint_file
    from .inference import Predictor, load_model
    from .io.atomic import atomic_write
    from .io.predictions import prediction_points

    network, info = load_model(checkpoint, device)
    items = [it for it in load_datalist(datalist, section, base_dir=base_dir, landmark_set=info["landmark_set"], check_files=True) if it.get("landmarks") is not None]
    if not items:
        raise InputError(datalist, f"section {section!r} has no image with landmarks to calibrate on")
    preds = Predictor(network, info, device, mc_samples=mc_samples, tta=tta, calibrate=False).predict(items)
    points = np.stack([prediction_points(p) for p in preds])
    spread = np.stack([prediction_uncertainty(p) for p in preds])
    try:
        record = fit_uncertainty_calibration(points, spread, np.stack([it["landmarks"] for it in items]), info["landmark_names"], prior_strength)
    except ValueError as e:
        raise InputError(datalist, f"section {section!r}: {e}") from None
    record.update({"section": section, "mc_samples": int(mc_samples), "tta": bool(tta), "date": time.strftime("%Y-%m-%d %H:%M %Z")})
    state = load_checkpoint_file(checkpoint)
    state["info"] = {**state["info"], CALIBRATION_KEY: record}
    with atomic_write(out or checkpoint, "wb") as f:
        torch.save(state, f)
    logger.info(
        "uncertainty calibration on %d %s image(s): raw RMS spread %.2f px vs actual RMS error %.2f px -> common scale %.2f",
        record["n_images"], section, record["raw_rms_spread_px"], record["actual_rms_error_px"], record["common_scale"],
    )
    return record


def calibrate_after_training(checkpoint: str | os.PathLike, datalist: str | os.PathLike, section: str, base_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The bundle's last training step: calibrate the best model on the validation section.

    A missing model (nothing trained) or a section without landmarks is logged and skipped, so
    a run that trained still finishes; the model then reports raw uncertainty.
    """
    if not Path(checkpoint).is_file():
        logger.warning("no model at %s: uncertainty not calibrated", checkpoint)
        return None
    try:
        return calibrate_checkpoint(checkpoint, datalist, section, base_dir=base_dir, device=device)
    except InputError as e:
        logger.warning("uncertainty not calibrated: %s", e)
        return None


def _run(args: argparse.Namespace) -> int:
    record = calibrate_checkpoint(
        args.checkpoint, args.datalist, args.section, args.out, mc_samples=args.mc_samples, tta=args.tta, prior_strength=args.prior_strength
    )
    print(
        f"calibrated on {record['n_images']} image(s) of '{args.section}' ({record['n_landmarks']} landmarks): raw RMS spread "
        f"{record['raw_rms_spread_px']:.2f} px, actual RMS error {record['actual_rms_error_px']:.2f} px, common scale {record['common_scale']:.3f}"
    )
    print("per-landmark scale: " + ", ".join(f"{n} {s:.2f}" for n, s in zip(record["landmark_names"], record["scale"])))
    print(f"wrote {args.out or args.checkpoint}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``maht-net calibrate`` (fit the uncertainty calibration of a checkpoint)."""
    p = subparsers.add_parser(
        "calibrate",
        help="fit the uncertainty calibration of a checkpoint on held-out images (sigma scaling)",
        description="Predict a datalist section (default: validation) with the checkpoint, fit one scale per landmark so "
        "the reported uncertainty is the expected RMS error, and store it in the checkpoint. The bundle's training does "
        "this on its validation section when it finishes; run it again after changing the inference mode (--mc-samples, --tta).",
    )
    p.add_argument("checkpoint", help="model.pt written by the bundle's training")
    p.add_argument("--datalist", required=True, help="datalist with ground-truth landmarks")
    p.add_argument("--section", default="validation", help="section to fit on (never the test section you report on)")
    p.add_argument("--out", help="write the calibrated checkpoint here instead of in place")
    p.add_argument("--mc-samples", type=int, default=0, help="inference mode the calibration is for: MC-dropout passes")
    p.add_argument("--tta", action="store_true", help="inference mode the calibration is for: test-time shifts")
    p.add_argument("--prior-strength", type=float, default=10.0, help="pseudo-observations shrinking each landmark's scale to the common one")
    p.set_defaults(func=_run)
