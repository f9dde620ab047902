"""Calibration workflow: fit a checkpoint's uncertainty calibration on a datalist section and
record it in the checkpoint: the first stage's, then (two-stage checkpoints) the combined one."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maht_net.codec.uncertainty import CALIBRATION_KEY, fit_uncertainty_calibration
from maht_net.errors import InputError
from maht_net.inference.predictor import Predictor, load_model
from maht_net.inference.refine import Refiner
from maht_net.io.atomic import atomic_write
from maht_net.io.checkpoint import REFINE_STAGE, file_sha256, load_checkpoint_file, refine_stage
from maht_net.io.datalist import load_datalist, parse_items
from maht_net.io.predictions import prediction_points, prediction_uncertainty

logger = logging.getLogger(__name__)


def calibrate_checkpoint(
    checkpoint: str | os.PathLike,
    datalist: str | os.PathLike | Sequence[Mapping[str, Any]],
    section: str = "validation",
    out: str | os.PathLike | None = None,
    base_dir: str | os.PathLike | None = None,
    mc_samples: int = 0,
    tta: bool = False,
    prior_strength: float = 10.0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Fit the calibration on a datalist section and store it in the checkpoint's info.

    ``datalist`` is a datalist file, or the section's items themselves (the bundle passes its
    ``validate#dataset#data``; ``section`` then only names them, and relative image paths are
    resolved against ``base_dir``). Predicts the section's images without calibration, fits :func:`fit_uncertainty_calibration`
    and writes the checkpoint (to ``out``, default in place) atomically with
    ``info["uncertainty_calibration"]`` set. A two-stage checkpoint then gets a second record in
    its refinement stage's info: the same fit on the uncertainty the two stages report together
    (the first stage calibrated, its stage's ``combine`` mode), which is what predictions carry.
    Only the chosen section is read, so calibrating on ``validation`` never touches the test films.

    Returns:
        The first stage's record written (also holding ``section``, ``mc_samples``, ``tta`` and
        ``date``), with the refinement stage's under ``"refine_stage"`` when there is one.

    Raises:
        InputError: unreadable checkpoint/datalist, or a section without enough landmarks.
    """

    network, info = load_model(checkpoint, device)
    if isinstance(datalist, (str, os.PathLike)):
        source, items = datalist, load_datalist(datalist, section, base_dir=base_dir, landmark_set=info["landmark_set"], check_files=True)
    else:
        source, items = section, parse_items(datalist, len(info["landmark_names"]), base_dir, section, check_files=True)
    items = [it for it in items if it.get("landmarks") is not None]
    if not items:
        raise InputError(source, f"section {section!r} has no image with landmarks to calibrate on")
    preds = Predictor(network, info, device, mc_samples=mc_samples, tta=tta, calibrate=False).predict(items, desc=f"calibration on {section}")
    points = np.stack([prediction_points(p) for p in preds])
    spread = np.stack([prediction_uncertainty(p) for p in preds])
    truth = np.stack([it["landmarks"] for it in items])
    mode = {"section": section, "mc_samples": int(mc_samples), "tta": bool(tta), "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    try:
        record = fit_uncertainty_calibration(points, spread, truth, info["landmark_names"], prior_strength)
    except ValueError as e:
        raise InputError(source, f"section {section!r}: {e}") from None
    record.update(mode)
    _log(record, section, "first stage")
    state = load_checkpoint_file(checkpoint)
    state["info"] = {**state["info"], CALIBRATION_KEY: record}
    stage = refine_stage(state, checkpoint)
    result = dict(record)
    if stage is not None:  # the two stages' combined uncertainty, with the first stage's calibration on
        stage_info = {k: v for k, v in stage["info"].items() if k != CALIBRATION_KEY}
        refiner = Refiner.from_stage({"model": stage["model"], "info": stage_info}, device, checkpoint)
        preds = Predictor(network, {**info, CALIBRATION_KEY: record}, device, mc_samples=mc_samples, tta=tta, refiner=refiner).predict(items, desc=f"calibration of both stages on {section}")
        points = np.stack([prediction_points(p) for p in preds])
        spread = np.stack([prediction_uncertainty(p) for p in preds])
        try:
            refined = fit_uncertainty_calibration(points, spread, truth, stage_info["landmark_names"], prior_strength)
        except ValueError as e:
            raise InputError(source, f"section {section!r}, refinement stage: {e}") from None
        refined.update(mode, combine=refiner.combine)
        _log(refined, section, f"both stages ({refiner.combine})")
        state[REFINE_STAGE] = {**stage, "info": {**stage_info, CALIBRATION_KEY: refined}}
        result["refine_stage"] = refined
    with atomic_write(out or checkpoint, "wb") as f:
        torch.save(state, f)
    return result


def carry_calibration(
    checkpoint: str | os.PathLike, source: str | os.PathLike, why: str, out: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Give ``checkpoint`` the uncertainty calibration of ``source``, another model of the same recipe.

    For a model trained on every film, none is left to calibrate it on; the records of a model of
    the same recipe that held films out (fitted on them) are the honest substitute: sigma scaling
    is a property of the recipe's raw spread against its held-out error, and a calibration fitted
    on films the model trained on would under-state its error (and, with ``combine="fuse"``, hold
    the refinement back). The first stage's record and (two-stage checkpoints) the refinement
    stage's are copied, each with ``carried_from`` (``source``'s sha256 and ``why``; a record
    ``source`` carried itself keeps its origin), and the checkpoint written (to ``out``, default in
    place) atomically.

    Returns:
        The first stage's record written, with the refinement stage's under ``"refine_stage"``.

    Raises:
        InputError: ``source`` has no calibration for a stage ``checkpoint`` has, names other
            landmarks, or was fitted for another combine mode.
    """
    state, donor = load_checkpoint_file(checkpoint), load_checkpoint_file(source)
    origin = {"checkpoint_sha256": file_sha256(source), "why": why}
    pairs = [(state["info"], donor["info"], "first stage")]
    stage, donor_stage = refine_stage(state, checkpoint), refine_stage(donor, source)
    if stage is not None:
        if donor_stage is None:
            raise InputError(source, "no refinement stage: it cannot calibrate a two-stage checkpoint")
        pairs.append((stage["info"], donor_stage["info"], "refinement stage"))
    records = []
    for info, donor_info, what in pairs:
        record = donor_info.get(CALIBRATION_KEY)
        if not record:
            raise InputError(source, f"{what}: no uncertainty calibration to carry over")
        if list(record["landmark_names"]) != list(info["landmark_names"]):
            raise InputError(source, f"{what}: the calibration names other landmarks than {checkpoint}")
        if what == "refinement stage" and record.get("combine") != info.get("combine", "fuse"):
            raise InputError(source, f"{what}: calibration fitted for combine={record.get('combine')!r}, not {info.get('combine', 'fuse')!r}")
        records.append({**record, "carried_from": record.get("carried_from") or origin})  # a carried record keeps its origin
    state["info"] = {**state["info"], CALIBRATION_KEY: records[0]}
    if stage is not None:
        state[REFINE_STAGE] = {**stage, "info": {**stage["info"], CALIBRATION_KEY: records[1]}}
    with atomic_write(out or checkpoint, "wb") as f:
        torch.save(state, f)
    return {**records[0], **({"refine_stage": records[1]} if stage is not None else {})}


def _log(record: Mapping[str, Any], section: str, what: str) -> None:
    logger.info(
        "uncertainty calibration (%s) on %d %s image(s): raw RMS spread %.2f px vs actual RMS error %.2f px -> common scale %.2f",
        what, record["n_images"], section, record["raw_rms_spread_px"], record["actual_rms_error_px"], record["common_scale"],
    )  # fmt: skip


def calibrate_after_training(checkpoint: str | os.PathLike, datalist: str | os.PathLike | Sequence[Mapping[str, Any]], section: str, base_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The bundle's last training step: calibrate the best model on the validation items
    (``validate#dataset#data``; see :func:`calibrate_checkpoint`).

    A missing model (nothing trained) or a section without landmarks is logged and skipped, so
    a run that trained still finishes; the model then reports raw uncertainty.
    """
    if not Path(checkpoint).is_file():
        logger.warning("no model at %s: uncertainty not calibrated", checkpoint)
        return None
    try:
        return calibrate_checkpoint(checkpoint, datalist, section, base_dir=base_dir, device=device)
    except InputError as e:
        logger.warning("uncertainty not calibrated: %s", e)
        return None
