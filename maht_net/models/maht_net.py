"""MAHT-Net: timm CNN encoder, Vision-Transformer bottleneck, attention-gated FPN decoder,
one heatmap per landmark.

Notes:
    Input ``(B, C, H, W)`` with ``H`` and ``W`` divisible by 32. Output in eval mode: heatmap
    logits ``(B, N, H / s, W / s)`` with ``s = output_stride`` (2 or 4). The logits are read as
    a log-heatmap: ``softmax`` over the spatial axes gives each landmark's position
    distribution, ``exp(logits - max)`` a heatmap with peak 1 (see :mod:`maht_net.codec.heatmaps`).
    In training mode with ``aux_heads=True`` the output is a dict
    ``{"heatmaps": logits, "aux": [(logits_k, stride_k), ...]}`` with coarser maps for deep
    supervision.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from maht_net.models.registry import CONV_MEMORY_FORMAT, register_network

__all__ = ["MAHTNet", "sincos_position_encoding", "MultiHeadSelfAttention", "TransformerBlock", "ViTBottleneck", "AttentionGate", "ResidualBlock"]


def sincos_position_encoding(height: int, width: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """2-D sine-cosine position encoding ``(H * W, dim)`` (row-major tokens, y then x).

    Half the channels encode y, half x, each with sin/cos at ``dim / 4`` frequencies, so it
    is defined for any feature-map size (no interpolation of learned tables).
    """
    if dim % 4:
        raise ValueError(f"transformer width must be divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    oy, ox = ys.reshape(-1, 1) * omega, xs.reshape(-1, 1) * omega
    return torch.cat([oy.sin(), oy.cos(), ox.sin(), ox.cos()], 1).to(dtype or torch.float32)


class MultiHeadSelfAttention(nn.Module):
    """Plain multi-head self-attention, written out so that it traces and exports to ONNX
    (PyTorch's fused eval-mode kernel does not) and returns its head-averaged weights."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer width {dim} must be divisible by the number of heads {heads}")
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)  # (B, heads, T, T)
        out = (self.drop(attn) @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(out), attn.mean(1)


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block whose attention weights can be kept for display."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, dim)`` tokens -> tokens and attention ``(B, T, T)`` (mean over heads)."""
        a, w = self.attn(self.norm1(x))
        x = x + self.drop(a)
        return x + self.mlp(self.norm2(x)), w


class ViTBottleneck(nn.Module):
    """Transformer over the deepest feature map: tokens are positions, output added residually.

    The output projection starts at zero, so switching the bottleneck on (stage 2 of
    progressive training) starts from exactly the function the CNN path had learned.
    """

    def __init__(self, in_channels: int, dim: int = 256, depth: int = 2, heads: int = 4, mlp_ratio: float = 2.0, dropout: float = 0.1) -> None:
        super().__init__()
        self.proj_in = nn.Conv2d(in_channels, dim, 1)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.proj_out = nn.Conv2d(dim, in_channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        self.dim = dim

    def forward(self, x: torch.Tensor, need_weights: bool = False, use_checkpoint: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, _, h, w = x.shape
        t = self.proj_in(x).flatten(2).transpose(1, 2)  # (B, H*W, dim)
        t = t + sincos_position_encoding(h, w, self.dim, device=x.device, dtype=t.dtype)
        weights = []
        for blk in self.blocks:
            if use_checkpoint and self.training:
                t, a = checkpoint(blk, t, use_reentrant=False)
            else:
                t, a = blk(t)
            if need_weights:
                weights.append(a.detach())
        t = self.norm(t).transpose(1, 2).reshape(b, self.dim, h, w)
        return x + self.proj_out(t), weights


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018): the coarser decoder signal ``g`` decides
    which positions of the skip connection ``x`` pass. Returns the gated skip and the gate
    ``(B, 1, H, W)`` in ``[0, 1]``."""

    def __init__(self, channels: int, inter_channels: int | None = None) -> None:
        super().__init__()
        inter = inter_channels or max(channels // 2, 8)
        self.wx = nn.Conv2d(channels, inter, 1, bias=False)
        self.wg = nn.Conv2d(channels, inter, 1)
        self.psi = nn.Conv2d(inter, 1, 1)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = torch.sigmoid(self.psi(F.relu(self.wx(x) + self.wg(g))))
        return x * alpha, alpha


class ResidualBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus identity (or 1x1 projection), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class MAHTNet(nn.Module):
    """Multi-scale Attention Hybrid Transformer network for landmark heatmaps.

    Args:
        num_landmarks: output channels (19 for ISBI 2015; any N).
        in_channels: image channels (1 for X-rays; timm adapts the stem, also for pretrained weights).
        encoder: any timm backbone that supports ``features_only`` (``efficientnet_b3``,
            ``resnet34``, ``convnext_tiny``, ``hrnet_w18_small``, ...).
        pretrained: load ImageNet weights (downloads; off by default).
        decoder_channels: width of the FPN decoder.
        output_stride: 2 or 4; the heatmaps are ``1/output_stride`` of the input.
        use_transformer: run the ViT bottleneck (can be switched at run time).
        attention_gates: gate the skip connections (off = plain FPN, for ablation).
        aux_heads: extra heatmap heads at strides 8 and 16 for deep supervision (training only).
        dropout: dropout in the transformer and before the head (also used for MC-dropout).
        grad_checkpointing: recompute transformer and decoder activations in backward.
    """

    def __init__(
        self,
        num_landmarks: int = 19,
        in_channels: int = 1,
        encoder: str = "efficientnet_b3",
        pretrained: bool = False,
        decoder_channels: int = 128,
        output_stride: int = 4,
        use_transformer: bool = True,
        transformer_dim: int = 256,
        transformer_depth: int = 2,
        transformer_heads: int = 4,
        transformer_mlp_ratio: float = 2.0,
        attention_gates: bool = True,
        aux_heads: bool = False,
        dropout: float = 0.1,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if output_stride not in (2, 4):
            raise ValueError(f"output_stride must be 2 or 4, got {output_stride}")
        self.encoder = timm.create_model(encoder, features_only=True, pretrained=pretrained, in_chans=in_channels)
        reductions = list(self.encoder.feature_info.reduction())
        channels = list(self.encoder.feature_info.channels())
        if output_stride not in reductions:
            raise ValueError(f"encoder {encoder!r} has feature strides {reductions}; output_stride {output_stride} is not one")
        self.levels = [i for i, r in enumerate(reductions) if r >= output_stride]
        self.reductions = [reductions[i] for i in self.levels]
        c = decoder_channels
        self.lateral = nn.ModuleList(nn.Conv2d(channels[i], c, 1) for i in self.levels)
        self.bottleneck = ViTBottleneck(channels[-1], transformer_dim, transformer_depth, transformer_heads, transformer_mlp_ratio, dropout)
        n_up = len(self.levels) - 1
        self.gates = nn.ModuleList(AttentionGate(c) for _ in range(n_up))
        self.fuse = nn.ModuleList(ResidualBlock(2 * c, c) for _ in range(n_up))
        self.head = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, num_landmarks, 1))
        aux_strides = [s for s in (16, 8) if s in self.reductions[1:]] if aux_heads else []
        self.aux_heads = nn.ModuleDict({str(s): nn.Conv2d(c, num_landmarks, 1) for s in aux_strides})
        self.num_landmarks = num_landmarks
        self.in_channels = in_channels
        self.stride = output_stride
        self.use_transformer = use_transformer
        self.attention_gates = attention_gates
        self.grad_checkpointing = grad_checkpointing
        self.record_attention = False
        self.attention_maps: dict[str, list[torch.Tensor]] = {}
        self._frozen_stages: set[int] = set()
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__", "c", "n_up", "aux_strides", "channels", "reductions")}
        self.to(memory_format=CONV_MEMORY_FORMAT)

    # ---- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, Any]:
        feats = self.encoder(x)
        feats = [feats[i] for i in self.levels]
        record = self.record_attention
        maps: dict[str, list[torch.Tensor]] = {"transformer": [], "gates": []}
        deepest = feats[-1]
        if self.use_transformer:
            deepest, weights = self.bottleneck(deepest, need_weights=record, use_checkpoint=self.grad_checkpointing)
            maps["transformer"] = weights
        p = self.lateral[-1](deepest)
        aux = []
        for j, level in enumerate(range(len(feats) - 2, -1, -1)):
            if str(self.reductions[level + 1]) in self.aux_heads and self.training:
                aux.append((self.aux_heads[str(self.reductions[level + 1])](p), self.reductions[level + 1]))
            skip = self.lateral[level](feats[level])
            up = F.interpolate(p, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            if self.attention_gates:
                skip, alpha = self.gates[j](skip, up)
                if record:
                    maps["gates"].append(alpha)
            fused = torch.cat([up, skip], 1)
            if self.grad_checkpointing and self.training:
                p = checkpoint(self.fuse[j], fused, use_reentrant=False)
            else:
                p = self.fuse[j](fused)
        logits = self.head(p)
        if record:
            self.attention_maps = maps
        logits = logits.contiguous()
        if aux:
            return {"heatmaps": logits, "aux": [(a.contiguous(), s) for a, s in aux]}
        return logits

    # ---- encoder stages: freezing and learning rates --------------------------------------
    def encoder_stages(self) -> list[list[nn.Parameter]]:
        """Encoder parameters grouped by feature stage (stem with stage 0; layers between two
        feature outputs with the later one)."""
        names = [d["module"] for d in self.encoder.feature_info.get_dicts()]
        order = {name: i for i, (name, _) in enumerate(self.encoder.named_modules())}
        ends = []
        for stage in names:
            subtree = [i for n, i in order.items() if n == stage or n.startswith(stage + ".")]
            ends.append(max(subtree))
        groups: list[list[nn.Parameter]] = [[] for _ in names]
        for pname, param in self.encoder.named_parameters():
            pos = order[pname.rsplit(".", 1)[0]] if "." in pname else 0
            stage = next((i for i, e in enumerate(ends) if pos <= e), len(ends) - 1)
            groups[stage].append(param)
        return groups

    def freeze_encoder(self, stages: int | None = None) -> None:
        """Freeze encoder stages ``0 .. stages - 1`` (all when ``None``); their BatchNorm
        statistics stop updating too. ``freeze_encoder(0)`` unfreezes everything."""
        groups = self.encoder_stages()
        n = len(groups) if stages is None else int(stages)
        self._frozen_stages = set(range(min(n, len(groups))))
        for i, params in enumerate(groups):
            for p in params:
                p.requires_grad_(i not in self._frozen_stages)
        self.train(self.training)

    def unfreeze_encoder(self) -> None:
        self.freeze_encoder(0)

    def train(self, mode: bool = True) -> MAHTNet:
        super().train(mode)
        if mode and self._frozen_stages:
            frozen = {id(p) for i, g in enumerate(self.encoder_stages()) if i in self._frozen_stages for p in g}
            for m in self.encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and any(id(p) in frozen for p in m.parameters(recurse=False)):
                    m.eval()
        return self

    def parameter_groups(self, lr: float, encoder_lr_factor: float = 0.1) -> list[dict[str, Any]]:
        """Optimizer groups with a lower learning rate for the (pretrained-style) encoder."""
        enc = [p for p in self.encoder.parameters()]
        enc_ids = {id(p) for p in enc}
        rest = [p for p in self.parameters() if id(p) not in enc_ids]
        return [{"params": enc, "lr": lr * encoder_lr_factor, "name": "encoder"}, {"params": rest, "lr": lr, "name": "decoder"}]


@register_network("maht_net")
def maht_net(**kwargs: Any) -> MAHTNet:
    """MAHT-Net with the default recipe (EfficientNet-B3 encoder, 2-block ViT, gated FPN)."""
    return MAHTNet(**kwargs)


@register_network("maht_net_small")
def maht_net_small(**kwargs: Any) -> MAHTNet:
    """A CPU-friendly MAHT-Net: EfficientNet-B0 encoder, 64-channel decoder, 128-wide ViT."""
    defaults: dict[str, Any] = dict(encoder="efficientnet_b0", decoder_channels=64, transformer_dim=128, transformer_heads=4)
    return MAHTNet(**{**defaults, **kwargs})
