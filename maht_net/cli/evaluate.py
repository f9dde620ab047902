"""``maht-net evaluate``: score predictions against a datalist's truth."""

from __future__ import annotations

import argparse

from maht_net.bench.evaluation import compare_evaluations, evaluate_predictions
from maht_net.bench.metrics import DEFAULT_THRESHOLDS, format_comparison, format_table
from maht_net.io.atomic import write_json_atomic


def _run(args: argparse.Namespace) -> int:
    options = dict(
        section=args.section,
        thresholds=args.thresholds,
        base_dir=args.base_dir,
        allow_missing=args.allow_missing,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
    )
    result = evaluate_predictions(args.datalist, args.predictions, **options)
    print(format_table(result["summary"]))
    if args.compare:
        other = evaluate_predictions(args.datalist, args.compare, **options)
        print(f"\nCompared with {other['predictions']}:\n{format_table(other['summary'])}\n")
        result["comparison"] = {
            **compare_evaluations(result, other, n_bootstrap=args.bootstrap, seed=args.seed),
            "b_summary": other["summary"],
        }
        print(format_comparison(result["comparison"], "predictions", "compare"))
    if args.out:
        write_json_atomic(args.out, result)
        print(f"wrote {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``maht-net evaluate`` (MRE, SD, SDR, per-landmark table, bootstrap CIs, paired test)."""
    p = subparsers.add_parser(
        "evaluate",
        help="score predictions against a datalist's landmarks (MRE, SDR, 95%% CIs)",
        description="Match <id>_landmarks.json files to datalist items by id and report radial errors in mm "
        "(datalist spacing, else the prediction's; pixels when unknown). SDR counts errors <= threshold.",
    )
    p.add_argument("--datalist", required=True, help="datalist JSON with the ground truth")
    p.add_argument("--predictions", required=True, help="folder of <id>_landmarks.json files")
    p.add_argument("--out", help="write the metrics JSON here (summary + per-image errors)")
    p.add_argument("--section", default="test", help="datalist section (default: test)")
    p.add_argument("--compare", metavar="OTHER_PRED_DIR", help="second predictions folder: paired comparison")
    p.add_argument("--base-dir", help="folder that relative image paths of the datalist are resolved against (default: its data_root, else its folder)")
    p.add_argument("--allow-missing", action="store_true", help="skip datalist items without a prediction")
    p.add_argument(
        "--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS), help="SDR thresholds (mm)"
    )
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates for the 95%% CIs (0: none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.set_defaults(func=_run)
