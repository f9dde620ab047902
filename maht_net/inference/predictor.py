"""Inference: checkpoint -> network, images -> landmarks in original pixels -> output files.

The pieces here (preprocessing from :mod:`maht_net.datasets.pipeline`, decoding by
:class:`~maht_net.transforms.targets.DecodeLandmarksd`, :func:`prediction_from_batch`,
:func:`write_outputs`) are the only implementation: the bundle's evaluator, ``maht-net infer``
and the MONAI Label app all use them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from monai.data import DataLoader, Dataset
from monai.inferers import Inferer

from maht_net.codec.heatmaps import mix_log_probs, spatial_log_softmax
from maht_net.codec.uncertainty import calibration_for
from maht_net.datasets.pipeline import FILM_KEY, model_transforms
from maht_net.errors import InputError
from maht_net.inference.device import exact_float32
from maht_net.inference.refine import Refiner, collate_films, load_refiner
from maht_net.inference.writers import prediction_from_batch
from maht_net.io.atomic import write_json_atomic
from maht_net.io.checkpoint import load_checkpoint_file, model_identity
from maht_net.io.image import IMAGE_SUFFIXES, load_xray
from maht_net.models import create_network
from maht_net.progress import progress
from maht_net.transforms.io import unwrap_input_error
from maht_net.transforms.targets import DecodeLandmarksd

__all__ = [
    "load_model",
    "enable_mc_dropout",
    "LandmarkInferer",
    "Predictor",
    "image_items",
    "screen_images",
    "report_failures",
]

logger = logging.getLogger(__name__)


def load_model(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the network a checkpoint describes and load its weights (``weights_only``).

    Accepts a bundle checkpoint ``{"model": state_dict, "info": {...}}`` as the training
    workflow writes it (float16 weights, as the shipped model stores them, load into the float32
    network). The returned info gains ``"model"``: :func:`~maht_net.io.checkpoint.model_identity`,
    which every prediction repeats.

    Raises:
        InputError: missing/corrupt/unsafe file, or a checkpoint without ``info``.
    """
    state = load_checkpoint_file(checkpoint)
    if not isinstance(state, Mapping) or "model" not in state or "info" not in state:
        raise InputError(checkpoint, "not a MAHT-Net checkpoint: expected keys 'model' and 'info'")
    info = dict(state["info"], model=model_identity(checkpoint, state["info"]))
    network = create_network(info["network"], num_landmarks=len(info["landmark_names"]), **info.get("network_kwargs", {}))
    try:
        network.load_state_dict(state["model"])
    except RuntimeError as e:
        raise InputError(checkpoint, f"weights do not fit network {info['network']!r} ({str(e).splitlines()[0]})") from None
    return network.to(device).eval(), info


def enable_mc_dropout(network: nn.Module) -> nn.Module:
    """Eval mode everywhere except dropout layers, which keep sampling (MC-dropout)."""
    network.eval()
    for m in network.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout2d)):
            m.train()
    return network


class LandmarkInferer(Inferer):
    """MONAI inferer for heatmap networks with optional MC-dropout and test-time shifts.

    Returns log-probability maps ``(B, N, h, w)``: the log of the mean spatial-softmax
    probability over all passes (valid logits for :func:`~maht_net.codec.heatmaps.decode_logits`).
    Shifted passes (TTA: the input moved by about 4 % of its size, in whole heatmap pixels) are
    moved back before averaging, so the mixture's spread, which the decoder reports as
    uncertainty, contains both each pass's own spread and the disagreement between passes.

    Args:
        mc_samples: number of MC-dropout passes (0 = one deterministic pass).
        tta: add 4 shifted passes (±x, ±y).
        stride: the network's output stride (shifts are multiples of it).
    """

    def __init__(self, mc_samples: int = 0, tta: bool = False, stride: int = 4) -> None:
        super().__init__()
        self.mc_samples, self.tta, self.stride = int(mc_samples), bool(tta), int(stride)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        s = self.stride
        steps = [(0, 0)]
        if self.tta:
            kx, ky = max(1, round(0.04 * inputs.shape[-1] / s)), max(1, round(0.04 * inputs.shape[-2] / s))
            steps += [(kx, 0), (-kx, 0), (0, ky), (0, -ky)]
        stochastic = self.mc_samples > 0 and isinstance(network, nn.Module)
        if stochastic:
            enable_mc_dropout(network)
        log_probs = []
        try:
            with exact_float32():
                for kx, ky in steps:
                    for _ in range(self.mc_samples if stochastic else 1):
                        logits = network(_shift(inputs, kx * s, ky * s), *args, **kwargs)
                        logits = logits["heatmaps"] if isinstance(logits, Mapping) else logits
                        log_probs.append(_shift(spatial_log_softmax(logits), -kx, -ky, fill=-1e4))
        finally:
            if stochastic:
                network.eval()
        return mix_log_probs(log_probs)


class Predictor:
    """Run a trained network on image files and return prediction documents.

    The same pieces as the bundle's inference workflow: :func:`~maht_net.datasets.pipeline.model_transforms`,
    :class:`LandmarkInferer`, :class:`DecodeLandmarksd`, :func:`prediction_from_batch`; then,
    with a ``refiner``, the refinement stage (:class:`~maht_net.inference.refine.Refiner`) on the
    full-resolution film around each first-stage landmark.

    Args:
        network: a MAHT-Net/U-Net module, or an :class:`~maht_net.inference.export.OnnxNetwork`.
        info: the checkpoint's inference spec (:class:`~maht_net.io.checkpoint.CheckpointInfo`).
        mc_samples, tta: see :class:`LandmarkInferer` (first stage only).
        calibrate: apply the checkpoint's uncertainty calibration when it was fitted for this
            ``mc_samples``/``tta`` (:func:`~maht_net.codec.uncertainty.calibration_for`; first
            stage only: refined landmarks report the refinement network's own spread).
        refiner: the refinement stage (:func:`~maht_net.inference.refine.load_refiner`), or ``None``.
        refine: run it (``False``: first stage only, for paired on/off comparisons).
        default_spacing: ``(sx, sy)`` mm per pixel (or one value) of films whose item gives no
            ``spacing`` and whose file states none (PNG, JPEG...): both stages and the mm fields
            use it, and their predictions say ``"spacing_source": "fallback"``. ``None``: such
            films stay without a spacing (pixel units; the refinement stage estimates one from the
            anatomy).
    """

    def __init__(
        self,
        network: Any,
        info: Mapping[str, Any],
        device: str | torch.device = "cpu",
        mc_samples: int = 0,
        tta: bool = False,
        batch_size: int = 1,
        calibrate: bool = True,
        refiner: Refiner | None = None,
        refine: bool = True,
        default_spacing: Sequence[float] | None = None,
    ) -> None:
        self.network, self.info, self.device = network, dict(info), torch.device(device)
        self.batch_size = int(batch_size)
        self.refiner = refiner if refine else None
        self.transform = model_transforms(info, keep_film=self.refiner is not None, default_spacing=default_spacing)
        self.inferer = LandmarkInferer(mc_samples, tta, int(info["stride"]))
        calibration = calibration_for(info, mc_samples, tta) if calibrate else None
        self.decode = DecodeLandmarksd(stride=int(info["stride"]), method=info.get("decoder", "dark"), calibration=calibration)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, device: str = "cpu", refine: bool = True, **kwargs: Any) -> Predictor:
        """Both stages of ``checkpoint`` (the refinement stage when it holds one and ``refine``)."""
        network, info = load_model(checkpoint, device)
        return cls(network, info, device, refiner=load_refiner(checkpoint, device) if refine else None, **kwargs)

    def prepare(self, items: Iterable[str | os.PathLike | Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The network inputs of ``items``, read and preprocessed once (for :meth:`predict` with
        ``prepared=True``, when the same films are predicted by several models of one recipe).

        Raises:
            InputError: an image cannot be read (the message names it).
        """
        data = Dataset(image_items(items), self.transform)
        return list(_surface_input_errors(data[i] for i in range(len(data))))

    def predict(
        self, items: Iterable[str | os.PathLike | Mapping[str, Any]], desc: str | None = None, prepared: bool = False
    ) -> list[dict[str, Any]]:
        """Predict landmarks for image paths (or datalist-style items with ``image``/``id``/``spacing``),
        with a progress bar named ``desc`` when given. ``prepared``: ``items`` come from
        :meth:`prepare` (of a predictor with the same ``input_size``/normalisation).

        Raises:
            InputError: an image cannot be read (the message names it).
        """
        preds = []
        data = Dataset(list(items)) if prepared else Dataset(image_items(items), self.transform)
        loader = DataLoader(data, batch_size=self.batch_size, num_workers=0, collate_fn=collate_films)
        batches = _surface_input_errors(loader)
        for batch in progress(batches, desc, unit="batch", total=len(loader)) if desc else batches:
            image = batch["image"].as_tensor() if hasattr(batch["image"], "as_tensor") else batch["image"]
            if isinstance(self.network, nn.Module):
                self.network.eval()
            with torch.no_grad():
                log_p = self.inferer(image.to(self.device), self.network).cpu()
            output = self.decode({"pred": log_p, "to_original": batch["to_original"], "orig_size": batch["orig_size"]})
            if self.refiner is not None:
                if FILM_KEY not in batch:
                    raise ValueError("the refinement stage needs the full-resolution films: prepare the items with this predictor (or one that refines)")
                output = self.refiner.refine(output, batch[FILM_KEY], batch["orig_spacing"])
            preds += prediction_from_batch(batch, output, self.info.get("landmark_set", "isbi2015"), self.info.get("model"))
        return preds


def image_items(items: Iterable[str | os.PathLike | Mapping[str, Any]] | str | os.PathLike) -> list[dict[str, Any]]:
    """Inference items ``{"image", "id"[, "spacing"]}`` from paths, datalist items, or a folder
    (every file with an image suffix in it, sorted).

    Raises:
        InputError: a folder with no image, or a path that does not exist.
    """
    if isinstance(items, (str, os.PathLike)):
        folder = Path(items)
        if not folder.is_dir():
            raise InputError(folder, "input folder not found")
        items = [p for p in sorted(folder.iterdir()) if p.is_file() and any(p.name.lower().endswith(x) for x in IMAGE_SUFFIXES)]
        if not items:
            raise InputError(folder, f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    out = []
    for it in items:
        d = {"image": os.fspath(it)} if not isinstance(it, Mapping) else {k: it[k] for k in ("image", "id", "spacing") if k in it}
        if not Path(d["image"]).is_file():
            raise InputError(d["image"], "file not found")
        d.setdefault("id", Path(d["image"]).name.split(".")[0])
        out.append(d)
    return out


def screen_images(items: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Split inference items into readable ones and failures ``{"image", "problem"}``.

    Each image is fully decoded once (:func:`~maht_net.io.image.load_xray`), so a batch run
    processes every good film and lists the bad ones instead of stopping at the first.
    """
    good, failed = [], []
    for it in items:
        try:
            load_xray(it["image"])
        except InputError as e:
            logger.error("skipping %s", e)
            failed.append({"image": os.fspath(it["image"]), "problem": e.problem})
            continue
        good.append(dict(it))
    return good, failed


def report_failures(failed: Sequence[Mapping[str, str]], output_dir: str | os.PathLike) -> None:
    """Write ``failed.json`` beside the predictions and raise when any image failed (non-zero exit).

    Raises:
        InputError: naming every failed file and its problem.
    """

    path = Path(output_dir) / "failed.json"
    if not failed:
        path.unlink(missing_ok=True)
        return
    write_json_atomic(path, {"failed": list(failed)})
    lines = "; ".join(f"{f['image']}: {f['problem']}" for f in failed)
    raise InputError(path, f"{len(failed)} image(s) could not be read and were skipped: {lines}")


def _surface_input_errors(loader: Iterable) -> Iterable:
    """Iterate ``loader``, re-raising a bad file's :class:`InputError` that MONAI wrapped."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except Exception as e:
            err = unwrap_input_error(e)
            if err is None:
                raise
            raise err from None
        yield batch


def _shift(x: torch.Tensor, dx: int, dy: int, fill: float = 0.0) -> torch.Tensor:
    """Translate ``(..., H, W)`` by ``(dx, dy)`` pixels, filling uncovered pixels with ``fill``."""
    if dx == 0 and dy == 0:
        return x
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)), value=fill)
    x0, y0 = max(-dx, 0), max(-dy, 0)
    return padded[..., y0 : y0 + h, x0 : x0 + w]


