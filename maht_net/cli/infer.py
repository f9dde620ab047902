"""``maht-net infer`` and ``maht-net export``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from maht_net.cli import add_device_argument
from maht_net.errors import InputError
from maht_net.inference.ensemble import load_ensemble
from maht_net.inference.export import OnnxNetwork, export_checkpoint, onnx_refiner
from maht_net.inference.predictor import Predictor, image_items, load_model
from maht_net.inference.refine import load_refiner
from maht_net.inference.writers import write_outputs
from maht_net.io.checkpoint import shipped_model
from maht_net.transforms.io import spacing_pair


def _checkpoints(args: argparse.Namespace) -> list[Path]:
    """--checkpoint FILE..., else <--bundle>/models/model.pt, else the shipped model."""
    if args.checkpoint:
        return [Path(c) for c in ([args.checkpoint] if isinstance(args.checkpoint, str) else args.checkpoint)]
    return [Path(args.bundle) / "models" / "model.pt" if args.bundle else shipped_model()]


def _run_infer(args: argparse.Namespace) -> int:
    try:
        spacing = spacing_pair(args.spacing, "--spacing") if args.spacing else None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    checkpoints = _checkpoints(args)
    device = "cpu" if args.onnx else args.device  # ONNX Runtime runs on the CPU here
    refiner = None
    if len(checkpoints) > 1:
        if args.onnx:
            raise InputError(args.onnx, "an ensemble runs the PyTorch checkpoints; drop --onnx or pass one --checkpoint")
        network, info = load_ensemble(checkpoints, device)
        print(f"ensemble of {len(checkpoints)} models (mean heatmap); uncertainty reported uncalibrated")
    else:
        network, info = load_model(checkpoints[0], device)
        try:
            refiner = None if args.no_refine else load_refiner(checkpoints[0], device, shift_mm=args.refine_shift_mm)
        except ValueError as e:
            print(f"error: --refine-shift-mm: {e}", file=sys.stderr)
            return 2
        model = info["model"]
        stages = "two stages (refinement on the full-resolution film)" if refiner else "one stage"
        print(f"model: {checkpoints[0]} (version {model['version'] or 'not recorded'}, sha256 {model['sha256'][:12]}; {stages}; on {device})")
    if args.onnx:
        if not Path(args.onnx).is_file():
            raise InputError(args.onnx, "ONNX model not found (make one with 'maht-net export --format onnx')")
        network = OnnxNetwork(args.onnx, threads=args.threads)
        if refiner is not None:
            refiner = onnx_refiner(refiner, args.onnx, threads=args.threads)
        if args.mc_samples:
            raise InputError(args.onnx, "MC-dropout needs the PyTorch model; drop --onnx or --mc-samples")
    inputs = args.input[0] if len(args.input) == 1 and Path(args.input[0]).is_dir() else args.input
    items = image_items(inputs)
    predictor = Predictor(network, info, device, mc_samples=args.mc_samples, tta=args.tta, refiner=refiner, default_spacing=spacing)
    out = Path(args.out)
    failed = []
    for item in items:  # one at a time: a bad file is reported by name and the others still run
        try:
            pred = predictor.predict([item])[0]
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            failed.append(item["image"])
            continue
        write_outputs(pred, out, overlay=not args.no_overlay)
        unit = "mm" if pred["spacing"] else "px"
        unc = [r["uncertainty_mm"] if unit == "mm" else r["uncertainty_px"] for r in pred["landmarks"]]
        print(f"{pred['id']}: {len(unc)} landmarks, median uncertainty {float(np.median(unc)):.2f} {unit} -> {out}/{pred['id']}_landmarks.json")
    if failed:
        print(f"error: {len(failed)} of {len(items)} images failed (see above); the others were written to {out}", file=sys.stderr)
        return 2
    return 0


def _run_export(args: argparse.Namespace) -> int:
    written = export_checkpoint(_checkpoints(args)[0], args.out, args.format)
    for (path, diff), stage in zip(written.items(), ("", " (refinement stage)")):
        print(f"wrote {path}{stage} ({args.format}); max |logit difference| vs eager on a random input: {diff:.2e}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("infer", help="landmarks for images with a trained bundle (JSON, Slicer markups, CSV, overlay)")
    p.add_argument("--bundle", help="bundle folder whose models/model.pt is used (default: the shipped model, "
                   "bundle/models/model.pt of this installation, or $MAHT_NET_MODEL)")
    p.add_argument("--checkpoint", nargs="+", help="a checkpoint file instead; several = "
                   "an ensemble (e.g. the k fold models): their heatmaps are averaged")
    p.add_argument("--input", nargs="+", required=True, help="image files, or one folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--spacing", type=float, nargs="+", metavar="MM", help="pixel spacing (one value or SX SY) of the files that do not state it "
                   "(a file's own spacing, e.g. DICOM's, wins); predictions then say spacing_source 'fallback'")
    p.add_argument("--tta", action="store_true", help="test-time augmentation (4 shifted passes)")
    p.add_argument("--mc-samples", type=int, default=0, help="MC-dropout passes for uncertainty (0 = off)")
    p.add_argument("--onnx", help="run this ONNX model with ONNX Runtime instead of PyTorch")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--no-overlay", action="store_true", help="skip the overlay PNGs")
    p.add_argument("--no-refine", action="store_true", help="first stage only, for a two-stage checkpoint (docs/refinement.md)")
    p.add_argument("--refine-shift-mm", type=float, metavar="MM", help="the refinement stage's test-time patch shifts (default: "
                   "the checkpoint's; 0: one centred patch per landmark)")
    add_device_argument(p)
    p.set_defaults(func=_run_infer)
    e = subparsers.add_parser("export", help="export a trained bundle model to ONNX or TorchScript (checked against eager)")
    e.add_argument("--bundle", help="bundle folder whose models/model.pt is exported (default: the shipped model)")
    e.add_argument("--checkpoint", help="a checkpoint file instead")
    e.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="export format (default: onnx)")
    e.add_argument("--out", required=True, help="file to write (e.g. model.onnx or model.ts); a two-stage checkpoint's "
                   "refinement stage goes beside it (model.refine.onnx)")
    e.set_defaults(func=_run_export)
