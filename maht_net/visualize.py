"""Pictures people look at: landmark overlays (predicted vs true) and mean-shape plots."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maht_net.codec.uncertainty import ellipse_axes
from maht_net.io.atomic import atomic_write
from maht_net.landmarks import LandmarkSet, get_landmark_set

__all__ = ["pyplot", "save_figure", "ellipse_patch", "save_overlay", "save_mean_shape"]


def pyplot():
    """``matplotlib.pyplot`` on the headless Agg backend (servers and CI have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(width_px: int, height_px: int, max_side: float = 9.0):
    plt = pyplot()
    scale = max_side / max(width_px, height_px)
    fig = plt.figure(figsize=(width_px * scale, height_px * scale), dpi=110)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_axis_off()
    return plt, fig, ax


def save_figure(fig, out: str | os.PathLike) -> Path:
    """Save a figure as PNG atomically and close it."""
    out = Path(out)
    with atomic_write(out, "wb") as f:
        fig.savefig(f, format="png")
    pyplot().close(fig)
    return out


def ellipse_patch(center: Sequence[float], covariance: np.ndarray, **kwargs):
    """Matplotlib patch of the 95 % region of a 2-D Gaussian (``covariance`` ``(2, 2)`` over ``(x, y)``
    px) centred on ``center`` ``(x, y)``; ``kwargs`` style it (unfilled by default)."""
    from matplotlib.patches import Ellipse

    major, minor, angle = ellipse_axes(covariance)
    return Ellipse(tuple(center), 2 * major, 2 * minor, angle=angle, **{"fill": False, **kwargs})


def save_overlay(
    image: np.ndarray,
    out: str | os.PathLike,
    points: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    landmark_set: str | LandmarkSet = "isbi2015",
    covariance_px: np.ndarray | None = None,
    title: str | None = None,
) -> Path:
    """Draw landmarks on an X-ray and save a PNG.

    Args:
        image: ``(H, W)`` grayscale (any range).
        points: ``(N, 2)`` ``(x, y)`` predicted (red, labelled with abbreviations).
        truth: ``(N, 2)`` ``(x, y)`` ground truth (green); a line joins each pair.
        covariance_px: ``(N, 2, 2)`` over ``(x, y)`` px: dashed 95 % ellipses around the predictions.
    """
    lset = get_landmark_set(landmark_set)
    h, w = image.shape[:2]
    plt, fig, ax = _figure(w, h)
    ax.imshow(image, cmap="gray", interpolation="bilinear")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    marker = max(w, h) / 250
    if truth is not None:
        ax.scatter(truth[:, 0], truth[:, 1], s=marker * 6, c="lime", marker="o", label="truth", edgecolors="black", linewidths=0.3)
    if points is not None:
        if truth is not None:
            for p, t in zip(points, truth):
                if np.isfinite(p).all() and np.isfinite(t).all():
                    ax.plot([p[0], t[0]], [p[1], t[1]], color="yellow", linewidth=0.8)
        ax.scatter(points[:, 0], points[:, 1], s=marker * 6, c="red", marker="+", label="prediction", linewidths=1.2)
        for k, p in enumerate(points):
            if np.isfinite(p).all():
                ax.annotate(lset[k].abbreviation, (p[0], p[1]), xytext=(4, -4), textcoords="offset points", color="orange", fontsize=7)
                if covariance_px is not None and np.isfinite(covariance_px[k]).all():
                    ax.add_patch(ellipse_patch(p, covariance_px[k], color="cyan", linestyle="--", linewidth=0.7))
    if title:
        ax.text(0.01, 0.99, title, transform=ax.transAxes, va="top", color="white", fontsize=9, backgroundcolor="black")
    if points is not None or truth is not None:
        ax.legend(loc="lower left", fontsize=7, framealpha=0.6)
    return save_figure(fig, out)


def save_mean_shape(
    background: np.ndarray,
    points: np.ndarray,
    out: str | os.PathLike,
    landmark_set: str | LandmarkSet = "isbi2015",
    title: str | None = None,
) -> Path:
    """Every image's landmarks (small dots, one colour per landmark) and their mean (labelled).

    Args:
        background: ``(H, W)`` image the points are expressed in (e.g. a mean image).
        points: ``(B, N, 2)`` ``(x, y)`` in ``background`` pixels; NaN = missing.
    """
    lset = get_landmark_set(landmark_set)
    h, w = background.shape[:2]
    plt, fig, ax = _figure(w, h)
    ax.imshow(background, cmap="gray")
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, len(lset)))
    mean = np.nanmean(points, axis=0) if len(points) else np.full((len(lset), 2), np.nan)
    for k in range(len(lset)):
        ax.scatter(points[:, k, 0], points[:, k, 1], s=4, color=colors[k], alpha=0.6)
        if np.isfinite(mean[k]).all():
            ax.scatter(*mean[k], s=40, color=colors[k], edgecolors="white", linewidths=0.8)
            ax.annotate(lset[k].abbreviation, mean[k], xytext=(5, -5), textcoords="offset points", color="white", fontsize=8)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    if title:
        ax.text(0.01, 0.99, title, transform=ax.transAxes, va="top", color="white", fontsize=9, backgroundcolor="black")
    return save_figure(fig, out)
