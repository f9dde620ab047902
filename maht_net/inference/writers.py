"""Writers: prediction documents from decoded batches, their files, and the Ignite handler that writes them as an evaluator runs."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from maht_net.clinical.analysis import analyze_prediction
from maht_net.codec.uncertainty import landmark_covariances
from maht_net.io.image import load_xray
from maht_net.io.predictions import build_prediction, prediction_points, write_prediction
from maht_net.transforms.io import SPACING_FALLBACK
from maht_net.visualize import save_overlay


def _meta_list(meta: Mapping[str, Any], key: str, n: int) -> list:
    value = meta.get(key)
    if value is None:
        return [None] * n
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value[i] for i in range(n)]


def prediction_from_batch(
    batch: Mapping[str, Any], output: Mapping[str, Any], landmark_set: str = "isbi2015", model: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Prediction documents (see :mod:`maht_net.io.predictions`) for one decoded batch.

    ``batch`` holds the collated samples (``image`` MetaTensor with its meta, ``id``,
    ``orig_spacing``); ``output`` the ``pred_points``/``pred_spread``/``pred_covariance``/
    ``pred_confidence`` (and ``uncertainty_calibration``) of :class:`DecodeLandmarksd`, all in
    original pixels, and after the refinement stage the first stage's ``coarse_points``/``coarse_spread``
    and the ``refine_spacing``/``refine_spacing_source`` its patches were cut at and their ``refine_shift_mm``. Each document carries the cephalometric
    measurements of :func:`maht_net.clinical.analysis.analyze_prediction` under ``"measurements"``
    and, when given, the ``model`` that made it (:func:`~maht_net.io.checkpoint.model_identity`).
    """
    points = torch.as_tensor(output["pred_points"]).detach().cpu().numpy()
    spread = torch.as_tensor(output["pred_spread"]).detach().cpu().numpy()
    covariance = torch.as_tensor(output["pred_covariance"]).detach().cpu().numpy() if "pred_covariance" in output else None
    conf = torch.as_tensor(output["pred_confidence"]).detach().cpu().numpy()
    coarse = torch.as_tensor(output["coarse_points"]).detach().cpu().numpy() if "coarse_points" in output else None
    coarse_spread = torch.as_tensor(output["coarse_spread"]).detach().cpu().numpy() if "coarse_points" in output else None
    refine_spacing = torch.as_tensor(output["refine_spacing"]).cpu().numpy() if "refine_spacing" in output else None
    n = points.shape[0]
    meta = getattr(batch["image"], "meta", {})
    files = _meta_list(meta, "filename_or_obj", n)
    sizes = _meta_list(meta, "original_size", n)
    origins = _meta_list(meta, "origin", n)
    fallback = _meta_list(meta, SPACING_FALLBACK, n)
    spacings = torch.as_tensor(batch["orig_spacing"]).cpu().numpy()
    ids = batch.get("id") or [Path(f).name.split(".")[0] for f in files]
    preds = []
    for i in range(n):
        w, h = (int(v) for v in np.asarray(sizes[i]))
        sp = spacings[i]
        preds.append(
            build_prediction(
                str(files[i]),
                w,
                h,
                points[i],
                spacing=None if not np.all(np.isfinite(sp)) else sp,
                uncertainty_px=spread[i],
                confidence=conf[i],
                landmark_set=landmark_set,
                item_id=str(ids[i]),
                origin=tuple(float(v) for v in np.asarray(origins[i])) if origins[i] is not None else (0.0, 0.0),
                covariance_px=None if covariance is None else covariance[i],
                uncertainty_calibration=output.get("uncertainty_calibration"),
                coarse_points=None if coarse is None else coarse[i],
                coarse_uncertainty_px=None if coarse_spread is None else coarse_spread[i],
                **({"model": dict(model)} if model else {}),
                **({"spacing_source": "fallback"} if fallback[i] is not None and bool(fallback[i]) else {}),
                **(
                    {"refinement": {"film_spacing_mm": [float(v) for v in refine_spacing[i]], "film_spacing_from": output["refine_spacing_source"][i],
                                    "patch_shift_mm": float(output["refine_shift_mm"])}}
                    if refine_spacing is not None
                    else {}
                ),
            )
        )
        preds[-1]["measurements"] = analyze_prediction(preds[-1])
    return preds


def write_outputs(pred: dict[str, Any], out_dir: str | os.PathLike, formats: Sequence[str] = ("json", "mrk", "csv"), overlay: bool = False, truth: np.ndarray | None = None) -> dict[str, Path]:
    """Write one prediction's files, plus ``<id>_overlay.png`` when ``overlay`` is set."""
    paths = write_prediction(pred, out_dir, formats)
    if overlay:
        paths["overlay"] = save_overlay(
            load_xray(pred["image"]).image,
            Path(out_dir) / f"{pred['id']}_overlay.png",
            points=prediction_points(pred),
            truth=truth,
            landmark_set=pred["landmark_set"],
            covariance_px=landmark_covariances(pred),
            title=str(pred["id"]),
        )
    return paths


class PredictionWriter:
    """Write each image's prediction (JSON, Slicer markups, CSV, optional overlay PNG) as an
    evaluator runs: attach to a ``SupervisedEvaluator`` whose postprocessing is
    :class:`~maht_net.transforms.targets.DecodeLandmarksd` (``decollate=False``). ``model``:
    the identity of the model, repeated in each prediction (``info["model"]`` of
    :func:`~maht_net.inference.predictor.load_model`)."""

    def __init__(
        self,
        output_dir: str | Path,
        landmark_set: str = "isbi2015",
        overlay: bool = False,
        formats: Sequence[str] = ("json", "mrk", "csv"),
        model: Mapping[str, Any] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.landmark_set, self.overlay, self.formats, self.model = landmark_set, bool(overlay), tuple(formats), model

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        for pred in prediction_from_batch(engine.state.batch, engine.state.output, self.landmark_set, self.model):
            write_outputs(pred, self.output_dir, formats=self.formats, overlay=self.overlay)
