"""Data pipelines: the one implementation of preprocessing used by training, evaluation,
inference, the bundle and the MONAI Label app.

Notes:
    Sizes are ``(W, H)`` of the network input (both divisible by 32). Items are datalist
    items (see :mod:`maht_net.io.datalist`): ``image`` path, ``landmarks`` ``(N, 2)`` ``(x, y)``,
    ``spacing`` ``(sx, sy)`` or ``None``, ``id``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from monai.data import CacheDataset, Dataset
from monai.transforms import Compose, CopyItemsd

from maht_net.io.datalist import parse_items
from maht_net.progress import progress_shown
from maht_net.transforms.intensity import CLAHEd, NormalizeXRayd, RandXRayIntensityd, RandXRayInvertd
from maht_net.transforms.io import LoadXRayd, unwrap_input_error
from maht_net.transforms.spatial import LandmarkResizePadd, RandLandmarkAffineElasticd, RandLandmarkReframed
from maht_net.transforms.targets import PackLandmarksd

__all__ = ["FILM_KEY", "film_transforms", "preprocessing_transforms", "augmentation_transforms", "training_transforms", "evaluation_transforms", "model_transforms", "landmark_dataset", "ITEM_KEYS"]

ITEM_KEYS = ("image", "landmarks", "spacing", "id")


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    w, h = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if w % 32 or h % 32:
        raise ValueError(f"input size (W, H) must be divisible by 32, got {(w, h)}")
    return w, h


FILM_KEY = "film"
"""Key of the full-resolution film (normalised, before the letterbox) that the refinement stage reads."""


def film_transforms(normalize: str = "percentile", clahe: bool = False, default_spacing: float | Sequence[float] | None = None) -> list:
    """Load -> normalise intensities -> optional CLAHE: the film at its own resolution, as both
    stages see it (the first after :func:`preprocessing_transforms`' letterbox, the refinement
    stage in patches). ``default_spacing``: mm/px of films whose item and file state none
    (:class:`~maht_net.transforms.io.LoadXRayd`)."""
    steps: list = [LoadXRayd("image", default_spacing=default_spacing), NormalizeXRayd("image", mode=normalize)]
    if clahe:
        steps.append(CLAHEd("image"))
    return steps


def preprocessing_transforms(
    size: int | Sequence[int] = (256, 320),
    normalize: str = "percentile",
    clahe: bool = False,
    keep_film: bool = False,
    mm_per_px: float | None = None,
    default_spacing: float | Sequence[float] | None = None,
) -> list:
    """Load -> normalise intensities -> optional CLAHE -> letterbox to ``size`` ``(W, H)``.

    Deterministic, so a ``CacheDataset`` caches its output. ``keep_film``: also keep the film
    before the letterbox under :data:`FILM_KEY` (``(1, H, W)``, for the refinement stage).
    ``mm_per_px``: the input's pixel size in mm for films whose spacing is known (the same
    anatomy covers the same input pixels on every machine; a larger film is shrunk to fit),
    ``None``: every film fills the input (:class:`~maht_net.transforms.spatial.LandmarkResizePad`).
    ``default_spacing``: see :func:`film_transforms`.
    """
    steps = film_transforms(normalize, clahe, default_spacing)
    if keep_film:
        steps.append(CopyItemsd("image", names=FILM_KEY))
    steps.append(LandmarkResizePadd("image", size=_size(size), mm_per_px=mm_per_px))
    return steps


def augmentation_transforms(
    strength: float = 1.0,
    invert_prob: float = 0.0,
    reframe_prob: float = 0.0,
    reframe_zoom: Sequence[float] = (0.75, 1.25),
) -> list:
    """Landmark-consistent geometric and radiographic augmentation; ``strength`` scales every
    range (0 = none). No flips: a mirrored lateral cephalogram faces the other way.
    ``invert_prob``: probability of a polarity inversion (:class:`RandXRayInvertd`).
    ``reframe_prob``, ``reframe_zoom``: probability and zoom range of a random framing
    (:class:`RandLandmarkReframed`: the anatomy at another size and anywhere in the input, as
    another machine's collimation would show it); applied even when ``strength`` is 0."""
    reframing = [RandLandmarkReframed("image", prob=reframe_prob, zoom_range=reframe_zoom)] if reframe_prob > 0 else []
    if strength <= 0:
        return reframing
    s = float(strength)
    inversion = [RandXRayInvertd("image", prob=invert_prob)] if invert_prob > 0 else []
    return inversion + reframing + [
        RandLandmarkAffineElasticd(
            "image",
            prob=0.9,
            rotate_range=8.0 * s,
            scale_range=min(0.1 * s, 0.5),
            aniso_range=min(0.04 * s, 0.5),
            shear_range=0.04 * s,
            translate_range=0.04 * s,
            elastic_magnitude=min(0.01 * s, 0.06),
        ),
        RandXRayIntensityd("image", prob=0.8, strength=s),
    ]


def training_transforms(
    size: int | Sequence[int] = (256, 320),
    augment: float = 1.0,
    num_landmarks: int = 19,
    normalize: str = "percentile",
    clahe: bool = False,
    invert_prob: float = 0.0,
    mm_per_px: float | None = None,
    reframe_prob: float = 0.0,
    reframe_zoom: Sequence[float] = (0.75, 1.25),
) -> Compose:
    """Preprocessing (see :func:`preprocessing_transforms`), augmentation (see
    :func:`augmentation_transforms`) and packing for training."""
    steps = preprocessing_transforms(size, normalize, clahe, mm_per_px=mm_per_px)
    steps += augmentation_transforms(augment, invert_prob, reframe_prob, reframe_zoom)
    return Compose(steps + [PackLandmarksd(num_landmarks=num_landmarks)])


def evaluation_transforms(
    size: int | Sequence[int] = (256, 320),
    num_landmarks: int = 19,
    normalize: str = "percentile",
    clahe: bool = False,
    keep_film: bool = False,
    mm_per_px: float | None = None,
    default_spacing: float | Sequence[float] | None = None,
) -> Compose:
    """Preprocessing and packing for evaluation and inference; ``keep_film``, ``mm_per_px``,
    ``default_spacing``: see :func:`preprocessing_transforms`."""
    extra = (FILM_KEY,) if keep_film else ()
    steps = preprocessing_transforms(size, normalize, clahe, keep_film, mm_per_px, default_spacing)
    return Compose(steps + [PackLandmarksd(num_landmarks=num_landmarks, extra_keys=extra)])


def model_transforms(info: Mapping[str, Any], keep_film: bool = False, default_spacing: float | Sequence[float] | None = None) -> Compose:
    """:func:`evaluation_transforms` for a checkpoint's ``info``: the preprocessing its network was
    trained with (input size, landmarks, normalisation, CLAHE, input pixel size; the defaults of
    checkpoints written before a field existed). ``default_spacing``: mm/px of films whose item
    and file state none (their predictions say ``"spacing_source": "fallback"``)."""
    return evaluation_transforms(
        info["input_size"],
        len(info["landmark_names"]),
        info.get("normalize", "percentile"),
        bool(info.get("clahe", False)),
        keep_film,
        info.get("input_mm_per_px"),
        default_spacing,
    )


def landmark_dataset(
    data: Sequence[Mapping[str, Any]],
    transform: Compose,
    num_landmarks: int,
    base_dir: str | os.PathLike | None = None,
    cache: bool = True,
    num_workers: int = 0,
    source: str = "data",
) -> Dataset:
    """A (cached) MONAI dataset over datalist items; items keep only :data:`ITEM_KEYS`.

    ``data`` is a list of datalist items (:func:`~maht_net.io.datalist.load_datalist` of a
    section, or raw items as a datalist file holds them: the bundle's ``train#dataset#data`` and
    ``validate#dataset#data``, which MONAI Label and MONAI FL set to their own lists), validated
    by :func:`~maht_net.io.datalist.parse_items` against ``num_landmarks`` (relative image paths
    resolved against ``base_dir``). Every image path is checked first and every image is decoded
    while caching, so a missing or unreadable file fails (as :class:`~maht_net.errors.InputError`
    naming it, or ``source[i]``) before training starts.
    """
    items: list[dict[str, Any]] = [
        {k: it[k] for k in ITEM_KEYS if k in it} for it in parse_items(data, num_landmarks, base_dir, source, check_files=True)
    ]
    if not cache:
        return Dataset(items, transform)
    try:
        return CacheDataset(items, transform, cache_rate=1.0, num_workers=num_workers or None, progress=progress_shown())
    except Exception as e:  # MONAI wraps transform errors; surface the file and the problem
        err = unwrap_input_error(e)
        if err is None:
            raise
        raise err from None
