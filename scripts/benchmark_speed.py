#!/usr/bin/env python
"""Speed and memory: end-to-end inference latency on real films for the deployment variants of a
trained model (PyTorch eager, TorchScript, ONNX Runtime, ONNX Runtime int8 dynamic and static; with
a two-stage checkpoint also PyTorch and ONNX Runtime with the refinement stage) and for the peer
toolkit's network at the same input size, with the MRE of each variant on the test split; data
pipeline throughput; training step time and peak memory; with a CUDA GPU (or ``--device``), the
checkpoint network's fp32/AMP latency, images/s, training step and peak device memory; with
``--memory-formats`` only the channels-last vs contiguous step times. Everything is
measured in one run, so the ratios hold even where absolute figures vary between machines.

    python scripts/benchmark_speed.py --checkpoint runs/bench-accuracy/cpu/runs/fixed/maht_net/models/model.pt \\
        --datalist runs/bench-accuracy/cpu/hamedan.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from maht_net.bench.accuracy import item_errors, predict
from maht_net.codec.heatmap_codec import HeatmapCodec
from maht_net.datasets.pipeline import landmark_dataset, training_transforms
from maht_net.inference.export import OnnxNetwork, export_checkpoint, onnx_refiner
from maht_net.inference.predictor import load_model
from maht_net.inference.refine import Refiner, load_refiner
from maht_net.io.datalist import load_datalist, read_datalist
from maht_net.landmarks import get_landmark_set

SCRIPTS = Path(__file__).resolve().parent


def end_to_end(network, info, items, repeats: int, out: Path, refiner: Refiner | None = None) -> tuple[float, float]:
    """Median seconds per film for read + preprocess + network + decode (+ the refinement stage)
    + write JSON, and the MRE (mm)."""
    points, seconds = predict(network, info, items, repeats=repeats, write_to=out, refiner=refiner)
    return seconds, float(np.nanmean(item_errors(points, items)))


def device_end_to_end(checkpoint: Path, items: list[dict], device: str, repeats: int, out: Path) -> dict[str, dict]:
    """The checkpoint end to end on ``device`` (first stage; both stages when it holds two): median
    seconds per film, MRE per site (mm), and the largest distance (px) between the landmarks it
    places there and those the same model places on the CPU: a GPU must give the same answer."""
    rows = {}
    for name, refine in (("first stage", False), ("both stages", True)):
        placed = []  # (points, seconds) on the CPU, then on the device
        for dev in ("cpu", device):
            network, info = load_model(checkpoint, dev)
            refiner = load_refiner(checkpoint, dev) if refine else None
            if refine and refiner is None:
                break
            placed.append(predict(network, info, items, repeats=1 if not placed else repeats, write_to=out, refiner=refiner, device=dev))
        if len(placed) < 2:  # no refinement stage
            continue
        (cpu_points, _), (points, seconds) = placed
        errors = item_errors(points, items)
        sites = sorted({it.get("site", "all") for it in items})
        rows[name] = {
            "seconds": seconds,
            "mre_mm": {site: float(np.nanmean(errors[[it.get("site", "all") == site for it in items]])) for site in sites},
            "max_distance_to_cpu_px": float(np.linalg.norm(points - cpu_points, axis=-1).max()),
        }
    return rows


def network_only(network, x: np.ndarray, repeats: int = 30) -> float:
    """Median seconds of the network call alone on one preprocessed ``(1, 1, H, W)`` film."""
    inputs = torch.from_numpy(x)
    with torch.no_grad():
        return _median_seconds(lambda: network(inputs), torch.device("cpu"), repeats)


def quantize_int8(onnx_path: Path, out: Path) -> Path:
    """Dynamic int8: weights quantized ahead, activation ranges computed at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(onnx_path), str(out), weight_type=QuantType.QInt8)
    return out


def quantize_int8_static(onnx_path: Path, out: Path, inputs: list[np.ndarray]) -> Path:
    """Static int8 (QDQ): per-channel int8 weights and uint8 activations whose ranges are
    calibrated on ``inputs`` (preprocessed ``(1, 1, H, W)`` films, not the timed test films)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Films(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{name: x} for x in inputs])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    prepared = out.with_name(out.stem + ".prepared.onnx")
    quant_pre_process(str(onnx_path), str(prepared))
    quantize_static(str(prepared), str(out), Films(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def preprocessed_inputs(items: list[dict], info: dict) -> list[np.ndarray]:
    """Preprocessed ``(1, 1, H, W)`` float32 inputs of ``items``, as inference feeds the network."""
    from maht_net.datasets.pipeline import model_transforms

    transform = model_transforms(info)
    return [np.asarray(transform(dict(it))["image"], dtype=np.float32)[None] for it in items]


def pipeline_throughput(datalist: Path, size: int, n: int) -> dict[str, float]:
    """Images/s of the training pipeline (augment + pack), from cached preprocessing and from
    files (decode + normalise + resize first), and of the Gaussian heatmap targets, which the loss
    builds from the coordinates (:meth:`maht_net.codec.heatmap_codec.HeatmapCodec.encode`, stride 4)."""
    rates = {}
    landmarks = len(get_landmark_set(read_datalist(datalist).get("landmark_set", "isbi2015")))
    for name, cache in (("cached preprocessing", True), ("from files", False)):
        ds = landmark_dataset(load_datalist(datalist, "training"), training_transforms((size, size), num_landmarks=landmarks), landmarks, cache=cache)
        for workers in (0, 2):
            loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, num_workers=workers)
            seen, t0 = 0, time.perf_counter()
            while seen < n:
                for batch in loader:
                    seen += batch["image"].shape[0]
                    if seen >= n:
                        break
            rates[f"load + augment + pack, {name}, {workers} workers"] = seen / (time.perf_counter() - t0)
    points = torch.rand(64, 19, 2) * (size - 1)
    t0 = time.perf_counter()
    HeatmapCodec(stride=4, sigma=2.5).encode(points, (size // 4, size // 4))
    rates["heatmap targets (19 per image, in the loss)"] = 64 / (time.perf_counter() - t0)
    return rates


def training_steps(info: dict, sizes: list[int], batch: int, threads: int) -> dict[str, dict]:
    """Step time and peak memory of one training step of the checkpoint's network (profile_networks.py's child process)."""
    sys.path.insert(0, str(SCRIPTS))
    from profile_networks import CHILD

    rows = {}
    for size in sizes:
        child = subprocess.run([sys.executable, "-c", CHILD, json.dumps([info["network"], info.get("network_kwargs", {}), size, batch, threads])], capture_output=True, text=True, timeout=1800)
        rows[str(size)] = json.loads(child.stdout.strip().splitlines()[-1]) if child.returncode == 0 else {"error": child.stderr[-500:]}
    return rows


def memory_formats(info: dict, refiner: Refiner | None, batch: int, repeats: int, device: str = "cpu") -> dict[str, dict]:
    """Training step (batch ``batch``, the checkpoint's input size) and batch-1 inference of the
    first stage, and the refinement network's training step, with convolution weights in
    channels-last (:data:`~maht_net.models.registry.CONV_MEMORY_FORMAT`, as built) and in the
    contiguous format: the two copies alternate step by step (same weights, inputs and load), and
    each figure is the median of ``repeats`` steps after two warm-up steps, on ``device`` (waiting
    for a GPU to finish each call)."""
    from maht_net.models import create_network
    from maht_net.models.losses import LandmarkLoss

    torch.manual_seed(0)
    n = len(info["landmark_names"])
    w, h = info["input_size"]
    jobs = {"first stage, training step": (create_network(info["network"], num_landmarks=n, **info.get("network_kwargs", {})), (batch, 1, h, w), True)}
    if refiner is not None:
        p = refiner.codec.patch_size
        jobs["refinement, training step"] = (create_network(refiner.info["network"], num_landmarks=n, **refiner.info.get("network_kwargs", {})), (batch, n, p, p), True)
    jobs["first stage, inference (batch 1)"] = (jobs["first stage, training step"][0], (1, 1, h, w), False)
    rows = {}
    for name, (built, shape, train) in jobs.items():
        nets = {"channels-last": copy.deepcopy(built).to(device), "contiguous": copy.deepcopy(built).to(device, memory_format=torch.contiguous_format)}
        x = torch.rand(shape, device=device)
        size = shape[-1] // nets["contiguous"].stride, shape[-2] // nets["contiguous"].stride
        target = {"landmarks": torch.rand(shape[0], n, 2, device=device) * torch.tensor(size, dtype=torch.float32, device=device) * nets["contiguous"].stride,
                  "mask": torch.ones(shape[0], n, device=device), "spacing": torch.ones(shape[0], 2, device=device)}
        sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
        loss = LandmarkLoss(stride=nets["contiguous"].stride, sigma=2.0)
        optims = {k: torch.optim.AdamW(net.parameters(), 1e-3) for k, net in nets.items()}
        times: dict[str, list[float]] = {k: [] for k in nets}
        for i in range(repeats + 2):
            for k, net in nets.items():
                net.train(train)
                t0 = time.perf_counter()
                if train:
                    optims[k].zero_grad()
                    loss(net(x), target).backward()
                    optims[k].step()
                else:
                    with torch.no_grad():
                        net(x)
                sync()
                if i >= 2:
                    times[k].append(time.perf_counter() - t0)
        rows[name] = {k: statistics.median(v) for k, v in times.items()}
        print(f"{name}: channels-last {rows[name]['channels-last']:.4f} s, contiguous {rows[name]['contiguous']:.4f} s", file=sys.stderr, flush=True)
    return rows


def _median_seconds(fn, device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn()`` after 3 warm-up calls, waiting for the device each time."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def accelerator_figures(network: torch.nn.Module, num_landmarks: int, device: str, sizes_wh: list[tuple[int, int]], batch: int, repeats: int = 20) -> list[dict]:
    """A copy of ``network`` (the checkpoint's) on ``device`` (a CUDA GPU; CPU works too, for the tests), per input
    ``(W, H)`` and precision (fp32, AMP: float16 autocast on CUDA, bfloat16 on CPU): network
    latency at batch 1, inference images/s at ``batch``, training step time at ``batch`` (AdamW,
    the bundle's loss, a gradient scaler under AMP on CUDA) and the step's peak device memory
    (``torch.cuda.max_memory_allocated``; ``None`` on CPU), with whether it fits 16 GiB."""
    from maht_net.models.losses import LandmarkLoss

    dev = torch.device(device)
    rows = []
    for width, height in sizes_wh:
        for precision in ("fp32", "amp"):
            torch.manual_seed(0)
            net = copy.deepcopy(network).to(dev)
            autocast = lambda: torch.autocast(dev.type, dtype=torch.float16 if dev.type == "cuda" else torch.bfloat16, enabled=precision == "amp")  # noqa: E731
            one, many = torch.rand(1, 1, height, width, device=dev), torch.rand(batch, 1, height, width, device=dev)

            def infer(x):
                with torch.no_grad(), autocast():
                    net(x)

            net.eval()
            latency = _median_seconds(lambda: infer(one), dev, repeats)
            per_batch = _median_seconds(lambda: infer(many), dev, max(3, repeats // 4))
            net.train()
            opt = torch.optim.AdamW(net.parameters(), 1e-3)
            scaler = torch.amp.GradScaler(dev.type, enabled=precision == "amp" and dev.type == "cuda")
            loss = LandmarkLoss(stride=net.stride, sigma=2.0)
            target = {"landmarks": torch.rand(batch, num_landmarks, 2, device=dev) * (min(width, height) - 1),
                      "mask": torch.ones(batch, num_landmarks, device=dev), "spacing": torch.ones(batch, 2, device=dev)}

            def step():
                opt.zero_grad(set_to_none=True)
                with autocast():
                    out = net(many)
                value = loss(out, target)  # the loss computes in float32 itself, as in the bundle's AMP training
                scaler.scale(value).backward()
                scaler.step(opt)
                scaler.update()

            if dev.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
            step_s = _median_seconds(step, dev, max(3, repeats // 4))
            peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
            rows.append({"input": f"{width}x{height}", "precision": precision, "latency_s": latency, "images_per_s": batch / per_batch,
                         "train_step_s": step_s, "train_peak_gib": peak, "fits_16gib": None if peak is None else peak < 16.0})
            del net, opt, many, one
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--datalist", type=Path, help="films with truth, needed but for --memory-formats (the 'test' section is timed; "
                    "'validation' calibrates static int8)")
    ap.add_argument("--images", type=int, default=20, help="test films timed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pipeline-size", type=int, default=256)
    ap.add_argument("--pipeline-images", type=int, default=400)
    ap.add_argument("--train-sizes", type=int, nargs="*", default=[256, 512])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else None,
                    help="accelerator for the latency/throughput/training-memory section (default: the CUDA GPU "
                    "when there is one, else the section is skipped; 'cpu' runs it on the CPU)")
    ap.add_argument("--device-sizes", nargs="*", default=["256x320", "512x640"],
                    help="W x H inputs of that section (the CPU and GPU recipes' inputs)")
    ap.add_argument("--device-repeats", type=int, default=20, help="timed calls per figure of that section")
    ap.add_argument("--latency-only", action="store_true", help="only the end-to-end latency table (no int8, pipeline or training figures)")
    ap.add_argument("--device-only", action="store_true", help="only the --device figures: end to end on the device with "
                    "its distance to the CPU's landmarks, and the network's latency, throughput and training step")
    ap.add_argument("--memory-formats", action="store_true", help="only the channels-last vs contiguous table: the first stage's "
                    "and the refinement network's training steps (--batch) and the first stage's batch-1 inference, --repeats steps each, on --device or the CPU")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_formats:
        _, info = load_model(args.checkpoint)
        device = args.device or "cpu"
        rows = memory_formats(info, load_refiner(args.checkpoint), args.batch, max(args.repeats, 5), device)
        print(f"\nConvolution weights channels-last vs contiguous, {device_name(device, args.threads)}, "
              f"torch {torch.__version__}, median s per call, the two alternating:\n\n| call | channels-last | contiguous | contiguous / channels-last |\n|---|---|---|---|")
        for name, r in rows.items():
            print(f"| {name} | {r['channels-last']:.4f} | {r['contiguous']:.4f} | {r['contiguous'] / r['channels-last']:.2f} |")
        if args.json:
            args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M %Z"), "device": device_name(device, args.threads), "memory_formats": rows}, indent=2))
        return 0
    if args.datalist is None:
        ap.error("--datalist is needed (all but --memory-formats time real films)")
    items = load_datalist(args.datalist, "test", check_files=True)[: args.images]
    network, info = load_model(args.checkpoint)
    if args.device_only:
        if not args.device:
            ap.error("--device-only needs a --device (no CUDA GPU here)")
        return device_figures(args, network, info, items)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}",
        "input_size": info["input_size"],
        "films": len(items),
        "latency": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        variants = {"PyTorch eager": network}
        export_checkpoint(args.checkpoint, tmp / "m.ts", "torchscript")
        variants["TorchScript"] = torch.jit.load(str(tmp / "m.ts"))
        export_checkpoint(args.checkpoint, tmp / "m.onnx", "onnx")  # both stages, as maht-net export writes them
        variants["ONNX Runtime"] = OnnxNetwork(tmp / "m.onnx", threads=args.threads, stride=info["stride"])
        refiners = {}
        refiner = load_refiner(args.checkpoint)
        if refiner is not None:  # both stages, eager and ONNX Runtime
            variants["PyTorch eager, both stages"], refiners["PyTorch eager, both stages"] = network, refiner
            variants["ONNX Runtime, both stages"] = variants["ONNX Runtime"]
            refiners["ONNX Runtime, both stages"] = onnx_refiner(refiner, tmp / "m.onnx", threads=args.threads)
        if not args.latency_only:
            variants["ONNX Runtime int8 (dynamic)"] = OnnxNetwork(quantize_int8(tmp / "m.onnx", tmp / "m.int8.onnx"), threads=args.threads, stride=info["stride"])
            calibration = preprocessed_inputs(load_datalist(args.datalist, "validation", check_files=True)[: args.images], info)
            static = quantize_int8_static(tmp / "m.onnx", tmp / "m.int8s.onnx", calibration)
            variants["ONNX Runtime int8 (static, QDQ)"] = OnnxNetwork(static, threads=args.threads, stride=info["stride"])
        film = preprocessed_inputs(items[:1], info)[0]
        for name, net in variants.items():
            seconds, mre = end_to_end(net, info, items, args.repeats, tmp / "out", refiners.get(name))
            result["latency"][name] = {"seconds": seconds, "network_seconds": network_only(net, film), "mre_mm": mre}
            print(f"{name}: {seconds:.3f} s/film, MRE {mre:.2f} mm", file=sys.stderr, flush=True)
        try:
            from landmarker.models import ProbSpatialConfigurationNet

            peer = ProbSpatialConfigurationNet(spatial_dims=2, in_channels=1, out_channels=len(info["landmark_names"])).eval()
            peer_info = dict(info, stride=1, decoder="argmax")
            seconds, _ = end_to_end(peer, peer_info, items, args.repeats, tmp / "out")  # untrained: time only
            result["latency"]["landmarker PSCN (eager)"] = {"seconds": seconds, "network_seconds": network_only(peer, film), "mre_mm": None}
        except ImportError:
            print("landmarker not installed (make bench-install): no peer timing", file=sys.stderr)
    if not args.latency_only:
        result["pipeline_images_per_s"] = pipeline_throughput(args.datalist, args.pipeline_size, args.pipeline_images)
        result["training_step"] = training_steps(info, args.train_sizes, args.batch, args.threads)
    peer = result["latency"].get("landmarker PSCN (eager)", {}).get("seconds")
    print(f"\nEnd to end per {items[0].get('width', '?')}x{items[0].get('height', '?')} film (read, preprocess at "
          f"{info['input_size'][0]}x{info['input_size'][1]}, network, decode, write JSON), median of {args.repeats} x {len(items)}, {result['machine']}:\n")
    print("| variant | s/film | x landmarker's time | first-stage network alone, s | MRE mm (test) |\n|---|---|---|---|---|")
    for name, r in result["latency"].items():
        ratio = f"{r['seconds'] / peer:.2f}" if peer else "-"
        mre = "-" if r["mre_mm"] is None else f"{r['mre_mm']:.2f}"
        print(f"| {name} | {r['seconds']:.3f} | {ratio} | {r['network_seconds']:.4f} | {mre} |")
    if args.latency_only:
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return 0
    print(f"\nTraining pipeline at {args.pipeline_size}x{args.pipeline_size}, batch 8:\n\n| source | images/s |\n|---|---|")
    for name, rate in result["pipeline_images_per_s"].items():
        print(f"| {name} | {rate:.0f} |")
    print(f"\nTraining step of the checkpoint's network, batch {args.batch}:\n\n| input | s/step | peak MB (activations, grads, optimizer) |\n|---|---|---|")
    for size, r in result["training_step"].items():
        print(f"| {size}x{size} | {r.get('step_s', float('nan')):.2f} | {r.get('peak_mb', float('nan')):.0f} |")
    if args.device:
        result["device"] = network_on_device(args, network, info)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def device_name(device: str, threads: int) -> str:
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else f"CPU, {threads} threads"


def network_on_device(args: argparse.Namespace, network: torch.nn.Module, info: dict) -> dict:
    """Print and return :func:`accelerator_figures` for ``--device`` at ``--device-sizes``."""
    sizes = [tuple(int(v) for v in size.lower().split("x")) for size in args.device_sizes]
    name = device_name(args.device, args.threads)
    figures = {"name": name, "batch": args.batch, "rows": accelerator_figures(network, len(info["landmark_names"]), args.device, sizes, args.batch, args.device_repeats)}
    print(f"\nThe checkpoint's network on {name} (latency at batch 1, images/s and training step at batch {args.batch}):\n")
    print("| input (W x H) | precision | latency ms | images/s | train step s | train peak GiB | fits 16 GiB |\n|---|---|---|---|---|---|---|")
    for r in figures["rows"]:
        peak = "-" if r["train_peak_gib"] is None else f"{r['train_peak_gib']:.2f}"
        fits = "-" if r["fits_16gib"] is None else ("yes" if r["fits_16gib"] else "no")
        print(f"| {r['input']} | {r['precision']} | {1000 * r['latency_s']:.1f} | {r['images_per_s']:.0f} | {r['train_step_s']:.3f} | {peak} | {fits} |")
    return figures


def device_figures(args: argparse.Namespace, network: torch.nn.Module, info: dict, items: list[dict]) -> int:
    """``--device-only``: :func:`device_end_to_end` and :func:`network_on_device`."""
    name = device_name(args.device, args.threads)
    result = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": f"{name}; CPU side {platform.processor() or platform.machine()}, "
              f"{args.threads} threads, torch {torch.__version__}", "films": len(items)}
    with tempfile.TemporaryDirectory() as tmp:
        result["end_to_end"] = device_end_to_end(args.checkpoint, items, args.device, args.repeats, Path(tmp))
    print(f"\nEnd to end on {result['machine']} (read, preprocess, network(s), decode, write JSON), median of {args.repeats} x {len(items)} films:\n")
    sites = sorted({site for r in result["end_to_end"].values() for site in r["mre_mm"]})
    print(f"| stages | s/film | {' | '.join(f'MRE mm {s}' for s in sites)} | largest distance to the CPU's landmarks, px |\n|---|---|{'---|' * len(sites)}---|")
    for stages, r in result["end_to_end"].items():
        mre = " | ".join(f"{r['mre_mm'][s]:.3f}" for s in sites)
        print(f"| {stages} | {r['seconds']:.3f} | {mre} | {r['max_distance_to_cpu_px']:.4f} |")
    result["device"] = network_on_device(args, network, info)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
