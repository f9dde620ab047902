"""Deployment exports: TorchScript (trace) and ONNX, each checked against eager output."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from maht_net.io.atomic import atomic_write

__all__ = ["export_torchscript", "export_onnx", "OnnxNetwork"]


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
