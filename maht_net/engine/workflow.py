"""The programmatic training loop: :func:`train_bundle` runs the bundle's own ``configs/train.json``.

It goes through :class:`monai.bundle.ConfigWorkflow` on a datalist, optionally starting from an
existing checkpoint (fine-tuning: the checkpoint's recipe - network, its arguments, input size,
sigma, normalisation, decoder - is used so the weights fit, and the weights are loaded in
``initialize``), and reports the best validation MRE. Used by the MONAI Label app's training
task, ``scripts/simulate_active_learning.py`` and the benchmarks, so all train the same way.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from maht_net.errors import InputError
from maht_net.io.checkpoint import attach_refine_stage, checkpoint_recipe, load_checkpoint_file, refine_stage

__all__ = [
    "train_bundle",
]

logger = logging.getLogger(__name__)


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
            :func:`checkpoint_recipe`); ``progressive`` staging is off for fine-tuning. Its
            refinement stage, if any, is carried over (its weights unchanged: it reads the film,
            not the first stage's features), so a fine-tuned two-stage model stays two-stage; the
            uncertainty calibration of both stages is then fitted again on the validation films.
        overrides: further ``train.json`` ids (``epochs``, ``lr``, ``batch_size`` ...); they win
            over the recipe except for the network's shape. ``refine_stage`` is off by default
            (``True`` trains a new refinement stage after the first, as ``train.json`` alone does).

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
    # the first stage only, unless overridden: fine-tuning carries a refinement stage over (below)
    args: dict[str, Any] = {"datalist": str(datalist), "resume": False, "progress_bar": False, "refine_stage": False}
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
    model = root / "models" / "model.pt"
    stage = refine_stage(load_checkpoint_file(init_checkpoint), init_checkpoint) if init_checkpoint is not None else None
    try:
        wf.run()
        if stage is not None and model.is_file():
            # the refinement stage does not depend on the first stage's weights: keep it; but its
            # calibration was fitted to the old first stage's combination: fit it again, as train.json does
            attach_refine_stage(model, stage)
            wf.parser.get_parsed_content("calibrate_run")()
        evaluator = wf.parser.get_parsed_content("validate#evaluator")
        trainer = wf.parser.get_parsed_content("train#trainer")
        best = getattr(evaluator.state, "best_metric", None)
        sdr = evaluator.state.metrics.get("val_sdr_2mm") if evaluator.state.metrics else None
        epochs = int(trainer.state.epoch)
    finally:
        wf.finalize()
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
