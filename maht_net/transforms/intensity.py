"""Intensity transforms for radiographs: normalisation, CLAHE and cheap random appearance changes.

None of them moves pixels, so landmarks and ``meta["orig_to_current"]`` are untouched. Outputs
are torch tensors: a ``MetaTensor`` input gives a ``MetaTensor`` with a copy of its metadata.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import TransformBackends, convert_to_tensor

__all__ = ["NormalizeXRay", "NormalizeXRayd", "CLAHE", "CLAHEd", "RandXRayIntensity", "RandXRayIntensityd", "RandXRayInvert", "RandXRayInvertd"]

_MAX_QUANTILE_SAMPLES = 1 << 20  # percentiles from at most ~1M evenly strided pixels: cheap and stable


def _as_float_tensor(img: Any) -> torch.Tensor:
    tensor = convert_to_tensor(img, track_meta=False)
    if tensor.ndim != 3:
        raise ValueError(f"image must be channel-first (C, H, W), got shape {tuple(tensor.shape)}.")
    return tensor if tensor.is_floating_point() else tensor.float()


def _restore(out: torch.Tensor, img: Any) -> torch.Tensor:
    """A ``MetaTensor`` input gives a ``MetaTensor`` with a copy of its metadata; others a plain tensor."""
    if isinstance(img, MetaTensor):
        return MetaTensor(out, meta=dict(img.meta), applied_operations=list(img.applied_operations))
    return out


class NormalizeXRay(Transform):
    """Normalise image intensities, per image.

    ``"percentile"`` (default) maps the ``lower``-th..``upper``-th percentiles to ``[0, 1]`` and
    clips. It is the default because radiographs have heavy tails (collimator shadow, burnt-out
    soft tissue, rulers, text labels) that would dominate a min-max or z-score; the ``[0, 1]``
    range also suits gamma augmentation. ``"zscore"`` subtracts the mean and divides by the
    standard deviation (no clipping), for networks pretrained on standardised inputs.

    Args:
        mode: ``"percentile"`` or ``"zscore"``.
        lower: lower percentile in ``[0, 100)`` (``"percentile"`` only).
        upper: upper percentile in ``(lower, 100]`` (``"percentile"`` only).

    Notes:
        - Image ``(C, H, W)`` in and out; all channels share the statistics.
        - A constant image becomes all zeros.
        - Percentiles are estimated from at most about 1M strided pixels.

    Raises:
        ValueError: for an unknown ``mode`` or percentiles outside ``0 <= lower < upper <= 100``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, mode: str = "percentile", lower: float = 0.5, upper: float = 99.5) -> None:
        if mode not in ("percentile", "zscore"):
            raise ValueError(f"Argument `mode` must be 'percentile' or 'zscore', got {mode!r}.")
        if not 0 <= lower < upper <= 100:
            raise ValueError(
                f"Arguments `lower` and `upper` must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}."
            )
        self.mode = mode
        self.lower = float(lower)
        self.upper = float(upper)

    def __call__(self, img: Any) -> torch.Tensor:
        x = _as_float_tensor(img)
        if self.mode == "zscore":
            std = x.std()
            out = (x - x.mean()) / std if std > 0 else torch.zeros_like(x)
        else:
            flat = x.reshape(-1)
            flat = flat[:: max(1, flat.numel() // _MAX_QUANTILE_SAMPLES)]
            q = torch.tensor([self.lower / 100, self.upper / 100], dtype=flat.dtype)
            low, high = torch.quantile(flat, q)
            out = ((x - low) / (high - low)).clamp_(0, 1) if high > low else torch.zeros_like(x)
        return _restore(out, img)


class NormalizeXRayd(MapTransform):
    """Dictionary-based :class:`NormalizeXRay`.

    Args:
        keys: image keys.
        mode, lower, upper: see :class:`NormalizeXRay`.
        allow_missing_keys: don't raise when a key is missing.

    Notes:
        - Images ``(C, H, W)`` in and out.
    """

    backend = NormalizeXRay.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        mode: str = "percentile",
        lower: float = 0.5,
        upper: float = 99.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = NormalizeXRay(mode, lower, upper)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d


class CLAHE(Transform):
    """Contrast-limited adaptive histogram equalisation (``skimage.exposure.equalize_adapthist``).

    Brings out bone edges in under- or over-exposed films. The image is first min-max scaled to
    ``[0, 1]`` per channel (skimage needs that range); the output is in ``[0, 1]``. Runs on the
    CPU in numpy: use it once before caching, not per training step.

    Args:
        clip_limit: contrast limit in ``(0, 1]``; higher = stronger equalisation.
        kernel_size: tile size in pixels, an int or ``(H, W)``; ``None`` = 1/8 of each side.
        nbins: number of grey-level bins.

    Notes:
        - Image ``(C, H, W)`` in and out; each channel is equalised separately.

    Raises:
        ValueError: ``clip_limit`` outside ``(0, 1]``, a non-positive ``kernel_size`` or ``nbins`` < 2.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(
        self, clip_limit: float = 0.01, kernel_size: int | Sequence[int] | None = None, nbins: int = 256
    ) -> None:
        if not 0 < clip_limit <= 1:
            raise ValueError(f"Argument `clip_limit` must be in (0, 1], got {clip_limit}.")
        if kernel_size is not None:
            sizes = (kernel_size,) if isinstance(kernel_size, (int, np.integer)) else tuple(kernel_size)
            if len(sizes) not in (1, 2) or any(int(k) != k or k < 1 for k in sizes):
                raise ValueError(f"Argument `kernel_size` must be a positive int or (H, W), got {kernel_size!r}.")
        if nbins < 2:
            raise ValueError(f"Argument `nbins` must be at least 2, got {nbins}.")
        self.clip_limit = float(clip_limit)
        self.kernel_size = kernel_size
        self.nbins = int(nbins)

    def __call__(self, img: Any) -> torch.Tensor:
        from skimage.exposure import equalize_adapthist

        x = _as_float_tensor(img).cpu().numpy().astype(np.float64)
        out = np.empty(x.shape, dtype=np.float32)
        for c, channel in enumerate(x):
            low, high = channel.min(), channel.max()
            if high <= low:
                out[c] = 0.0
                continue
            unit = (channel - low) / (high - low)
            out[c] = equalize_adapthist(
                unit, kernel_size=self.kernel_size, clip_limit=self.clip_limit, nbins=self.nbins
            )
        return _restore(torch.from_numpy(out), img)


class CLAHEd(MapTransform):
    """Dictionary-based :class:`CLAHE`.

    Args:
        keys: image keys.
        clip_limit, kernel_size, nbins: see :class:`CLAHE`.
        allow_missing_keys: don't raise when a key is missing.

    Notes:
        - Images ``(C, H, W)`` in and out.
    """

    backend = CLAHE.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        clip_limit: float = 0.01,
        kernel_size: int | Sequence[int] | None = None,
        nbins: int = 256,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.clahe = CLAHE(clip_limit, kernel_size, nbins)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.clahe(d[key])
        return d


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(C, H, W)`` with reflect padding.

    Shifted in-place sums: for these few-tap kernels about 4x faster than ``conv2d`` on the CPU.
    """
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).tolist()
    height, width = x.shape[-2:]
    padded = F.pad(x[None], (radius, radius, radius, radius), mode="reflect")[0]
    rows = padded[:, :, :width] * taps[0]
    for i in range(1, len(taps)):
        rows.add_(padded[:, :, i : i + width], alpha=taps[i])
    out = rows[:, :height, :] * taps[0]
    for i in range(1, len(taps)):
        out.add_(rows[:, i : i + height, :], alpha=taps[i])
    return out


class RandXRayIntensity(RandomizableTransform):
    """Random radiograph appearance: gamma, contrast, brightness, blur and Gaussian noise.

    Mimics exposure, detector and processing differences between machines. With probability
    ``prob`` the transform is applied; each of the five components is then switched on
    independently with probability ``component_prob``, in this order:

    1. gamma: ``x -> lo + (hi - lo) * ((x - lo) / (hi - lo)) ** g``, ``log g ~ U(-gamma, gamma)``,
       where ``lo``, ``hi`` are the image minimum and maximum (so any intensity range works);
    2. contrast: ``x -> mean + c (x - mean)``, ``c ~ U(1 - contrast, 1 + contrast)``;
    3. brightness: ``x -> x + b (hi - lo)``, ``b ~ U(-brightness, brightness)``;
    4. blur: Gaussian, ``sigma ~ U(0, blur_sigma)`` pixels;
    5. noise: additive Gaussian, std ``~ U(0, noise_std) (hi - lo)``.

    All magnitudes are multiplied by ``strength`` (0 = identity, 1 = defaults, 2 = twice as
    strong); the contrast half-range is capped at 0.9 so the image never inverts. Values are not
    clipped, so z-scored inputs stay valid.

    Args:
        prob: probability of applying the transform.
        strength: global multiplier of all magnitudes.
        component_prob: probability of each component, given the transform applies.
        gamma: half-range of ``log g``.
        contrast: half-range of the contrast factor around 1.
        brightness: half-range of the shift, as a fraction of the intensity range.
        blur_sigma: largest blur sigma in pixels.
        noise_std: largest noise std, as a fraction of the intensity range.

    Notes:
        - Image ``(C, H, W)`` in and out; all channels get the same draw.
        - Randomness comes from ``self.R`` only (the noise through a seeded ``torch.Generator``),
          so ``set_random_state`` makes it reproducible.

    Raises:
        ValueError: a negative magnitude or ``strength``, ``component_prob`` outside ``[0, 1]``, or
            ``contrast >= 1`` (which could invert the image).
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        prob: float = 0.8,
        strength: float = 1.0,
        component_prob: float = 0.5,
        gamma: float = 0.4,
        contrast: float = 0.3,
        brightness: float = 0.1,
        blur_sigma: float = 1.0,
        noise_std: float = 0.03,
    ) -> None:
        super().__init__(prob)
        magnitudes = dict(
            strength=strength,
            gamma=gamma,
            contrast=contrast,
            brightness=brightness,
            blur_sigma=blur_sigma,
            noise_std=noise_std,
        )
        for name, value in magnitudes.items():
            if not value >= 0:
                raise ValueError(f"Argument `{name}` must be non-negative, got {value}.")
        if not 0 <= component_prob <= 1:
            raise ValueError(f"Argument `component_prob` must be in [0, 1], got {component_prob}.")
        if contrast >= 1:
            raise ValueError(f"Argument `contrast` must be below 1, got {contrast}.")
        self.strength = float(strength)
        self.component_prob = float(component_prob)
        self.gamma = float(gamma)
        self.contrast = float(contrast)
        self.brightness = float(brightness)
        self.blur_sigma = float(blur_sigma)
        self.noise_std = float(noise_std)
        self._draw = np.zeros(5)
        self._on = np.zeros(5, dtype=bool)
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        # A fixed number of draws per call keeps the random stream aligned whatever is switched on.
        self._on = self.R.rand(5) < self.component_prob
        self._draw = self.R.uniform(-1.0, 1.0, size=5)
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, img: Any, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize()
        if not self._do_transform:
            return convert_to_tensor(img, track_meta=isinstance(img, MetaTensor))
        x = _as_float_tensor(img)
        lo, hi = x.amin(), x.amax()
        span = hi - lo
        gamma_on, contrast_on, brightness_on, blur_on, noise_on = self._on
        g, c, b, s, n = self._draw
        k = self.strength
        if gamma_on and span > 0:
            x = lo + span * ((x - lo) / span).pow(float(np.exp(g * k * self.gamma)))
        if contrast_on:
            mean = x.mean()
            x = mean + (1.0 + c * min(k * self.contrast, 0.9)) * (x - mean)
        if brightness_on:
            x = x + b * k * self.brightness * span
        sigma = abs(s) * k * self.blur_sigma
        if blur_on and sigma > 0.1:  # below 0.1 px the kernel is a delta
            x = _gaussian_blur(x, sigma)
        std = abs(n) * k * self.noise_std * float(span)
        if noise_on and std > 0:
            generator = torch.Generator().manual_seed(self._seed)
            x = x + std * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        return _restore(x, img)


class RandXRayIntensityd(RandomizableTransform, MapTransform):
    """Dictionary-based :class:`RandXRayIntensity`; all keys get the same draw.

    Args:
        keys: image keys.
        prob, strength, component_prob, gamma, contrast, brightness, blur_sigma, noise_std: see
            :class:`RandXRayIntensity`.
        allow_missing_keys: don't raise when a key is missing.

    Notes:
        - Images ``(C, H, W)`` in and out.
    """

    backend = RandXRayIntensity.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        prob: float = 0.8,
        strength: float = 1.0,
        component_prob: float = 0.5,
        gamma: float = 0.4,
        contrast: float = 0.3,
        brightness: float = 0.1,
        blur_sigma: float = 1.0,
        noise_std: float = 0.03,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.augment = RandXRayIntensity(
            1.0, strength, component_prob, gamma, contrast, brightness, blur_sigma, noise_std
        )

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandXRayIntensityd:
        super().set_random_state(seed, state)
        self.augment.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if self._do_transform:
            self.augment.randomize()
        for key in self.key_iterator(d):
            if self._do_transform:
                d[key] = self.augment(d[key], randomize=False)
            else:
                d[key] = convert_to_tensor(d[key], track_meta=isinstance(d[key], MetaTensor))
        return d


class RandXRayInvert(RandomizableTransform):
    """Random polarity inversion ``x -> lo + hi - x`` (``lo``, ``hi``: the image's minimum and maximum).

    A MONOCHROME1 film exported to PNG/JPEG without its inversion shows bone dark and air
    bright; training with this transform makes the network read either polarity (a model
    trained without it fails on such films: ``docs/benchmarks.md``, robustness table).

    Notes:
        - Image ``(C, H, W)`` in and out; any intensity range.
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, img: Any, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize(None)
        if not self._do_transform:
            return convert_to_tensor(img, track_meta=isinstance(img, MetaTensor))
        x = _as_float_tensor(img)
        return _restore(x.amin() + x.amax() - x, img)


class RandXRayInvertd(RandomizableTransform, MapTransform):
    """Dictionary-based :class:`RandXRayInvert`; all keys get the same draw.

    Notes:
        - Images ``(C, H, W)`` in and out.
    """

    backend = RandXRayInvert.backend

    def __init__(self, keys: KeysCollection = "image", prob: float = 0.5, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.invert = RandXRayInvert(1.0)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        for key in self.key_iterator(d):
            d[key] = self.invert(d[key], randomize=False) if self._do_transform else convert_to_tensor(d[key], track_meta=isinstance(d[key], MetaTensor))
        return d
