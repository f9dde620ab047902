"""Profile the networks: parameters, GFLOPs, CPU latency per image and training-step memory.

    python scripts/profile_networks.py [--threads 2] [--repeats 5] [--sizes 256 512] [--batch 8]

All variants are measured in one run on the same machine, so the ratios between them hold even
when absolute numbers vary between machines. Latency: median of ``--repeats`` eval-mode forward
passes of one image (after a warm-up), ``--threads`` torch threads. Memory: peak resident memory of
a child process doing two forward/backward/steps at batch ``--batch`` (the second is timed), minus the same child's
resident memory after building the model and batch (so it counts activations, gradients and
optimizer state, not the Python/torch runtime). FLOPs: ``torch.utils.flop_counter`` (a
multiply-add counts 2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

VARIANTS = {
    "MAHT-Net (EfficientNet-B3, default)": ("maht_net", {}),
    "MAHT-Net bundle CPU recipe (EfficientNet-B0)": ("maht_net", {"encoder": "efficientnet_b0", "decoder_channels": 64, "transformer_dim": 128}),
    "MAHT-Net ResNet-34": ("maht_net", {"encoder": "resnet34"}),
    "MAHT-Net ConvNeXt-T": ("maht_net", {"encoder": "convnext_tiny"}),
    "MAHT-Net HRNet-W18-small": ("maht_net", {"encoder": "hrnet_w18_small"}),
    "MAHT-Net B3, no transformer": ("maht_net", {"use_transformer": False}),
    "MAHT-Net B3, no attention gates": ("maht_net", {"attention_gates": False}),
    "U-Net baseline (MONAI BasicUNet)": ("unet", {"features": [32, 32, 64, 128, 256, 32]}),
}

CHILD = r"""
import json, resource, sys, torch
from maht_net.models import create_network
from maht_net.models.losses import LandmarkLoss
name, kwargs, size, batch, threads = json.loads(sys.argv[1])
torch.set_num_threads(threads)
torch.manual_seed(0)
net = create_network(name, num_landmarks=19, **kwargs).train()
opt = torch.optim.AdamW(net.parameters(), 1e-3)
loss = LandmarkLoss(stride=net.stride, sigma=2.0)
x = torch.rand(batch, 1, size, size)
target = {"landmarks": torch.rand(batch, 19, 2) * (size - 1), "mask": torch.ones(batch, 19), "spacing": torch.ones(batch, 2)}
import gc; gc.collect()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with open("/proc/self/status") as f:
    rss = [int(l.split()[1]) for l in f if l.startswith("VmRSS")][0]
import time
steps = []
for _ in range(2):  # the second step is timed (the first allocates)
    t0 = time.perf_counter(); opt.zero_grad(); loss(net(x), target).backward(); opt.step(); steps.append(time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mb": (peak - max(base, rss)) / 1024, "step_s": steps[-1]}))
"""


def measure(name: str, kwargs: dict, sizes: list[int], threads: int, repeats: int, batch: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from maht_net.models import create_network

    torch.set_num_threads(threads)
    net = create_network(name, num_landmarks=19, **kwargs).eval()
    row = {"params_m": sum(p.numel() for p in net.parameters()) / 1e6}
    for size in sizes:
        x = torch.rand(1, 1, size, size)
        with torch.no_grad():
            counter = FlopCounterMode(display=False)
            with counter:
                net(x)
            row[f"gflops_{size}"] = counter.get_total_flops() / 1e9
            net(x)  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                net(x)
                times.append(time.perf_counter() - t0)
        row[f"latency_ms_{size}"] = 1000 * statistics.median(times)
        child = subprocess.run([sys.executable, "-c", CHILD, json.dumps([name, kwargs, size, batch, threads])], capture_output=True, text=True, timeout=1800)
        row[f"train_peak_mb_{size}"] = json.loads(child.stdout.strip().splitlines()[-1])["peak_mb"] if child.returncode == 0 else None
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--only", nargs="*", help="substrings of variant names to run")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = {}
    for label, (name, kwargs) in VARIANTS.items():
        if args.only and not any(s.lower() in label.lower() for s in args.only):
            continue
        rows[label] = measure(name, kwargs, args.sizes, args.threads, args.repeats, args.batch)
        print(f"measured {label}", file=sys.stderr, flush=True)
    head = "| network | params (M) | " + " | ".join(
        f"GFLOPs {s} | CPU ms/img {s} | train-step peak MB {s}, batch {args.batch}" for s in args.sizes
    ) + " |"
    print(head)
    print("|" + "---|" * (2 + 3 * len(args.sizes)))
    for label, r in rows.items():
        cells = [f"{r['params_m']:.1f}"]
        for s in args.sizes:
            mem = r[f"train_peak_mb_{s}"]
            cells += [f"{r[f'gflops_{s}']:.1f}", f"{r[f'latency_ms_{s}']:.0f}", "failed" if mem is None else f"{mem:.0f}"]
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
