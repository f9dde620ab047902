"""Calibration statistics of the predicted uncertainty against truth (coverage of the 95 % ellipses, reliability), and its plot."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maht_net.clinical.analysis import ReviewPolicy, _float
from maht_net.codec.uncertainty import CHI2_2DOF_95
from maht_net.visualize import pyplot, save_figure


# ---- calibration -----------------------------------------------------------------------------
def uncertainty_calibration(
    pred_points: np.ndarray,
    uncertainty_px: np.ndarray,
    truth_points: np.ndarray,
    spacing: np.ndarray | Sequence[Sequence[float] | None] | None = None,
    n_bins: int = 8,
    policy: ReviewPolicy | None = None,
    covariance_px: np.ndarray | None = None,
) -> dict[str, Any]:
    """Does the predicted uncertainty match the actual error? Binned reliability + flag check.

    Args:
        pred_points, truth_points: ``(B, N, 2)`` ``(x, y)`` pixels (NaN = missing).
        uncertainty_px: ``(B, N)`` predicted RMS radial spread in px.
        spacing: ``(B, 2)`` mm/px (or a list with ``None``); any unknown spacing puts everything in px.
        n_bins: equal-count bins of predicted uncertainty.
        policy: the landmark threshold that decides "flagged" (:class:`ReviewPolicy`).
        covariance_px: ``(B, N, 2, 2)`` predicted covariances over ``(x, y)`` px: adds
            ``ellipse_coverage``, the fraction of true positions inside their 95 % ellipse.

    Returns:
        ``{"unit", "n", "bins": [{"low", "high", "n", "predicted_rms", "actual_rms",
        "actual_mean"}], "flagged": {"threshold", "n", "mean_error", "median_error"},
        "unflagged": {...}, "spearman": rho, "ellipse_coverage": fraction or None}``. A
        calibrated model has ``actual_rms`` close to ``predicted_rms`` in every bin (the
        predicted spread is an RMS radial distance) and a coverage close to 0.95.
    """
    policy = policy or ReviewPolicy()
    pred, truth = np.asarray(pred_points, dtype=float), np.asarray(truth_points, dtype=float)
    unc = np.asarray(uncertainty_px, dtype=float)
    sp_list = None if spacing is None else [None if s is None else np.asarray(s, dtype=float) for s in spacing]
    if sp_list is not None and all(s is not None for s in sp_list):
        scale = np.stack(sp_list)[:, None, :]
        unit, threshold = "mm", policy.landmark_uncertainty_mm
        unc = unc * scale.mean(-1)
    else:
        scale, unit, threshold = np.ones((1, 1, 2)), "px", policy.landmark_uncertainty_px
    err = np.linalg.norm((pred - truth) * scale, axis=-1)
    ok = np.isfinite(err) & np.isfinite(unc)
    e, u = err[ok], unc[ok]
    if not len(e):
        raise ValueError("no landmark has both an error and an uncertainty")
    edges = np.unique(np.quantile(u, np.linspace(0, 1, max(1, int(n_bins)) + 1)))
    which = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, max(len(edges) - 2, 0))
    bins = []
    for b in range(max(len(edges) - 1, 1)):
        sel = which == b
        if not sel.any():
            continue
        bins.append(
            {
                "low": float(edges[b]), "high": float(edges[min(b + 1, len(edges) - 1)]), "n": int(sel.sum()),
                "predicted_rms": float(np.sqrt(np.mean(u[sel] ** 2))), "actual_rms": float(np.sqrt(np.mean(e[sel] ** 2))),
                "actual_mean": float(np.mean(e[sel])),
            }
        )

    def group(sel: np.ndarray) -> dict[str, Any]:
        return {"n": int(sel.sum()), "mean_error": float(np.mean(e[sel])) if sel.any() else None,
                "median_error": float(np.median(e[sel])) if sel.any() else None}

    from scipy.stats import spearmanr

    rho = spearmanr(u, e).statistic if len(e) > 2 and np.ptp(u) > 0 else float("nan")
    coverage = None
    if covariance_px is not None:
        cov = np.asarray(covariance_px, dtype=float)
        d = pred - truth
        valid = np.isfinite(d).all(-1) & np.isfinite(cov).all((-2, -1)) & (np.linalg.det(np.where(np.isfinite(cov), cov, 1.0)) > 0)
        if valid.any():
            m2 = np.einsum("ki,kij,kj->k", d[valid], np.linalg.inv(cov[valid]), d[valid])  # squared Mahalanobis distance
            coverage = float(np.mean(m2 <= CHI2_2DOF_95))
    return {
        "unit": unit, "n": int(len(e)), "bins": bins, "threshold": threshold,
        "flagged": group(u > threshold), "unflagged": group(u <= threshold), "spearman": _float(rho),
        "ellipse_coverage": coverage,
    }


def save_reliability_plot(calibration: Mapping[str, Any], out: str | os.PathLike, title: str | None = None) -> Path:
    """PNG of the reliability curve: predicted RMS uncertainty vs actual RMS error per bin."""

    plt = pyplot()
    unit = calibration["unit"]
    x = [b["predicted_rms"] for b in calibration["bins"]]
    y = [b["actual_rms"] for b in calibration["bins"]]
    ym = [b["actual_mean"] for b in calibration["bins"]]
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=110)
    top = max(x + y + [1e-6]) * 1.1
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    ax.plot(x, y, "o-", color="tab:red", label="actual RMS error")
    ax.plot(x, ym, "s:", color="tab:blue", markersize=4, label="actual mean error")
    ax.axvline(calibration["threshold"], color="tab:orange", linewidth=1, label=f"review threshold {calibration['threshold']:g} {unit}")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel(f"predicted uncertainty (RMS radial, {unit})")
    ax.set_ylabel(f"actual radial error ({unit})")
    ax.set_title(title or f"Uncertainty calibration ({calibration['n']} landmarks)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out)
