"""Inference: checkpoint -> network, images -> landmarks in original pixels -> output files.

The pieces here (preprocessing from :mod:`maht_net.data`, decoding by
:class:`~maht_net.transforms.targets.DecodeLandmarksd`, :func:`prediction_from_batch`,
:func:`write_outputs`) are the only implementation: the bundle's evaluator, ``maht-net infer``
and the MONAI Label app all use them.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.data import DataLoader, Dataset
from monai.inferers import Inferer

from .analysis import analyze_prediction
from .data import evaluation_transforms
from .engine import load_checkpoint_file
from .errors import InputError
from .io.image import IMAGE_SUFFIXES, load_xray
from .io.predictions import build_prediction, write_prediction
from .networks import create_network
from .transforms.io import unwrap_input_error
from .transforms.targets import DecodeLandmarksd
from .uncertainty import calibration_for, landmark_covariances
from .visualize import save_overlay

__all__ = [
    "load_model",
    "enable_mc_dropout",
    "prediction_from_batch",
    "write_outputs",
    "EnsembleNetwork",
    "ENSEMBLE_KEYS",
    "load_ensemble",
    "LandmarkInferer",
    "Predictor",
    "image_items",
    "screen_images",
    "report_failures",
    "register",
]

logger = logging.getLogger(__name__)

ENSEMBLE_KEYS = ("landmark_set", "landmark_names", "input_size", "normalize", "clahe", "stride", "decoder")
"""Checkpoint-info fields every member of an ensemble must share."""


def load_model(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the network a checkpoint describes and load its weights (``weights_only``).

    Accepts a bundle checkpoint ``{"model": state_dict, "info": {...}}`` as the training
    workflow writes it.

    Raises:
        InputError: missing/corrupt/unsafe file, or a checkpoint without ``info``.
    """
    state = load_checkpoint_file(checkpoint)
    if not isinstance(state, Mapping) or "model" not in state or "info" not in state:
        raise InputError(checkpoint, "not a MAHT-Net checkpoint: expected keys 'model' and 'info'")
    info = dict(state["info"])
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


def _meta_list(meta: Mapping[str, Any], key: str, n: int) -> list:
    value = meta.get(key)
    if value is None:
        return [None] * n
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value[i] for i in range(n)]


def prediction_from_batch(batch: Mapping[str, Any], output: Mapping[str, Any], landmark_set: str = "isbi2015") -> list[dict[str, Any]]:
    """Prediction documents (see :mod:`maht_net.io.predictions`) for one decoded batch.

    ``batch`` holds the collated samples (``image`` MetaTensor with its meta, ``id``,
    ``orig_spacing``); ``output`` the ``pred_points``/``pred_spread``/``pred_covariance``/
    ``pred_confidence`` (and ``uncertainty_calibration``) of :class:`DecodeLandmarksd`, all in
    original pixels. Each document carries the cephalometric
    measurements of :func:`maht_net.analysis.analyze_prediction` under ``"measurements"``.
    """
    points = torch.as_tensor(output["pred_points"]).detach().cpu().numpy()
    spread = torch.as_tensor(output["pred_spread"]).detach().cpu().numpy()
    covariance = torch.as_tensor(output["pred_covariance"]).detach().cpu().numpy() if "pred_covariance" in output else None
    conf = torch.as_tensor(output["pred_confidence"]).detach().cpu().numpy()
    n = points.shape[0]
    meta = getattr(batch["image"], "meta", {})
    files = _meta_list(meta, "filename_or_obj", n)
    sizes = _meta_list(meta, "original_size", n)
    origins = _meta_list(meta, "origin", n)
    spacings = torch.as_tensor(batch["orig_spacing"]).cpu().numpy()
    ids = batch.get("id") or [Path(f).name.split(".")[0] for f in files]
    preds = []
    for i in range(n):
        w, h = (int(v) for v in np.asarray(sizes[i]))
        sp = spacings[i]
        preds.append(
            build_prediction(
                str(files[i]),
                w,
                h,
                points[i],
                spacing=None if not np.all(np.isfinite(sp)) else sp,
                uncertainty_px=spread[i],
                confidence=conf[i],
                landmark_set=landmark_set,
                item_id=str(ids[i]),
                origin=tuple(float(v) for v in np.asarray(origins[i])) if origins[i] is not None else (0.0, 0.0),
                covariance_px=None if covariance is None else covariance[i],
                uncertainty_calibration=output.get("uncertainty_calibration"),
            )
        )
        preds[-1]["measurements"] = analyze_prediction(preds[-1])
    return preds


def write_outputs(pred: dict[str, Any], out_dir: str | os.PathLike, formats: Sequence[str] = ("json", "mrk", "csv"), overlay: bool = False, truth: np.ndarray | None = None) -> dict[str, Path]:
    """Write one prediction's files, plus ``<id>_overlay.png`` when ``overlay`` is set."""
    paths = write_prediction(pred, out_dir, formats)
    if overlay:
        from .io.predictions import prediction_points

        paths["overlay"] = save_overlay(
            load_xray(pred["image"]).image,
            Path(out_dir) / f"{pred['id']}_overlay.png",
            points=prediction_points(pred),
            truth=truth,
            landmark_set=pred["landmark_set"],
            covariance_px=landmark_covariances(pred),
            title=str(pred["id"]),
        )
    return paths


class EnsembleNetwork(nn.Module):
    """Mean of the members' spatial-softmax heatmaps, returned as log-probabilities ``(B, N, h, w)``.

    Members must share input size and output stride.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        strides = {int(getattr(m, "stride", 1)) for m in members}
        if len(strides) != 1:
            raise ValueError(f"ensemble members have different output strides {sorted(strides)}")
        self.stride = strides.pop()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_p = []
        for m in self.members:
            out = m(x)
            out = out["heatmaps"] if isinstance(out, Mapping) else out
            b, n, h, w = out.shape
            log_p.append(torch.log_softmax(out.float().reshape(b, n, -1), -1).reshape(b, n, h, w))
        return torch.logsumexp(torch.stack(log_p), 0) - math.log(len(log_p))


def load_ensemble(checkpoints: Sequence[str | os.PathLike], device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """An :class:`EnsembleNetwork` of several checkpoints (e.g. the k fold models) and its inference spec.

    The members must share what preprocessing and decoding depend on (landmarks, input size,
    normalisation, stride, decoder). Their uncertainty calibrations do not describe the
    mixture, so the ensemble reports the raw spread (``uncertainty_calibration`` null).

    Raises:
        InputError: naming the first checkpoint that does not match the first one.
    """
    from .uncertainty import CALIBRATION_KEY

    members, info = [], None
    for path in checkpoints:
        network, member_info = load_model(path, device)
        if info is None:
            info = member_info
        else:
            differs = [k for k in ENSEMBLE_KEYS if member_info.get(k) != info.get(k)]
            if differs:
                raise InputError(path, f"cannot join the ensemble: its {', '.join(differs)} differ from {checkpoints[0]}'s")
        members.append(network)
    if info is None:
        raise ValueError("an ensemble needs at least one checkpoint")
    info = {k: v for k, v in info.items() if k != CALIBRATION_KEY}
    info["ensemble"] = [os.fspath(p) for p in checkpoints]
    return EnsembleNetwork(members).to(device).eval(), info


class LandmarkInferer(Inferer):
    """MONAI inferer for heatmap networks with optional MC-dropout and test-time shifts.

    Returns log-probability maps ``(B, N, h, w)``: the log of the mean spatial-softmax
    probability over all passes (valid logits for :func:`~maht_net.heatmaps.decode_logits`).
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
            for kx, ky in steps:
                for _ in range(self.mc_samples if stochastic else 1):
                    logits = network(_shift(inputs, kx * s, ky * s), *args, **kwargs)
                    logits = logits["heatmaps"] if isinstance(logits, Mapping) else logits
                    b, n, h, w = logits.shape
                    log_p = torch.log_softmax(logits.float().reshape(b, n, -1), -1).reshape(b, n, h, w)
                    log_probs.append(_shift(log_p, -kx, -ky, fill=-1e4))
        finally:
            if stochastic:
                network.eval()
        if len(log_probs) == 1:
            return log_probs[0]
        return torch.logsumexp(torch.stack(log_probs), 0) - float(np.log(len(log_probs)))


class Predictor:
    """Run a trained network on image files and return prediction documents.

    The same pieces as the bundle's inference workflow: :func:`~maht_net.data.evaluation_transforms`,
    :class:`LandmarkInferer`, :class:`DecodeLandmarksd`, :func:`prediction_from_batch`.

    Args:
        network: a MAHT-Net/U-Net module, or an :class:`~maht_net.export.OnnxNetwork`.
        info: the checkpoint's inference spec (:class:`~maht_net.engine.CheckpointInfo`).
        mc_samples, tta: see :class:`LandmarkInferer`.
        calibrate: apply the checkpoint's uncertainty calibration when it was fitted for this
            ``mc_samples``/``tta`` (:func:`~maht_net.uncertainty.calibration_for`).
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
    ) -> None:
        self.network, self.info, self.device = network, dict(info), torch.device(device)
        self.batch_size = int(batch_size)
        self.transform = evaluation_transforms(info["input_size"], len(info["landmark_names"]), info.get("normalize", "percentile"), info.get("clahe", False))
        self.inferer = LandmarkInferer(mc_samples, tta, int(info["stride"]))
        calibration = calibration_for(info, mc_samples, tta) if calibrate else None
        self.decode = DecodeLandmarksd(stride=int(info["stride"]), method=info.get("decoder", "dark"), calibration=calibration)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, device: str = "cpu", **kwargs: Any) -> Predictor:
        network, info = load_model(checkpoint, device)
        return cls(network, info, device, **kwargs)

    def predict(self, items: Iterable[str | os.PathLike | Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Predict landmarks for image paths (or datalist-style items with ``image``/``id``/``spacing``).

        Raises:
            InputError: an image cannot be read (the message names it).
        """
        preds = []
        loader = DataLoader(Dataset(image_items(items), self.transform), batch_size=self.batch_size, num_workers=0)
        for batch in _surface_input_errors(loader):
            image = batch["image"].as_tensor() if hasattr(batch["image"], "as_tensor") else batch["image"]
            if isinstance(self.network, nn.Module):
                self.network.eval()
            with torch.no_grad():
                log_p = self.inferer(image.to(self.device), self.network).cpu()
            output = self.decode({"pred": log_p, "to_original": batch["to_original"], "orig_size": batch["orig_size"]})
            preds += prediction_from_batch(batch, output, self.info.get("landmark_set", "isbi2015"))
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
    from .io.atomic import write_json_atomic

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


def _run_infer(args: argparse.Namespace) -> int:
    checkpoints = [Path(c) for c in args.checkpoint] if args.checkpoint else [Path(args.bundle) / "models" / "model.pt"]
    if len(checkpoints) > 1:
        if args.onnx:
            raise InputError(args.onnx, "an ensemble runs the PyTorch checkpoints; drop --onnx or pass one --checkpoint")
        network, info = load_ensemble(checkpoints)
        print(f"ensemble of {len(checkpoints)} models (mean heatmap); uncertainty reported uncalibrated")
    else:
        network, info = load_model(checkpoints[0])
    if args.onnx:
        from .export import OnnxNetwork

        if not Path(args.onnx).is_file():
            raise InputError(args.onnx, "ONNX model not found (make one with 'maht-net export --format onnx')")
        network = OnnxNetwork(args.onnx, threads=args.threads)
        if args.mc_samples:
            raise InputError(args.onnx, "MC-dropout needs the PyTorch model; drop --onnx or --mc-samples")
    inputs = args.input[0] if len(args.input) == 1 and Path(args.input[0]).is_dir() else args.input
    items = image_items(inputs)
    if args.spacing:
        sx, sy = (args.spacing[0], args.spacing[0]) if len(args.spacing) == 1 else args.spacing[:2]
        items = [dict(it, spacing=(sx, sy)) for it in items]
    predictor = Predictor(network, info, mc_samples=args.mc_samples, tta=args.tta)
    out = Path(args.out)
    failed = []
    for item in items:  # one at a time: a bad file is reported by name and the others still run
        try:
            pred = predictor.predict([item])[0]
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            failed.append(item["image"])
            continue
        write_outputs(pred, out, overlay=not args.no_overlay)
        unit = "mm" if pred["spacing"] else "px"
        unc = [r["uncertainty_mm"] if unit == "mm" else r["uncertainty_px"] for r in pred["landmarks"]]
        print(f"{pred['id']}: {len(unc)} landmarks, median uncertainty {float(np.median(unc)):.2f} {unit} -> {out}/{pred['id']}_landmarks.json")
    if failed:
        print(f"error: {len(failed)} of {len(items)} images failed (see above); the others were written to {out}", file=sys.stderr)
        return 2
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from .export import export_onnx, export_torchscript

    network, info = load_model(Path(args.checkpoint) if args.checkpoint else Path(args.bundle) / "models" / "model.pt")
    size = (int(info["input_size"][1]), int(info["input_size"][0]))  # (H, W)
    diff = (export_onnx if args.format == "onnx" else export_torchscript)(network, args.out, size=size)
    print(f"wrote {args.out} ({args.format}); max |logit difference| vs eager on a random input: {diff:.2e}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("infer", help="landmarks for images with a trained bundle (JSON, Slicer markups, CSV, overlay)")
    p.add_argument("--bundle", default="bundle", help="bundle folder (its models/model.pt is used)")
    p.add_argument("--checkpoint", nargs="+", help="a checkpoint file instead of <bundle>/models/model.pt; several = "
                   "an ensemble (e.g. the k fold models): their heatmaps are averaged")
    p.add_argument("--input", nargs="+", required=True, help="image files, or one folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--spacing", type=float, nargs="+", metavar="MM", help="pixel spacing (one value or SX SY) when the files do not state it")
    p.add_argument("--tta", action="store_true", help="test-time augmentation (4 shifted passes)")
    p.add_argument("--mc-samples", type=int, default=0, help="MC-dropout passes for uncertainty (0 = off)")
    p.add_argument("--onnx", help="run this ONNX model with ONNX Runtime instead of PyTorch")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--no-overlay", action="store_true", help="skip the overlay PNGs")
    p.set_defaults(func=_run_infer)
    e = subparsers.add_parser("export", help="export a trained bundle model to ONNX or TorchScript (checked against eager)")
    e.add_argument("--bundle", default="bundle")
    e.add_argument("--checkpoint")
    e.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    e.add_argument("--out", required=True)
    e.set_defaults(func=_run_export)
