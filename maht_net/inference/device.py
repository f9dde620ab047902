"""Where the networks run at inference, and at what float32 precision.

On an NVIDIA GPU PyTorch lets cuDNN compute float32 convolutions in TF32 (10-bit mantissa) by
default. Measured on the shipped model (docs/benchmarks.md, "On a GPU"), that moves landmarks up
to 6 px (both stages) from where the CPU places them, for no measurable speed gain at one film per
call; with TF32 off the largest distance is 0.004 px. Inference therefore runs the networks in
full float32 (:func:`exact_float32`), so a film gets the same landmarks on any machine. Training
keeps PyTorch's defaults (its AMP runs in float16 anyway).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["default_device", "exact_float32"]


def default_device() -> str:
    """``"cuda"`` when PyTorch sees a GPU, else ``"cpu"``: where the command line and the MONAI
    Label app run the networks unless told otherwise (the bundle's configs decide the same way)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextmanager
def exact_float32() -> Iterator[None]:
    """float32 convolutions and matrix products without TF32 inside the block (a no-op on the CPU);
    the previous settings come back after it."""
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul
