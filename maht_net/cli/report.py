"""``maht-net report``: clinician-readable HTML and PNG of one prediction."""

from __future__ import annotations

import argparse
from pathlib import Path

from maht_net.cli.analyze import add_review_arguments, policy_from_args
from maht_net.clinical.report import write_report


def _run(args: argparse.Namespace) -> int:
    checkpoint = None
    if args.explain:
        checkpoint = Path(args.checkpoint) if args.checkpoint else Path(args.bundle) / "models" / "model.pt"
    paths = write_report(
        args.prediction, args.out, png=args.png, image=args.image, checkpoint=checkpoint,
        policy=policy_from_args(args), n_samples=args.samples, seed=args.seed,
    )
    a = paths["analysis"]
    flagged = [r["name"] for r in a["measurements"] if r["needs_review"]]
    print(f"wrote {paths['html']} and {paths['png']}" + (f" and {paths['explanation']}" if paths["explanation"] else ""))
    print(f"skeletal class: {a['skeletal_class']['label'] or 'not available'}; to review: {', '.join(flagged) or 'none flagged'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``maht-net report`` (self-contained HTML + PNG for a clinician)."""
    p = subparsers.add_parser(
        "report",
        help="clinician-readable HTML (+PNG) report: film with landmarks, uncertainty and analysis lines, measurement table",
        description="Render one prediction as a self-contained HTML report (embedded PNG) and a PNG: named landmarks with "
        "95 % uncertainty ellipses, analysis lines, measurements with ISBI 2015 classes, intervals and review flags.",
    )
    p.add_argument("prediction", help="prediction JSON (<id>_landmarks.json)")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--png", help="PNG to write (default: the HTML path with .png)")
    p.add_argument("--image", help="the film, when not at the prediction's 'image' path")
    p.add_argument("--explain", action="store_true", help="add the network's heatmaps and attention per landmark")
    p.add_argument("--bundle", default="bundle", help="bundle folder whose models/model.pt --explain uses")
    p.add_argument("--checkpoint", help="checkpoint for --explain instead of <bundle>/models/model.pt")
    add_review_arguments(p)
    p.set_defaults(func=_run)
