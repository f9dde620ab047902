"""MONAI Label app for MAHT-Net cephalometric landmark detection.

Start (see ``README.md`` beside this file)::

    monailabel start_server --app monailabel_app --studies DIR --host 127.0.0.1 --port 8000 \\
        --conf bundle bundle --conf default_spacing 0.1

- infer model ``maht_net``: disc label map (or Slicer markups) + the 19 landmarks as JSON;
- labels: corrected disc label maps, markups or landmark JSON, validated and stored as coordinates;
- training ``maht_net``: retrains through the bundle's ``train.json`` on all ``final`` labels and
  serves the new model only if it is not worse on held-out labelled films (``lib/trainers``);
- strategies ``random`` (listed first: the default), ``maht_uncertainty`` (most uncertain first, after
  the scoring method ``maht_uncertainty``), ``first``.

Works offline (no model zoo), serves the bundle's ``models/model.pt`` until a retrained model is
promoted into ``--conf model_dir`` (reloaded when it changes)
and keeps MONAI Label's authentication settings as they are.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from typing import Any

from lib.config import AppConfig
from lib.datastore import FilmDICOMwebDatastore, LandmarkDatastore
from lib.errors import http_error
from lib.infers.landmarks import LandmarkInferTask
from lib.model import ModelStore, read_decisions
from lib.scoring.uncertainty import LandmarkUncertaintyScoring
from lib.trainers.landmarks import LandmarkTrainTask
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.tasks.activelearning.epistemic import Epistemic
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from maht_net.inference.active_learning import UNCERTAINTY_KEY
from maht_net.io.viewer_labels import default_disc_radius, label_names

logger = logging.getLogger(__name__)

MODEL = "maht_net"


class MAHTNetApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, Any]) -> None:
        self.cfg = AppConfig.from_conf(conf, app_dir)
        self.models = ModelStore(self.cfg.model, self.cfg.model_dir, self.cfg.torch_device)
        logger.info("MAHT-Net app: bundle %s, serving %s (%s), fine-tuned models in %s", self.cfg.bundle, self.models.path,
                    "present" if self.models.exists() else "not trained yet", self.cfg.model_dir)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MAHT-Net cephalometric landmarks",
            description="19 cephalometric landmarks on lateral skull X-rays, with uncertainty-driven active learning",
            version="0.1.0",
            # the app-wide list is names in value order (MONAI Label's type; OHIF's panel appends to it),
            # while the model's ``labels`` map name -> disc value
            labels=list(label_names("isbi2015")),
        )

    # ------------------------------------------------------------------ tasks
    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            remote = super().init_datastore()  # DICOMweb with MONAI Label's client, authentication and cache settings
            if not isinstance(remote, DICOMWebDatastore):
                raise ValueError(f"studies {self.studies}: only DICOMweb servers are supported as remote studies")
            # MONAI Label's default filter (CT) stands for "not set": start_server exports every
            # setting to the environment, so an explicit setting cannot be told apart otherwise
            search_filter = settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER
            explicit = bool(search_filter) and search_filter != {"Modality": "CT"}
            return FilmDICOMwebDatastore(
                remote._client,  # monailabel 0.8.5 (pinned) keeps the configured client here
                modalities=self.cfg.dicomweb_modalities,
                search_filter=search_filter if explicit else None,
                cache_path=(settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip() or None,
                fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
            )
        return LandmarkDatastore(
            self.studies,
            landmark_set=lambda: self.models.landmark_set,
            disc_radius=(lambda w, h: self.cfg.disc_radius) if self.cfg.disc_radius else default_disc_radius,
            extensions=self.cfg.extensions,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self):
        return {MODEL: LandmarkInferTask(self.cfg, self.models)}

    def init_trainers(self):
        return {MODEL: LandmarkTrainTask(self.cfg, self.models)}

    def init_strategies(self):
        # random first (the viewers' default): no measured run has shown uncertainty selection
        # beating it, and on a new site it was worse (docs/active_learning.md, "Site adaptation")
        return {
            "random": Random(),
            UNCERTAINTY_KEY: Epistemic(key=UNCERTAINTY_KEY, desc="Unlabeled image with the highest mean landmark uncertainty (run scoring first)"),
            "first": First(),
        }

    def init_scoring_methods(self):
        return {UNCERTAINTY_KEY: LandmarkUncertaintyScoring(self.cfg, self.models)}

    def _download_dcmqi_tools(self) -> None:
        """Offline by design: never download dcmqi (MONAI Label fetches it from GitHub for DICOMweb
        studies). Without ``itkimage2segimage`` on PATH, saving DICOM SEG back is unavailable; DX
        films cannot be saved as SEG anyway (no image position), so the DICOMweb path is read-only."""
        import shutil

        if not shutil.which("itkimage2segimage"):
            logger.warning("dcmqi (itkimage2segimage) not found: DICOM SEG export to the DICOMweb server is unavailable")

    # ------------------------------------------------------------------ requests
    def info(self) -> dict[str, Any]:
        meta = super().info()
        meta["model_version"] = self.models.version()
        decisions = read_decisions(self.cfg.model_dir)
        meta["promotion"] = decisions[-1] if decisions else None
        meta["bundle"] = str(self.cfg.bundle)
        return meta

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Infer on a datastore image (by id) or an uploaded file; anything else is a 4xx."""
        model = request.get("model")
        task = self._infers.get(model) if isinstance(model, str) else None
        if task is None:
            raise http_error(404, f"no model {model!r}; available: {', '.join(self._infers)}")
        datastore = datastore or self.datastore()
        request = copy.deepcopy(request)
        request["description"] = task.description
        image = request.get("image")
        if not isinstance(image, str) or not image:
            raise http_error(400, "no image id given")
        if _is_upload(image):
            image_id = None
            request["save_label"] = False
        elif isinstance(datastore, LandmarkDatastore) and datastore.has_image(image):
            image_id = image
            request["image"] = datastore.get_image_uri(image)
        elif not isinstance(datastore, LandmarkDatastore) and image in datastore.list_images():
            image_id = image  # DICOMweb: the series' film is fetched into the cache
            request["image"] = datastore.get_image_uri(image)
        else:
            raise http_error(404, f"image {image!r} not found in the datastore")
        request["image_id"] = image_id or os.path.basename(request["image"]).split(".")[0]
        request.pop("spacing_from", None)  # said by the server only
        if request.get("spacing"):
            request["spacing_from"] = "request"
        elif image_id is not None:
            # the spacing an annotator set in the image's info wins over the file's and the default (as in training)
            info_spacing = datastore.get_image_info(image_id).get("spacing")
            if info_spacing:
                request["spacing"], request["spacing_from"] = info_spacing, "image info"
        result_file, result_json = task(request)
        label_id = result_file
        if image_id is not None and str(request.get("save_label", "false")).lower() == "true" and result_file:
            tag = request.get("label_tag", DefaultLabelTag.ORIGINAL)
            label_id = datastore.save_label(image_id, result_file, tag, {"model": model, "params": {"landmarks": result_json["landmarks"]}})
        return {"label": label_id, "tag": DefaultLabelTag.ORIGINAL, "file": result_file, "params": result_json}


def _is_upload(path: str) -> bool:
    """A file the infer endpoint saved from an upload (``tempfile.NamedTemporaryFile`` in the temp folder)."""
    real = os.path.realpath(path)
    return (
        os.path.isfile(real)
        and os.path.dirname(real) == os.path.realpath(tempfile.gettempdir())
        and os.path.basename(real).startswith("tmp")
    )
