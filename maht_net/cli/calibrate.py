"""``maht-net calibrate``: fit and record a checkpoint's uncertainty calibration."""

from __future__ import annotations

import argparse

from maht_net.cli import add_device_argument
from maht_net.inference.calibration import calibrate_checkpoint


def _run(args: argparse.Namespace) -> int:
    record = calibrate_checkpoint(
        args.checkpoint, args.datalist, args.section, args.out, base_dir=args.base_dir, mc_samples=args.mc_samples, tta=args.tta,
        prior_strength=args.prior_strength, device=args.device,
    )  # fmt: skip
    print(
        f"calibrated on {record['n_images']} image(s) of '{args.section}' ({record['n_landmarks']} landmarks): raw RMS spread "
        f"{record['raw_rms_spread_px']:.2f} px, actual RMS error {record['actual_rms_error_px']:.2f} px, common scale {record['common_scale']:.3f}"
    )
    print("per-landmark scale: " + ", ".join(f"{n} {s:.2f}" for n, s in zip(record["landmark_names"], record["scale"])))
    refined = record.get("refine_stage")
    if refined:
        print(
            f"both stages ({refined['combine']}): raw RMS spread {refined['raw_rms_spread_px']:.2f} px, actual RMS error "
            f"{refined['actual_rms_error_px']:.2f} px, common scale {refined['common_scale']:.3f}"
        )
    print(f"wrote {args.out or args.checkpoint}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``maht-net calibrate`` (fit the uncertainty calibration of a checkpoint)."""
    p = subparsers.add_parser(
        "calibrate",
        help="fit the uncertainty calibration of a checkpoint on held-out images (sigma scaling)",
        description="Predict a datalist section (default: validation) with the checkpoint, fit one scale per landmark so "
        "the reported uncertainty is the expected RMS error, and store it in the checkpoint. The bundle's training does "
        "this on its validation section when it finishes; run it again after changing the inference mode (--mc-samples, --tta). "
        "A two-stage checkpoint also gets the calibration of the uncertainty both stages report together.",
    )
    p.add_argument("checkpoint", help="model.pt written by the bundle's training")
    p.add_argument("--datalist", required=True, help="datalist with ground-truth landmarks")
    p.add_argument("--section", default="validation", help="section to fit on (never the test section you report on)")
    p.add_argument("--base-dir", help="folder that relative image paths of the datalist are resolved against "
                   "(default: its data_root, else its folder)")  # fmt: skip
    p.add_argument("--out", help="write the calibrated checkpoint here instead of in place")
    p.add_argument("--mc-samples", type=int, default=0, help="inference mode the calibration is for: MC-dropout passes")
    p.add_argument("--tta", action="store_true", help="inference mode the calibration is for: test-time shifts")
    p.add_argument("--prior-strength", type=float, default=10.0, help="pseudo-observations shrinking each landmark's scale to the common one")
    add_device_argument(p)
    p.set_defaults(func=_run)
