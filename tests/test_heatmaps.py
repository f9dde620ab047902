import numpy as np
import pytest
import torch

from maht_net.codec.heatmap_codec import HeatmapCodec
from maht_net.codec.heatmaps import (
    covariance_to_spread,
    decode_argmax,
    gaussian_heatmaps,
    heatmap_covariance,
    heatmap_to_input,
    input_to_heatmap,
    locate_peaks,
    mix_log_probs,
    soft_argmax,
    spatial_log_softmax,
)


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
    points, _ = locate_peaks(hm, method="dark")
    err = np.abs(points.numpy() - pts).max()
    assert err < 0.05, err
    argmax_err = np.abs(locate_peaks(hm, method="argmax")[0].numpy() - pts).max()
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


def test_stride_mapping_roundtrip_and_codec():
    rng = np.random.default_rng(2)
    pts = _random_points(rng, 19, 128, 96, margin=16)
    assert np.allclose(heatmap_to_input(input_to_heatmap(pts, 4), 4), pts)
    codec = HeatmapCodec(stride=4, sigma=8.0)
    hm = codec.encode(torch.tensor(pts, dtype=torch.float32)[None], (32, 24))
    assert hm.shape == (1, 19, 32, 24)
    points, _ = locate_peaks(hm, method="dark")
    back = heatmap_to_input(points[0].numpy(), 4)
    assert np.abs(back - pts).max() < 0.2
    decoded = codec.decode(torch.log(hm.clamp_min(1e-8)))  # the codec's decode reads logits
    assert np.abs(decoded.points[0].numpy() - pts).max() < 0.2


def test_codec_is_what_the_checkpoint_records():
    info = {"stride": 2, "sigma": 3.0, "decoder": "soft_argmax", "input_size": [64, 96]}
    codec = HeatmapCodec.from_info(info)
    assert (codec.stride, codec.sigma, codec.decoder) == (2, 3.0, "soft_argmax")
    assert codec.info() == {"stride": 2, "sigma": 3.0, "decoder": "soft_argmax"}
    assert codec.at_stride(8).stride == 8 and codec.at_stride(2) is codec
    with pytest.raises(ValueError, match="method must be one of"):
        HeatmapCodec(decoder="mean")


def test_mixture_of_one_is_itself_and_of_two_is_the_mean_probability():
    logits = torch.randn(2, 3, 8, 8)
    log_p = spatial_log_softmax(logits)
    assert torch.equal(mix_log_probs([log_p]), log_p)
    other = spatial_log_softmax(torch.randn(2, 3, 8, 8))
    torch.testing.assert_close(mix_log_probs([log_p, other]).exp(), (log_p.exp() + other.exp()) / 2)


def test_spread_grows_with_ambiguity_and_argmax_peaks():
    clean = gaussian_heatmaps(np.array([[20.0, 20.0]]), (48, 48), 2.0)[None]
    two_modes = clean + 0.8 * gaussian_heatmaps(np.array([[40.0, 40.0]]), (48, 48), 2.0)[None]
    pts, peak = decode_argmax(clean)
    assert pts[0, 0].tolist() == [20.0, 20.0] and float(peak[0, 0]) == pytest.approx(1.0)
    s_clean = float(covariance_to_spread(heatmap_covariance(clean, pts))[0, 0])
    s_two = float(covariance_to_spread(heatmap_covariance(two_modes, pts))[0, 0])
    a = np.log(10.0)  # truncated Rayleigh: E[r^2 | r < R] = 2 s^2 (1 - (1 + a) e^-a) / (1 - e^-a)
    assert s_clean == pytest.approx(2.0 * np.sqrt(2 * (1 - (1 + a) / 10) / 0.9), rel=0.02)
    assert s_two > 3 * s_clean


def test_decode_logits_maps_to_input_pixels_with_uncertainty():
    from maht_net.codec.heatmaps import decode_logits

    rng = np.random.default_rng(4)
    pts = _random_points(rng, 6, 128, 128, margin=20)
    stride, sigma = 4, 6.0
    hm = HeatmapCodec(stride=stride, sigma=sigma).encode(torch.tensor(pts, dtype=torch.float32)[None], (32, 32))
    logits = torch.log(hm.clamp_min(1e-8))  # an ideal log-heatmap
    out = decode_logits(logits, stride=stride)
    assert np.abs(out.points[0].numpy() - pts).max() < 0.1
    # softmax(log g) = normalised Gaussian of std sigma; its radial spread truncated at 5 % of the
    # peak is sqrt(2 (1 - (1 + a) e^-a) / (1 - e^-a)) * sigma with a = ln 20
    a = np.log(20.0)
    np.testing.assert_allclose(out.spread[0].numpy(), np.sqrt(2 * (1 - (1 + a) / 20) / 0.95) * sigma, rtol=0.05)
    sharp = decode_logits(logits * 4, stride=stride)
    assert (sharp.spread < out.spread).all() and (sharp.confidence > out.confidence).all()
    assert ((out.confidence > 0) & (out.confidence <= 1)).all()
