"""Training task ``maht_net``: fine-tune the bundle on every submitted ``final`` label.

MONAI Label runs this in a subprocess (``python -m monailabel.interfaces.utils.app -m train``).
It

1. collects the images with a ``final`` label and their landmark coordinates (stored by the
   datastore when the label was accepted), with the pixel spacing (image info ``spacing``, the
   file's, or ``--conf default_spacing``);
2. writes a datalist (``training`` / ``validation``; with fewer than 5 labels every labelled
   image is used for both) into ``<model folder>/monailabel_train/``;
3. runs the bundle's own ``configs/train.json`` through ``ConfigWorkflow`` with
   ``bundle_root`` = that folder and ``resume`` off, starting from the served ``model.pt`` when
   there is one (its recipe and weights; see :func:`maht_net.engine.workflow.train_bundle`),
   else from scratch with the bundle's defaults;
4. publishes the new ``model.pt`` over the served one with an atomic rename (the previous one
   is kept as ``model_previous.pt``); the server picks it up on the next request.

Request parameters (Slicer's training options or ``train_start(model, params)``): ``epochs``,
``lr``, ``val_fraction``, ``overrides`` (dict of further ``train.json`` ids).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from maht_net.engine.workflow import train_bundle
from maht_net.io.atomic import write_json_atomic
from maht_net.io.checkpoint import file_sha256
from maht_net.io.datalist import make_item, write_datalist
from maht_net.io.image import PIL_SUFFIXES

from ..config import AppConfig, parse_spacing
from ..errors import http_error
from ..model import ModelStore

logger = logging.getLogger(__name__)

MIN_LABELS = 1


class LandmarkTrainTask(TrainTask):
    def __init__(self, cfg: AppConfig, models: ModelStore) -> None:
        super().__init__("Fine-tune MAHT-Net on all final landmark labels through the bundle's train.json")
        self.cfg, self.models = cfg, models

    @property
    def run_dir(self) -> Path:
        return self.cfg.model.parent / "monailabel_train"

    @property
    def stats_file(self) -> Path:
        return self.cfg.model.parent / "monailabel_train_stats.json"

    def config(self) -> dict[str, Any]:
        return {"epochs": self.cfg.train_epochs, "lr": self.cfg.train_lr, "val_fraction": self.cfg.val_fraction}

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

    def _split(self, items: list[dict[str, Any]], val_fraction: float) -> tuple[list, list]:
        if len(items) < 5 or val_fraction <= 0:
            return items, items
        order = np.random.default_rng(0).permutation(len(items))
        n_val = max(1, int(round(len(items) * val_fraction)))
        val = {int(i) for i in order[:n_val]}
        return [it for i, it in enumerate(items) if i not in val], [it for i, it in enumerate(items) if i in val]

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
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
        train, val = self._split(items, val_fraction)
        run = self.run_dir
        if run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True)
        datalist = write_datalist(
            run / "datalist.json",
            {"training": train, "validation": val},
            description=f"MONAI Label final labels ({len(items)} images)",
            relative_paths=False,
        )
        init = self.cfg.model if self.cfg.model.is_file() else None
        overrides: dict[str, Any] = {"epochs": epochs, "num_workers": 0}
        if init is not None:
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
                           "images": len(train), "validation_images": len(val), "fine_tuned": init is not None})
        logger.info("training on %d labelled images (%d validation), %s, %d epochs",
                    len(train), len(val), f"fine-tuning {init}" if init else "from scratch", epochs)
        try:
            result = train_bundle(self.cfg.configs, datalist, run, init_checkpoint=init, overrides=overrides)
        except Exception as e:
            self._write_stats({"status": "ERROR", "error": f"{type(e).__name__}: {e}", "start_ts": int(start)})
            raise
        published = self._publish(Path(result["model"]))
        stats = {
            "status": "DONE",
            "start_ts": int(start),
            "total_time": round(time.time() - start, 1),
            "epoch": result["epochs"],
            "total_epochs": epochs,
            "images": len(train),
            "validation_images": len(val),
            "best_val_mre": result["best_val_mre"],
            "val_sdr_2mm": result["val_sdr_2mm"],
            # Slicer shows best_metric as a 0..1 accuracy bar: the success detection rate at 2 mm
            "best_metric": None if result["val_sdr_2mm"] is None else result["val_sdr_2mm"] / 100.0,
            "fine_tuned": result["fine_tuned"],
            "model": str(self.cfg.model),
            "model_sha256": published,
            "skipped_labels": problems,
        }
        self._write_stats(stats)
        logger.info("training done: %s", stats)
        return stats

    def _publish(self, new_model: Path) -> str:
        target = self.cfg.model
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.incoming")
        shutil.copyfile(new_model, tmp)
        if target.is_file():
            shutil.copyfile(target, target.with_name("model_previous.pt"))
        os.replace(tmp, target)
        return file_sha256(target)

    def _write_stats(self, stats: dict[str, Any]) -> None:
        write_json_atomic(self.stats_file, stats)
