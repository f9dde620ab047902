"""ISBI 2015 cephalometric challenge (Wang et al. 2016) -> datalists.

Layout of the public release (``AnnotationsByMD/`` may also be absent, with the two annotation
folders directly under ``ROOT``)::

    ROOT/RawImage/TrainingData/001.bmp .. 150.bmp     1935 x 2400 px, 0.1 mm/px
    ROOT/RawImage/Test1Data/151.bmp .. 300.bmp
    ROOT/RawImage/Test2Data/301.bmp .. 400.bmp
    ROOT/AnnotationsByMD/400_senior/001.txt .. 400.txt
    ROOT/AnnotationsByMD/400_junior/001.txt .. 400.txt

Images may be BMP, PNG or JPEG (re-shared copies are JPEG, stored as RGB with R = G = B): an RGB
file whose channels are equal is read as grey, one whose channels differ is an error (not a
greyscale radiograph). Only the splits whose image folder exists are read. An annotation file
holds 19 lines ``x,y`` (integer pixels, x = column, y = row, challenge landmark order), then
possibly 8 lines with one integer each (the classification labels of the challenge's second
task), which are ignored. The ground truth is the mean of the two doctors (or one doctor's
points with ``truth="senior"|"junior"``). Every file is read and checked before any datalist is
written; a point outside its image is an error naming file and landmark.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from maht_net.datasets.common import fold_sections, require_inside
from maht_net.errors import InputError
from maht_net.io.datalist import make_item, points_to_json, write_datalist
from maht_net.io.image import load_xray
from maht_net.landmarks import ISBI2015
from maht_net.progress import progress

__all__ = [
    "ISBI_SPACING_MM",
    "ISBI_SPLITS",
    "ANNOTATORS",
    "TRUTHS",
    "require_grey",
    "read_isbi_annotation",
    "isbi_items",
    "prepare_isbi2015",
]

ISBI_SPACING_MM = 0.1
"""Pixel spacing of every ISBI 2015 image (mm/px), isotropic."""
ISBI_SPLITS = {"train": "TrainingData", "test1": "Test1Data", "test2": "Test2Data"}
"""Datalist split name -> image folder under ``RawImage``."""
ANNOTATORS = ("senior", "junior")
TRUTHS = ("mean", *ANNOTATORS)
"""Ground-truth choices: the mean of both doctors (default) or one doctor's points."""
ISBI_IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg")
MAX_CHANNEL_DIFFERENCE = 8
"""Largest R/G/B difference (8-bit levels) of a grey film stored as RGB: JPEG chroma rounding
leaves a few levels even when the encoder was given R = G = B."""


def read_isbi_annotation(path: str | os.PathLike) -> np.ndarray:
    """Read one doctor's annotation file -> ``(19, 2)`` float array of ``(x, y)`` pixels.

    Lines after the 19 ``x,y`` lines (classification labels, blank lines) are ignored.

    Raises:
        InputError: unreadable file, not exactly 19 ``x,y`` lines at the top, a non-numeric or
            non-finite coordinate.
    """
    path = Path(path)
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except FileNotFoundError:
        raise InputError(path, "annotation file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read annotation file ({e})") from None
    n = len(ISBI2015)
    leading = next((i for i, ln in enumerate(lines) if "," not in ln), len(lines))
    if leading < n and any("," in ln for ln in lines[leading:]):
        bad = f"landmark {leading + 1} ({ISBI2015[leading].name}): expected 'x,y', got {lines[leading]!r}"
        raise InputError(path, bad)
    if leading != n:
        raise InputError(path, f"expected {n} landmark lines 'x,y' at the top, found {leading}")
    points = np.empty((n, 2))
    for k, line in enumerate(lines[:n]):
        parts = line.split(",")
        try:
            x, y = (float(v) for v in parts)
        except ValueError:
            problem = f"landmark {k + 1} ({ISBI2015[k].name}): expected 'x,y' numbers, got {line!r}"
            raise InputError(path, problem) from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise InputError(path, f"landmark {k + 1} ({ISBI2015[k].name}): non-finite coordinate {line!r}")
        points[k] = x, y
    return points


def _first_dir(candidates: list[Path], what: str) -> Path:
    for d in candidates:
        if d.is_dir():
            return d
    raise InputError(candidates[0], f"{what} folder not found (also looked for {', '.join(map(str, candidates[1:]))})")


def _annotation_dirs(root: Path, truth: str) -> dict[str, Path]:
    names = ANNOTATORS if truth == "mean" else (truth,)
    return {
        a: _first_dir([root / "AnnotationsByMD" / f"400_{a}", root / f"400_{a}"], f"{a} annotations") for a in names
    }


def _split_images(root: Path, folder: str) -> list[Path]:
    """The split's images, or ``[]`` when its folder is absent (the release may hold only some)."""
    image_dir = next((d for d in (root / "RawImage" / folder, root / folder) if d.is_dir()), None)
    if image_dir is None:
        return []
    images = sorted(p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in ISBI_IMAGE_SUFFIXES)
    if not images:
        raise InputError(image_dir, f"no images found ({', '.join(ISBI_IMAGE_SUFFIXES)})")
    return images


def require_grey(path: Path) -> None:
    """Refuse a colour image: an RGB(A) file is accepted only when its channels are equal
    (within :data:`MAX_CHANNEL_DIFFERENCE`), as in grey films saved as RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("RGB", "RGBA"):
                return
            rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(path, f"not a readable image ({e})") from None
    diff = int(max(np.abs(rgb[..., 0] - rgb[..., 1]).max(), np.abs(rgb[..., 0] - rgb[..., 2]).max()))
    if diff > MAX_CHANNEL_DIFFERENCE:
        raise InputError(path, f"colour image: R, G and B differ by up to {diff} levels; expected a greyscale radiograph")


def _case_item(image: Path, annotation_dirs: dict[str, Path], spacing: float) -> dict[str, Any]:
    """Read one image and its doctors' files -> datalist item (truth = mean of the doctors)."""
    xray = load_xray(image)
    require_grey(image)
    per_doctor = {}
    for name, folder in annotation_dirs.items():
        txt = folder / f"{image.stem}.txt"
        per_doctor[name] = read_isbi_annotation(txt)
        require_inside(per_doctor[name], xray.width, xray.height, ISBI2015, txt)
    truth = np.mean(list(per_doctor.values()), axis=0)
    extra: dict[str, Any] = {"width": xray.width, "height": xray.height}
    if len(per_doctor) > 1:
        extra["annotators"] = {name: points_to_json(p) for name, p in per_doctor.items()}
    extra["site"] = "isbi2015"
    return make_item(image.absolute(), truth, (spacing, spacing), image.stem, **extra)


def isbi_items(
    root: str | os.PathLike, truth: str = "mean", spacing: float = ISBI_SPACING_MM
) -> dict[str, list[dict[str, Any]]]:
    """Read and check the splits present -> ``{"train" | "test1" | "test2": [item, ...]}``.

    Args:
        truth: ``"mean"`` (ground truth = mean of senior and junior), ``"senior"`` or ``"junior"``.
        spacing: pixel spacing in mm/px, isotropic.

    Raises:
        InputError: no split folder, a missing annotation folder or file, a corrupt or colour
            image, a malformed annotation, a point outside its image.
    """
    if truth not in TRUTHS:
        raise ValueError(f"truth must be one of {TRUTHS}, got {truth!r}")
    if not (math.isfinite(spacing) and spacing > 0):
        raise ValueError(f"spacing must be a positive number of mm/px, got {spacing!r}")
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "ISBI 2015 root folder not found")
    images = {split: _split_images(root, folder) for split, folder in ISBI_SPLITS.items()}
    if not any(images.values()):
        folders = ", ".join(f"RawImage/{f}" for f in ISBI_SPLITS.values())
        raise InputError(root, f"no split folder found (looked for {folders})")
    dirs = _annotation_dirs(root, truth)
    cases = [(split, p) for split, paths in images.items() for p in paths]
    items: dict[str, list[dict[str, Any]]] = {split: [] for split, paths in images.items() if paths}
    for split, p in progress(cases, desc="isbi2015", unit="film"):
        items[split].append(_case_item(p, dirs, spacing))
    return items


def prepare_isbi2015(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    truth: str = "mean",
    folds: int = 4,
    seed: int = 0,
    spacing: float = ISBI_SPACING_MM,
) -> list[Path]:
    """Write ``isbi2015_{train,test1,test2}.json`` for the splits present and
    ``isbi2015_cv_fold{k}.json`` (k = 0..folds-1) when the training split is present.

    The training file has a ``"training"`` section, the test files a ``"test"`` section; each
    fold file splits the training images into ``"training"`` and ``"validation"`` (disjoint,
    every image in exactly one validation part). ``folds=0`` writes no fold files. The
    datalists say which truth they hold (``"truth"`` and ``"description"``).

    Returns:
        The paths written, in that order.
    """
    splits = isbi_items(root, truth, spacing)
    out_dir = Path(out_dir)
    common = {
        "landmark_set": ISBI2015,
        "description": "ISBI 2015 cephalometric challenge; truth = "
        + ("mean of the senior and junior doctor" if truth == "mean" else f"the {truth} doctor")
        + f"; {spacing:g} mm/px",
        "source": "isbi2015",
        "truth": truth,
    }
    sections = {"train": "training", "test1": "test", "test2": "test"}
    docs: list[tuple[Path, dict[str, list], dict[str, Any]]] = [
        (out_dir / f"isbi2015_{split}.json", {sections[split]: items}, {}) for split, items in splits.items()
    ]
    if folds and "train" in splits:
        if folds > len(splits["train"]):
            raise InputError(root, f"{folds} folds need at least {folds} training images, found {len(splits['train'])}")
        for k, sections in enumerate(fold_sections(splits["train"], folds, seed)):
            docs.append((out_dir / f"isbi2015_cv_fold{k}.json", sections, {"fold": k, "folds": folds, "seed": seed}))
    return [write_datalist(path, sections, **common, **extra) for path, sections, extra in docs]


