"""Do two sites mark the landmarks the same way? Shape analysis of the ground truth alone.

    python scripts/site_conventions.py --datalist datalists/two_sites.json --dataset-dir ../shared/data

Every film's 19 points (in mm, from the item's spacing) are aligned to the pooled mean shape by a
similarity transform (generalised Procrustes: translation, rotation, one scale). After
alignment, a landmark that the two sites define alike sits at the same place relative to the
others; a systematic offset between the site means that is large against the within-site spread
points at a different convention (or a different anatomy/projection), which no model trained on
one site can learn. Printed per landmark: the offset between the site means (mm, at the pooled
mean scale) with its direction, each site's spread (RMS distance to its own mean), and the
offset in units of that spread. Also the scale: the median film's skull size in mm per site.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from maht_net.io.datalist import load_datalist, read_datalist
from maht_net.landmarks import get_landmark_set


def _align(shape: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Similarity transform of ``shape`` (N, 2) onto ``ref`` (N, 2), least squares (Umeyama)."""
    mu_s, mu_r = shape.mean(0), ref.mean(0)
    s, r = shape - mu_s, ref - mu_r
    u, sig, vt = np.linalg.svd(s.T @ r)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.diag([1.0, d])
    rot = u @ fix @ vt
    scale = (sig * np.diag(fix)).sum() / (s**2).sum()
    return scale * s @ rot + mu_r


def procrustes(shapes: np.ndarray, iterations: int = 10) -> np.ndarray:
    ref = shapes[0] - shapes[0].mean(0)
    for _ in range(iterations):
        aligned = np.stack([_align(s, ref) for s in shapes])
        new = aligned.mean(0)
        # keep the pooled mean at the average film size, so offsets read in mm
        new *= np.sqrt(np.mean([((s - s.mean(0)) ** 2).sum() for s in shapes]) / ((new - new.mean(0)) ** 2).sum())
        ref = new - new.mean(0)
    return np.stack([_align(s, ref) for s in shapes])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datalist", required=True)
    ap.add_argument("--dataset-dir", help="data root that relative image paths resolve against")
    ap.add_argument("--sections", nargs="+", default=["training", "validation", "test"])
    args = ap.parse_args()
    doc = read_datalist(args.datalist)
    names = get_landmark_set(doc.get("landmark_set", "isbi2015")).names
    items = load_datalist(args.datalist, args.sections, base_dir=args.dataset_dir)
    items = [it for it in items if it.get("landmarks") is not None and np.isfinite(it["landmarks"]).all() and it["spacing"]]
    sites = sorted({it.get("site", Path(args.datalist).stem) for it in items})
    mm = np.stack([it["landmarks"] * np.asarray(it["spacing"]) for it in items])
    site_of = np.array([it.get("site", Path(args.datalist).stem) for it in items])
    size = {s: float(np.median([np.sqrt(((m - m.mean(0)) ** 2).sum(1).mean()) for m in mm[site_of == s]])) for s in sites}
    aligned = procrustes(mm)
    print(f"{len(items)} films: " + ", ".join(f"{s} {int((site_of == s).sum())} (RMS landmark radius {size[s]:.1f} mm)" for s in sites))
    if len(sites) != 2:
        print("need exactly two sites to compare")
        return 0
    a, b = (aligned[site_of == s] for s in sites)
    mean_a, mean_b = a.mean(0), b.mean(0)
    spread_a = np.sqrt(((a - mean_a) ** 2).sum(-1).mean(0))
    spread_b = np.sqrt(((b - mean_b) ** 2).sum(-1).mean(0))
    offset = mean_b - mean_a
    dist = np.linalg.norm(offset, axis=1)
    pooled = np.sqrt((spread_a**2 + spread_b**2) / 2)
    print(f"\n{'landmark':<24} {sites[1]} - {sites[0]} mean (dx, dy) mm   |d| mm   spread {sites[0]} / {sites[1]} mm   |d| / spread")
    for k in np.argsort(-dist / pooled):
        print(f"{names[k]:<24} ({offset[k, 0]:+6.2f}, {offset[k, 1]:+6.2f})              {dist[k]:5.2f}    "
              f"{spread_a[k]:5.2f} / {spread_b[k]:5.2f}              {dist[k] / pooled[k]:5.2f}")
    print("\n(x to the face, y down; after similarity alignment to the pooled mean shape)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
