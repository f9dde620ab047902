"""Evaluate prediction files against a datalist's ground truth (``maht-net evaluate``).

Each datalist item (``id``, ``landmarks`` as ``(N, 2)`` ``(x, y)`` pixels, ``spacing``) is
matched to ``<id>_landmarks.json`` in the predictions folder (see
:mod:`maht_net.io.predictions`). Errors are in mm with the datalist's spacing, falling back to
the prediction's; in pixels when neither is known (for every image, so that one summary never
mixes units). Definitions of MRE, SD, SDR and the intervals are those of :mod:`maht_net.bench.metrics`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maht_net.bench.metrics import DEFAULT_THRESHOLDS, paired_comparison, radial_errors, summarize
from maht_net.errors import InputError
from maht_net.inference.predictor import Predictor
from maht_net.io.atomic import write_json_atomic
from maht_net.io.datalist import load_datalist, read_datalist
from maht_net.io.image import image_size
from maht_net.io.predictions import PREDICTION_SUFFIX, find_predictions, prediction_points, read_prediction
from maht_net.landmarks import LandmarkSet, get_landmark_set

__all__ = ["METRICS_FORMAT", "evaluate_predictions", "compare_evaluations", "error_matrix", "mean_shape_baseline", "predictor_errors"]

METRICS_FORMAT = "maht-net-metrics"

logger = logging.getLogger(__name__)


def predictor_errors(
    predictor: Predictor, items: Sequence[dict[str, Any]], prepared: Sequence[dict[str, Any]] | None = None
) -> tuple[np.ndarray, str]:
    """Run ``predictor`` on labelled datalist items and measure it, without writing files.
    ``prepared``: the items' network inputs from :meth:`Predictor.prepare`, reused across models.

    Returns:
        ``(errors, unit)``: ``(F, N)`` landmark errors (NaN where a landmark is not annotated or
        not placed), in mm when every item has a spacing, else in pixels for every item
        (``unit`` ``"mm"`` or ``"px"``), so one figure never mixes units.
    """
    unit = "mm" if all(it.get("spacing") for it in items) else "px"
    if prepared is not None:
        preds = predictor.predict(prepared, prepared=True)
    else:
        preds = predictor.predict([{k: it[k] for k in ("image", "id", "spacing") if it.get(k) is not None} for it in items])
    errors = [radial_errors(prediction_points(pred), np.asarray(it["landmarks"], dtype=float), it["spacing"] if unit == "mm" else None)
              for pred, it in zip(preds, items)]
    return np.asarray(errors), unit


def _prediction_spacing(pred: dict[str, Any], path: Path) -> tuple[float, float] | None:
    spacing = pred.get("spacing")
    if spacing is None:
        return None
    if (
        not isinstance(spacing, (list, tuple))
        or len(spacing) != 2
        or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0 for s in spacing
        )
    ):
        raise InputError(path, f"spacing must be [sx, sy] in mm (positive) or null, got {spacing!r}")
    return float(spacing[0]), float(spacing[1])


def _json_row(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]


def evaluate_predictions(
    datalist: str | os.PathLike,
    predictions_dir: str | os.PathLike,
    section: str = "test",
    out: str | os.PathLike | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    base_dir: str | os.PathLike | None = None,
    allow_missing: bool = False,
    landmark_set: str | LandmarkSet | None = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare every prediction in ``predictions_dir`` with the truth of one datalist section.

    Args:
        datalist: datalist JSON (see :mod:`maht_net.io.datalist`); items need ``landmarks``.
        predictions_dir: folder of ``<id>_landmarks.json`` files; other files are ignored.
        section: datalist section to evaluate.
        out: when given, the result is written there as JSON (atomically).
        thresholds: SDR thresholds, in mm (in pixels when no spacing is known).
        base_dir: resolves relative image paths of the datalist (not needed for evaluation).
        allow_missing: skip (and list) datalist items without a prediction instead of failing.
        landmark_set: override the datalist's ``landmark_set``.
        n_bootstrap, seed: bootstrap intervals (see :func:`maht_net.bench.metrics.summarize`).

    Returns:
        ``{"format", "format_version", "datalist", "section", "predictions", "landmark_set",
        "unit", "spacing_source", "missing_predictions", "counts", "summary", "per_image"}``;
        ``per_image`` rows hold ``id``, ``prediction`` path, ``spacing``, ``mre`` and ``errors``
        (``N`` values, ``None`` where not evaluated).

    Raises:
        InputError: missing or malformed datalist, folder or prediction file (naming it), a
            wrong landmark count or set, a duplicate id, an item without landmarks, or a
            datalist item without a prediction (unless ``allow_missing``).
    """
    datalist, predictions_dir = Path(datalist).absolute(), Path(predictions_dir).absolute()
    lset = get_landmark_set(landmark_set or read_datalist(datalist).get("landmark_set", "isbi2015"))
    items = load_datalist(datalist, section, base_dir=base_dir, landmark_set=lset)
    found = find_predictions(predictions_dir)

    seen: set[str] = set()
    for item in items:
        if item["id"] in seen:
            raise InputError(datalist, f"duplicate id {item['id']!r} in section {section!r}")
        seen.add(item["id"])
        if item.get("landmarks") is None:
            raise InputError(datalist, f"item {item['id']!r} of section {section!r} has no landmarks to evaluate")
    missing = [item["id"] for item in items if item["id"] not in found]
    if missing and not allow_missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise InputError(
            predictions_dir,
            f"no prediction for {len(missing)} of {len(items)} items of section {section!r} ({shown}); expected "
            f"<id>{PREDICTION_SUFFIX} (allow_missing / --allow-missing skips them)",
        )
    if missing:
        logger.warning("no prediction for %d of %d items, skipped: %s", len(missing), len(items), ", ".join(missing))

    ids, paths, truth, points, spacings, sources = [], [], [], [], [], []
    for item in items:
        if item["id"] not in found:
            continue
        path = found[item["id"]]
        pred = read_prediction(path, lset)
        if pred.get("landmark_set", lset.key) != lset.key:
            raise InputError(path, f"landmark set {pred['landmark_set']!r} does not match the datalist's {lset.key!r}")
        pred_spacing = _prediction_spacing(pred, path)
        spacing = item["spacing"] if item["spacing"] is not None else pred_spacing
        sources.append("datalist" if item["spacing"] is not None else "prediction" if pred_spacing else "none")
        ids.append(item["id"])
        paths.append(path)
        truth.append(item["landmarks"])
        points.append(pred["points"])
        spacings.append(spacing)
    if not ids:
        raise InputError(predictions_dir, f"no prediction matches an item of section {section!r}")

    truth_arr, pred_arr = np.stack(truth), np.stack(points)
    known = [s is not None for s in spacings]
    if all(known):
        unit, spacing_arr = "mm", np.array(spacings)
    else:
        unit, spacing_arr = "px", None
        if any(known):
            logger.warning(
                "pixel spacing unknown for %d of %d images: every error is reported in pixels",
                known.count(False),
                len(known),
            )
    errors = radial_errors(pred_arr, truth_arr, spacing_arr)
    truth_missing = np.isnan(truth_arr).any(axis=-1)
    unplaced = np.isnan(pred_arr).any(axis=-1) & ~truth_missing

    summary = summarize(errors, thresholds, lset.names, ids, n_bootstrap=n_bootstrap, seed=seed, unit=unit)
    per_image = [
        {
            "id": i,
            "prediction": str(p),
            "spacing": None if s is None else [float(s[0]), float(s[1])],
            "mre": float(np.nanmean(e)) if np.isfinite(e).any() else None,
            "errors": _json_row(e),
        }
        for i, p, s, e in zip(ids, paths, spacings, errors)
    ]
    result = {
        "format": METRICS_FORMAT,
        "format_version": 1,
        "datalist": str(datalist),
        "section": section,
        "predictions": str(predictions_dir),
        "landmark_set": lset.key,
        "unit": unit,
        "spacing_source": {k: sources.count(k) for k in ("datalist", "prediction", "none")},
        "missing_predictions": missing,
        "counts": {
            "items": len(items),
            "evaluated": len(ids),
            "annotation_missing": int(truth_missing.sum()),
            "prediction_unplaced": int(unplaced.sum()),
        },
        "summary": summary,
        "per_image": per_image,
    }
    if out is not None:
        write_json_atomic(out, result)
    return result


def mean_shape_baseline(
    datalist: str | os.PathLike, train_section: str = "training", test_section: str = "test", base_dir: str | os.PathLike | None = None
) -> dict[str, Any]:
    """The error of always predicting the training set's mean shape: the floor a model must beat.

    The mean is taken in coordinates relative to each image's size, ``(x / W, y / H)``, and
    scaled back to each test image, so films of different sizes are handled. Returns the
    :func:`~maht_net.bench.metrics.summarize` dict (no bootstrap) with ``errors`` ``(B, N)`` added.
    """

    def relative(items):
        sizes = np.array([image_size(it["image"]) for it in items], dtype=float)  # (B, 2) (W, H)
        return np.stack([it["landmarks"] for it in items]) / sizes[:, None, :], sizes

    train = load_datalist(datalist, train_section, base_dir=base_dir)
    test = load_datalist(datalist, test_section, base_dir=base_dir)
    rel_train, _ = relative(train)
    mean = np.nanmean(rel_train, axis=0)
    rel_test, sizes = relative(test)
    truth = rel_test * sizes[:, None, :]
    pred = np.broadcast_to(mean, truth.shape) * sizes[:, None, :]
    spacing = [it["spacing"] for it in test]
    known = all(s is not None for s in spacing)
    errors = radial_errors(pred, truth, np.array(spacing) if known else None)
    names = get_landmark_set(read_datalist(datalist).get("landmark_set", "isbi2015")).names
    summary = summarize(errors, landmark_names=names, ids=[it["id"] for it in test], n_bootstrap=0, unit="mm" if known else "px")
    summary["errors"] = errors
    return summary


def error_matrix(result: dict[str, Any], ids: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Image ids and their ``(images, N)`` errors (NaN = not evaluated) from an
    :func:`evaluate_predictions` result (or its ``metrics.json``), in ``ids`` order when given."""
    rows = {r["id"]: r for r in result["per_image"]}
    ids = list(rows) if ids is None else ids
    return ids, np.array([[np.nan if v is None else v for v in rows[i]["errors"]] for i in ids], dtype=float)


def compare_evaluations(
    result_a: dict[str, Any], result_b: dict[str, Any], n_bootstrap: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Paired comparison (A - B) of two :func:`evaluate_predictions` results on their common images.

    Raises:
        InputError: the two results are in different units or landmark sets, or share no image.
    """
    where = result_b["predictions"]
    if result_a["unit"] != result_b["unit"]:
        raise InputError(where, f"errors are in {result_b['unit']}, the compared predictions' in {result_a['unit']}")
    if result_a["landmark_set"] != result_b["landmark_set"]:
        raise InputError(where, f"landmark set {result_b['landmark_set']!r} differs from {result_a['landmark_set']!r}")
    ids_b = {r["id"] for r in result_b["per_image"]}
    common = [r["id"] for r in result_a["per_image"] if r["id"] in ids_b]
    if not common:
        raise InputError(where, "no image in common with the compared predictions")
    comparison = paired_comparison(
        error_matrix(result_a, common)[1], error_matrix(result_b, common)[1], common, n_bootstrap=n_bootstrap, seed=seed, unit=result_a["unit"]
    )
    return {"a": result_a["predictions"], "b": result_b["predictions"], **comparison}


