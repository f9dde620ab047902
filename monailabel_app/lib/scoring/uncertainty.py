"""Scoring method ``maht_uncertainty``: per-image landmark uncertainty for active learning.

For every image without a ``final`` label, the served model predicts the landmarks with
MC-dropout (``scoring_mc_samples`` passes) and/or test-time shifts (``scoring_tta``), seeded
(``scoring_seed``), and the mean per-landmark spread is stored in the image's datastore info:

- ``maht_uncertainty``: the score (mm when the spacing is known from the file, the image's
  info ``spacing`` or ``--conf default_spacing``; pixels otherwise);
- ``maht_uncertainty_detail``: unit, mean, max, per-landmark values, model SHA-256, settings.

The ``maht_uncertainty`` strategy (MONAI Label's ``Epistemic`` keyed on that field) then serves
the most uncertain unlabeled image next. Images already scored with the same model version and
settings are skipped unless the request says ``"force": true``; unreadable images are reported
and skipped.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from maht_net.errors import InputError
from maht_net.inference.active_learning import UNCERTAINTY_KEY, image_uncertainty

from ..config import AppConfig, parse_spacing
from ..errors import http_error
from ..model import ModelStore

logger = logging.getLogger(__name__)

DETAIL_KEY = UNCERTAINTY_KEY + "_detail"


class LandmarkUncertaintyScoring(ScoringMethod):
    def __init__(self, cfg: AppConfig, models: ModelStore) -> None:
        super().__init__(
            f"Mean landmark uncertainty (MC-dropout x{cfg.scoring_mc_samples}"
            f"{' + test-time shifts' if cfg.scoring_tta else ''}) of unlabeled images, stored as image info '{UNCERTAINTY_KEY}'"
        )
        self.cfg, self.models = cfg, models

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        try:
            mc = max(0, int(request.get("mc_samples", self.cfg.scoring_mc_samples)))
            seed = int(request.get("seed", self.cfg.scoring_seed))
        except (TypeError, ValueError):
            raise http_error(400, "mc_samples and seed must be integers") from None
        tta = str(request.get("tta", self.cfg.scoring_tta)).lower() in ("1", "true", "yes", "on")
        force = str(request.get("force", False)).lower() in ("1", "true", "yes", "on")
        images = datastore.list_images() if request.get("all") else datastore.get_unlabeled_images()
        version = self.models.version()
        if version is None:
            self.models.load()  # raises the "no trained model yet" error
        settings = {"mc_samples": mc, "tta": tta, "seed": seed, "model_sha256": version["sha256"]}
        scored, skipped, failed = {}, [], {}
        start = time.time()
        for image_id in sorted(images):
            info = datastore.get_image_info(image_id)
            detail = info.get(DETAIL_KEY) or {}
            if not force and all(detail.get(k) == v for k, v in settings.items()) and UNCERTAINTY_KEY in info:
                skipped.append(image_id)
                continue
            item = {"image": datastore.get_image_uri(image_id), "id": image_id}
            try:
                spacing = parse_spacing(info["spacing"], "image info spacing") if info.get("spacing") else None
            except ValueError as e:
                failed[image_id] = str(e)
                continue
            if spacing:
                item["spacing"] = spacing
            try:
                with self.models.lock:
                    # ranking needs the spread, not its calibration (fitted for plain passes, not MC-dropout)
                    predictor = self.models.predictor(mc, tta, calibrate=False, default_spacing=self.cfg.default_spacing)
                    _, summary = image_uncertainty(predictor, item, seed=seed)
            except HTTPException:
                raise  # the model itself is unusable: stop, with its message
            except Exception as e:  # one unreadable film must not stop the others
                failed[image_id] = str(e) if isinstance(e, InputError) else f"{type(e).__name__}: {e}"
                logger.warning("scoring skipped %s: %s", image_id, failed[image_id])
                continue
            if not math.isfinite(summary["score"]):
                failed[image_id] = "no landmark uncertainty could be computed"
                continue
            detail = {**settings, **{k: summary[k] for k in ("unit", "mean", "max", "per_landmark")}, "ts": int(time.time())}
            datastore.update_image_info(image_id, {UNCERTAINTY_KEY: summary["score"], DETAIL_KEY: detail})
            scored[image_id] = summary["score"]
            logger.info("%s: %s = %.3f %s", image_id, UNCERTAINTY_KEY, summary["score"], summary["unit"])
        return {
            "method": UNCERTAINTY_KEY,
            "scored": scored,
            "skipped": skipped,
            "failed": failed,
            "model_sha256": version["sha256"],
            "seconds": round(time.time() - start, 2),
        }
