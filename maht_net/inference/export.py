"""Deployment exports: TorchScript (trace) and ONNX, each checked against eager output; a
checkpoint's stages exported together (:func:`export_checkpoint`) and run back with ONNX Runtime."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from maht_net.errors import InputError
from maht_net.inference.predictor import load_model
from maht_net.inference.refine import Refiner, load_refiner
from maht_net.io.atomic import atomic_write

__all__ = ["export_torchscript", "export_onnx", "export_checkpoint", "refine_export_path", "onnx_refiner", "OnnxNetwork"]


def _example(model: nn.Module, size: tuple[int, int]) -> torch.Tensor:
    h, w = size  # a refinement network's input is one patch per landmark: (1, N, P, P)
    return torch.rand(1, getattr(model, "input_channels", getattr(model, "in_channels", 1)), h, w)


def export_torchscript(model: nn.Module, path: str | os.PathLike, size: tuple[int, int] = (256, 256)) -> float:
    """Trace ``model`` (eval mode) at input ``(H, W)`` = ``size`` and save it atomically.

    Returns the max abs difference between the reloaded module and eager output on a second,
    different input (so a trace that baked in its example input would show).
    """
    model = model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, _example(model, size), check_trace=False)
    with atomic_write(path, "wb") as f:
        torch.jit.save(traced, f)
    probe = _example(model, size)
    with torch.no_grad():
        return float((torch.jit.load(str(path))(probe) - model(probe)).abs().max())


def export_onnx(model: nn.Module, path: str | os.PathLike, size: tuple[int, int] = (256, 256), opset: int = 17) -> float:
    """Export to ONNX with a dynamic batch axis and save atomically; returns the max abs
    difference between ONNX Runtime and eager output on a fresh input."""
    model = model.eval()
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (_example(model, size),),
                str(tmp),
                input_names=["image"],
                output_names=["heatmap_logits"],
                dynamic_axes={"image": {0: "batch"}, "heatmap_logits": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    probe = _example(model, size)
    with torch.no_grad():
        eager = model(probe).numpy()
    return float(np.abs(OnnxNetwork(path)(probe).numpy() - eager).max())


def refine_export_path(path: str | os.PathLike) -> Path:
    """Where a two-stage checkpoint's refinement network is exported beside the first stage's file
    (``model.onnx`` -> ``model.refine.onnx``), and where ``maht-net infer --onnx`` looks for it."""
    path = Path(path)
    return path.with_name(path.stem + ".refine" + path.suffix)


def export_checkpoint(checkpoint: str | os.PathLike, path: str | os.PathLike, fmt: str = "onnx") -> dict[Path, float]:
    """Export every stage of ``checkpoint`` as ``fmt`` (``"onnx"`` or ``"torchscript"``): the first
    stage's network to ``path`` at its input size (input ``(B, C, H, W)``), and a two-stage
    checkpoint's refinement network to :func:`refine_export_path` at its patch size (input
    ``(B, N, P, P)``: one patch per landmark). Returns ``{file: max abs logit difference vs eager}``."""
    export = {"onnx": export_onnx, "torchscript": export_torchscript}[fmt]
    network, info = load_model(checkpoint)
    written = {Path(path): export(network, path, size=(int(info["input_size"][1]), int(info["input_size"][0])))}
    refiner = load_refiner(checkpoint)
    if refiner is not None:
        patch = refiner.codec.patch_size
        written[refine_export_path(path)] = export(refiner.network, refine_export_path(path), size=(patch, patch))
    return written


def onnx_refiner(refiner: Refiner, onnx: str | os.PathLike, threads: int | None = None) -> Refiner:
    """``refiner`` running its network with ONNX Runtime, from the file :func:`export_checkpoint`
    wrote beside the first stage's ``onnx``."""
    path = refine_export_path(onnx)
    if not path.is_file():
        raise InputError(path, "the checkpoint has a refinement stage but its ONNX file is missing "
                         "(export both with 'maht-net export --format onnx', or pass --no-refine)")  # fmt: skip
    return Refiner(OnnxNetwork(path, threads=threads), refiner.info, combine=refiner.combine, shift_mm=refiner.shift_mm)


class OnnxNetwork:
    """An ONNX Runtime session that behaves like the network: tensor in, logits tensor out."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, stride: int = 4, num_landmarks: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.stride = stride
        self.num_landmarks = num_landmarks

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"image": x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out)

    def eval(self) -> OnnxNetwork:
        return self
