"""Active learning support: per-image landmark uncertainty and fine-tuning the bundle.

Used by the MONAI Label app (``monailabel_app/``: scoring method, training task) and by
``scripts/simulate_active_learning.py``, so the server and the simulation measure and train the
same way.

- :func:`image_uncertainty` runs a :class:`~maht_net.inference.Predictor` built with MC-dropout
  and/or test-time shifts (``mc_samples``, ``tta``) on one image, seeded, and condenses the
  per-landmark spread (``uncertainty_px`` / ``uncertainty_mm``) into one score: the mean over the
  landmarks, in mm when the spacing is known (or given as a fallback), else in pixels.
- :func:`train_bundle` runs the bundle's own ``configs/train.json`` through
  :class:`monai.bundle.ConfigWorkflow` on a datalist, optionally starting from an existing
  checkpoint (fine-tuning: the checkpoint's recipe - network, its arguments, input size, sigma,
  normalisation, decoder - is used so the weights fit, and the weights are loaded in
  ``initialize``), and reports the best validation MRE.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError
from .io.predictions import build_prediction, prediction_points, prediction_uncertainty
from .uncertainty import landmark_covariances

__all__ = [
    "UNCERTAINTY_KEY",
    "uncertainty_summary",
    "with_fallback_spacing",
    "image_uncertainty",
    "checkpoint_recipe",
    "train_bundle",
]

logger = logging.getLogger("maht_net.active_learning")

UNCERTAINTY_KEY = "maht_uncertainty"
"""Image-info key (MONAI Label datastore) holding the image's mean landmark uncertainty (a number)."""


def with_fallback_spacing(pred: dict[str, Any], spacing: Sequence[float] | None) -> dict[str, Any]:
    """The prediction rebuilt with ``spacing`` when it has none (mm fields filled in)."""
    if pred.get("spacing") or not spacing:
        return pred
    rows = pred["landmarks"]
    unc = prediction_uncertainty(pred)
    conf = np.array([np.nan if r.get("confidence") is None else r["confidence"] for r in rows])
    keep = {k: v for k, v in pred.items() if k not in _PREDICTION_FIELDS}
    out = build_prediction(
        pred["image"],
        pred["width"],
        pred["height"],
        prediction_points(pred),
        spacing=(float(spacing[0]), float(spacing[1])),
        uncertainty_px=unc,
        confidence=conf,
        landmark_set=pred["landmark_set"],
        item_id=pred["id"],
        origin=tuple(pred.get("origin") or (0.0, 0.0)),
        covariance_px=landmark_covariances(pred) if any(r.get("covariance_px") is not None for r in rows) else None,
        **keep,
    )
    out["spacing_source"] = "fallback"
    if "measurements" in pred:  # inference adds cephalometric measurements: redo them in mm
        from .analysis import analyze_prediction

        out["measurements"] = analyze_prediction(out)
    return out


_PREDICTION_FIELDS = {
    "format", "format_version", "image", "id", "width", "height", "spacing", "origin", "landmark_set",
    "coordinate_convention", "landmarks", "points",
}


def uncertainty_summary(pred: Mapping[str, Any]) -> dict[str, Any]:
    """``{"score", "unit", "mean", "max", "per_landmark"}`` from a prediction's uncertainties.

    ``score`` is the mean over landmarks of ``uncertainty_mm`` (``unit = "mm"``) when the
    prediction has a spacing, else of ``uncertainty_px`` (``unit = "px"``).
    """
    unit = "mm" if pred.get("spacing") else "px"
    key = f"uncertainty_{unit}"
    values = np.array([np.nan if r.get(key) is None else r[key] for r in pred["landmarks"]], dtype=float)
    finite = values[np.isfinite(values)]
    mean = float(finite.mean()) if len(finite) else float("nan")
    return {
        "score": mean,
        "unit": unit,
        "mean": mean,
        "max": float(finite.max()) if len(finite) else float("nan"),
        "per_landmark": [None if not np.isfinite(v) else round(float(v), 4) for v in values],
    }


def image_uncertainty(
    predictor: Any,
    item: Mapping[str, Any] | str | os.PathLike,
    seed: int = 0,
    fallback_spacing: Sequence[float] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Predict one image with a seeded generator and summarise its uncertainty.

    The seed makes MC-dropout masks reproducible: the same model, image, ``mc_samples``, ``tta``
    and seed give the same score (up to floating-point noise across thread counts).

    Returns:
        ``(prediction, summary)`` (see :func:`uncertainty_summary`).

    Raises:
        InputError: the image cannot be read.
    """
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(int(seed))
        pred = predictor.predict([item])[0]
    finally:
        torch.random.set_rng_state(state)
    pred = with_fallback_spacing(pred, fallback_spacing)
    return pred, uncertainty_summary(pred)


def checkpoint_recipe(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """``train.json`` overrides that rebuild the network a checkpoint's weights belong to.

    ``pretrained`` is switched off: the weights come from the checkpoint, and no ImageNet
    download is attempted (the server may be offline).
    """
    from .engine import load_checkpoint_file

    state = load_checkpoint_file(checkpoint)
    if not isinstance(state, Mapping) or "info" not in state or "model" not in state:
        raise InputError(checkpoint, "not a MAHT-Net checkpoint: expected keys 'model' and 'info'")
    info = dict(state["info"])
    kwargs = dict(info.get("network_kwargs", {}))
    if "pretrained" in kwargs:
        kwargs["pretrained"] = False
    recipe = {"network_name": info["network"], "network_kwargs": kwargs}
    for key in ("landmark_set", "input_size", "normalize", "clahe", "sigma", "decoder"):
        if key in info:
            recipe[key] = info[key]
    return recipe


def train_bundle(
    configs_dir: str | os.PathLike,
    datalist: str | os.PathLike,
    bundle_root: str | os.PathLike,
    init_checkpoint: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (or fine-tune) through the bundle's ``train.json`` with ``ConfigWorkflow``.

    Args:
        configs_dir: the bundle's ``configs/`` (``train.json``, ``metadata.json``, ``logging.conf``).
        datalist: datalist with ``training`` and ``validation`` sections.
        bundle_root: where ``models/`` and ``eval/`` of this run go (``resume`` is off).
        init_checkpoint: start from these weights, with the checkpoint's recipe (see
            :func:`checkpoint_recipe`); ``progressive`` staging is off for fine-tuning.
        overrides: further ``train.json`` ids (``epochs``, ``lr``, ``batch_size`` ...); they win
            over the recipe except for the network's shape.

    Returns:
        ``{"model": path, "best_val_mre", "val_sdr_2mm", "epochs", "seconds", "fine_tuned"}``.

    Raises:
        InputError: bad datalist or checkpoint; RuntimeError: training wrote no model.
    """
    from monai.bundle import ConfigWorkflow

    configs = Path(configs_dir)
    train_json = configs / "train.json"
    if not train_json.is_file():
        raise InputError(train_json, "bundle training config not found")
    root = Path(bundle_root)
    root.mkdir(parents=True, exist_ok=True)
    args: dict[str, Any] = {"datalist": str(datalist), "resume": False, "progress_bar": False}
    args.update(overrides or {})
    if init_checkpoint is not None:
        recipe = checkpoint_recipe(init_checkpoint)
        args.setdefault("progressive", False)
        args.update(recipe)  # the weights decide the network, whatever the overrides say
        args["pretrained_checkpoint"] = str(Path(init_checkpoint).absolute())  # loaded by the config's "initialize"
    start = time.time()
    wf = ConfigWorkflow(
        config_file=str(train_json),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf") if (configs / "logging.conf").is_file() else None,
        workflow_type="train",
        bundle_root=str(root),
        **args,
    )
    wf.initialize()
    try:
        wf.run()
        evaluator = wf.parser.get_parsed_content("validate#evaluator")
        trainer = wf.parser.get_parsed_content("train#trainer")
        best = getattr(evaluator.state, "best_metric", None)
        sdr = evaluator.state.metrics.get("val_sdr_2mm") if evaluator.state.metrics else None
        epochs = int(trainer.state.epoch)
    finally:
        wf.finalize()
    model = root / "models" / "model.pt"
    if not model.is_file():
        raise RuntimeError(f"training finished without writing {model}")
    return {
        "model": str(model),
        "best_val_mre": None if best is None or not np.isfinite(best) else float(best),
        "val_sdr_2mm": None if sdr is None or not np.isfinite(sdr) else float(sdr),
        "epochs": epochs,
        "seconds": round(time.time() - start, 1),
        "fine_tuned": init_checkpoint is not None,
    }
