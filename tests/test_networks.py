import pytest
import torch

from maht_net.models import MAHTNet, create_network, list_networks
from maht_net.models.losses import LandmarkLoss


def _small(**kw):
    return create_network("maht_net_small", **kw)


def test_registry():
    assert {"maht_net", "maht_net_small", "unet"} <= set(list_networks())
    with pytest.raises(ValueError, match="unknown network"):
        create_network("nope")


@pytest.mark.parametrize("size,n,stride", [((64, 96), 19, 4), ((96, 64), 7, 2), ((128, 128), 38, 4)])
def test_maht_net_shapes(size, n, stride):
    net = _small(num_landmarks=n, output_stride=stride).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 1, *size))
    assert y.shape == (2, n, size[0] // stride, size[1] // stride) and net.stride == stride


@pytest.mark.parametrize("encoder", ["resnet18", "hrnet_w18_small"])
def test_other_timm_encoders(encoder):
    net = MAHTNet(num_landmarks=5, encoder=encoder, decoder_channels=32, transformer_dim=64).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 64, 64)).shape == (1, 5, 16, 16)


def test_unet_baseline_same_interface():
    net = create_network("unet", num_landmarks=19, features=(8, 8, 16, 32, 64, 8)).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 64, 96)).shape == (1, 19, 64, 96)
    assert net.stride == 1


@pytest.mark.parametrize("name", ["maht_net_small", "refine_net_small"])
def test_conv_weights_channels_last_outputs_contiguous_and_same_as_contiguous_weights(name):
    net = create_network(name, num_landmarks=19).eval()
    convs = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1 and m.weight.shape[1] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs)
    x = torch.randn(2, 1, 64, 96) if name.startswith("maht") else torch.randn(2, 19, 32, 32)
    plain = create_network(name, num_landmarks=19).to(memory_format=torch.contiguous_format).eval()
    plain.load_state_dict(net.state_dict())  # a checkpoint written by either format loads into the other
    with torch.no_grad():
        y, y_plain = net(x), plain(x)
    assert y.is_contiguous() and not any(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in plain.parameters())
    assert torch.allclose(y, y_plain, atol=1e-5)
    unet = create_network("unet", num_landmarks=19, features=(8, 8, 16, 32, 64, 8))
    assert all(p.is_contiguous() for p in unet.parameters())


def _target(b, n, size):
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(b, n, 2, generator=g) * torch.tensor([size[1] - 1, size[0] - 1])
    return {"landmarks": pts, "mask": torch.ones(b, n), "spacing": torch.full((b, 2), 0.5)}


def test_gradients_reach_every_trainable_parameter():
    net = _small(num_landmarks=5, aux_heads=True).train()
    loss_fn = LandmarkLoss({"kl": 1.0, "coord": 0.1, "awing": 0.1}, sigma=3.0, stride=4)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, target = torch.randn(2, 1, 64, 64), _target(2, 5, (64, 64))
    for _ in range(2):  # the ViT output projection starts at zero: its inputs get gradient from step 2
        opt.zero_grad()
        loss_fn(net(x), target).backward()
        opt.step()
    missing = [name for name, p in net.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert missing == []


def test_bypass_and_ablation_flags_change_the_graph():
    torch.manual_seed(0)
    net = _small(num_landmarks=3).eval()
    with torch.no_grad():
        for p in net.bottleneck.proj_out.parameters():
            p.normal_(0, 0.1)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        full = net(x)
        net.use_transformer = False
        no_vit = net(x)
        net.attention_gates = False
        no_gates = net(x)
    assert not torch.allclose(full, no_vit) and not torch.allclose(no_vit, no_gates)
    net.use_transformer, net.attention_gates = False, True
    net.train()
    loss = LandmarkLoss(stride=4)(net(x), _target(1, 3, (64, 64)))
    loss.backward()
    assert all(p.grad is None for p in net.bottleneck.parameters())  # bypassed: not in the graph


def test_attention_maps_are_recorded():
    net = _small(num_landmarks=3).eval()
    net.record_attention = True
    with torch.no_grad():
        net(torch.randn(1, 1, 64, 96))
    vit = net.attention_maps["transformer"]
    assert len(vit) == 2 and vit[0].shape == (1, 6, 6)  # 2x3 tokens at stride 32
    torch.testing.assert_close(vit[0].sum(-1), torch.ones(1, 6))
    gates = net.attention_maps["gates"]
    assert [g.shape[-2:] for g in gates] == [(4, 6), (8, 12), (16, 24)]
    assert all(((g >= 0) & (g <= 1)).all() for g in gates)


def test_freeze_encoder_by_stage_and_parameter_groups():
    net = _small(num_landmarks=3)
    stages = net.encoder_stages()
    assert len(stages) == 5 and sum(len(s) for s in stages) == len(list(net.encoder.parameters()))
    net.freeze_encoder(2)
    assert not any(p.requires_grad for s in stages[:2] for p in s)
    assert all(p.requires_grad for s in stages[2:] for p in s)
    net.train()
    bn_modes = [m.training for m in net.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert False in bn_modes and True in bn_modes
    net.unfreeze_encoder()
    assert all(p.requires_grad for p in net.parameters())
    groups = net.parameter_groups(1e-3, 0.1)
    assert groups[0]["lr"] == pytest.approx(1e-4) and len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(net.parameters()))


def test_grad_checkpointing_matches_plain_gradients():
    torch.manual_seed(0)
    a = _small(num_landmarks=3, dropout=0.0).train()
    b = _small(num_landmarks=3, dropout=0.0, grad_checkpointing=True).train()
    b.load_state_dict(a.state_dict())
    x, target = torch.randn(2, 1, 64, 64), _target(2, 3, (64, 64))
    for net in (a, b):
        LandmarkLoss(stride=4)(net(x), target).backward()
    ga = torch.cat([p.grad.flatten() for p in a.parameters() if p.grad is not None])
    gb = torch.cat([p.grad.flatten() for p in b.parameters() if p.grad is not None])
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)


def test_amp_autocast_runs():
    net = _small(num_landmarks=3).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(torch.randn(1, 1, 64, 64))
    assert torch.isfinite(y.float()).all()


def test_torchscript_and_onnx_export_parity(tmp_path):
    from maht_net.inference.export import export_onnx, export_torchscript

    net = _small(num_landmarks=19)
    ts_diff = export_torchscript(net, tmp_path / "m.ts", size=(96, 64))
    onnx_diff = export_onnx(net, tmp_path / "m.onnx", size=(96, 64))
    print(f"export parity: TorchScript max|diff| = {ts_diff:.2e}, ONNX Runtime max|diff| = {onnx_diff:.2e}")
    assert ts_diff < 1e-4 and onnx_diff < 1e-3
