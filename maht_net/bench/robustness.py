"""Graded corruptions of real films and the accuracy benchmark under them.

Each corruption maps a film (``(H, W)`` float in ``[0, 1]``, axes ``(y, x)``) and its landmarks
(``(N, 2)`` ``(x, y)`` pixels) at a severity 1..3 to a corrupted film and the landmarks' new
positions (NaN where the corruption removed them, e.g. a cropped chin). The corrupted film is
written as an 8-bit PNG, as a clinic would send it, and goes through the normal inference path.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from maht_net.bench.metrics import radial_errors, summarize
from maht_net.io.datalist import load_datalist
from maht_net.io.image import load_xray
from maht_net.io.predictions import prediction_points

__all__ = ["CORRUPTIONS", "SEVERITIES", "corrupt", "run_robustness_benchmark", "format_markdown"]

logger = logging.getLogger(__name__)

Corruption = Callable[[np.ndarray, np.ndarray, int, np.random.Generator], tuple[np.ndarray, np.ndarray]]
SEVERITIES = (1, 2, 3)


def _gaussian_noise(img, pts, s, rng):
    return img + rng.normal(0.0, (0.02, 0.05, 0.1)[s - 1], img.shape), pts


def _poisson_noise(img, pts, s, rng):
    photons = (200.0, 50.0, 15.0)[s - 1]  # expected counts at full brightness: quantum mottle
    return rng.poisson(np.clip(img, 0, 1) * photons) / photons, pts


def _blur(img, pts, s, rng):
    return ndimage.gaussian_filter(img, (1.5, 3.0, 6.0)[s - 1]), pts


def _low_resolution(img, pts, s, rng):
    f = (2, 4, 8)[s - 1]
    h, w = img.shape
    small = Image.fromarray(img.astype(np.float32)).resize((max(1, w // f), max(1, h // f)), Image.BILINEAR)
    return np.asarray(small.resize((w, h), Image.BILINEAR)), pts


def _darker(img, pts, s, rng):
    return np.clip(img, 0, 1) ** (1.5, 2.0, 3.0)[s - 1], pts


def _brighter(img, pts, s, rng):
    return np.clip(img, 0, 1) ** (0.7, 0.5, 0.33)[s - 1], pts


def _inverted(img, pts, s, rng):
    """A MONOCHROME1 film exported without its inversion (bone dark, air bright)."""
    return 1.0 - img, pts


def _rotation(img, pts, s, rng):
    angle = (5.0, 10.0, 15.0)[s - 1]
    h, w = img.shape
    out = ndimage.rotate(img, angle, reshape=False, order=1, mode="constant", cval=float(np.median(img[:, :20])))
    # ndimage.rotate turns the array by +angle (counter-clockwise as displayed, y down)
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    t = np.deg2rad(angle)
    rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    return out, (pts - c) @ rot.T + c


def _crop_chin(img, pts, s, rng):
    h = img.shape[0]
    keep = int(round(h * (0.9, 0.8, 0.7)[s - 1]))
    out = pts.copy()
    out[out[:, 1] > keep - 1] = np.nan
    return img[:keep], out


def _crop_vault(img, pts, s, rng):
    cut = int(round(img.shape[0] * (0.1, 0.2, 0.3)[s - 1]))
    out = pts - [0.0, cut]
    out[out[:, 1] < 0] = np.nan
    return img[cut:], out


def _jpeg(img, pts, s, rng):
    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)).save(buf, "JPEG", quality=(50, 20, 5)[s - 1])
    buf.seek(0)
    return np.asarray(Image.open(buf), dtype=np.float32) / 255.0, pts


#: name -> (corruption, what severities 1/2/3 mean)
CORRUPTIONS: dict[str, tuple[Corruption, str]] = {
    "gaussian_noise": (_gaussian_noise, "sigma 0.02 / 0.05 / 0.10 of full scale"),
    "poisson_noise": (_poisson_noise, "200 / 50 / 15 photons at full brightness"),
    "blur": (_blur, "Gaussian sigma 1.5 / 3 / 6 px"),
    "low_resolution": (_low_resolution, "downsampled by 2 / 4 / 8 and back"),
    "underexposed": (_darker, "gamma 1.5 / 2 / 3"),
    "overexposed": (_brighter, "gamma 0.7 / 0.5 / 0.33"),
    "inverted": (_inverted, "MONOCHROME1 shown without inversion (same at every severity)"),
    "rotation": (_rotation, "5 / 10 / 15 degrees"),
    "crop_chin": (_crop_chin, "bottom 10 / 20 / 30 % cut off"),
    "crop_vault": (_crop_vault, "top 10 / 20 / 30 % cut off"),
    "jpeg": (_jpeg, "JPEG quality 50 / 20 / 5"),
}


def corrupt(name: str, image: np.ndarray, points: np.ndarray, severity: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Apply corruption ``name`` at ``severity``; returns ``(film in [0, 1], new (x, y) landmarks)``."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; available: {sorted(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
    img, pts = CORRUPTIONS[name][0](np.asarray(image, dtype=np.float32), np.asarray(points, dtype=float), severity, np.random.default_rng(seed))
    return np.clip(img, 0.0, 1.0).astype(np.float32), pts


def run_robustness_benchmark(
    predictor: Any,
    datalist: str | os.PathLike,
    section: str = "test",
    corruptions: Sequence[str] = tuple(CORRUPTIONS),
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
) -> dict[str, Any]:
    """MRE (mm) of ``predictor`` (a :class:`~maht_net.inference.predictor.Predictor`) on the clean section
    and on every corruption x severity; points a corruption removed are left out and counted.
    """
    items = load_datalist(datalist, section, check_files=True)
    rows: list[dict[str, Any]] = []

    def evaluate(name: str, severity: int, transform) -> None:
        with tempfile.TemporaryDirectory(prefix="maht_robust_") as tmp:
            errors, kept = [], 0
            for k, it in enumerate(items):
                img, pts = transform(load_xray(it["image"]).image, np.asarray(it["landmarks"], dtype=float), k)
                path = Path(tmp) / f"{it['id']}.png"
                Image.fromarray(np.round(img * 255).astype(np.uint8)).save(path)
                pred = predictor.predict([{"image": str(path), "id": it["id"], "spacing": it["spacing"]}])[0]
                e = radial_errors(prediction_points(pred), pts, np.asarray(it["spacing"], dtype=float))
                kept += int(np.isfinite(pts).all(1).sum())
                errors.append(e)
            e = np.stack(errors)
            overall = summarize(e, thresholds=(2.0,), n_bootstrap=0)["overall"]
            rows.append({
                "corruption": name,
                "severity": severity,
                "mre": overall["mre"],
                "median": overall["median"],
                "sdr_2mm": overall["sdr"]["2.0"],
                "points": int(np.isfinite(e).sum()),
                "points_removed": int(e.size - kept),
            })
            logger.info("%s/%s: MRE %.2f mm over %d points", name, severity, rows[-1]["mre"], rows[-1]["points"])

    evaluate("clean", 0, lambda img, pts, k: (img, pts))
    for name in corruptions:
        for s in (severities if name != "inverted" else severities[:1]):
            evaluate(name, s, lambda img, pts, k, name=name, s=s: corrupt(name, img, pts, s, seed + k))
    clean = rows[0]["mre"]
    for r in rows:
        r["ratio_to_clean"] = r["mre"] / clean
    return {"section": section, "images": len(items), "rows": rows, "definitions": {n: d for n, (_, d) in CORRUPTIONS.items()}}


def format_markdown(result: Mapping[str, Any], other: Mapping[str, Any] | None = None, names: tuple[str, str] = ("model", "other")) -> str:
    """Table of a :func:`run_robustness_benchmark` result (optionally next to a second model's)."""
    head = f"| corruption | severity | {names[0]} MRE mm | x clean | SDR 2 mm % |"
    sep = "|---|---|---|---|---|"
    if other:
        head += f" {names[1]} MRE mm | x clean | SDR 2 mm % |"
        sep += "---|---|---|"
    lines = [head, sep]
    others = {(r["corruption"], r["severity"]): r for r in (other or {}).get("rows", [])}
    for r in result["rows"]:
        sev = "-" if r["severity"] == 0 else f"{r['severity']}"
        line = f"| {r['corruption']} | {sev} | {r['mre']:.2f} | {r['ratio_to_clean']:.2f} | {r['sdr_2mm']:.1f} |"
        if other:
            o = others.get((r["corruption"], r["severity"]))
            line += f" {o['mre']:.2f} | {o['ratio_to_clean']:.2f} | {o['sdr_2mm']:.1f} |" if o else " - | - | - |"
        lines.append(line)
    lines += ["", "Severities: " + "; ".join(f"{n}: {d}" for n, d in result["definitions"].items())]
    return "\n".join(lines) + "\n"
