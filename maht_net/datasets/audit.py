"""``maht-net audit DATALIST``: what a datalist holds and what is wrong with it.

Reports counts per section, image sizes, spacing, missing landmarks per landmark, landmarks
outside their image, duplicated ids and unreadable images, and draws a mean-shape overlay.
Problems are listed, not raised: the exit code is 1 when any was found.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from maht_net.errors import InputError
from maht_net.io.atomic import write_json_atomic
from maht_net.io.datalist import datalist_sections, load_datalist, read_datalist
from maht_net.io.image import image_size, load_xray
from maht_net.landmarks import get_landmark_set
from maht_net.progress import progress
from maht_net.visualize import save_mean_shape

__all__ = ["audit_datalist", "format_report"]


def _same_item(a: dict[str, Any], b: dict[str, Any]) -> bool:
    same_points = (a.get("landmarks") is None) == (b.get("landmarks") is None) and (
        a.get("landmarks") is None or np.array_equal(a["landmarks"], b["landmarks"], equal_nan=True)
    )
    return a["image"] == b["image"] and same_points


def audit_datalist(
    datalist: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    base_dir: str | os.PathLike | None = None,
    mean_images: int = 16,
) -> dict[str, Any]:
    """Audit every list-valued section of a datalist.

    Writes ``audit.json`` and ``mean_shape.png`` to ``out_dir`` when given. The mean shape is
    drawn on the mean of up to ``mean_images`` images resized to the median image size, with
    every landmark scaled by ``(W_median / W, H_median / H)``.
    """
    doc = read_datalist(datalist)
    lset = get_landmark_set(doc.get("landmark_set", "isbi2015"))
    sections = datalist_sections(doc)
    items = []
    for sec in sections:
        for it in load_datalist(datalist, sec, base_dir=base_dir):
            it["section"] = sec
            items.append(it)
    problems: list[str] = []
    # a section drawn from another on purpose (datalist "drawn_from"): its items must be that
    # section's, and each film is audited once
    drawn = doc.get("drawn_from") or {}
    for sec, parent in drawn.items():
        if sec not in sections or parent not in sections:
            problems.append(f"drawn_from: {sec!r} from {parent!r}, but the datalist has no such section")
            continue
        source = {it["id"]: it for it in items if it["section"] == parent}
        problems += [
            f"id {it['id']!r} of {sec!r} is not the same item in {parent!r}, which drawn_from says it comes from"
            for it in items
            if it["section"] == sec and (it["id"] not in source or not _same_item(it, source[it["id"]]))
        ]
    films = [it for it in items if it["section"] not in drawn]
    ids = Counter(it["id"] for it in films)
    problems += [f"id {i!r} appears {c} times" for i, c in ids.items() if c > 1]
    sizes, spacings, points, usable = [], Counter(), [], []
    missing = np.zeros(len(lset), dtype=int)
    outside = []
    for it in progress(films, "audit"):
        spacings[str(list(it["spacing"])) if it["spacing"] else "none"] += 1
        lms = it.get("landmarks")
        if lms is None:
            continue
        missing += ~np.isfinite(lms).all(-1)
        try:
            w, h = image_size(it["image"])
        except InputError as e:
            problems.append(str(e))
            continue
        sizes.append((w, h))
        bad = np.isfinite(lms).all(-1) & ((lms[:, 0] < -0.5) | (lms[:, 0] > w - 0.5) | (lms[:, 1] < -0.5) | (lms[:, 1] > h - 0.5))
        for k in np.flatnonzero(bad):
            outside.append(f"{it['id']}: {lset[k].name} at ({lms[k, 0]:.1f}, {lms[k, 1]:.1f}) outside {w}x{h}")
        points.append((lms, w, h))
        usable.append(it)
    problems += outside
    report: dict[str, Any] = {
        "datalist": str(datalist),
        "landmark_set": lset.key,
        "description": doc.get("description"),
        "truth": doc.get("truth"),
        "sites": dict(Counter(it["site"] for it in films if it.get("site"))),
        "sections": {s: sum(it["section"] == s for it in items) for s in sections},
        **({"drawn_from": dict(drawn)} if drawn else {}),
        "images": len(films),
        "with_landmarks": len(points),
        "sizes": {f"{w}x{h}": c for (w, h), c in Counter(sizes).most_common()},
        "spacing": dict(spacings),
        "missing_per_landmark": {lset[k].name: int(m) for k, m in enumerate(missing) if m},
        "missing_total": int(missing.sum()),
        "outside": outside,
        "problems": problems,
    }
    if out_dir is not None and points:
        out_dir = Path(out_dir)
        mw, mh = (int(np.median([s[0] for s in sizes])), int(np.median([s[1] for s in sizes])))
        scaled = np.stack([lms * np.array([mw / w, mh / h]) for lms, w, h in points])
        from PIL import Image

        backgrounds = []
        for it in usable[:mean_images]:
            try:
                img = load_xray(it["image"]).image
            except InputError:
                continue
            backgrounds.append(np.asarray(Image.fromarray(img).resize((mw, mh), Image.BILINEAR)))
        background = np.mean(backgrounds, 0) if backgrounds else np.zeros((mh, mw))
        report["mean_shape_png"] = str(
            save_mean_shape(background, scaled, out_dir / "mean_shape.png", lset, title=f"{len(points)} images, mean shape")
        )
        write_json_atomic(out_dir / "audit.json", report)
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"datalist: {report['datalist']} ({report['landmark_set']})",
        *([f"description: {report['description']}"] if report.get("description") else []),
        *([f"truth: {report['truth']}"] if report.get("truth") else []),
        *(["sites: " + ", ".join(f"{k}={v}" for k, v in report["sites"].items())] if report.get("sites") else []),
        "sections: " + ", ".join(f"{k}={v}" for k, v in report["sections"].items())
        + "".join(f" ({k} drawn from {v})" for k, v in report.get("drawn_from", {}).items()),
        f"images: {report['images']} ({report['with_landmarks']} with landmarks)",
        "sizes: " + ", ".join(f"{k} ({v})" for k, v in report["sizes"].items()),
        "spacing: " + ", ".join(f"{k} ({v})" for k, v in report["spacing"].items()),
        f"missing landmarks: {report['missing_total']}"
        + (" (" + ", ".join(f"{k}={v}" for k, v in report["missing_per_landmark"].items()) + ")" if report["missing_total"] else ""),
        f"problems: {len(report['problems'])}",
    ]
    lines += [f"  - {p}" for p in report["problems"]]
    if "mean_shape_png" in report:
        lines.append(f"mean-shape overlay: {report['mean_shape_png']}")
    return "\n".join(lines)


