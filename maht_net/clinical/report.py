"""A report a clinician can read without the tool (``maht-net report``).

One self-contained HTML file (the picture embedded as base64 PNG, inline CSS, no script, no
external resource) and the same picture as PNG: the film with the named landmarks, their 95 %
uncertainty ellipses and the analysis lines (S-N, N-A, N-B, Frankfort, mandibular and palatal
planes, facial plane, lip line), then the measurement table of :mod:`maht_net.clinical.analysis` with
classes, intervals and review flags, the landmark table and the definitions. On request
(``--explain``) a per-landmark explanation from the network: the predicted heatmap over the film
and the attention of the gates and of the transformer (:func:`explain_landmarks`).

Points are ``(x, y)`` pixels of the original image (x = column, y = row, y down; the patient
faces right); distances in mm when the prediction states a spacing, else in px.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maht_net.clinical.analysis import analyze_prediction
from maht_net.clinical.measurements import MEASUREMENTS_BY_NAME, SKELETAL_SOURCE, describe_classes
from maht_net.codec.uncertainty import landmark_covariances
from maht_net.datasets.pipeline import model_transforms
from maht_net.errors import InputError
from maht_net.formatting import fmt_number
from maht_net.inference.predictor import load_model
from maht_net.io.atomic import atomic_write
from maht_net.io.image import load_xray
from maht_net.io.predictions import prediction_points, read_prediction
from maht_net.landmarks import get_landmark_set
from maht_net.visualize import ellipse_patch, pyplot

_DASH = "&ndash;"  # a missing number in HTML

__all__ = ["DISCLAIMER", "ANALYSIS_LINES", "render_report_png", "build_report_html", "explain_landmarks", "write_report"]

DISCLAIMER = (
    "Research use only. Not a medical device and not a diagnosis. Every landmark and every "
    "measurement must be reviewed by a qualified clinician before any clinical use."
)

ANALYSIS_LINES: tuple[tuple[str, str, str, str, float], ...] = (
    ("S-N", "sella", "nasion", "#ffd700", 0.15),
    ("N-A", "nasion", "subspinale", "#ff8c00", 0.0),
    ("N-B", "nasion", "supramentale", "#ff4500", 0.0),
    ("Frankfort (Po-Or)", "porion", "orbitale", "#00bfff", 0.25),
    ("mandibular plane (Go-Me)", "gonion", "menton", "#7cfc00", 0.2),
    ("palatal plane (PNS-ANS)", "posterior_nasal_spine", "anterior_nasal_spine", "#da70d6", 0.15),
    ("facial plane (N-Pog)", "nasion", "pogonion", "#f5f5f5", 0.0),
    ("E-line (Prn-Pog')", "pronasale", "soft_tissue_pogonion", "#ff69b4", 0.15),
    ("Sn-Pog' line", "subnasale", "soft_tissue_pogonion", "#ff69b4", 0.15),
)
"""``(label, landmark, landmark, colour, extension)``: lines drawn on the film, each extended by
``extension`` times its length beyond both ends (planes) or not at all (segments)."""


def _png_bytes(fig, plt) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def render_report_png(pred: Mapping[str, Any], analysis: Mapping[str, Any], image: np.ndarray, max_side_px: int = 1200) -> bytes:
    """The annotated film as PNG bytes.

    Args:
        pred: prediction document (landmark ``x``/``y`` in original pixels, ``uncertainty_px``).
        analysis: :func:`~maht_net.clinical.analysis.analyze_prediction` of it (review flags).
        image: ``(H, W)`` grayscale film.
        max_side_px: size of the longer side of the picture.
    """
    import matplotlib.patheffects as pe

    plt = pyplot()
    lset = get_landmark_set(pred.get("landmark_set", "isbi2015"))
    points = prediction_points(pred)  # type: ignore[arg-type]
    h, w = image.shape[:2]
    dpi = 100
    scale = max_side_px / max(w, h) / dpi
    fig = plt.figure(figsize=(w * scale, h * scale), dpi=dpi)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_axis_off()
    ax.imshow(image, cmap="gray", interpolation="bilinear")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    outline = [pe.withStroke(linewidth=2.5, foreground="black")]
    pos = {lm.name: points[k] for k, lm in enumerate(lset) if np.isfinite(points[k]).all()}
    handles = []
    for label, a, b, colour, ext in ANALYSIS_LINES:
        if a not in pos or b not in pos:
            continue
        pa, pb = pos[a], pos[b]
        d = pb - pa
        p0, p1 = pa - ext * d, pb + ext * d
        (line,) = ax.plot([p0[0], p1[0]], [p0[1], p1[1]], color=colour, linewidth=1.4, alpha=0.9, label=label)
        handles.append(line)
    flags = {r["name"]: r["needs_review"] for r in analysis["landmarks"]}
    covariances = landmark_covariances(pred)
    fontsize = 9 * max_side_px / 1200
    offsets = _label_offsets(np.array([pos[lm.name] for lm in lset if lm.name in pos]), 8 * max(w, h) / max_side_px * dpi / 72)
    for k, lm in enumerate(n for n in lset if n.name in pos):
        x, y = pos[lm.name]
        colour = "#ff3030" if flags.get(lm.name) else "#00ffff"
        if np.isfinite(covariances[lm.index - 1]).all():
            ax.add_patch(ellipse_patch((x, y), covariances[lm.index - 1], color=colour, linewidth=1.0, alpha=0.9))
        ax.plot([x], [y], marker="+", markersize=8, color=colour, markeredgewidth=1.6)
        dx, dy = offsets[k]
        ax.annotate(lm.abbreviation, (x, y), xytext=(dx, -dy), textcoords="offset points", color=colour, fontsize=fontsize,
                    fontweight="bold", path_effects=outline, ha="left" if dx > 0 else "right", va="top" if dy > 0 else "bottom")
    handles += [
        plt.Line2D([], [], color="#00ffff", marker="+", linestyle="none", markersize=8, label="landmark (ellipse: 95 % region)"),
        plt.Line2D([], [], color="#ff3030", marker="+", linestyle="none", markersize=8, label="landmark to review"),
    ]
    ax.legend(handles=handles, loc="lower left", fontsize=fontsize * 0.8, framealpha=0.7, facecolor="black", labelcolor="white")
    ax.text(0.01, 0.99, f"{pred.get('id', '')}  -  research use only, review every landmark", transform=ax.transAxes,
            va="top", color="white", fontsize=fontsize, path_effects=outline)
    return _png_bytes(fig, plt)


def _label_offsets(points: np.ndarray, unit: float) -> list[tuple[float, float]]:
    """Greedy label placement: for each point, the diagonal offset (in points, y down) whose label
    anchor lies farthest from every landmark and every label placed so far. ``unit`` = film
    pixels per offset step."""
    candidates = [(5.0, 5.0), (5.0, -5.0), (-5.0, 5.0), (-5.0, -5.0)]
    placed: list[np.ndarray] = []
    out = []
    for i, p in enumerate(points):
        others = np.delete(points, i, axis=0)
        best = max(
            candidates,
            key=lambda c: min(
                [float(np.linalg.norm(p + np.array(c) * unit / 5 - q)) for q in list(others) + placed] or [np.inf]
            ),
        )
        placed.append(p + np.array(best) * unit / 5)
        out.append(best)
    return out


# ---- explanation -----------------------------------------------------------------------------
def explain_landmarks(
    checkpoint: str | os.PathLike,
    image: str | os.PathLike,
    out: str | os.PathLike | None = None,
    points: np.ndarray | None = None,
    device: str = "cpu",
    window: float = 0.25,
    spacing: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Why the network put each landmark where it did: heatmaps and attention over the film.

    Loads a MAHT-Net checkpoint (:func:`maht_net.inference.predictor.load_model`), preprocesses the image
    as inference does, runs the network once with ``record_attention`` on and renders one panel
    per landmark (the predicted probability map over a window of the film around its peak),
    then one panel per attention gate (which skip-connection positions the decoder let through)
    and one for the transformer (mean attention each position receives in the last block).

    Args:
        checkpoint: ``{"model": state_dict, "info": CheckpointInfo}`` file.
        image: the film.
        out: PNG to write (optional; the bytes are returned either way).
        points: ``(N, 2)`` ``(x, y)`` original pixels to centre each landmark's window on (e.g.
            the prediction under review); default: each heatmap's peak.
        window: side of each landmark panel as a fraction of the film's longer side.
        spacing: ``(sx, sy)`` mm/px the film was predicted at (a prediction's ``spacing``), for
            films whose file states none: a model trained at a fixed physical pixel size
            (``input_mm_per_px``) then sees the input the prediction came from.

    Returns:
        ``{"png": bytes, "path": Path | None, "points": (N, 2) peak (x, y) in original px,
        "heatmaps": (N, h, w) probabilities, "gates": [(h_l, w_l)], "transformer": (h_t, w_t) | None,
        "extent": (x0, x1, y1, y0) of the maps in original px}``.
    """
    import torch

    network, info = load_model(checkpoint, device)
    n = len(info["landmark_names"])
    sample = model_transforms(info)({"image": os.fspath(image), **({"spacing": list(spacing)} if spacing is not None else {})})
    img = sample["image"]
    x = (img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(img))[None].float().to(device)
    previous = getattr(network, "record_attention", False)
    network.record_attention = True
    try:
        with torch.no_grad():
            logits = network(x)
    finally:
        network.record_attention = previous
    logits = logits["heatmaps"] if isinstance(logits, Mapping) else logits
    _, _, hh, ww = logits.shape
    prob = torch.softmax(logits[0].float().reshape(n, -1), -1).reshape(n, hh, ww).cpu().numpy()
    maps = getattr(network, "attention_maps", {})
    gates = [g[0, 0].float().cpu().numpy() for g in maps.get("gates", [])]
    transformer = None
    if maps.get("transformer"):
        grid = x.shape[-2] // network.reductions[-1], x.shape[-1] // network.reductions[-1]
        received = maps["transformer"][-1][0].float().mean(0).cpu().numpy()
        transformer = received.reshape(grid) if received.size == grid[0] * grid[1] else None

    m = np.asarray(sample["to_original"], dtype=float)
    in_h, in_w = x.shape[-2:]
    x0, y0 = m[0, 0] * -0.5 + m[0, 2], m[1, 1] * -0.5 + m[1, 2]
    x1, y1 = m[0, 0] * (in_w - 0.5) + m[0, 2], m[1, 1] * (in_h - 0.5) + m[1, 2]
    extent = (float(x0), float(x1), float(y1), float(y0))
    stride = in_w / ww
    flat = prob.reshape(n, -1).argmax(1)
    peak_in = np.stack([(flat % ww + 0.5) * stride - 0.5, (flat // ww + 0.5) * stride - 0.5], -1)
    peaks = peak_in * np.diag(m)[:2] + m[:2, 2]

    film = load_xray(image).image
    centres = peaks if points is None else np.where(np.isfinite(points), points, peaks)
    png = _render_explanation(film, prob, gates, transformer, centres, extent, info["landmark_names"], window)
    path = None
    if out is not None:
        path = Path(out)
        with atomic_write(path, "wb") as f:
            f.write(png)
    return {"png": png, "path": path, "points": peaks, "heatmaps": prob, "gates": gates, "transformer": transformer, "extent": extent}


def _render_explanation(
    film: np.ndarray,
    prob: np.ndarray,
    gates: Sequence[np.ndarray],
    transformer: np.ndarray | None,
    centres: np.ndarray,
    extent: tuple[float, float, float, float],
    names: Sequence[str],
    window: float,
) -> bytes:
    plt = pyplot()
    h, w = film.shape
    panels = len(names) + len(gates) + (transformer is not None)
    cols = 5
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.9), dpi=90)
    axes = np.atleast_1d(axes).ravel()
    half = window * max(h, w) / 2
    for k, name in enumerate(names):
        ax = axes[k]
        hm = prob[k] / max(float(prob[k].max()), 1e-12)
        ax.imshow(film, cmap="gray")
        ax.imshow(np.ma.masked_less(hm, 0.05), cmap="inferno", alpha=0.6, extent=extent, vmin=0, vmax=1)
        cx, cy = centres[k]
        ax.plot([cx], [cy], "c+", markersize=9, markeredgewidth=1.5)
        ax.set_xlim(cx - half, cx + half)
        ax.set_ylim(cy + half, cy - half)
        ax.set_title(f"{k + 1} {name.replace('_', ' ')}\npeak p = {float(prob[k].max()):.3f}", fontsize=8)
    extra = [(f"attention gate {i + 1} of {len(gates)}\n(1 = skip passes)", g, 1.0) for i, g in enumerate(gates)]
    if transformer is not None:
        extra.append(("transformer: mean attention\nreceived (last block)", transformer / max(float(transformer.max()), 1e-12), 1.0))
    for j, (title, amap, vmax) in enumerate(extra):
        ax = axes[len(names) + j]
        ax.imshow(film, cmap="gray")
        ax.imshow(amap, cmap="viridis", alpha=0.55, extent=extent, vmin=0, vmax=vmax)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_title(title, fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[panels:]:
        ax.set_axis_off()
    fig.suptitle("Network explanation: predicted heatmap per landmark (cross: landmark) and attention maps", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _png_bytes(fig, plt)


# ---- HTML ------------------------------------------------------------------------------------
_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px;color:#111;max-width:1150px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ccc;padding-bottom:3px}
.disclaimer{background:#b00020;color:#fff;padding:10px 14px;font-weight:bold;border-radius:4px;margin:10px 0 14px}
.summary{display:flex;flex-wrap:wrap;gap:8px 28px;font-size:14px;margin-bottom:8px}
.summary b{display:inline-block;min-width:0}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{border:1px solid #ccc;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.review td{background:#fff3cd}.badge{display:inline-block;padding:1px 6px;border-radius:3px;font-size:12px;font-weight:bold}
.badge.review{background:#e0a800;color:#000}.badge.ok{background:#2e7d32;color:#fff}.badge.na{background:#999;color:#fff}
.why{font-size:11px;color:#5a4500}.muted{color:#666;font-size:12px}
img.film{max-width:100%;border:1px solid #999}
details{margin:8px 0}summary{cursor:pointer;font-weight:bold}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))



def _measurement_rows(analysis: Mapping[str, Any]) -> str:
    rows = []
    for r in analysis["measurements"]:
        m = MEASUREMENTS_BY_NAME.get(r["name"])
        digits = 3 if r["unit"] == "ratio" else 1
        iv = "&ndash;" if r["interval"] is None else f"{fmt_number(r['interval'][0], digits, missing=_DASH)} to {fmt_number(r['interval'][1], digits, missing=_DASH)}"
        cls = "&ndash;" if r["class"] is None else f"{_e(r['class']['code'])} {_e(r['class']['label'])}"
        if r["class_probability"] is not None:
            cls += f" <span class='muted'>({r['class_probability']:.0%})</span>"
        if r["value"] is None:
            badge = "<span class='badge na'>not available</span>"
        elif r["needs_review"]:
            badge = "<span class='badge review'>REVIEW</span>"
        else:
            badge = "<span class='badge ok'>ok</span>"
        why = "; ".join(r["review_reasons"] + ([r["note"]] if r["note"] else []))
        unit = {"deg": "&deg;", "ratio": ""}.get(r["unit"], " " + _e(r["unit"]))
        rows.append(
            f"<tr class='{'review' if r['needs_review'] else ''}'><td><b>{_e(r['name'])}</b><br><span class='muted'>{_e(r['title'])}</span></td>"
            f"<td class='num'>{fmt_number(r['value'], digits, missing=_DASH)}{unit if r['value'] is not None else ''}</td><td class='num'>{iv}</td>"
            f"<td>{cls}</td><td class='muted'>{_e(m.norm if m and m.norm else '').replace(' deg', '&deg;')}</td>"
            f"<td>{badge}<div class='why'>{_e(why)}</div></td></tr>"
        )
    return "\n".join(rows)


def _landmark_rows(pred: Mapping[str, Any], analysis: Mapping[str, Any]) -> str:
    rows = []
    for r, a in zip(pred["landmarks"], analysis["landmarks"]):
        placed = r.get("x") is not None and r.get("y") is not None
        badge = ("<span class='badge review'>REVIEW</span>" if a["needs_review"] else "<span class='badge ok'>ok</span>") if placed else (
            "<span class='badge na'>not placed</span>"
        )
        rows.append(
            f"<tr class='{'review' if a['needs_review'] else ''}'><td class='num'>{r['index']}</td><td><b>{_e(r['abbreviation'])}</b></td>"
            f"<td>{_e(r['name'].replace('_', ' '))}</td><td class='num'>{fmt_number(r.get('x'), 1, missing=_DASH)}</td><td class='num'>{fmt_number(r.get('y'), 1, missing=_DASH)}</td>"
            f"<td class='num'>{fmt_number(r.get('uncertainty_mm'), missing=_DASH)}</td><td class='num'>{fmt_number(r.get('uncertainty_px'), 1, missing=_DASH)}</td>"
            f"<td class='num'>{fmt_number(r.get('confidence'), missing=_DASH)}</td><td>{badge}</td></tr>"
        )
    return "\n".join(rows)


def _definitions(analysis: Mapping[str, Any]) -> str:
    items = []
    for r in analysis["measurements"]:
        m = MEASUREMENTS_BY_NAME.get(r["name"])
        if m is None:
            continue
        classes = "; ".join(describe_classes(m.name, m.classes))
        items.append(
            f"<li><b>{_e(m.name)}</b> ({_e(m.title)}; landmarks {_e(', '.join(m.landmarks))}): {_e(m.definition)}"
            + (f" <i>Classes:</i> {_e(classes)}." if classes else "")
            + f" <span class='muted'>Source: {_e(m.source)}.</span></li>"
        )
    return "<ul>" + "\n".join(items) + "</ul>"


def build_report_html(
    pred: Mapping[str, Any], analysis: Mapping[str, Any], figure_png: bytes, explanation_png: bytes | None = None
) -> str:
    """The self-contained HTML report (no external resource: images are base64 ``data:`` URIs)."""
    spacing = pred.get("spacing")
    sp_text = f"{spacing[0]:.4g} x {spacing[1]:.4g} mm/px" if spacing else "unknown: distances in pixels, mm classes not applied"
    cal = pred.get("uncertainty_calibration")
    calibration_text = (
        f"uncertainty calibrated on {cal.get('n_images', '?')} held-out {cal.get('section', '')} films ({cal.get('method', '')})"
        if cal else "uncertainty NOT calibrated (the network's raw spread, which over-states the error on real films)"
    )
    s = analysis["skeletal_class"]
    skeletal = "not available" if s["class"] is None else (
        f"{_e(s['label'])} (ANB {s['anb']:.1f}&deg;" + (f", probability {s['class_probability']:.0%}" if s["class_probability"] is not None else "")
        + "; Steiner norm: I = 0 to 4&deg;)"
    )
    n_meas = sum(r["needs_review"] for r in analysis["measurements"])
    n_lm = sum(a["needs_review"] for a in analysis["landmarks"])
    review = (
        f"<span class='badge review'>REVIEW</span> {n_lm} landmark(s) and {n_meas} measurement(s) flagged"
        if analysis["needs_review"] else "<span class='badge ok'>no flag</span> (still review every landmark)"
    )
    unc = analysis.get("uncertainty")
    method = (
        f"Intervals: central {unc['level']:.0%} of {unc['samples']} Monte-Carlo samples (seed {unc['seed']}) of the landmark "
        f"positions, each drawn from an isotropic Gaussian whose RMS radius is the predicted uncertainty."
        if unc else "No landmark uncertainty in the prediction: no intervals."
    )
    policy = analysis["review_policy"]
    explanation = ""
    if explanation_png is not None:
        explanation = (
            "<h2>Explanation (network heatmaps and attention)</h2><p class='muted'>Per landmark: the network's predicted probability "
            "map around its peak (bright = likely). Gates: where the decoder let skip-connection detail through. Transformer: "
            "where the global context attended. These show what the network used, not whether it is right.</p>"
            f"<img class='film' alt='explanation' src='data:image/png;base64,{base64.b64encode(explanation_png).decode()}'>"
        )
    notes = "".join(f"<li>{_e(n)}</li>" for n in analysis.get("notes", []))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Cephalometric report {_e(pred.get('id', ''))}</title><style>{_CSS}</style></head>
<body>
<h1>Cephalometric analysis &mdash; {_e(pred.get('id', ''))}</h1>
<div class="disclaimer">{_e(DISCLAIMER)}</div>
<div class="summary">
<div><b>Image:</b> {_e(Path(str(pred.get('image', ''))).name)} ({pred.get('width')} x {pred.get('height')} px)</div>
<div><b>Pixel spacing:</b> {_e(sp_text)}</div>
<div><b>Skeletal class:</b> {skeletal}</div>
<div><b>Review:</b> {review}</div>
</div>
<h2>Film with landmarks and analysis lines</h2>
<p class="muted">Crosses: predicted landmarks (abbreviations in the landmark table). Ellipses: region holding the true position with 95 %
probability if the predicted uncertainty is right; {_e(calibration_text)}. Red: landmark uncertainty above {policy['landmark_uncertainty_mm']:g} mm
({policy['landmark_uncertainty_px']:g} px without spacing).</p>
<img class="film" alt="film with landmarks" src="data:image/png;base64,{base64.b64encode(figure_png).decode()}">
<h2>Measurements</h2>
<p class="muted">Classes C1..C4: ISBI 2015 challenge task 2 (norms of that challenge's population). Skeletal class: {_e(SKELETAL_SOURCE)}.
Reference values vary with population, age and sex. {_e(method)} REVIEW: a landmark used is uncertain, or the interval crosses a class
boundary or is wider than the review limit.</p>
<table><tr><th>Measurement</th><th>Value</th><th>95 % interval</th><th>ISBI 2015 class (probability)</th><th>Reference value</th><th>Review</th></tr>
{_measurement_rows(analysis)}
</table>
<h2>Landmarks</h2>
<table><tr><th>#</th><th>Abbr.</th><th>Landmark</th><th>x (px)</th><th>y (px)</th><th>Uncertainty (mm)</th><th>Uncertainty (px)</th><th>Confidence</th><th>Review</th></tr>
{_landmark_rows(pred, analysis)}
</table>
{explanation}
<h2>Definitions</h2>
<details open><summary>How each measurement is computed (lines, vertex, sign)</summary>
<p class="muted">Image coordinates: x to the right (anterior, the patient faces right), y downward. Signed angles are positive
clockwise on screen; signed distances are positive in front of (anterior to) the line.</p>
{_definitions(analysis)}</details>
<ul class="muted">{notes}<li>Prediction: {_e(pred.get('image', ''))}</li><li>Generated {datetime.date.today().isoformat()} by MAHT-Net.</li></ul>
<div class="disclaimer">{_e(DISCLAIMER)}</div>
</body></html>
"""


def write_report(
    pred: str | os.PathLike | Mapping[str, Any],
    out: str | os.PathLike,
    png: str | os.PathLike | None = None,
    image: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    analysis: Mapping[str, Any] | None = None,
    **analysis_kwargs: Any,
) -> dict[str, Any]:
    """Write ``out`` (HTML) and the annotated film as PNG (``png``, default ``out`` with ``.png``).

    Args:
        pred: prediction JSON path or document.
        image: the film, when it is not at the prediction's ``image`` path.
        checkpoint: when given, add the network explanation (:func:`explain_landmarks`), also
            written beside the PNG as ``<png stem>_explain.png``.
        analysis: a precomputed :func:`~maht_net.clinical.analysis.analyze_prediction` result; else it is
            computed with ``analysis_kwargs`` (``policy``, ``n_samples``, ``seed``, ``level``).

    Returns:
        ``{"html": Path, "png": Path, "explanation": Path | None, "analysis": dict}``.

    Raises:
        InputError: unreadable prediction or image.
    """

    doc = read_prediction(pred) if isinstance(pred, (str, os.PathLike)) else pred
    image_path = Path(image) if image is not None else Path(str(doc.get("image", "")))
    if not image_path.is_file():
        raise InputError(image_path, "image of the prediction not found (pass --image)")
    film = load_xray(image_path).image
    if (film.shape[1], film.shape[0]) != (doc.get("width", film.shape[1]), doc.get("height", film.shape[0])):
        raise InputError(image_path, f"image is {film.shape[1]}x{film.shape[0]} but the prediction is for {doc.get('width')}x{doc.get('height')}")
    analysis = analysis if analysis is not None else analyze_prediction(doc, **analysis_kwargs)
    out = Path(out)
    png_path = Path(png) if png is not None else out.with_suffix(".png")
    figure = render_report_png(doc, analysis, film)
    with atomic_write(png_path, "wb") as f:
        f.write(figure)
    explanation = None
    if checkpoint is not None:
        explanation = explain_landmarks(
            checkpoint, image_path, png_path.with_name(png_path.stem + "_explain.png"), prediction_points(doc), spacing=doc.get("spacing")
        )
    with atomic_write(out, "w", encoding="utf-8") as f:
        f.write(build_report_html(doc, analysis, figure, None if explanation is None else explanation["png"]))
    return {"html": out, "png": png_path, "explanation": None if explanation is None else explanation["path"], "analysis": analysis}


