import pytest
import torch

from maht_net.codec.heatmap_codec import HeatmapCodec
from maht_net.models.losses import LandmarkLoss, adaptive_wing, coordinate_l1, heatmap_mse, spatial_kl


def _setup(stride=4, sigma=6.0):
    pts = torch.tensor([[[20.0, 30.0], [40.0, 12.0], [float("nan"), float("nan")]]])
    mask = torch.isfinite(pts).all(-1).float()
    hm = HeatmapCodec(stride=stride, sigma=sigma).encode(pts, (16, 16))
    return pts, mask, hm


def test_kl_is_zero_for_the_target_and_positive_elsewhere():
    pts, mask, hm = _setup()
    perfect = torch.log(hm.clamp_min(1e-12))
    assert float(spatial_kl(perfect, hm, mask)) == pytest.approx(0.0, abs=1e-4)
    shifted = torch.roll(perfect, shifts=3, dims=-1)
    assert float(spatial_kl(shifted, hm, mask)) > 0.5


def test_missing_landmarks_are_masked_out():
    pts, mask, hm = _setup()
    logits = torch.randn(1, 3, 16, 16)
    changed = logits.clone()
    changed[:, 2] = 1000 * torch.randn(16, 16)  # garbage in the missing channel changes nothing
    for fn in (spatial_kl, heatmap_mse, adaptive_wing):
        assert float(fn(logits, hm, mask)) == pytest.approx(float(fn(changed, hm, mask)), rel=1e-6)
    assert float(coordinate_l1(logits, pts, mask, 4)) == pytest.approx(float(coordinate_l1(changed, pts, mask, 4)), rel=1e-6)
    none = torch.zeros_like(mask)
    assert float(spatial_kl(logits, hm, none)) == 0.0


def test_coordinate_l1_in_mm_and_px():
    pts, mask, hm = _setup(sigma=4.0)
    exact = torch.log(hm.clamp_min(1e-12))  # softmax = the normalised Gaussian: mean at the point
    assert float(coordinate_l1(exact, pts, mask, 4)) < 0.05
    moved = torch.roll(exact, shifts=1, dims=-1)  # one heatmap pixel = 4 input px along x
    px = float(coordinate_l1(moved, pts, mask, 4))
    mm = float(coordinate_l1(moved, pts, mask, 4, spacing=torch.tensor([[0.5, 0.5]])))
    assert px == pytest.approx(4.0, abs=0.5) and mm == pytest.approx(px * 0.5, rel=1e-5)


def test_awing_and_mse_reward_the_right_heatmap():
    pts, mask, hm = _setup()
    good = torch.logit(hm.clamp(1e-4, 1 - 1e-4))
    bad = torch.full_like(good, -9.0)  # all background: what sparse MSE tends to collapse to
    for fn in (heatmap_mse, adaptive_wing):
        assert float(fn(good, hm, mask)) < 0.2 * float(fn(bad, hm, mask))


def test_landmark_loss_weights_by_stage_and_aux_heads():
    pts, mask, _ = _setup()
    target = {"landmarks": pts, "mask": mask}
    loss = LandmarkLoss({"kl": 1.0}, sigma=6.0, stride=4)
    logits = torch.randn(1, 3, 16, 16, requires_grad=True)
    only_kl = loss(logits, target)
    assert set(loss.last_terms) == {"kl"} and float(only_kl) == pytest.approx(loss.last_terms["kl"])
    loss.set_weights({"kl": 1.0, "coord": 0.5})
    both = loss(logits, target)
    assert float(both) == pytest.approx(loss.last_terms["kl"] + 0.5 * loss.last_terms["coord"], rel=1e-5)
    with_aux = loss({"heatmaps": logits, "aux": [(torch.randn(1, 3, 4, 4), 16)]}, target)
    assert float(with_aux) > float(both)
    with_aux.backward()
    assert torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="unknown loss terms"):
        loss.set_weights({"dice": 1.0})
