"""Agreement of measurements: between predictions and truth, and between annotators (differences, class agreement, Cohen's kappa)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from maht_net.clinical.analysis import ReviewPolicy, analyze_points
from maht_net.clinical.calibration import uncertainty_calibration
from maht_net.codec.uncertainty import landmark_covariances
from maht_net.errors import InputError
from maht_net.io.datalist import load_datalist, points_from_json, read_datalist
from maht_net.io.predictions import prediction_points, prediction_uncertainty
from maht_net.landmarks import LandmarkSet, get_landmark_set


# ---- agreement -------------------------------------------------------------------------------
def _kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two label lists (``None`` when undefined)."""
    if not a:
        return None
    labels = sorted(set(a) | set(b))
    po = float(np.mean([x == y for x, y in zip(a, b)]))
    pe = sum((a.count(c) / len(a)) * (b.count(c) / len(b)) for c in labels)
    return None if pe >= 1 else (po - pe) / (1 - pe)


def agreement_table(reference: Sequence[Mapping[str, Any]], other: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Compare paired analyses (``other - reference``), e.g. prediction vs truth or annotator 2 vs 1.

    Args:
        reference, other: :func:`analyze_points` results, paired by position.

    Returns:
        ``{"measurements": [...], "skeletal_class": {...}, "pairs": n}``; each measurement row has
        ``name``, ``unit``, ``n`` (pairs with both values in the same unit), ``mean_abs``,
        ``mean`` (bias), ``sd``, ``max_abs``, and for classified measurements ``class_n``,
        ``class_agreement`` (fraction) and ``kappa`` (Cohen).
    """
    if len(reference) != len(other):
        raise ValueError(f"{len(reference)} reference analyses but {len(other)} others")
    rows = []
    names = [r["name"] for r in reference[0]["measurements"]] if reference else []
    for i, name in enumerate(names):
        diffs, ca, cb, unit = [], [], [], None
        for ra, rb in zip(reference, other):
            a, b = ra["measurements"][i], rb["measurements"][i]
            if a["name"] != name or b["name"] != name:
                raise ValueError("analyses list their measurements in different orders")
            if a["value"] is None or b["value"] is None:
                continue
            unit = unit or a["unit"]
            if a["unit"] != unit or b["unit"] != unit:
                continue
            diffs.append(b["value"] - a["value"])
            if a["class"] is not None and b["class"] is not None:
                ca.append(a["class"]["code"])
                cb.append(b["class"]["code"])
        d = np.array(diffs)
        row: dict[str, Any] = {"name": name, "unit": unit, "n": len(diffs)}
        row.update(
            {
                "mean_abs": float(np.mean(np.abs(d))) if len(d) else None,
                "mean": float(np.mean(d)) if len(d) else None,
                "sd": float(np.std(d, ddof=1)) if len(d) > 1 else None,
                "max_abs": float(np.max(np.abs(d))) if len(d) else None,
                "class_n": len(ca),
                "class_agreement": float(np.mean([x == y for x, y in zip(ca, cb)])) if ca else None,
                "kappa": _kappa(ca, cb),
            }
        )
        rows.append(row)
    sa = [r["skeletal_class"]["class"] for r in reference]
    sb = [r["skeletal_class"]["class"] for r in other]
    pairs = [(x, y) for x, y in zip(sa, sb) if x is not None and y is not None]
    skeletal = {
        "n": len(pairs),
        "agreement": float(np.mean([x == y for x, y in pairs])) if pairs else None,
        "kappa": _kappa([x for x, _ in pairs], [y for _, y in pairs]),
    }
    return {"pairs": len(reference), "measurements": rows, "skeletal_class": skeletal}


def _all_items(datalist: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    doc = read_datalist(datalist)
    sections = [k for k, v in doc.items() if isinstance(v, list) and all(isinstance(i, dict) and "image" in i for i in v)]
    if not sections:
        raise InputError(datalist, "no section with items (e.g. 'training') in the datalist")
    return load_datalist(datalist, sections, base_dir=base_dir)


def annotator_agreement(
    datalist: str | os.PathLike | Sequence[Mapping[str, Any]],
    ids: Sequence[str] | None = None,
    landmark_set: str | LandmarkSet | None = None,
) -> dict[str, Any]:
    """Annotator 1 vs annotator 2: the reference level any model's measurements are read against.

    Args:
        datalist: a datalist path (all sections) or loaded items; items need ``"annotators"``
            ``{name: [[x, y] | null] * N}`` (as ``maht-net prepare labelme`` writes with two
            annotators) and ``spacing``.
        ids: restrict to these item ids (e.g. the images a model was evaluated on).

    Returns:
        ``{"annotators": [first, second], "n_images", "table"}`` where ``table`` is
        :func:`agreement_table` (second - first); measurements in mm when spacing is known.

    Raises:
        InputError: no item carries two annotators.
    """
    where = datalist if isinstance(datalist, (str, os.PathLike)) else None
    if isinstance(datalist, (str, os.PathLike)):
        lset = get_landmark_set(landmark_set or read_datalist(datalist).get("landmark_set", "isbi2015"))
        items = _all_items(datalist)
    else:
        lset = get_landmark_set(landmark_set or "isbi2015")
        items = list(datalist)
    if ids is not None:
        keep = set(ids)
        items = [it for it in items if it.get("id") in keep]
    first, second, names = [], [], None
    for it in items:
        ann = it.get("annotators")
        if not isinstance(ann, Mapping) or len(ann) < 2:
            continue
        keys = list(ann)[:2]
        names = names or keys
        pts = [points_from_json(ann[k], len(lset), where, f"annotators[{k!r}]") for k in keys]
        first.append(analyze_points(pts[0], it.get("spacing"), None, lset))
        second.append(analyze_points(pts[1], it.get("spacing"), None, lset))
    if not first:
        raise InputError(where, "no item has two annotators ('annotators' with two entries, as 'prepare labelme' writes)")
    return {"annotators": list(names), "n_images": len(first), "table": agreement_table(first, second)}


# ---- predictions vs truth --------------------------------------------------------------------
def compare_with_truth(
    preds: Sequence[Mapping[str, Any]],
    datalist: str | os.PathLike,
    policy: ReviewPolicy | None = None,
    n_samples: int = 2000,
    seed: int = 0,
    base_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Measurement error and classification accuracy of predictions against a datalist's truth.

    Items are matched by ``id`` over all sections of the datalist. Both sides are measured with
    the datalist's spacing (else the prediction's), so they share units. When the matched items
    carry two annotators, their agreement on the same images is added as the reference level.

    Returns:
        ``{"n_images", "unmatched", "error": agreement_table(truth, prediction), "calibration",
        "annotator_reference" (or None), "per_image": [{"id", "prediction", "truth"}]}``.

    Raises:
        InputError: no prediction matches a datalist item.
    """
    lset = get_landmark_set(read_datalist(datalist).get("landmark_set", "isbi2015"))
    items = {it["id"]: it for it in _all_items(datalist, base_dir)}
    matched, unmatched = [], []
    for pred in preds:
        (matched if pred.get("id") in items and items[pred["id"]].get("landmarks") is not None else unmatched).append(pred)
    if not matched:
        raise InputError(datalist, f"no prediction id matches a datalist item with landmarks ({len(preds)} predictions)")
    truths, analyses, per_image = [], [], []
    pp, tp, uu, ss, cc = [], [], [], [], []
    for pred in matched:
        item = items[pred["id"]]
        spacing = item["spacing"] if item["spacing"] is not None else pred.get("spacing")
        points = np.asarray(pred["points"], dtype=float) if "points" in pred else prediction_points(pred)  # type: ignore[arg-type]
        unc = prediction_uncertainty(pred)
        a = analyze_points(points, spacing, unc, lset, policy, n_samples, seed, covariance_px=landmark_covariances(pred))
        t = analyze_points(item["landmarks"], spacing, None, lset, policy)
        analyses.append(a)
        truths.append(t)
        per_image.append({"id": pred["id"], "prediction": a, "truth": t})
        pp.append(points)
        tp.append(item["landmarks"])
        uu.append(unc)
        ss.append(spacing)
        cc.append(landmark_covariances(pred))
    calibration = None
    if np.isfinite(np.array(uu)).any():
        calibration = uncertainty_calibration(np.stack(pp), np.stack(uu), np.stack(tp), ss, policy=policy, covariance_px=np.stack(cc))
    reference = None
    if any(isinstance(items[p["id"]].get("annotators"), Mapping) for p in matched):
        reference = annotator_agreement([items[p["id"]] for p in matched], landmark_set=lset)
    return {
        "n_images": len(matched),
        "unmatched": [p.get("id") for p in unmatched],
        "error": agreement_table(truths, analyses),
        "calibration": calibration,
        "annotator_reference": reference,
        "per_image": per_image,
    }
