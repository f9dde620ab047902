"""Infer model ``maht_net``: 19 cephalometric landmarks for one image.

Returns

- a file: by default a disc label map (value ``k`` = landmark ``k``, NRRD, written with the
  image's spacing, origin and direction as a single-slice volume, so it overlays in 3D Slicer and
  OHIF); with ``result_extension=.json`` (or ``output=markups``, per request or ``--conf``) a 3D
  Slicer markups point list instead, which Slicer's MONAI Label module opens as named fiducials;
- JSON ``params``: ``label_names`` (``{name: value}``, used by Slicer to name the segments),
  ``landmarks`` (x, y px; x_mm, y_mm; uncertainty_px/mm; confidence), ``markups`` (the point
  list), ``measurements`` (cephalometric analysis from :mod:`maht_net.clinical.analysis`, when inference
  provides it), ``spacing``/``spacing_source`` (``file``, ``request``, ``image info`` or
  ``fallback``: ``--conf default_spacing``; ``null`` when none is known), ``geometry`` (the viewer's), ``model`` (version),
  ``refinement`` (two-stage models: the mm/px the second stage cut its patches at, and whether it
  was given or estimated; :mod:`maht_net.io.predictions`).

Request parameters (all optional): ``output`` (``labelmap``/``markups``), ``result_extension``
(``.nrrd``, ``.nii.gz``, ``.json``), ``result_compress`` (default true; OHIF sends false),
``mc_samples``, ``tta``, ``disc_radius`` (px), ``spacing`` (mm/px, one value or ``"sx,sy"``: wins
over the image info's ``spacing``, which wins over the file's and ``default_spacing``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from maht_net.io.predictions import prediction_points
from maht_net.io.viewer_labels import label_names, read_geometry, render_label_map, viewer_markups, write_label_map

from ..config import AppConfig, parse_spacing
from ..errors import http_error, user_errors
from ..model import ModelStore

logger = logging.getLogger(__name__)

RESULT_EXTENSIONS = (".nrrd", ".nii.gz", ".nii", ".json")


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


class LandmarkInferTask(InferTask):
    def __init__(self, cfg: AppConfig, models: ModelStore) -> None:
        self.cfg, self.models = cfg, models
        super().__init__(
            # "segmentation": the type Slicer's and OHIF's MONAI Label panels list for auto-segmentation
            type=InferType.SEGMENTATION,
            labels=label_names("isbi2015"),
            dimension=2,
            description="MAHT-Net: 19 cephalometric landmarks (disc label map or Slicer markups) with uncertainty",
            config={
                "output": cfg.output,
                "mc_samples": cfg.infer_mc_samples,
                "tta": cfg.infer_tta,
            },
        )

    def is_valid(self) -> bool:
        return True  # listed even before training: infer then explains that a model is needed

    def get_path(self, validate: bool = True):
        return str(self.models.path) if (self.models.exists() or not validate) else None

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["model_version"] = self.models.version()
        info["model_path"] = str(self.models.path)
        return info

    def __call__(self, request: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        start = time.time()
        image = request.get("image")
        if not isinstance(image, str) or not os.path.isfile(image):
            raise http_error(404, f"image not found: {request.get('image_id', image)!r}")
        image_id = str(request.get("image_id") or os.path.basename(image).split(".")[0])
        output, ext = self._output(request)
        try:
            mc_samples = max(0, int(request.get("mc_samples", self.cfg.infer_mc_samples) or 0))
        except (TypeError, ValueError):
            raise http_error(400, f"mc_samples must be an integer, got {request.get('mc_samples')!r}") from None
        tta = _flag(request.get("tta", self.cfg.infer_tta))
        t = {}
        t0 = time.time()
        with user_errors(f"image {image_id!r} cannot be read: ", status=422):
            geometry = read_geometry(image)
        t["geometry"] = time.time() - t0
        with self.models.lock:
            t0 = time.time()
            predictor = self.models.predictor(mc_samples, tta, default_spacing=self.cfg.default_spacing)
            t["model"] = time.time() - t0
            given = request.get("spacing")
            try:
                spacing = parse_spacing(given, "image info spacing" if request.get("spacing_from") == "image info" else "spacing") if given else None
            except ValueError as e:
                raise http_error(400, str(e)) from None
            item = {"image": image, "id": image_id, **({"spacing": spacing} if spacing else {})}
            t0 = time.time()
            with user_errors(f"image {image_id!r}: ", status=422):
                pred = predictor.predict([item])[0]
            t["infer"] = time.time() - t0
            version = self.models.version()
            lset = self.models.landmark_set
        pred["image"] = image_id  # not the server's path
        if isinstance(pred.get("measurements"), dict):
            pred["measurements"]["image"] = image_id
        names = label_names(lset)
        markups = viewer_markups(pred, geometry)
        result_json = {
            "label_names": names,
            "landmark_set": lset,
            "landmarks": pred["landmarks"],
            "image": image_id,
            "width": pred["width"],
            "height": pred["height"],
            "spacing": pred["spacing"],
            "spacing_source": pred.get("spacing_source") or (request.get("spacing_from", "request") if spacing else "file" if pred["spacing"] else None),
            "origin": pred["origin"],
            "geometry": geometry.as_dict(),
            "markups": markups,
            "measurements": pred.get("measurements"),
            "refinement": pred.get("refinement"),
            "output": output,
            "mc_samples": mc_samples,
            "tta": tta,
            "model": version,
        }
        t0 = time.time()
        fd, path = tempfile.mkstemp(prefix=f"maht_net_{image_id[:40]}_", suffix=ext if output == "labelmap" else ".mrk.json")
        os.close(fd)
        if output == "markups":
            with open(path, "w", encoding="utf-8") as f:
                json.dump(markups, f, indent=2)
        else:
            radius = request.get("disc_radius") or self.cfg.disc_radius
            try:
                radius = float(radius) if radius else None
            except (TypeError, ValueError):
                raise http_error(400, f"disc_radius must be a number of pixels, got {radius!r}") from None
            label = render_label_map(prediction_points(pred), geometry.width, geometry.height, radius)
            # OHIF's panel asks for result_compress=false (its NRRD reader warns on gzip)
            write_label_map(path, label, geometry, compression=_flag(request.get("result_compress", True)))
        t["write"] = time.time() - t0
        t["total"] = time.time() - start
        result_json["latencies"] = {k: round(v, 3) for k, v in t.items()}
        logger.info("infer %s: %d landmarks -> %s (%.2f s)", image_id, len(pred["landmarks"]), output, time.time() - start)
        return path, result_json

    def _output(self, request: dict[str, Any]) -> tuple[str, str]:
        ext = str(request.get("result_extension") or ".nrrd").lower()
        if not ext.startswith("."):
            ext = "." + ext
        if ext not in RESULT_EXTENSIONS:
            raise http_error(400, f"result_extension {ext!r} not supported; use one of {', '.join(RESULT_EXTENSIONS)}")
        output = str(request.get("output") or self.cfg.output).lower()
        if output not in ("labelmap", "markups"):
            raise http_error(400, f"output must be 'labelmap' or 'markups', got {output!r}")
        if ext == ".json":
            output = "markups"
        return output, ext
