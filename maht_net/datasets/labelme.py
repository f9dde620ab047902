"""LabelMe landmark annotations -> datalist, merging annotators, with an audit of every fix.

Real annotation files contain mistakes: a label used twice (usually a second landmark typed with
the wrong label), a label missing, ``imagePath`` naming another file, points outside the image.
Nothing is guessed silently: every decision is written to the audit, which the CLI prints and
saves beside the datalist (``<datalist>.audit.json``).

Rules:
    * annotations are matched to images by file stem (``001.json`` <-> ``001.png``), whatever
      ``imagePath`` says; a differing ``imagePath`` is reported;
    * a duplicated label is resolved only when another annotator placed that landmark once:
      the point closest to it is kept, the other(s) dropped, and distances are reported; with no
      other annotator to arbitrate, the landmark is marked missing for that annotator;
    * the ground truth is the mean over the annotators who placed the landmark;
    * a film whose annotators disagree far more than on the other films (mean distance between
      their points over ``DISPUTE_FACTOR`` times the set's median, with at least
      ``DISPUTE_MIN_FILMS`` films annotated twice) is *disputed*: the mean of a misregistered
      annotation and a correct one is nobody's landmark, and two annotators cannot say which one
      is wrong. The audit names it; ``disputed="drop"`` leaves it out of the datalist;
    * unknown labels and points outside the image are errors, unless ``lenient`` is set, in
      which case the point is dropped and reported.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maht_net.errors import InputError
from maht_net.io.atomic import write_json_atomic
from maht_net.io.datalist import make_item, points_to_json, write_datalist
from maht_net.io.image import IMAGE_SUFFIXES, image_size
from maht_net.io.labelme import read_labelme
from maht_net.landmarks import LandmarkSet, get_landmark_set
from maht_net.transforms.io import spacing_pair

__all__ = ["DISPUTE_FACTOR", "DISPUTE_MIN_FILMS", "FileAudit", "AnnotatorPoints", "read_annotator", "merge_annotators", "annotator_disagreement", "disputed_films", "prepare_labelme"]

DISPUTE_FACTOR = 3.0
"""A film is disputed when its annotators' mean disagreement exceeds this many times the set's
median (Hamedan: median 11.3 px = 1.43 mm; the one disputed film, 123, 6.98 mm = 4.9 x; the next, 2.39 mm)."""
DISPUTE_MIN_FILMS = 5
"""Films annotated twice that the median needs before any film is called disputed."""


@dataclass
class FileAudit:
    """What was found and decided for one image."""

    id: str
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    disputed: bool = False

    @property
    def clean(self) -> bool:
        return not self.notes and not self.missing and not self.disputed


@dataclass
class AnnotatorPoints:
    """All candidate points of one annotator: ``candidates[k]`` is a list of ``(x, y)``."""

    name: str
    path: str
    candidates: dict[int, list[tuple[float, float]]]


def read_annotator(
    path: Path, annotator: str, lset: LandmarkSet, size: tuple[int, int], audit: FileAudit, lenient: bool
) -> AnnotatorPoints:
    """Read one LabelMe file into per-landmark candidate lists, checking labels and bounds.

    Args:
        size: ``(W, H)`` of the image; points must satisfy ``-0.5 <= x <= W - 0.5`` (same for y).
    """
    lm_file = read_labelme(path)
    width, height = size
    if lm_file.image_path and Path(lm_file.image_path.replace("\\", "/")).stem != path.stem:
        audit.notes.append(f"{annotator}: imagePath {lm_file.image_path!r} does not match; matched by file name")
    if (lm_file.width, lm_file.height) not in ((width, height), (None, None)):
        raise InputError(
            path, f"imageWidth x imageHeight is {lm_file.width}x{lm_file.height} but the image is {width}x{height}"
        )
    for shape in lm_file.ignored_shapes:
        audit.notes.append(f"{annotator}: ignored non-point shape {shape}")
    candidates: dict[int, list[tuple[float, float]]] = {}
    for p in lm_file.points:
        try:
            k = lset.position_of(p.label)
        except KeyError:
            if not lenient:
                raise InputError(path, f"unknown landmark label {p.label!r} (expected l1..l{len(lset)} or names)") from None
            audit.notes.append(f"{annotator}: dropped point with unknown label {p.label!r}")
            continue
        if not (-0.5 <= p.x <= width - 0.5 and -0.5 <= p.y <= height - 0.5):
            problem = f"{lset[k].name} ({p.label}) at ({p.x:.1f}, {p.y:.1f}) is outside the {width}x{height} image"
            if not lenient:
                raise InputError(path, problem)
            audit.notes.append(f"{annotator}: dropped {problem}")
            continue
        candidates.setdefault(k, []).append((p.x, p.y))
    return AnnotatorPoints(annotator, str(path), candidates)


def merge_annotators(annotators: Sequence[AnnotatorPoints], lset: LandmarkSet, audit: FileAudit) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Resolve duplicates and average annotators.

    Returns:
        The merged ``(N, 2)`` ``(x, y)`` array (NaN = missing) and each annotator's resolved
        ``(N, 2)`` array keyed by annotator name.
    """
    n = len(lset)
    resolved = {a.name: np.full((n, 2), np.nan) for a in annotators}
    for a in annotators:
        for k, cands in a.candidates.items():
            if len(cands) == 1:
                resolved[a.name][k] = cands[0]
                continue
            referees = [np.array(o.candidates[k][0]) for o in annotators if o is not a and len(o.candidates.get(k, [])) == 1]
            label = f"{lset[k].name} (l{k + 1})"
            if not referees:
                audit.notes.append(
                    f"{a.name}: {label} placed {len(cands)} times at "
                    + ", ".join(f"({x:.1f}, {y:.1f})" for x, y in cands)
                    + "; no other annotator to arbitrate, so it is treated as missing"
                )
                continue
            ref = np.mean(referees, axis=0)
            dists = [float(np.hypot(*(np.array(c) - ref))) for c in cands]
            keep = int(np.argmin(dists))
            resolved[a.name][k] = cands[keep]
            dropped = "; ".join(f"dropped ({x:.1f}, {y:.1f}) at {d:.1f} px" for i, ((x, y), d) in enumerate(zip(cands, dists)) if i != keep)
            audit.notes.append(
                f"{a.name}: {label} placed {len(cands)} times; kept ({cands[keep][0]:.1f}, {cands[keep][1]:.1f}), "
                f"{dists[keep]:.1f} px from the other annotator's point; {dropped}"
            )
    stack = np.stack(list(resolved.values()))  # (A, N, 2)
    counts = np.isfinite(stack[..., 0]).sum(0)
    merged = np.where(counts[:, None] > 0, np.nansum(stack, 0) / np.maximum(counts, 1)[:, None], np.nan)
    for name, pts in resolved.items():
        for k in np.flatnonzero(~np.isfinite(pts[:, 0])):
            if counts[k] > 0:
                audit.notes.append(f"{name}: {lset[k].name} (l{k + 1}) missing; truth from the other annotator(s)")
    audit.missing = [lset[k].name for k in np.flatnonzero(counts == 0)]
    return merged, resolved


def annotator_disagreement(resolved: dict[str, np.ndarray]) -> float:
    """Mean distance (px) between the annotators' points of one film, over landmark pairs both
    placed (NaN with fewer than two annotators or no shared landmark)."""
    pts = list(resolved.values())
    d = [np.linalg.norm(a - b, axis=1) for i, a in enumerate(pts) for b in pts[i + 1 :]]
    d = np.concatenate(d) if d else np.array([])
    d = d[np.isfinite(d)]
    return float(d.mean()) if d.size else float("nan")


def disputed_films(disagreement: dict[str, float], factor: float = DISPUTE_FACTOR, min_films: int = DISPUTE_MIN_FILMS) -> tuple[list[str], float]:
    """The ids whose disagreement (:func:`annotator_disagreement`) exceeds ``factor`` times the
    median over the films that have one, and that median (NaN, and no film, below ``min_films``)."""
    known = {k: v for k, v in disagreement.items() if np.isfinite(v)}
    if len(known) < min_films:
        return [], float("nan")
    median = float(np.median(list(known.values())))
    return sorted(k for k, v in known.items() if v > factor * median), median


def _find_images(images_dir: Path) -> dict[str, Path]:
    if not images_dir.is_dir():
        raise InputError(images_dir, "images folder not found")
    found: dict[str, Path] = {}
    for p in sorted(images_dir.iterdir()):
        name = p.name.lower()
        if p.is_file() and any(name.endswith(s) for s in IMAGE_SUFFIXES):
            if p.name.split(".")[0] in found:
                raise InputError(p, f"two images share the stem {p.name.split('.')[0]!r}")
            found[p.name.split(".")[0]] = p
    if not found:
        raise InputError(images_dir, f"no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return found


def _split(ids: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"fractions must be in [0, 1) and sum below 1, got val={val_fraction} test={test_fraction}")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n_val, n_test = round(len(ids) * val_fraction), round(len(ids) * test_fraction)
    parts = {"test": order[:n_test], "validation": order[n_test : n_test + n_val], "training": order[n_test + n_val :]}
    return {k: sorted(v) for k, v in parts.items() if v or k == "training"}


def prepare_labelme(
    images_dir: str | os.PathLike,
    annotation_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    spacing: float | Sequence[float] | None = None,
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    seed: int = 0,
    landmark_set: str | LandmarkSet = "isbi2015",
    lenient: bool = False,
    require_all_annotators: bool = False,
    disputed: str = "keep",
) -> tuple[Path, list[FileAudit]]:
    """Build a datalist from LabelMe annotations of one or more annotators.

    Every file is read and checked before anything is written; the datalist and its audit
    (``<out>.audit.json``) are written atomically.

    Args:
        spacing: mm/px, a scalar (isotropic) or ``(sx, sy)``; ``None`` = unknown (metrics in px).
        require_all_annotators: raise if an image lacks a file from some annotator (else: audit).
        disputed: ``"keep"`` or ``"drop"`` the films whose annotators disagree far more than on
            the others (:func:`disputed_films`; named in the audit either way).

    Returns:
        The datalist path and the per-image audit.
    """
    if disputed not in ("keep", "drop"):
        raise ValueError(f"disputed must be 'keep' or 'drop', not {disputed!r}")
    lset = get_landmark_set(landmark_set)
    images = _find_images(Path(images_dir))
    dirs = [Path(d) for d in annotation_dirs]
    if not dirs:
        raise ValueError("at least one annotations folder is needed")
    for d in dirs:
        if not d.is_dir():
            raise InputError(d, "annotations folder not found")
    names = [d.name for d in dirs]
    if len(set(names)) != len(names):
        names = [f"annotator{i + 1}" for i in range(len(dirs))]
    if spacing is not None:
        spacing = spacing_pair(spacing, "spacing")
    items, audits, disagreement = [], {}, {}
    orphans = sorted({p.stem for d in dirs for p in d.glob("*.json")} - set(images))
    for stem, image in images.items():
        audit = FileAudit(stem)
        size = image_size(image)
        annotators = []
        for d, name in zip(dirs, names):
            path = d / f"{stem}.json"
            if not path.is_file():
                if require_all_annotators:
                    raise InputError(path, "annotation file missing")
                audit.notes.append(f"{name}: no annotation file")
                continue
            annotators.append(read_annotator(path, name, lset, size, audit, lenient))
        audits[stem] = audit
        if not annotators:
            continue
        merged, resolved = merge_annotators(annotators, lset, audit)
        extra: dict[str, Any] = {"width": size[0], "height": size[1]}
        if len(annotators) > 1:
            extra["annotators"] = {name: points_to_json(p) for name, p in resolved.items()}
            disagreement[stem] = annotator_disagreement(resolved)
        items.append((stem, make_item(image.absolute(), merged, spacing, stem, **extra)))
    if not items:
        raise InputError(images_dir, "no image has an annotation file")
    flagged, median = disputed_films(disagreement)

    def in_mm(px: float) -> str:
        return "" if spacing is None else f" ({px * float(np.mean(spacing)):.2f} mm)"

    for stem in flagged:
        audits[stem].disputed = True
        value = disagreement[stem]
        audits[stem].notes.append(
            f"disputed: the annotators' points are {value:.1f} px{in_mm(value)} apart on average, "
            f"{value / median:.1f} x the set's median {median:.1f} px{in_mm(median)}: one annotation is likely "
            f"misregistered and their mean is nobody's landmark; {'left out of the datalist' if disputed == 'drop' else 'kept (disputed=drop leaves it out)'}"
        )
    if disputed == "drop":
        items = [(s, it) for s, it in items if s not in flagged]
    parts = _split([s for s, _ in items], val_fraction, test_fraction, seed)
    by_id = dict(items)
    out = Path(out)
    description = f"LabelMe landmarks from {', '.join(map(str, dirs))}; truth = mean of {len(dirs)} annotator(s)"
    if spacing is None:
        description += "; no pixel spacing (errors in px)"
    if disputed == "drop" and flagged:
        description += f"; left out, annotators disputed: {', '.join(flagged)}"
    path = write_datalist(
        out,
        {k: [by_id[i] for i in ids] for k, ids in parts.items()},
        landmark_set=lset,
        description=description,
        split={"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed},
    )
    write_json_atomic(
        out.with_name(out.name + ".audit.json"),
        {
            "files": [asdict(a) for a in audits.values() if not a.clean],
            "orphan_annotations": orphans,
            "images": len(images),
            "disagreement": {
                "median_px": None if np.isnan(median) else round(median, 2),
                "factor": DISPUTE_FACTOR,
                "disputed": flagged,
                "action": disputed,
            },
        },
    )
    audits = list(audits.values())
    if orphans:
        audits.append(FileAudit("(orphans)", [f"annotation without image: {o}.json" for o in orphans]))
    return path, audits


def format_audit(audits: Sequence[FileAudit]) -> str:
    """Readable audit: one block per image with notes, then totals."""
    lines = []
    for a in audits:
        if a.clean:
            continue
        lines.append(f"{a.id}:")
        lines += [f"  - {n}" for n in a.notes]
        if a.missing:
            lines.append(f"  - missing in the ground truth: {', '.join(a.missing)}")
    flagged = sum(not a.clean for a in audits)
    lines.append(
        f"audit: {len(audits)} images, {flagged} with findings, {sum(len(a.missing) for a in audits)} landmarks missing, "
        f"{sum(a.disputed for a in audits)} disputed"
    )
    return "\n".join(lines)


