"""Training the refinement stage: patches around jittered truth, one heatmap per landmark.

The refinement network (:mod:`maht_net.models.refine_net`) is trained on its own, from datalist
items, independently of the first stage: for each film of a batch and each landmark, the patch
centre is the true landmark moved by an offset drawn like the first stage's errors
(:class:`PatchJitter`), and the target is the truth in that patch's pixels
(:class:`~maht_net.codec.patches.PatchCodec`). The loss is the first stage's
(:class:`~maht_net.models.losses.LandmarkLoss`, spatial KL plus a small coordinate term in mm).
The result is a stage ``{"model", "info"}`` that :func:`~maht_net.io.checkpoint.attach_refine_stage`
adds to a first-stage checkpoint; :func:`refine_checkpoint` does both for a checkpoint file (the
bundle's ``train.json`` and ``maht-net refine``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.transforms import Compose

from maht_net.codec.patches import PatchCodec, landmark_rms_mm
from maht_net.datasets.pipeline import film_transforms
from maht_net.errors import InputError
from maht_net.io.checkpoint import REFINE_SHIFT_KEY, attach_refine_stage, load_checkpoint_file
from maht_net.io.datalist import parse_items
from maht_net.landmarks import get_landmark_set
from maht_net.models import create_network
from maht_net.models.losses import LandmarkLoss
from maht_net.progress import progress

__all__ = ["DEFAULT_SHIFT_MM", "PatchJitter", "RefineFilm", "load_films", "training_patches", "train_refiner", "refine_checkpoint"]

DEFAULT_SHIFT_MM = 2.0
"""The test-time patch shifts a newly trained stage records (:func:`train_refiner`): chosen among
1, 1.5, 2 and 3 mm on the cross-validation folds' validation films (docs/benchmarks.md)."""


@dataclass(frozen=True)
class PatchJitter:
    """How far training patch centres lie from the truth, in mm: the first stage's errors.

    An offset is Gaussian with std ``sigma_mm`` per axis (a scalar, or one per landmark), or,
    with probability ``tail_fraction``, uniform in a disc of radius ``tail_mm`` (the first
    stage's rare large errors). Offsets are clipped to ``max_fraction`` of half the patch's field
    so the truth stays inside the patch. A per-axis std ``s`` gives a mean radial error of
    ``s * sqrt(pi / 2)`` (1.5 mm -> 1.9 mm, the first stage's typical mean on real films).
    """

    sigma_mm: float | Sequence[float] = 1.5
    tail_fraction: float = 0.1
    tail_mm: float = 5.0
    max_fraction: float = 0.8

    def __post_init__(self) -> None:
        sigma = np.atleast_1d(np.asarray(self.sigma_mm, dtype=float))
        if np.any(sigma < 0) or not 0 <= self.tail_fraction <= 1 or self.tail_mm < 0 or not 0 < self.max_fraction <= 1:
            raise ValueError(f"invalid jitter: sigma_mm >= 0, 0 <= tail_fraction <= 1, tail_mm >= 0, 0 < max_fraction <= 1 (got {self})")

    @classmethod
    def from_errors(cls, errors_mm: np.ndarray, **kwargs: Any) -> PatchJitter:
        """Per-landmark ``sigma_mm`` from first-stage radial errors ``(films, N)`` mm (NaN ignored):
        the RMS error over ``sqrt(2)``, the per-axis std of a circular Gaussian with that RMS."""
        rms = np.sqrt(np.nanmean(np.asarray(errors_mm, dtype=float) ** 2, axis=0))
        return cls(sigma_mm=[float(v) for v in rms / math.sqrt(2.0)], **kwargs)

    def sample(self, generator: torch.Generator, batch: int, num_landmarks: int, max_mm: float) -> torch.Tensor:
        """Offsets ``(batch, N, 2)`` ``(dx, dy)`` in mm, each axis within ``max_fraction * max_mm``."""
        sigma = torch.as_tensor(np.broadcast_to(np.asarray(self.sigma_mm, dtype=float), (num_landmarks,)).copy())
        off = torch.randn(batch, num_landmarks, 2, generator=generator, dtype=torch.float64) * sigma[None, :, None]
        tail = torch.rand(batch, num_landmarks, generator=generator, dtype=torch.float64) < self.tail_fraction
        radius = self.tail_mm * torch.sqrt(torch.rand(batch, num_landmarks, generator=generator, dtype=torch.float64))
        angle = 2 * math.pi * torch.rand(batch, num_landmarks, generator=generator, dtype=torch.float64)
        disc = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], -1)
        off = torch.where(tail[..., None], disc, off)
        limit = self.max_fraction * max_mm
        return off.clamp(-limit, limit)


@dataclass
class RefineFilm:
    """A film as the refinement stage trains on it: ``film`` ``(H, W)`` normalised,
    ``landmarks`` ``(N, 2)`` ``(x, y)`` film pixels (NaN = missing), ``spacing`` ``(2,)`` mm/px (NaN = unknown)."""

    film: torch.Tensor
    landmarks: torch.Tensor
    spacing: torch.Tensor
    id: str = ""


def load_films(
    items: Sequence[Mapping[str, Any]],
    num_landmarks: int = 19,
    normalize: str = "percentile",
    clahe: bool = False,
    base_dir: str | os.PathLike | None = None,
) -> list[RefineFilm]:
    """Read and normalise the films of datalist ``items`` (:func:`~maht_net.datasets.pipeline.film_transforms`,
    the preprocessing inference applies before its letterbox), kept in memory as float16.

    Raises:
        InputError: an image is missing or unreadable (from the datalist checks or the reader).
    """
    transform = Compose(film_transforms(normalize, clahe))
    films = []
    for it in parse_items(items, num_landmarks, base_dir, "refinement training data", check_files=True):
        d = transform({k: it[k] for k in ("image", "landmarks", "spacing", "id") if k in it})
        spacing = d.get("spacing")
        films.append(
            RefineFilm(
                film=torch.as_tensor(d["image"].as_tensor()[0], dtype=torch.float16),
                landmarks=torch.as_tensor(np.asarray(d["landmarks"], dtype=np.float64)),
                spacing=torch.as_tensor(np.full(2, np.nan) if spacing is None else np.asarray(spacing, dtype=np.float64)),
                id=str(it.get("id", "")),
            )
        )
    return films


def training_patches(
    films: Sequence[RefineFilm],
    codec: PatchCodec,
    jitter: PatchJitter,
    generator: torch.Generator,
    scale_jitter: float = 0.0,
) -> dict[str, torch.Tensor]:
    """One training batch: a patch per landmark of each film around the jittered truth.

    Returns ``patches`` ``(B, N, P, P)``, ``landmarks`` ``(B, N, 2)`` the truth in patch pixels,
    ``mask`` ``(B, N)`` (1 where the truth is known and inside its patch) and ``spacing``
    ``(B, 2)`` mm per patch pixel. ``scale_jitter``: each film's patches are sampled at
    ``mm_per_px * (1 + U(-scale_jitter, scale_jitter))`` (robustness to a wrong film spacing).
    """
    patches, targets, spacings = [], [], []
    half_mm = codec.field_mm / 2
    for f in films:
        scale = 1.0 + scale_jitter * (2 * float(torch.rand((), generator=generator)) - 1) if scale_jitter else 1.0
        c = replace(codec, mm_per_px=codec.mm_per_px * scale) if scale != 1.0 else codec
        truth = f.landmarks[None]
        sp = c.resolve_spacing(f.spacing, truth)  # (1, 2): as inference resolves an unknown spacing
        known = torch.isfinite(truth).all(-1)
        offset_px = jitter.sample(generator, 1, truth.shape[1], half_mm) / sp[:, None, :]
        centres = torch.where(known[..., None], truth + offset_px, torch.zeros_like(truth))
        patches.append(c.sample(f.film.float(), centres[0], sp))
        targets.append(c.film_to_patch(torch.where(known[..., None], truth, torch.full_like(truth, float("nan"))), centres, sp)[0])
        spacings.append(torch.full((2,), c.mm_per_px, dtype=torch.float32))
    uv = torch.stack(targets).float()
    p = codec.patch_size
    inside = torch.isfinite(uv).all(-1) & (uv >= 0).all(-1) & (uv <= p - 1).all(-1)
    return {"patches": torch.stack(patches), "landmarks": uv, "mask": inside.float(), "spacing": torch.stack(spacings)}


def _augment(patches: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Radiographic appearance per film: gamma, contrast, brightness, noise (patches in ``[0, 1]``)."""
    b = patches.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(b, 1, 1, 1, generator=generator)).to(patches.dtype)

    x = patches.clamp(0, 1) ** u(0.7, 1.4)
    x = (x - 0.5) * u(0.75, 1.25) + 0.5 + u(-0.1, 0.1)
    return x + torch.randn(patches.shape, generator=generator, dtype=patches.dtype) * u(0.0, 0.03)


def train_refiner(
    items: Sequence[Mapping[str, Any]] | Sequence[RefineFilm],
    landmark_set: str = "isbi2015",
    codec: PatchCodec | None = None,
    network: str = "refine_net",
    network_kwargs: Mapping[str, Any] | None = None,
    jitter: PatchJitter | None = None,
    iterations: int = 2000,
    time_budget_s: float | None = None,
    batch_size: int = 8,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    loss_weights: Mapping[str, float] | None = None,
    augment: bool = True,
    scale_jitter: float = 0.05,
    normalize: str = "percentile",
    clahe: bool = False,
    base_dir: str | os.PathLike | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    desc: str | None = "refinement",
    shift_mm: float = DEFAULT_SHIFT_MM,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a refinement network; returns it (eval mode) and its checkpoint stage ``{"model", "info"}``.

    Args:
        items: datalist items (``image``, ``landmarks``, ``spacing``) or films from :func:`load_films`.
        codec: the patch codec (size, resolution, stride, target sigma); default :class:`PatchCodec`.
            Without a ``landmark_rms_mm`` it gets the films' (:func:`~maht_net.codec.patches.landmark_rms_mm`).
        network, network_kwargs: a registered refinement network (``refine_net``, ``refine_net_small``).
        jitter: patch-centre offsets (default :class:`PatchJitter`).
        iterations, time_budget_s: stop after this many steps or seconds, whichever comes first;
            the learning rate decays from ``lr`` to 0 on a cosine over that same budget.
        loss_weights: :class:`~maht_net.models.losses.LandmarkLoss` terms (default KL + 0.02 coord in mm).
        normalize, clahe: intensity preprocessing; must be the first stage's (checked when attached).
        desc: progress-bar name (``None``: no bar).
        shift_mm: the stage's test-time patch shifts at inference (recorded as
            :data:`~maht_net.io.checkpoint.REFINE_SHIFT_KEY`; :class:`~maht_net.inference.refine.Refiner`;
            0: one centred patch; default :data:`DEFAULT_SHIFT_MM`); training does not depend on it.
    """
    codec = codec or PatchCodec()
    shift_mm = codec.check_shift(shift_mm)
    jitter = jitter or PatchJitter()
    names = get_landmark_set(landmark_set).names
    n = len(names)
    films = list(items) if items and isinstance(items[0], RefineFilm) else load_films(items, n, normalize, clahe, base_dir)
    if not films:
        raise ValueError("no training films")
    if codec.landmark_rms_mm is None:  # the anatomy size these films show, for films of unknown spacing at inference
        codec = replace(codec, landmark_rms_mm=landmark_rms_mm([f.landmarks for f in films], [f.spacing for f in films]))
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    kwargs = dict(network_kwargs or {})
    model = create_network(network, num_landmarks=n, **kwargs).to(device)
    if model.stride != codec.stride:
        raise ValueError(f"network {network!r} has output stride {model.stride}, the codec {codec.stride}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = LandmarkLoss(loss_weights or {"kl": 1.0, "coord": 0.02}, sigma=codec.sigma, stride=codec.stride)
    model.train()
    start, losses, steps = time.monotonic(), [], range(int(iterations))
    for step in progress(steps, desc, unit="step") if desc else steps:
        # cosine decay over whichever budget runs out first, so a timed run also anneals
        done = step / max(iterations, 1)
        if time_budget_s is not None:
            done = max(done, (time.monotonic() - start) / max(time_budget_s, 1e-9))
        if done >= 1.0 and step > 0:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
        pick = torch.randint(len(films), (batch_size,), generator=generator).tolist()
        batch = training_patches([films[i] for i in pick], codec, jitter, generator, scale_jitter)
        patches = _augment(batch["patches"], generator) if augment else batch["patches"]
        target = {k: batch[k].to(device) for k in ("landmarks", "mask", "spacing")}
        loss = loss_fn(model(patches.to(device)), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    config = dict(getattr(model, "config", kwargs))
    config.pop("num_landmarks", None)
    info = {
        "network": network,
        "network_kwargs": config,
        "landmark_names": list(names),
        "normalize": normalize,
        "clahe": bool(clahe),
        **codec.info(),
        REFINE_SHIFT_KEY: shift_mm,
        "trained": {
            "iterations": len(losses),
            "seconds": round(time.monotonic() - start, 1),
            "films": len(films),
            "batch_size": int(batch_size),
            "lr": float(lr),
            "final_loss": float(np.mean(losses[-20:])) if losses else None,
            "jitter": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in asdict(jitter).items()},
            "scale_jitter": float(scale_jitter),
            "seed": int(seed),
        },
    }
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return model, {"model": state, "info": info}


def refine_checkpoint(
    checkpoint: str | os.PathLike,
    items: Sequence[Mapping[str, Any]],
    out: str | os.PathLike | None = None,
    minutes: float | None = None,
    codec: PatchCodec | None = None,
    **kwargs: Any,
) -> tuple[str, dict[str, Any]]:
    """Train the refinement stage for a first-stage checkpoint file and attach it.

    The stage takes the checkpoint's landmark set and intensity preprocessing; ``kwargs`` go to
    :func:`train_refiner` (``network``, ``jitter``, ``iterations``, ``batch_size``, ``lr``,
    ``base_dir``, ``seed``, ``device``...), ``minutes`` is its time budget (``None`` or 0: none).
    Writes ``out`` (default: the checkpoint itself) atomically; returns its path and the stage.

    Raises:
        InputError: not a MAHT-Net checkpoint.
    """
    state = load_checkpoint_file(checkpoint)
    if not isinstance(state, dict) or not isinstance(state.get("info"), Mapping):
        raise InputError(checkpoint, "not a MAHT-Net checkpoint: expected keys 'model' and 'info'")
    info = state["info"]
    codec = codec or PatchCodec()
    _, stage = train_refiner(
        items,
        landmark_set=info.get("landmark_set", "isbi2015"),
        codec=codec,
        network_kwargs={"output_stride": codec.stride},
        time_budget_s=60.0 * minutes if minutes else None,
        normalize=info.get("normalize", "percentile"),
        clahe=bool(info.get("clahe", False)),
        **kwargs,
    )
    return str(attach_refine_stage(checkpoint, stage, out)), stage
