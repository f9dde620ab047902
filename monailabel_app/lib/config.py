"""The app's settings, read from ``monailabel start_server ... --conf KEY VALUE``.

Every key is optional:

======================  ==================================================================
``bundle``              bundle folder (``configs/train.json`` ...); default: the repository's
                        ``bundle/`` beside this app
``model``               base model: served until a fine-tuned one is promoted, never written;
                        default ``<bundle>/models/model.pt`` (the shipped model)
``model_dir``           fine-tuned models, candidates, history and promotion decisions
                        (``lib/model.py``); default ``<app>/model/maht_net``
``default_spacing``     mm per pixel for images whose file states none (PNG, JPEG ...), one
                        value or ``"sx,sy"``; both stages predict with it (the refinement stage
                        cuts its patches at it) and results say ``spacing_source: fallback``;
                        default none (measurements in pixels, refinement estimates a spacing)
``output``              ``labelmap`` (default) or ``markups``: what infer returns as its file
                        (a request with ``result_extension=.json`` also gets markups)
``disc_radius``         disc radius in pixels for the label map; default ~0.7 % of the
                        shorter image side
``infer_mc_samples``    MC-dropout passes for infer (default 0: one pass)
``infer_tta``           test-time shifts for infer (default false)
``scoring_mc_samples``  MC-dropout passes for the uncertainty score (default 4)
``scoring_tta``         test-time shifts for the uncertainty score (default true)
``scoring_seed``        seed of the scoring passes (default 0)
``train_epochs``        epochs per training run (default 10)
``train_lr``            learning rate when fine-tuning (default 0.0005)
``train_overrides``     JSON object of further ``train.json`` overrides, e.g.
                        ``'{"batch_size": 4, "input_size": [128, 160]}'``
``val_fraction``        share of labelled images held out for validation and the promotion
                        gate (default 0.2; at least one once there are 2 labels; chosen by
                        a hash of the image id, so a film stays on its side as labels grow)
``promote_tolerance``   a retrained model is served only if its MRE on the held-out labelled
                        films is at most the served model's + this (mm, or px for films
                        without spacing; default 0)
``device``              ``cpu``, ``cuda`` ... (default: CUDA when available)
``dicomweb_modalities`` modalities listed from a DICOMweb studies server, comma-separated;
                        default ``DX,CR`` (``MONAI_LABEL_DICOMWEB_SEARCH_FILTER``, when set to
                        anything but MONAI Label's default ``{"Modality": "CT"}``, wins)
``extensions``          image file patterns of the studies folder, comma-separated; default
                        PNG, BMP, TIFF, JPEG, DICOM, NIfTI, NRRD, MHA
======================  ==================================================================

MONAI Label's own settings (authentication ``MONAI_LABEL_AUTH_*``, ``MONAI_LABEL_*`` task
switches) are read by MONAI Label itself and are not changed by the app.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maht_net.transforms.io import spacing_pair

DEFAULT_EXTENSIONS = (
    "*.png", "*.PNG", "*.bmp", "*.BMP", "*.tif", "*.tiff", "*.TIF", "*.TIFF", "*.jpg", "*.jpeg", "*.JPG", "*.JPEG",
    "*.dcm", "*.DCM", "*.dicom", "*.nii.gz", "*.nii", "*.nrrd", "*.mha",
)


def _bool(value: Any, key: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"--conf {key}: expected true/false, got {value!r}")


def _int(value: Any, key: str, low: int = 0) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"--conf {key}: expected an integer, got {value!r}") from None
    if v < low:
        raise ValueError(f"--conf {key}: must be at least {low}, got {v}")
    return v


def _float(value: Any, key: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"--conf {key}: expected a number, got {value!r}") from None
    if not v > 0:
        raise ValueError(f"--conf {key}: must be positive, got {v}")
    return v


def parse_spacing(value: Any, key: str = "default_spacing") -> tuple[float, float] | None:
    """``"0.1"`` -> ``(0.1, 0.1)``; ``"0.1,0.12"`` or ``[0.1, 0.12]`` -> ``(0.1, 0.12)``; empty -> None."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        parts = [p for p in value.replace(";", ",").replace(" ", ",").split(",") if p]
    elif isinstance(value, (int, float)):
        parts = [value]
    else:
        parts = list(value)
    if len(parts) not in (1, 2):
        raise ValueError(f"{key}: expected one value or 'sx,sy' in mm, got {value!r}")
    return spacing_pair([_float(p, key) for p in parts], key)


@dataclass
class AppConfig:
    app_dir: Path
    bundle: Path
    model: Path
    model_dir: Path
    default_spacing: tuple[float, float] | None = None
    output: str = "labelmap"
    disc_radius: float | None = None
    infer_mc_samples: int = 0
    infer_tta: bool = False
    scoring_mc_samples: int = 4
    scoring_tta: bool = True
    scoring_seed: int = 0
    train_epochs: int = 10
    train_lr: float = 5e-4
    train_overrides: dict[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.2
    promote_tolerance: float = 0.0
    device: str = ""
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    dicomweb_modalities: tuple[str, ...] = ("DX", "CR")

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any] | None, app_dir: str | os.PathLike) -> AppConfig:
        conf = dict(conf or {})
        app_dir = Path(app_dir).resolve()
        bundle = Path(conf.get("bundle") or app_dir.parent / "bundle").expanduser().resolve()
        model = Path(conf.get("model") or bundle / "models" / "model.pt").expanduser().resolve()
        output = str(conf.get("output", "labelmap")).lower()
        if output not in ("labelmap", "markups"):
            raise ValueError(f"--conf output: 'labelmap' or 'markups', got {output!r}")
        overrides = conf.get("train_overrides") or {}
        if isinstance(overrides, str):
            try:
                overrides = json.loads(overrides)
            except json.JSONDecodeError as e:
                raise ValueError(f"--conf train_overrides: not valid JSON ({e})") from None
        if not isinstance(overrides, dict):
            raise ValueError("--conf train_overrides: must be a JSON object")
        val_fraction = float(conf.get("val_fraction", 0.2))
        if not 0 <= val_fraction < 1:
            raise ValueError(f"--conf val_fraction: must be in [0, 1), got {val_fraction}")
        tolerance = conf.get("promote_tolerance", 0.0)
        try:
            tolerance = float(tolerance)
        except (TypeError, ValueError):
            raise ValueError(f"--conf promote_tolerance: expected a number, got {tolerance!r}") from None
        if not tolerance >= 0:
            raise ValueError(f"--conf promote_tolerance: must be 0 or more, got {tolerance}")
        model_dir = Path(conf.get("model_dir") or app_dir / "model" / "maht_net").expanduser().resolve()
        ext = conf.get("extensions")
        extensions = tuple(e.strip() for e in str(ext).split(",") if e.strip()) if ext else DEFAULT_EXTENSIONS
        if any(e.lower().endswith(".json") for e in extensions):
            raise ValueError("--conf extensions: *.json cannot be an image pattern (the datastore keeps its own JSON there)")
        return cls(
            app_dir=app_dir,
            bundle=bundle,
            model=model,
            default_spacing=parse_spacing(conf.get("default_spacing")),
            output=output,
            disc_radius=_float(conf["disc_radius"], "disc_radius") if conf.get("disc_radius") else None,
            infer_mc_samples=_int(conf.get("infer_mc_samples", 0), "infer_mc_samples"),
            infer_tta=_bool(conf.get("infer_tta", False), "infer_tta"),
            scoring_mc_samples=_int(conf.get("scoring_mc_samples", 4), "scoring_mc_samples"),
            scoring_tta=_bool(conf.get("scoring_tta", True), "scoring_tta"),
            scoring_seed=_int(conf.get("scoring_seed", 0), "scoring_seed"),
            train_epochs=_int(conf.get("train_epochs", 10), "train_epochs", 1),
            train_lr=_float(conf.get("train_lr", 5e-4), "train_lr"),
            train_overrides=overrides,
            val_fraction=val_fraction,
            promote_tolerance=tolerance,
            model_dir=model_dir,
            device=str(conf.get("device", "")),
            extensions=extensions,
            dicomweb_modalities=tuple(m.strip().upper() for m in str(conf.get("dicomweb_modalities", "DX,CR")).split(",") if m.strip()),
        )

    @property
    def configs(self) -> Path:
        return self.bundle / "configs"

    @property
    def torch_device(self) -> str:
        if self.device:
            return self.device
        from maht_net.inference.device import default_device

        return default_device()
