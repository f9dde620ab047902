"""The refinement stage at inference: patches of the full-resolution film around the first
stage's landmarks -> the refinement network -> landmarks and uncertainty in film pixels.

:class:`Refiner` is the only implementation; :class:`~maht_net.inference.predictor.Predictor`
runs it after the first stage's decoding when the checkpoint holds the stage
(:func:`load_refiner`), so every caller of the predictor gets both stages.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.data import list_data_collate
from monai.transforms import MapTransform

from maht_net.codec.heatmaps import DecodedLandmarks, covariance_to_spread
from maht_net.codec.patches import PatchCodec
from maht_net.codec.uncertainty import CALIBRATION_KEY
from maht_net.datasets.pipeline import FILM_KEY
from maht_net.errors import InputError
from maht_net.inference.device import exact_float32
from maht_net.io.checkpoint import REFINE_SHIFT_KEY, load_checkpoint_file, refine_stage
from maht_net.models import create_network

__all__ = ["COMBINE_MODES", "Refiner", "RefineLandmarksd", "load_refiner", "collate_films"]

COMBINE_MODES = ("fuse", "replace")
"""How a refined landmark and the first stage's are combined (the stage's ``info["combine"]``,
default ``"fuse"``): ``"fuse"`` weighs the two points by each other's radial variance (the product
of two isotropic Gaussians: a confident first stage holds an unsure refinement back);
``"replace"`` keeps the refined point alone."""


class Refiner:
    """The refinement stage: a patch network and its :class:`~maht_net.codec.patches.PatchCodec`.

    Args:
        network: a refinement network (:mod:`maht_net.models.refine_net`) or an
            :class:`~maht_net.inference.export.OnnxNetwork` of one: ``(B, N, P, P)`` patches in,
            ``(B, N, P/s, P/s)`` logits out.
        info: the stage's info (:data:`~maht_net.io.checkpoint.REFINE_INFO_KEYS`, optional ``combine``
            and ``uncertainty_calibration``: the sigma scaling of the combined uncertainty, fitted
            by :func:`~maht_net.inference.calibration.calibrate_checkpoint` for one combine mode).
        combine: one of :data:`COMBINE_MODES` (default: the stage's, else ``"fuse"``).
        shift_mm: test-time patch shifts: each landmark is refined in five patches, centred on the
            first stage's point and moved this many mm along -x, +x, -y, +y, and the five
            decodings (points, covariances, confidences) are averaged (the refined point's error
            depends on where the landmark falls in the patch); 0: one centred patch. Default: the
            stage's (:data:`~maht_net.io.checkpoint.REFINE_SHIFT_KEY`), else 0.
    """

    def __init__(
        self, network: Any, info: Mapping[str, Any], device: str | torch.device = "cpu", combine: str | None = None, shift_mm: float | None = None
    ) -> None:
        self.network, self.info, self.device = network, dict(info), torch.device(device)
        self.codec = PatchCodec.from_info(info)
        self.combine = combine or self.info.get("combine", "fuse")
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {COMBINE_MODES}, not {self.combine!r}")
        self.shift_mm = self.codec.check_shift(self.info.get(REFINE_SHIFT_KEY, 0.0) if shift_mm is None else shift_mm)
        record = self.info.get(CALIBRATION_KEY)
        self.calibration = dict(record) if record and record.get("combine") == self.combine else None
        if self.calibration is not None and len(self.calibration["scale"]) != len(self.info["landmark_names"]):
            raise ValueError(f"refinement calibration has {len(self.calibration['scale'])} factors for {len(self.info['landmark_names'])} landmarks")

    @classmethod
    def from_stage(
        cls,
        stage: Mapping[str, Any],
        device: str | torch.device = "cpu",
        checkpoint: str | os.PathLike | None = None,
        combine: str | None = None,
        shift_mm: float | None = None,
    ) -> Refiner:
        """Build the network of a checkpoint stage ``{"model", "info"}`` and load its weights."""
        info = stage["info"]
        network = create_network(info["network"], num_landmarks=len(info["landmark_names"]), **info.get("network_kwargs", {}))
        try:
            network.load_state_dict(stage["model"])
        except RuntimeError as e:
            raise InputError(checkpoint, f"refinement weights do not fit network {info['network']!r} ({str(e).splitlines()[0]})") from None
        return cls(network.to(device).eval(), info, device, combine, shift_mm)

    def __call__(self, films: Sequence[torch.Tensor], centres: torch.Tensor, spacing: torch.Tensor | None) -> DecodedLandmarks:
        """Refined landmarks of ``B`` films around ``centres`` ``(B, N, 2)`` film pixels.

        ``films``: ``(1, H, W)`` or ``(H, W)`` each, normalised as the first stage's input (before
        its letterbox); ``spacing`` ``(B, 2)`` mm/px (NaN = unknown: estimated from the centres'
        spread, :meth:`~maht_net.codec.patches.PatchCodec.resolve_spacing`).
        Non-finite centres are sampled at ``(0, 0)`` (the caller keeps its own point there).
        With :attr:`shift_mm` > 0 the ``K = 5`` shifted patches of every landmark go through the
        network as one batch ``(K B, N, P, P)`` and their decodings are averaged.
        Returns film pixels (``points`` float64), film-pixel covariance and confidence.
        """
        centres = torch.as_tensor(centres, dtype=torch.float64)
        spacing = self.codec.resolve_spacing(spacing, centres)
        safe = torch.where(torch.isfinite(centres), centres, torch.zeros_like(centres))
        b, n = safe.shape[:2]
        shifts = self.codec.shifts(spacing, self.shift_mm, b)  # (K, B, 1, 2) film pixels
        k = shifts.shape[0]
        shifted = (safe[None] + shifts).reshape(k * b, n, 2)
        patches = torch.cat([self.codec.sample_batch(films, c, spacing) for c in shifted.split(b)])
        if isinstance(self.network, nn.Module):
            self.network.eval()
        with torch.no_grad(), exact_float32():
            logits = self.network(patches.to(self.device))
        decoded = self.codec.decode(torch.as_tensor(logits).cpu(), shifted, spacing.repeat(k, 1))
        if k == 1:
            return decoded
        return DecodedLandmarks(*(t.reshape(k, b, *t.shape[1:]).mean(0) for t in (decoded.points, decoded.confidence, decoded.covariance)))

    def refine(self, output: Mapping[str, Any], films: Sequence[torch.Tensor], spacing: torch.Tensor | None) -> dict[str, Any]:
        """Replace the first stage's decoded landmarks in ``output`` (of
        :class:`~maht_net.transforms.targets.DecodeLandmarksd`: ``pred_points``, ``pred_covariance``,
        ``pred_spread``, ``pred_confidence``, in film pixels) by the refined ones, combined with
        the first stage's as :attr:`combine` says.

        The first stage's points and spread are kept as ``coarse_points``/``coarse_spread``, the
        films' mm/px the patches were cut at as ``refine_spacing`` ``(B, 2)``, where it came
        from as ``refine_spacing_source`` (:meth:`~maht_net.codec.patches.PatchCodec.spacing_sources`)
        and the patch shifts as ``refine_shift_mm`` (:attr:`shift_mm`); a
        landmark whose first-stage point is not finite keeps it. With ``combine="fuse"`` each
        point is ``c + w (r - c)``, ``w = s_c^2 / (s_c^2 + s_r^2)`` from the two radial spreads
        (the first stage's as decoded, calibrated when the checkpoint is), and the covariance is
        the refined one times ``w``. Points are clamped to the film (``orig_size``). The
        uncertainty is then the combination's: scaled by the stage's calibration (per landmark,
        fitted for this combine mode) when the first stage's was applied too
        (``uncertainty_calibration`` in ``output``: the mode it was fitted for), which then
        replaces it as ``uncertainty_calibration``; otherwise raw, and the key is dropped.
        """
        d = dict(output)
        # the patch geometry runs on the CPU; the outputs go back where the first stage's were
        # (the bundle's evaluator decodes on the GPU)
        home = torch.as_tensor(d["pred_points"]).device
        first = {k: torch.as_tensor(d[k]).cpu() for k in ("pred_points", "pred_spread", "pred_covariance", "pred_confidence")}
        coarse = first["pred_points"].to(torch.float64)
        spacing = spacing.cpu() if isinstance(spacing, torch.Tensor) else spacing
        film_spacing = self.codec.resolve_spacing(spacing, coarse)
        refined = self(films, coarse, film_spacing)
        ok = torch.isfinite(coarse).all(-1)
        points, covariance = refined.points, refined.covariance
        if self.combine == "fuse":
            var_c = first["pred_spread"].to(torch.float64) ** 2
            var_r = covariance_to_spread(covariance) ** 2
            w = torch.where(var_c + var_r > 0, var_c / (var_c + var_r), torch.full_like(var_c, 0.5))
            points = coarse + w[..., None] * (points - coarse)
            covariance = covariance * w[..., None, None]
        calibrated = self.calibration is not None and d.get("uncertainty_calibration") is not None
        if calibrated:
            covariance = covariance * torch.as_tensor(self.calibration["scale"], dtype=covariance.dtype)[None, :, None, None] ** 2
        if "orig_size" in d:
            size = torch.as_tensor(d["orig_size"]).cpu().to(points)[:, None, :]
            points = torch.minimum(points.clamp_min(0.0), size - 1)
        covariance = torch.where(ok[..., None, None], covariance.to(first["pred_covariance"].dtype), first["pred_covariance"])
        d["refine_spacing_source"] = self.codec.spacing_sources(spacing, coarse)
        d["refine_shift_mm"] = self.shift_mm
        d.update({k: v.to(home) for k, v in {
            "coarse_points": coarse,
            "coarse_spread": first["pred_spread"],
            "refine_spacing": film_spacing,
            "pred_points": torch.where(ok[..., None], points, coarse),
            "pred_covariance": covariance,
            "pred_spread": covariance_to_spread(covariance),
            "pred_confidence": torch.where(ok, refined.confidence.to(first["pred_confidence"].dtype), first["pred_confidence"]),
        }.items()})
        if calibrated:
            d["uncertainty_calibration"] = self.calibration
        else:
            d.pop("uncertainty_calibration", None)
        return d


def load_refiner(
    checkpoint: str | os.PathLike, device: str | torch.device = "cpu", combine: str | None = None, shift_mm: float | None = None
) -> Refiner | None:
    """The refinement stage of a checkpoint file, or ``None`` for a single-stage checkpoint
    (``combine``: :data:`COMBINE_MODES`, ``shift_mm``: :class:`Refiner`'s; default the stage's).

    Raises:
        InputError: unreadable file, or an incomplete stage or weights that do not fit.
    """
    stage = refine_stage(load_checkpoint_file(checkpoint), checkpoint)
    return None if stage is None else Refiner.from_stage(stage, device, checkpoint, combine, shift_mm)


class RefineLandmarksd(MapTransform):
    """Dictionary wrapper of :meth:`Refiner.refine` for MONAI engines' postprocessing (after
    :class:`~maht_net.transforms.targets.DecodeLandmarksd`; the bundle's ``inference.json``).

    Reads the decoded ``pred_*`` keys, the films under :data:`~maht_net.datasets.pipeline.FILM_KEY`
    (``evaluation_transforms(keep_film=True)``, collated by :func:`collate_films`) and
    ``orig_spacing``; with ``refiner=None`` (a single-stage checkpoint, or refinement off) it
    returns the data unchanged.
    """

    def __init__(self, refiner: Refiner | None) -> None:
        super().__init__(["pred_points"])
        self.refiner = refiner

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        if self.refiner is None:
            return dict(data)
        if FILM_KEY not in data:
            raise ValueError(f"the refinement stage needs the full-resolution films under {FILM_KEY!r} (evaluation_transforms(keep_film=True))")
        return self.refiner.refine(data, data[FILM_KEY], data.get("orig_spacing"))


def collate_films(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """MONAI's collation, with the full-resolution films (of different sizes) kept as a list."""
    films = [s[FILM_KEY] for s in samples] if samples and FILM_KEY in samples[0] else None
    batch = list_data_collate([{k: v for k, v in s.items() if k != FILM_KEY} for s in samples])
    if films is not None:
        batch[FILM_KEY] = films
    return batch
