"""DICOM cephalograms (DX/CR) -> datalist, optionally with LabelMe landmarks and PNG copies.

Every DICOM file under the folder (``.dcm`` / ``.dicom``, or any file with the ``DICM`` marker)
is decoded with :func:`~maht_net.io.image.load_xray`: pydicom's Modality LUT and VOI LUT/window,
MONOCHROME1 inverted, spacing ``(sx, sy)`` at the patient where the header allows it (calibrated
PixelSpacing, else ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor, else
ImagerPixelSpacing at the detector, noted), else none (a warning; errors are then in pixels).
Each file's report line says which rule gave the spacing. Landmarks come from ``<annotations>/<id>.json`` (LabelMe, labels
``l1..lN`` or names; see :mod:`maht_net.datasets.labelme`), else they are ``null``.

Every file is read and checked before the datalist is written; exported PNGs (8-bit, the
displayed grey values) are moved into place only then.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from maht_net.datasets.common import save_png, staged_folder
from maht_net.datasets.labelme import FileAudit, merge_annotators, read_annotator
from maht_net.errors import InputError
from maht_net.io.datalist import make_item, write_datalist
from maht_net.io.image import XRay, load_xray
from maht_net.landmarks import LandmarkSet, get_landmark_set

__all__ = ["DICOM_SUFFIXES", "find_dicom_files", "dicom_case_id", "describe_xray", "prepare_dicom"]

DICOM_SUFFIXES = (".dcm", ".dicom")


def _has_dicm_marker(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def find_dicom_files(folder: str | os.PathLike) -> list[Path]:
    """DICOM files below ``folder`` (recursive, sorted): a DICOM suffix or the ``DICM`` marker.

    Raises:
        InputError: the folder is missing or holds no DICOM file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "DICOM folder not found")
    files = [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        and not p.name.startswith(".")
        and (p.suffix.lower() in DICOM_SUFFIXES or _has_dicm_marker(p))
    ]
    if not files:
        raise InputError(folder, "no DICOM files found (.dcm/.dicom or files with the DICM marker)")
    return files


def _stem(path: Path) -> str:
    """File name without a DICOM suffix (``1.2.840.5`` keeps its dots)."""
    return path.name[: -len(path.suffix)] if path.suffix.lower() in DICOM_SUFFIXES else path.name


def dicom_case_id(path: Path, folder: Path) -> str:
    """Item id: the path below ``folder`` without a DICOM suffix, folders joined by ``_``."""
    rel = path.relative_to(folder)
    return "_".join((*rel.parent.parts, _stem(rel)))


def describe_xray(xray: XRay) -> str:
    """One line: size, spacing and its source, photometric and window handling."""
    if xray.spacing is None:
        spacing = "no spacing (distances in pixels)"
    else:
        spacing = f"spacing {xray.spacing[0]:g} x {xray.spacing[1]:g} mm (sx, sy) from {xray.spacing_source}"
    return "; ".join([f"{xray.width}x{xray.height} px", spacing, *xray.notes])


def _annotation_for(annotations: Path, case_id: str, path: Path) -> Path | None:
    for name in dict.fromkeys((case_id, _stem(path))):
        if (annotations / f"{name}.json").is_file():
            return annotations / f"{name}.json"
    return None


def _landmarks(json_path: Path, lset: LandmarkSet, xray: XRay, case_id: str) -> tuple[np.ndarray, list[str]]:
    """LabelMe points of one image -> ``(N, 2)`` ``(x, y)`` (NaN = missing) and notes."""
    audit = FileAudit(case_id)
    marks = read_annotator(json_path, "annotations", lset, (xray.width, xray.height), audit, lenient=False)
    points, _ = merge_annotators([marks], lset, audit)
    notes = [f"landmarks from {json_path.name}", *audit.notes]
    if audit.missing:
        notes.append(f"missing: {', '.join(audit.missing)}")
    return points, notes


def _dicom_item(
    path: Path, case_id: str, lset: LandmarkSet, json_path: Path | None, out: Path, png: tuple[Path, Path] | None
) -> tuple[dict[str, Any], str]:
    """One DICOM file -> datalist item and its report line.

    ``png`` is ``(final path, staged path)``: the image is written to the staged path and the
    item points at the final one; ``None``: the item points at the DICOM file.
    """
    xray = load_xray(path)
    if json_path is None:
        points, notes = np.full((len(lset), 2), np.nan), ["no annotations"]
    else:
        points, notes = _landmarks(json_path, lset, xray, case_id)
    extra: dict[str, Any] = {"width": xray.width, "height": xray.height, "spacing_source": xray.spacing_source}
    if png is not None:
        save_png(png[1], xray.image)
        extra["dicom"] = os.path.relpath(path.absolute(), out.absolute().parent)
    item = make_item(path.absolute() if png is None else png[0].absolute(), points, xray.spacing, case_id, **extra)
    if json_path is None:
        item["landmarks"] = None
    return item, "; ".join([describe_xray(xray), *notes])


def prepare_dicom(
    dicom_dir: str | os.PathLike,
    out: str | os.PathLike,
    annotations: str | os.PathLike | None = None,
    export_png: str | os.PathLike | None = None,
    landmark_set: str | LandmarkSet = "isbi2015",
) -> tuple[Path, list[str]]:
    """Build a datalist (section ``"training"``) from a folder of DICOM cephalograms.

    Args:
        annotations: folder of LabelMe JSON named like the item id or the DICOM file's stem.
        export_png: write each decoded image as ``<id>.png`` there and point the datalist at it
            (the DICOM path is kept as ``"dicom"``); default: the datalist points at the DICOM.

    Returns:
        The datalist path and one report line per file.

    Raises:
        InputError: an unreadable DICOM (no pixel data, corrupt, multi-frame), a malformed
            annotation, a point outside its image.
    """
    dicom_dir, out = Path(dicom_dir), Path(out)
    lset = get_landmark_set(landmark_set)
    ann_dir = None if annotations is None else Path(annotations)
    if ann_dir is not None and not ann_dir.is_dir():
        raise InputError(ann_dir, "annotations folder not found")
    files = find_dicom_files(dicom_dir)
    png_dir = None if export_png is None else Path(export_png)
    items, lines, used = [], [], set()
    with contextlib.nullcontext() if png_dir is None else staged_folder(png_dir) as stage:
        for path in files:
            case_id = dicom_case_id(path, dicom_dir)
            json_path = None if ann_dir is None else _annotation_for(ann_dir, case_id, path)
            png = None if png_dir is None else (png_dir / f"{case_id}.png", stage / f"{case_id}.png")
            item, line = _dicom_item(path, case_id, lset, json_path, out, png)
            items.append(item)
            lines.append(f"{path.relative_to(dicom_dir)}: {line}")
            used.add(None if json_path is None else json_path.name)
    if ann_dir is not None:
        lines += [f"annotation without DICOM: {p.name}" for p in sorted(ann_dir.glob("*.json")) if p.name not in used]
    description = f"DICOM cephalograms from {dicom_dir}; landmarks from {ann_dir or 'nowhere (all null)'}"
    return write_datalist(out, {"training": items}, landmark_set=lset, description=description, source="dicom"), lines


