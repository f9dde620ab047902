"""``maht-net refine``: train the refinement stage and attach it to a first-stage checkpoint."""

from __future__ import annotations

import argparse
import sys

from maht_net.cli import add_device_argument
from maht_net.codec.patches import PatchCodec
from maht_net.engine.refine import DEFAULT_SHIFT_MM, PatchJitter, refine_checkpoint
from maht_net.inference.calibration import calibrate_checkpoint
from maht_net.io.checkpoint import load_checkpoint_file
from maht_net.io.datalist import datalist_sections, load_datalist, read_datalist


def _run(args: argparse.Namespace) -> int:
    device = args.device
    state = load_checkpoint_file(args.checkpoint)
    info = state.get("info", {}) if isinstance(state, dict) else {}
    items = load_datalist(args.datalist, args.section, base_dir=args.base_dir, landmark_set=info.get("landmark_set"), check_files=True)
    codec = PatchCodec(patch_size=args.patch, mm_per_px=args.mm_per_px, stride=args.stride, sigma=args.sigma)
    try:
        codec.check_shift(args.shift_mm)
    except ValueError as e:
        print(f"error: --shift-mm: {e}", file=sys.stderr)
        return 2
    out, stage = refine_checkpoint(
        args.checkpoint,
        items,
        args.out,
        minutes=args.minutes,
        codec=codec,
        network=args.network,
        jitter=PatchJitter(sigma_mm=args.jitter_mm, tail_fraction=args.tail_fraction, tail_mm=args.tail_mm),
        iterations=args.iterations,
        batch_size=args.batch_size,
        lr=args.lr,
        shift_mm=args.shift_mm,
        seed=args.seed,
        device=device,
    )
    trained = stage["info"]["trained"]
    print(
        f"refinement stage: {trained['iterations']} steps in {trained['seconds']} s on {trained['films']} film(s) of '{args.section}', "
        f"final loss {trained['final_loss']:.3f}; {codec.patch_size} x {codec.patch_size} patches at {codec.mm_per_px:g} mm/px "
        f"({codec.field_mm:g} mm) -> wrote {out}"
    )
    if args.calibrate_on == "none":
        print("uncertainty of both stages not calibrated (--calibrate-on none): reported raw until maht-net calibrate runs")
    elif args.calibrate_on not in datalist_sections(read_datalist(args.datalist)):
        print(f"no '{args.calibrate_on}' section: the uncertainty of both stages is reported raw (run maht-net calibrate)")
    else:
        both = calibrate_checkpoint(out, args.datalist, args.calibrate_on, base_dir=args.base_dir, device=device)["refine_stage"]
        print(f"uncertainty of both stages calibrated on '{args.calibrate_on}' ({both['n_images']} films): common scale {both['common_scale']:.3f}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``maht-net refine`` (train the refinement stage of a checkpoint)."""
    p = subparsers.add_parser(
        "refine",
        help="train the refinement stage (full-resolution patches around each landmark) and add it to a checkpoint",
        description="Train the second stage on a datalist section (patches around the true landmarks, moved like the "
        "first stage's errors) and write the checkpoint with both stages; prediction then runs both (see docs/refinement.md).",
    )
    p.add_argument("checkpoint", help="the first-stage model.pt")
    p.add_argument("--datalist", required=True, help="datalist with ground-truth landmarks")
    p.add_argument("--section", default="training", help="section to train on")
    p.add_argument("--calibrate-on", default="validation", help="section (not trained on) that the uncertainty of both "
                   "stages is then calibrated on, as maht-net calibrate does; 'none': skip")  # fmt: skip
    p.add_argument("--base-dir", help="folder that relative image paths of the datalist are resolved against (default: its data_root, else its folder)")
    p.add_argument("--out", required=True, help="the two-stage checkpoint to write (may be the input checkpoint itself)")
    p.add_argument("--network", default="refine_net", help="refinement network (refine_net, refine_net_small)")
    p.add_argument("--patch", type=int, default=64, help="patch side in patch pixels")
    p.add_argument("--mm-per-px", type=float, default=0.2, help="patch resolution (field = patch x mm-per-px)")
    p.add_argument("--stride", type=int, default=2, choices=(1, 2), help="heatmap stride in patch pixels")
    p.add_argument("--sigma", type=float, default=2.0, help="target Gaussian std in patch pixels")
    p.add_argument("--jitter-mm", type=float, default=1.5, help="per-axis std of the patch-centre offsets (mm)")
    p.add_argument("--tail-fraction", type=float, default=0.1, help="fraction of offsets drawn uniformly within --tail-mm")
    p.add_argument("--tail-mm", type=float, default=5.0, help="radius of the large offsets (mm)")
    p.add_argument("--iterations", type=int, default=2000, help="training steps")
    p.add_argument("--minutes", type=float, help="time budget (stops early)")
    p.add_argument("--batch-size", type=int, default=8, help="films per step (each gives one patch per landmark)")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (cosine decay)")
    p.add_argument("--shift-mm", type=float, default=DEFAULT_SHIFT_MM, help="test-time patch shifts the stage records for inference: each "
                   "landmark refined in 5 patches (centred, and moved this far along x and y), averaged; 0: one patch")
    p.add_argument("--seed", type=int, default=0)
    add_device_argument(p)
    p.set_defaults(func=_run)

