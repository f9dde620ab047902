"""The checkpoint schema: what a MAHT-Net checkpoint holds besides the weights (:class:`CheckpointInfo`, the training recipe), and safe loading (:func:`load_checkpoint_file`)."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from maht_net.errors import InputError
from maht_net.io.atomic import atomic_write
from maht_net.landmarks import get_landmark_set

PREPROCESSING_KEYS = ("landmark_set", "landmark_names", "input_size", "normalize", "clahe", "input_mm_per_px")
"""Checkpoint-info fields the preprocessing (and the meaning of the output channels) depends on."""

CODEC_KEYS = ("stride", "sigma", "decoder")
"""Checkpoint-info fields that record the heatmap codec (:class:`maht_net.codec.heatmap_codec.HeatmapCodec`)."""

INFO_KEYS = ("network", "network_kwargs", *PREPROCESSING_KEYS, *CODEC_KEYS, "coordinate_convention")
"""Every field of a checkpoint's ``info`` (:class:`CheckpointInfo`); calibration may add ``uncertainty_calibration``."""

PATCH_CODEC_KEYS = ("patch_size", "mm_per_px", "stride", "sigma", "decoder", "default_spacing", "landmark_rms_mm")
"""Refinement-stage info fields that record its patch codec (:class:`maht_net.codec.patches.PatchCodec`);
``landmark_rms_mm`` is optional (stages trained before it existed lack it: their films of unknown
spacing take ``default_spacing``)."""

REFINE_STAGE = "refine"
"""Checkpoint key of the refinement stage: ``{"model": state_dict, "info": {...}}`` (:func:`refine_stage`)."""

REFINE_SHIFT_KEY = "shift_mm"
"""Optional refinement-stage info field: how many mm the shifted patches of each landmark lie from
the first stage's point at inference (:class:`maht_net.inference.refine.Refiner`); absent or 0
(stages trained before 2026-12-05): one centred patch per landmark."""

REFINE_INFO_KEYS = ("network", "network_kwargs", "landmark_names", "normalize", "clahe", *(k for k in PATCH_CODEC_KEYS if k != "landmark_rms_mm"))
"""The fields every refinement stage's ``info`` holds (training may add ``trained``: its recipe and
provenance; later stages also ``landmark_rms_mm``)."""

RECIPE_KEYS = tuple(k for k in PREPROCESSING_KEYS + CODEC_KEYS if k not in ("landmark_names", "stride"))
"""Info fields that are ``train.json`` ids of the same name (the network's are ``network_name`` and
``network_kwargs``; ``stride`` and ``landmark_names`` follow from the network and the landmark set)."""

RECIPE_BEFORE = {"input_mm_per_px": None}
"""What a checkpoint written before a recipe field existed was trained with (not ``train.json``'s
current default): every film fitted to the input."""


class CheckpointInfo:
    """Everything inference needs besides the weights, saved in each checkpoint (``"info"``).

    Plain types only, so ``torch.load(weights_only=True)`` reads it. When ``network_module`` is
    given, its run-time switches (``use_transformer``, which the progressive schedule flips) are
    recorded at save time, so a model saved during stage 1 is rebuilt without the bottleneck.
    """

    def __init__(
        self,
        network: str = "maht_net",
        network_kwargs: Mapping[str, Any] | None = None,
        landmark_set: str = "isbi2015",
        input_size: Sequence[int] = (256, 320),
        normalize: str = "percentile",
        clahe: bool = False,
        input_mm_per_px: float | None = None,
        sigma: float = 2.0,
        decoder: str = "dark",
        stride: int = 4,
        network_module: nn.Module | None = None,
    ) -> None:
        self.network_module = getattr(network_module, "module", network_module)
        self.data: dict[str, Any] = {
            "network": network,
            "network_kwargs": dict(network_kwargs or {}),
            "landmark_set": landmark_set,
            "landmark_names": get_landmark_set(landmark_set).names,
            "input_size": [int(input_size[0]), int(input_size[1])],
            "normalize": normalize,
            "clahe": bool(clahe),
            "input_mm_per_px": None if input_mm_per_px is None else float(input_mm_per_px),
            "sigma": float(sigma),
            "decoder": decoder,
            "stride": int(stride),
            "coordinate_convention": "input_size is (W, H); landmarks are (x, y) pixels",
        }

    def state_dict(self) -> dict[str, Any]:
        data = dict(self.data, network_kwargs=dict(self.data["network_kwargs"]))
        if self.network_module is not None and hasattr(self.network_module, "use_transformer"):
            data["network_kwargs"]["use_transformer"] = bool(self.network_module.use_transformer)
        return data

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.data = dict(state)


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` (no code runs from the file), with clear errors.

    Raises:
        InputError: the file is missing, truncated/corrupt, or needs unsafe unpickling.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(path, f"refused: the checkpoint holds objects other than tensors and plain data, and loading it would run code from the file ({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise InputError(path, f"not a readable PyTorch checkpoint (corrupt or truncated: {str(e).splitlines()[0]})") from None


def checkpoint_recipe(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """``train.json`` overrides that rebuild the network a checkpoint's weights belong to.

    ``pretrained`` is switched off: the weights come from the checkpoint, and no ImageNet
    download is attempted (the server may be offline).
    """
    state = load_checkpoint_file(checkpoint)
    if not isinstance(state, Mapping) or "info" not in state or "model" not in state:
        raise InputError(checkpoint, "not a MAHT-Net checkpoint: expected keys 'model' and 'info'")
    info = dict(state["info"])
    kwargs = dict(info.get("network_kwargs", {}))
    if "pretrained" in kwargs:
        kwargs["pretrained"] = False
    return training_recipe(info, kwargs)


def training_recipe(info: Mapping[str, Any], network_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``train.json`` overrides for a checkpoint's ``info``: the network and :data:`RECIPE_KEYS`
    (those present, and :data:`RECIPE_BEFORE`'s for those an older checkpoint lacks), with
    ``network_kwargs`` instead of the recorded ones when given."""
    kwargs = info.get("network_kwargs", {}) if network_kwargs is None else network_kwargs
    recipe = {"network_name": info["network"], "network_kwargs": dict(kwargs)}
    recipe.update({key: info[key] if key in info else RECIPE_BEFORE[key] for key in RECIPE_KEYS if key in info or key in RECIPE_BEFORE})
    return recipe


def checkpoint_stages(state: Mapping[str, Any]) -> list[str]:
    """The stages a loaded checkpoint holds: ``["coarse"]`` (every checkpoint, also those written
    before the refinement stage existed) plus ``"refine"`` when it holds one."""
    return ["coarse", REFINE_STAGE] if isinstance(state.get(REFINE_STAGE), Mapping) else ["coarse"]


def refine_stage(state: Mapping[str, Any], checkpoint: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The refinement stage ``{"model", "info"}`` of a loaded checkpoint, or ``None`` when it has none.

    Raises:
        InputError: the stage is there but incomplete (``model`` or one of :data:`REFINE_INFO_KEYS` missing).
    """
    stage = state.get(REFINE_STAGE)
    if stage is None:
        return None
    if not (isinstance(stage, Mapping) and "model" in stage and isinstance(stage.get("info"), Mapping)):
        raise InputError(checkpoint, "refinement stage incomplete: expected keys 'model' and 'info'")
    missing = [k for k in REFINE_INFO_KEYS if k not in stage["info"]]
    if missing:
        raise InputError(checkpoint, f"refinement stage incomplete: missing {', '.join(missing)}")
    return {"model": stage["model"], "info": dict(stage["info"])}


def attach_refine_stage(
    checkpoint: str | os.PathLike, stage: Mapping[str, Any], out: str | os.PathLike | None = None
) -> Path:
    """Write ``checkpoint`` with the refinement ``stage`` (``{"model", "info"}``) added or
    replaced, to ``out`` (default: over ``checkpoint``), atomically; ``info["stages"]`` records
    ``["coarse", "refine"]``. The first stage's weights and info are kept unchanged.

    Raises:
        InputError: not a MAHT-Net checkpoint, an incomplete ``stage``, or a stage whose
            landmarks or intensity normalisation differ from the first stage's.
    """
    state = load_checkpoint_file(checkpoint)
    if not isinstance(state, Mapping) or "info" not in state or "model" not in state:
        raise InputError(checkpoint, "not a MAHT-Net checkpoint: expected keys 'model' and 'info'")
    stage = refine_stage({REFINE_STAGE: stage}, checkpoint)
    assert stage is not None
    info = dict(state["info"])
    for key, default in (("landmark_names", None), ("normalize", "percentile"), ("clahe", False)):
        if list(_as_list(info.get(key, default))) != list(_as_list(stage["info"][key])):
            raise InputError(checkpoint, f"refinement stage does not fit: its {key} {stage['info'][key]!r} differ from the checkpoint's {info.get(key, default)!r}")
    new = dict(state, info=dict(info, stages=["coarse", REFINE_STAGE]), **{REFINE_STAGE: stage})
    out = Path(out) if out is not None else Path(checkpoint)
    with atomic_write(out, "wb") as f:
        torch.save(new, f)
    return out


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


SHIPPED_MODEL_ENV = "MAHT_NET_MODEL"
"""Environment variable naming the default model file (overrides the shipped one)."""


def shipped_model() -> Path:
    """The default model: ``$MAHT_NET_MODEL`` when set, else the model that ships with the
    project, ``bundle/models/model.pt`` of the source tree this package runs from.

    Raises:
        InputError: neither exists (e.g. a wheel installed without the bundle, or a checkout
            whose model file was removed).
    """
    env = os.environ.get(SHIPPED_MODEL_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "bundle" / "models" / "model.pt"
    if not path.is_file():
        how = f"${SHIPPED_MODEL_ENV}" if env else "no model was given and the shipped one is not next to this installation"
        raise InputError(path, f"model not found ({how}): pass --checkpoint FILE or --bundle DIR, or set ${SHIPPED_MODEL_ENV}")
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (model files, datalists), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_identity(checkpoint: str | os.PathLike, info: Mapping[str, Any]) -> dict[str, Any]:
    """What every prediction says about the model that made it: file, sha256 and, for a shipped
    model, its bundle version and training data (from the checkpoint's ``provenance``)."""
    path = Path(checkpoint)
    provenance = info.get("provenance") or {}
    return {
        "file": path.name,
        "sha256": file_sha256(path),
        "version": provenance.get("bundle_version"),
        "trained_on": provenance.get("datalist"),
        "trained": provenance.get("trained"),
    }
