import numpy as np
import pytest
import torch

from maht_net.codec.heatmaps import (
    decode_argmax,
    decode_heatmaps,
    gaussian_heatmaps,
    heatmap_spread,
    heatmap_to_input,
    input_to_heatmap,
    soft_argmax,
)
from maht_net.transforms.heatmap import GenerateLandmarkHeatmap, GenerateLandmarkHeatmapd, sigma_in_pixels


def _random_points(rng, n, h, w, margin=8):
    return np.stack([rng.uniform(margin, w - 1 - margin, n), rng.uniform(margin, h - 1 - margin, n)], -1)


def test_gaussian_peak_at_point_and_axis_order():
    hm = gaussian_heatmaps(np.array([[10.0, 3.0]]), (20, 30), 1.5)  # (x=10, y=3) in a 20x30 (H, W) map
    assert hm.shape == (1, 20, 30)
    y, x = np.unravel_index(int(hm[0].argmax()), (20, 30))
    assert (x, y) == (10, 3)
    assert float(hm.max()) == pytest.approx(1.0)


def test_missing_point_gives_zero_channel():
    hm = gaussian_heatmaps(np.array([[5.0, 5.0], [np.nan, np.nan]]), (16, 16), 2.0)
    assert float(hm[1].abs().sum()) == 0.0 and float(hm[0].max()) == pytest.approx(1.0)


@pytest.mark.parametrize("sigma", [1.5, 2.0, 3.0])
def test_dark_recovers_subpixel_points(sigma):
    rng = np.random.default_rng(0)
    pts = _random_points(rng, 19 * 4, 64, 80).reshape(4, 19, 2)
    hm = gaussian_heatmaps(torch.tensor(pts, dtype=torch.float32), (64, 80), sigma)
    decoded = decode_heatmaps(hm, method="dark")
    err = np.abs(decoded.points.numpy() - pts).max()
    assert err < 0.05, err
    argmax_err = np.abs(decode_heatmaps(hm, method="argmax").points.numpy() - pts).max()
    assert argmax_err > 0.2  # the refinement is what gives sub-pixel accuracy


def test_soft_argmax_is_differentiable_and_stable():
    rng = np.random.default_rng(1)
    pts = _random_points(rng, 5, 48, 48, margin=12)
    hm = gaussian_heatmaps(torch.tensor(pts, dtype=torch.float32), (48, 48), 2.0).requires_grad_(True)
    out = soft_argmax(hm * 1000.0, beta=1.0)  # huge logits: must not overflow to NaN
    assert torch.isfinite(out).all()
    assert np.abs(out.detach().numpy() - pts).max() < 0.6
    soft_argmax(hm, beta=20.0).sum().backward()
    assert hm.grad is not None and torch.isfinite(hm.grad).all() and hm.grad.abs().sum() > 0


def test_stride_mapping_roundtrip_and_generator():
    rng = np.random.default_rng(2)
    pts = _random_points(rng, 19, 128, 96, margin=16)
    assert np.allclose(heatmap_to_input(input_to_heatmap(pts, 4), 4), pts)
    hm = GenerateLandmarkHeatmap(sigma=8.0, stride=4)(pts, (128, 96))
    assert hm.shape == (19, 32, 24)
    decoded = decode_heatmaps(hm[None], method="dark")
    back = heatmap_to_input(decoded.points[0].numpy(), 4)
    assert np.abs(back - pts).max() < 0.2


def test_heatmap_dict_transform_mm_sigma_and_mask():
    pts = np.array([[10.0, 12.0], [np.nan, np.nan], [30.0, 5.0]], dtype=np.float32)
    d = {"image": torch.zeros(1, 32, 48), "landmarks": pts, "spacing": (0.5, 0.5)}
    out = GenerateLandmarkHeatmapd(sigma=1.0, sigma_unit="mm")(d)
    assert out["heatmap"].shape == (3, 32, 48)
    assert out["landmark_mask"].tolist() == [1.0, 0.0, 1.0]
    # sigma 1 mm at 0.5 mm/px = 2 px: value one sigma away is exp(-1/2)
    assert float(out["heatmap"][0, 12, 12]) == pytest.approx(np.exp(-0.5), rel=1e-4)
    with pytest.raises(ValueError, match="spacing"):
        sigma_in_pixels(1.0, "mm", None)


def test_spread_grows_with_ambiguity_and_argmax_peaks():
    clean = gaussian_heatmaps(np.array([[20.0, 20.0]]), (48, 48), 2.0)[None]
    two_modes = clean + 0.8 * gaussian_heatmaps(np.array([[40.0, 40.0]]), (48, 48), 2.0)[None]
    pts, peak = decode_argmax(clean)
    assert pts[0, 0].tolist() == [20.0, 20.0] and float(peak[0, 0]) == pytest.approx(1.0)
    s_clean = float(heatmap_spread(clean, pts)[0, 0])
    s_two = float(heatmap_spread(two_modes, pts)[0, 0])
    a = np.log(10.0)  # truncated Rayleigh: E[r^2 | r < R] = 2 s^2 (1 - (1 + a) e^-a) / (1 - e^-a)
    assert s_clean == pytest.approx(2.0 * np.sqrt(2 * (1 - (1 + a) / 10) / 0.9), rel=0.02)
    assert s_two > 3 * s_clean


def test_decode_logits_maps_to_input_pixels_with_uncertainty():
    from maht_net.codec.heatmaps import decode_logits

    rng = np.random.default_rng(4)
    pts = _random_points(rng, 6, 128, 128, margin=20)
    stride, sigma = 4, 6.0
    hm = GenerateLandmarkHeatmap(sigma=sigma, stride=stride)(pts, (128, 128))
    logits = torch.log(hm.clamp_min(1e-8))[None]  # an ideal log-heatmap
    out = decode_logits(logits, stride=stride)
    assert np.abs(out.points[0].numpy() - pts).max() < 0.1
    # softmax(log g) = normalised Gaussian of std sigma; its radial spread truncated at 5 % of the
    # peak is sqrt(2 (1 - (1 + a) e^-a) / (1 - e^-a)) * sigma with a = ln 20
    a = np.log(20.0)
    np.testing.assert_allclose(out.spread[0].numpy(), np.sqrt(2 * (1 - (1 + a) / 20) / 0.95) * sigma, rtol=0.05)
    sharp = decode_logits(logits * 4, stride=stride)
    assert (sharp.spread < out.spread).all() and (sharp.confidence > out.confidence).all()
    assert ((out.confidence > 0) & (out.confidence <= 1)).all()
