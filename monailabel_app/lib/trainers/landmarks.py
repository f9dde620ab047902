"""Training task ``maht_net``: retrain on every submitted ``final`` label, served only if not worse.

MONAI Label runs this in a subprocess (``python -m monailabel.interfaces.utils.app -m train``).
It

1. collects every image with a ``final`` label and its landmark coordinates (stored by the
   datastore when the label was accepted), with the pixel spacing (image info ``spacing``, the
   file's, or ``--conf default_spacing``);
2. holds out a fixed part of them (:func:`split_labelled`: ``val_fraction`` of the films, chosen
   by a hash of the image id, so a film keeps its side as labels grow; at least one once there
   are two labels) and writes the datalist into ``<model_dir>/train/``;
3. runs the bundle's own ``configs/train.json`` through ``ConfigWorkflow`` with ``bundle_root``
   = that folder and ``resume`` off, starting from the served model (its recipe and weights;
   see :func:`maht_net.engine.workflow.train_bundle`), else from scratch with the bundle's
   defaults; the training films pick the best epoch and fit the uncertainty calibration, so
   nothing about the new model has seen the held-out films (choosing the epoch on them would
   flatter the new model in the gate);
4. the promotion gate: the served model and the new one are both run on the held-out films;
   the new one is served (``lib/model.py``: :func:`promote`, one atomic rename) only if its MRE
   is at most the served one's + ``promote_tolerance``; otherwise it is kept as
   ``candidate.pt`` and the train status says why. With a single labelled film nothing can be
   held out and the new model is only a candidate (unless no model was served at all).

Request parameters (Slicer's training options or ``train_start(model, params)``): ``epochs``,
``lr``, ``val_fraction``, ``overrides`` (dict of further ``train.json`` ids), and
``restore_previous: true`` to serve the model served before the current one instead of
training (:func:`restore_previous`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from maht_net.bench.evaluation import predictor_errors
from maht_net.engine.workflow import train_bundle
from maht_net.inference.predictor import Predictor
from maht_net.io.atomic import write_json_atomic
from maht_net.io.datalist import make_item, write_datalist
from maht_net.io.image import PIL_SUFFIXES

from ..config import AppConfig, parse_spacing
from ..errors import http_error
from ..model import ModelStore, keep_candidate, promote, record_decision, restore_previous

logger = logging.getLogger(__name__)

MIN_LABELS = 1


def split_labelled(items: list[dict[str, Any]], val_fraction: float) -> tuple[list, list]:
    """``(training, held_out)``: the films whose id hashes below ``val_fraction`` are held out.

    The hash (SHA-256 of the id, as a number in [0, 1)) makes the choice stable as labels are
    added, so the gate keeps judging on films no model was trained on. Once there are two films
    at least one is held out (with none hashing below ``val_fraction``, the lowest; a newer film
    hashing lower takes its place, and the film it replaces was never trained on before) and
    at least one is trained on (while every film hashes below ``val_fraction``, the highest
    trains: the one case where a film trained on can later be held out). With one film (or
    ``val_fraction`` 0) nothing is held out.
    """
    if len(items) < 2 or val_fraction <= 0:
        return list(items), []
    rank = {it["id"]: int(hashlib.sha256(it["id"].encode()).hexdigest()[:15], 16) / 16**15 for it in items}
    order = sorted(items, key=lambda it: rank[it["id"]])
    n_val = sum(rank[it["id"]] < val_fraction for it in items)
    n_val = min(max(n_val, 1), len(items) - 1)
    held = {it["id"] for it in order[:n_val]}
    return [it for it in items if it["id"] not in held], [it for it in items if it["id"] in held]


class LandmarkTrainTask(TrainTask):
    def __init__(self, cfg: AppConfig, models: ModelStore) -> None:
        super().__init__("Retrain MAHT-Net on all final landmark labels (bundle train.json); served only if not worse on held-out labelled films")
        self.cfg, self.models = cfg, models

    @property
    def run_dir(self) -> Path:
        return self.cfg.model_dir / "train"

    @property
    def stats_file(self) -> Path:
        return self.cfg.model_dir / "train_stats.json"

    def config(self) -> dict[str, Any]:
        return {"epochs": self.cfg.train_epochs, "lr": self.cfg.train_lr, "val_fraction": self.cfg.val_fraction,
                "restore_previous": False}

    def stats(self) -> dict[str, Any]:
        try:
            return json.loads(self.stats_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _items(self, datastore: Datastore) -> tuple[list[dict[str, Any]], dict[str, str]]:
        items, problems = [], {}
        for image_id in sorted(datastore.get_labeled_images()):
            try:
                points = datastore.label_landmarks(image_id, DefaultLabelTag.FINAL)
                if points is None:
                    raise ValueError("no label file")
                image = datastore.get_image_uri(image_id)
                info = datastore.get_image_info(image_id)
                spacing = parse_spacing(info["spacing"], "image info spacing") if info.get("spacing") else None
                if spacing is None and Path(image).suffix.lower() in PIL_SUFFIXES:
                    spacing = self.cfg.default_spacing
                items.append(make_item(image, points, spacing, image_id))
            except Exception as e:  # one bad label must not stop the others
                problems[image_id] = f"{type(e).__name__}: {e}"
                logger.warning("label of %s skipped: %s", image_id, e)
        return items, problems

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        if str(request.get("restore_previous", "")).strip().lower() in ("1", "true", "yes", "on"):
            return self._restore()
        start = time.time()
        items, problems = self._items(datastore)
        if len(items) < MIN_LABELS:
            raise http_error(409, "no final labels yet: save at least one corrected label before training")
        try:
            epochs = int(request.get("epochs") or self.cfg.train_epochs)
            lr = float(request.get("lr") or self.cfg.train_lr)
            val_fraction = float(request.get("val_fraction", self.cfg.val_fraction))
        except (TypeError, ValueError):
            raise http_error(400, "epochs, lr and val_fraction must be numbers") from None
        train, val = split_labelled(items, val_fraction)
        run = self.run_dir
        if run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True)
        datalist = write_datalist(
            run / "datalist.json",
            {"training": train, "validation": train},
            description=f"MONAI Label final labels ({len(items)} images, {len(val)} held out)",
            relative_paths=False,
        )
        served = self.models.path if self.models.exists() else None
        overrides: dict[str, Any] = {"epochs": epochs, "num_workers": 0}
        if served is not None:
            overrides["lr"] = lr
        else:
            # from scratch: keep the bundle's progressive schedule (30 % CNN only, 10 % frozen
            # encoder, as its 12/4 of 40 epochs) within the epochs run here, so the transformer
            # the served network uses has been trained
            overrides["stage_epochs"] = [max(1, round(0.3 * epochs)), max(1, round(0.1 * epochs))]
        if self.cfg.device:
            overrides["device"] = f"$torch.device({self.cfg.device!r})"
        overrides.update(self.cfg.train_overrides)
        extra = request.get("overrides") or {}
        if not isinstance(extra, dict):
            raise http_error(400, "overrides must be an object of train.json ids")
        overrides.update(extra)
        self._write_stats({"status": "RUNNING", "start_ts": int(start), "total_epochs": epochs, "epoch": 0,
                           "images": len(train), "validation_images": len(val), "fine_tuned": served is not None})
        logger.info("training on %d labelled images (%d held out), %s, %d epochs",
                    len(train), len(val), f"fine-tuning {served}" if served else "from scratch", epochs)
        try:
            result = train_bundle(self.cfg.configs, datalist, run, init_checkpoint=served, overrides=overrides)
            decision = self._gate(Path(result["model"]), served, val)
        except Exception as e:
            self._write_stats({"status": "ERROR", "error": f"{type(e).__name__}: {e}", "start_ts": int(start)})
            raise
        if decision["promoted"]:
            decision["sha256"] = promote(self.cfg.model_dir, result["model"])
        else:
            decision["sha256"] = keep_candidate(self.cfg.model_dir, result["model"])
        record_decision(self.cfg.model_dir, decision)
        logger.info("promotion: %s", decision["reason"])
        stats = {
            "status": "DONE",
            "start_ts": int(start),
            "total_time": round(time.time() - start, 1),
            "epoch": result["epochs"],
            "total_epochs": epochs,
            "images": len(train),
            "validation_images": len(val),
            "training_films_mre": result["best_val_mre"],
            # Slicer shows best_metric as a 0..1 accuracy bar: the new model's success detection
            # rate at 2 mm on the held-out films
            "best_metric": None if decision.get("candidate_sdr_2mm") is None else decision["candidate_sdr_2mm"] / 100.0,
            "fine_tuned": result["fine_tuned"],
            "promotion": decision,
            "model": str(self.models.path),
            "skipped_labels": problems,
        }
        self._write_stats(stats)
        logger.info("training done: %s", stats)
        return stats

    def _gate(self, new: Path, served: Path | None, held_out: list[dict[str, Any]]) -> dict[str, Any]:
        """Decide whether ``new`` replaces the served model (see the module docstring)."""
        tol = self.cfg.promote_tolerance
        decision: dict[str, Any] = {"ts": int(time.time()), "held_out": [it["id"] for it in held_out], "tolerance": tol,
                                    "served_mre": None, "candidate_mre": None, "unit": None}
        if served is None:
            return {**decision, "promoted": True, "reason": "promoted: no model was served before"}
        if not held_out:
            return {**decision, "promoted": False,
                    "reason": "kept as candidate.pt: with one labelled film none can be held out to check the new model (label another film and train again)"}
        # one pass each, no MC dropout or shifts
        old_errors, unit = predictor_errors(Predictor.from_checkpoint(served, self.models.device), held_out)
        new_errors, _ = predictor_errors(Predictor.from_checkpoint(new, self.models.device), held_out)
        old, cand = np.nanmean(old_errors, axis=1), np.nanmean(new_errors, axis=1)
        missed = int(np.isnan(new_errors).sum()) - int(np.isnan(old_errors).sum())  # landmarks not placed
        decision.update(served_mre=round(float(old.mean()), 4), candidate_mre=round(float(cand.mean()), 4), unit=unit,
                        per_film={it["id"]: [round(float(a), 4), round(float(b), 4)] for it, a, b in zip(held_out, old, cand)})
        if unit == "mm":
            decision.update(served_sdr_2mm=round(float(np.mean(old_errors <= 2.0) * 100), 2),
                            candidate_sdr_2mm=round(float(np.mean(new_errors <= 2.0) * 100), 2))
        figures = (f"MRE on {len(held_out)} held-out labelled film(s): new {cand.mean():.3f} {unit}, "
                   f"served {old.mean():.3f} {unit}, tolerance {tol:g}")
        if missed > 0:
            return {**decision, "promoted": False, "reason": f"kept as candidate.pt, not served: it leaves {missed} more landmark(s) unplaced ({figures})"}
        if cand.mean() <= old.mean() + tol:  # False when NaN
            return {**decision, "promoted": True, "reason": f"promoted: {figures}"}
        return {**decision, "promoted": False, "reason": f"kept as candidate.pt, not served: worse than the served model ({figures})"}

    def _restore(self) -> dict[str, Any]:
        try:
            restored = restore_previous(self.cfg.model_dir)
        except FileNotFoundError as e:
            raise http_error(409, str(e)) from None
        decision = {"ts": int(time.time()), "promoted": True, "restore": restored,
                    "reason": f"restored the previous model ({restored['restored']}); the one rolled back is candidate.pt"}
        record_decision(self.cfg.model_dir, decision)
        stats = {"status": "DONE", "start_ts": int(time.time()), "restore": restored, "promotion": decision,
                 "model": str(self.models.path)}
        self._write_stats(stats)
        return stats

    def _write_stats(self, stats: dict[str, Any]) -> None:
        write_json_atomic(self.stats_file, stats)
