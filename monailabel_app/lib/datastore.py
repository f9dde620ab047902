"""The studies folder as a MONAI Label datastore that only accepts valid landmark labels.

On top of MONAI Label's :class:`LocalDatastore`:

- ``save_label`` converts the upload (disc label map from Slicer/OHIF, Slicer markups, landmark
  JSON; see :func:`maht_net.io.viewer_labels.read_landmark_label`) to the image's 19 landmark coordinates,
  checks them, and stores a canonical disc label map (NRRD, the image's geometry) with the
  coordinates in the label's info (``landmarks``, ``landmark_set``, ``label_format``). A bad
  label answers 400 with the reason and stores nothing; an unknown image 404; a tag that is not a
  plain name (``../x``) 400.
- ``add_image`` refuses ids that would leave the folder and files MAHT-Net cannot read.
- Reads and read-modify-writes reload ``datastore_v2.json`` when another process changed it
  (scoring and training run as subprocesses), under the datastore's file lock, so uncertainty
  scores written by a scoring job are seen by the next ``next_sample`` and are not overwritten.
- Every write is atomic (temporary file, fsync, rename): MONAI Label itself rewrites
  ``datastore_v2.json`` in place, and a server killed mid-write would leave a truncated file
  that stops the next start. Temporary files a killed server left behind are removed at start.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import DataModel, LocalDatastore, LocalDatastoreModel
from pydicom import Dataset

from maht_net.io.atomic import atomic_write, remove_unfinished_writes
from maht_net.io.datalist import points_to_json
from maht_net.io.viewer_labels import read_geometry, read_landmark_label, render_label_map, write_label_map

from .errors import http_error, user_errors

logger = logging.getLogger(__name__)

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
LABEL_EXT = ".nrrd"
PARTIAL_LABEL_SUFFIX = ".part" + LABEL_EXT  # save_label's hidden file while it is written


def remove_partial_writes(datastore_path: str | os.PathLike) -> list[Path]:
    """Delete the hidden temporary files of writes a killed server never finished (atomic_write's
    and save_label's); returns them."""
    removed = remove_unfinished_writes(datastore_path, recursive=True) + remove_unfinished_writes(
        datastore_path, recursive=True, suffix=PARTIAL_LABEL_SUFFIX
    )
    if removed:
        logger.warning("removed %d unfinished write(s) of an interrupted server: %s", len(removed), ", ".join(p.name for p in removed))
    return removed


def check_name(value: str, what: str) -> str:
    """A tag or image id that is a plain file name (no ``/``, ``\\``, leading dot, ``..``)."""
    if not isinstance(value, str) or not SAFE_NAME.match(value) or ".." in value:
        raise http_error(400, f"invalid {what} {value!r}: use letters, digits, '_', '-', '.', '+' (no path)")
    return value


class LandmarkDatastore(LocalDatastore):
    """Local datastore for cephalograms with validated landmark labels.

    Args:
        landmark_set: callable returning the landmark set key of the served model.
        disc_radius: callable ``(width, height) -> radius`` for the stored label maps (or None).
    """

    def __init__(self, datastore_path: str, landmark_set=lambda: "isbi2015", disc_radius=None, **kwargs: Any) -> None:
        self._landmark_set = landmark_set
        self._disc_radius = disc_radius
        remove_partial_writes(datastore_path)  # before MONAI Label scans the folder for images/labels
        super().__init__(datastore_path, **kwargs)

    def _update_datastore_file(self, lock: bool = True) -> None:
        """Write ``datastore_v2.json`` atomically (MONAI Label's own version truncates it first)."""

        def write() -> None:
            self._ignore_event_config = True
            with atomic_write(self._datastore_config_path, "w", encoding="utf-8") as f:
                f.write(json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str))
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()

    # ------------------------------------------------------------------ freshness
    def _reload_unlocked(self) -> None:
        """Re-read ``datastore_v2.json`` if it changed since we last read or wrote it (caller holds the lock)."""
        path = self._datastore_config_path
        if not os.path.exists(path):
            return
        ts = os.stat(path).st_mtime
        if ts == self._config_ts:
            return
        try:
            with open(path) as fp:
                model = LocalDatastoreModel.model_validate_json(fp.read())
        except ValueError as e:  # half-written by a process without the lock: keep what we have
            logger.warning("datastore file unreadable, keeping the in-memory copy: %s", e)
            return
        model.base_path = self._datastore_path
        self._datastore = model
        self._config_ts = ts

    def _fresh(self) -> None:
        with FileLock(self._lock_file):
            self._reload_unlocked()

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        self._fresh()
        return super().get_image_info(image_id)

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        self._fresh()
        return super().get_label_info(label_id, label_tag)

    def get_labeled_images(self, label_tag=None, labels=None) -> list[str]:
        self._fresh()
        return super().get_labeled_images(label_tag, labels)

    def get_unlabeled_images(self, label_tag=None, labels=None) -> list[str]:
        self._fresh()
        return super().get_unlabeled_images(label_tag, labels)

    def list_images(self) -> list[str]:
        self._fresh()
        return super().list_images()

    def datalist(self, full_path=True) -> list[dict[str, Any]]:
        self._fresh()
        return super().datalist(full_path)

    def status(self) -> dict[str, Any]:
        self._fresh()
        return super().status()

    def json(self):
        self._fresh()
        return super().json()

    def has_image(self, image_id: Any) -> bool:
        if not isinstance(image_id, str):
            return False
        self._fresh()
        return image_id in self._datastore.objects

    # ------------------------------------------------------------------ writes
    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        with FileLock(self._lock_file):
            self._reload_unlocked()
            obj = self._datastore.objects.get(image_id)
            if not obj:
                raise http_error(404, f"image {image_id!r} not found in the datastore")
            obj.image.info.update(info)
            self._update_datastore_file(lock=False)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        with FileLock(self._lock_file):
            self._reload_unlocked()
            label = self._datastore.label(label_id, label_tag)
            if not label:
                raise http_error(404, f"label {label_id!r} with tag {label_tag!r} not found")
            label.info.update(info)
            self._update_datastore_file(lock=False)

    def remove_image(self, image_id: str) -> None:
        if not self.has_image(image_id):
            raise http_error(404, f"image {image_id!r} not found in the datastore")
        super().remove_image(image_id)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        image_id = image_id or self._to_id(os.path.basename(image_filename))[0]
        check_name(image_id, "image id")
        with user_errors("image rejected: "):
            read_geometry(image_filename)
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Validate, convert and store a landmark label (see the module docstring)."""
        check_name(label_tag, "label tag")
        if not self.has_image(image_id):
            raise http_error(404, f"image {image_id!r} not found in the datastore")
        image_path = self.get_image_uri(image_id)
        with user_errors(f"image {image_id!r} cannot be read: ", status=422):
            geometry = read_geometry(image_path)
        label_info = dict(label_info or {})
        lset = self._landmark_set()
        with user_errors("label rejected: "):
            points, kind = read_landmark_label(label_filename, geometry, lset, label_info.pop("label_info", None))
        radius = self._disc_radius(geometry.width, geometry.height) if self._disc_radius else None
        canonical = render_label_map(points, geometry.width, geometry.height, radius)
        info = {k: v for k, v in label_info.items() if k not in ("landmarks", "points")}
        info.update(
            {
                "landmarks": points_to_json(points),
                "landmark_set": lset,
                "label_format": kind,
                "ts": int(time.time()),
                "name": image_id + LABEL_EXT,
            }
        )
        label_dir = self._datastore.label_path(label_tag)
        os.makedirs(label_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{image_id}.", suffix=PARTIAL_LABEL_SUFFIX, dir=label_dir)
        os.close(fd)
        try:
            write_label_map(tmp, canonical, geometry)
            with FileLock(self._lock_file):
                self._reload_unlocked()
                obj = self._datastore.objects.get(image_id)
                if not obj:
                    raise http_error(404, f"image {image_id!r} was removed meanwhile")
                old = obj.labels.get(label_tag)
                os.replace(tmp, os.path.join(label_dir, image_id + LABEL_EXT))
                if old is not None and old.ext != LABEL_EXT:
                    stale = os.path.join(label_dir, image_id + old.ext)
                    if os.path.exists(stale):
                        os.remove(stale)
                obj.labels[label_tag] = DataModel(info=info, ext=LABEL_EXT)
                self._update_datastore_file(lock=False)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        logger.info("label %s/%s stored from %s: %d landmarks", label_tag, image_id, kind, len(points))
        return image_id

    def label_landmarks(self, image_id: str, tag: str = "final") -> np.ndarray | None:
        """The stored ``(N, 2)`` landmarks of a label (info, else read back from its label map)."""
        info = self.get_label_info(image_id, tag)
        if info.get("landmarks") is not None:
            from maht_net.io.datalist import points_from_json

            return points_from_json(info["landmarks"], len(info["landmarks"]), f"label {tag}/{image_id}")
        uri = self.get_label_uri(image_id, tag)
        if not uri:
            return None
        geometry = read_geometry(self.get_image_uri(image_id))
        points, _ = read_landmark_label(uri, geometry, self._landmark_set())
        return points


class FilmDICOMwebDatastore(DICOMWebDatastore):
    """MONAI Label's DICOMweb datastore (e.g. Orthanc) for single-frame X-ray films, read-only.

    Differences from MONAI Label's defaults, which are made for CT volumes:

    - lists the series of ``modalities`` (default DX and CR; one QIDO search each, since a
      DICOMweb search matches one value), where MONAI Label lists ``Modality=CT`` only, unless
      ``MONAI_LABEL_DICOMWEB_SEARCH_FILTER`` is set to another filter, which then wins;
    - hands the app the DICOM file itself instead of a NIfTI conversion, so the film is read by
      :func:`maht_net.io.image.read_image` with its MONOCHROME1 inversion, Modality/VOI LUTs and
      spacing tags (the conversion drops them);
    - refuses labels: a DX/CR film has no image position, so no DICOM SEG can be built for it.
    """

    def __init__(self, client: Any, modalities: tuple[str, ...], search_filter: dict[str, Any] | None,
                 cache_path: str | None, fetch_by_frame: bool) -> None:
        super().__init__(client, search_filter or {}, cache_path, fetch_by_frame, convert_to_nifti=False)
        self._modalities = () if search_filter else tuple(modalities)

    def list_images(self) -> list[str]:
        if not self._modalities:
            return super().list_images()
        series = set()
        for modality in self._modalities:
            for ds in self._client.search_for_series(search_filters={"Modality": modality}):
                series.add(str(Dataset.from_json(ds)["SeriesInstanceUID"].value))
        logger.info("DICOMweb: %d series of modality %s", len(series), "/".join(self._modalities))
        return sorted(series)

    def get_image_uri(self, image_id: str) -> str:
        """The one DICOM file of the series, fetched into the cache on first use and registered
        there, so that image info (the uncertainty score) can be stored for it."""
        folder = Path(super().get_image_uri(image_id))
        files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        if len(files) != 1:
            raise http_error(422, f"series {image_id!r} has {len(files)} files; one 2-D X-ray film is expected")
        if image_id not in self._datastore.objects:
            LocalDatastore.add_image(self, image_id, str(files[0]), {"SeriesInstanceUID": image_id})
        return str(files[0])

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        raise http_error(409, "this server reads its films from a remote store (read-only): submit labels to a server on a local studies folder")
