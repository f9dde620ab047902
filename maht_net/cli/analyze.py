"""``maht-net analyze``: cephalometric measurements, agreement and calibration from prediction files."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maht_net.clinical.agreement import compare_with_truth
from maht_net.clinical.analysis import ReviewPolicy, analyze_prediction
from maht_net.clinical.calibration import save_reliability_plot
from maht_net.clinical.format import format_agreement, format_measurements
from maht_net.errors import InputError
from maht_net.formatting import fmt_number
from maht_net.io.atomic import write_json_atomic
from maht_net.io.predictions import PREDICTION_SUFFIX, find_predictions, read_prediction


# ---- command line ----------------------------------------------------------------------------
def _prediction_paths(inputs: Sequence[str]) -> list[Path]:
    paths: list[Path] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            found = find_predictions(p)
            if not found:
                raise InputError(p, f"no *{PREDICTION_SUFFIX} files in the folder")
            paths += list(found.values())
        else:
            paths.append(p)
    return paths


def add_review_arguments(parser: argparse.ArgumentParser) -> None:
    """Monte-Carlo and :class:`ReviewPolicy` options shared by ``analyze`` and ``report``."""
    d = ReviewPolicy()
    parser.add_argument("--samples", type=int, default=2000, help="Monte-Carlo samples per image (0 = no intervals)")
    parser.add_argument("--seed", type=int, default=0, help="Monte-Carlo seed")
    parser.add_argument("--review-landmark-mm", type=float, default=d.landmark_uncertainty_mm, help="flag landmarks whose uncertainty exceeds this (mm)")
    parser.add_argument("--review-landmark-px", type=float, default=d.landmark_uncertainty_px, help="the same without pixel spacing (px)")
    for unit in ("deg", "mm", "px", "ratio"):
        parser.add_argument(
            f"--review-interval-{unit}", type=float, default=d.max_interval_width[unit],
            help=f"flag measurements in {unit} whose 95%% interval is wider than this",
        )


def policy_from_args(args: argparse.Namespace) -> ReviewPolicy:
    """The :class:`ReviewPolicy` given by :func:`add_review_arguments`' options."""
    return ReviewPolicy(
        landmark_uncertainty_mm=args.review_landmark_mm,
        landmark_uncertainty_px=args.review_landmark_px,
        max_interval_width={u: getattr(args, f"review_interval_{u}") for u in ("deg", "mm", "px", "ratio")},
    )


def _run(args: argparse.Namespace) -> int:
    policy = policy_from_args(args)
    preds = [read_prediction(p) for p in _prediction_paths(args.predictions)]
    out: dict[str, Any] = {"analyses": []}
    if args.truth:
        result = compare_with_truth(preds, args.truth, policy, args.samples, args.seed)
        out = {"analyses": [r["prediction"] for r in result["per_image"]], "comparison": {k: v for k, v in result.items() if k != "per_image"}}
        print(f"prediction vs truth on {result['n_images']} image(s) (error = prediction - truth):")
        print(format_agreement(result["error"], "error"))
        ref = result["annotator_reference"]
        if ref:
            a, b = ref["annotators"]
            print(f"\nreference level, {b} - {a} on the same {ref['n_images']} image(s):")
            print(format_agreement(ref["table"]))
        cal = result["calibration"]
        if cal:
            fl, un = cal["flagged"], cal["unflagged"]
            print(
                f"\nuncertainty calibration ({cal['n']} landmarks, Spearman rho {fmt_number(cal['spearman'])}): flagged "
                f"(> {cal['threshold']:g} {cal['unit']}) n={fl['n']} mean error {fmt_number(fl['mean_error'])} {cal['unit']}; "
                f"unflagged n={un['n']} mean error {fmt_number(un['mean_error'])} {cal['unit']}"
                + ("" if cal["ellipse_coverage"] is None else f"; true position inside its 95 % ellipse for {cal['ellipse_coverage']:.1%}")
            )
            if args.reliability_plot:
                save_reliability_plot(cal, args.reliability_plot)
                print(f"wrote {args.reliability_plot}")
        if result["unmatched"]:
            print(f"no truth for: {', '.join(map(str, result['unmatched']))}")
    else:
        for pred in preds:
            a = analyze_prediction(pred, policy, args.samples, args.seed)
            out["analyses"].append(a)
            print(f"{pred.get('id')}:\n{format_measurements(a)}\n")
    if args.out:
        write_json_atomic(args.out, out if len(out["analyses"]) != 1 or args.truth else out["analyses"][0])
        print(f"wrote {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``maht-net analyze`` (measurements, classes, intervals; agreement with ``--truth``)."""
    p = subparsers.add_parser(
        "analyze",
        help="cephalometric measurements (SNA, SNB, ANB, ODI, APDI, FHI, FMA, MW, ...) with classes, intervals and review flags",
        description="Measure angles and distances from predicted landmarks, classify them as in ISBI 2015 task 2, "
        "propagate the landmark uncertainty (Monte-Carlo) and flag what needs review. With --truth: measurement "
        "error and class accuracy against a datalist, the annotator-vs-annotator reference level and the "
        "uncertainty calibration.",
    )
    p.add_argument("predictions", nargs="+", help="prediction JSON file(s) (<id>_landmarks.json) or folders of them")
    p.add_argument("--truth", metavar="DATALIST", help="datalist with ground-truth landmarks (matched by id, all sections)")
    p.add_argument("--out", help="write JSON here: the analysis of one prediction, else {analyses[, comparison]}")
    p.add_argument("--reliability-plot", metavar="PNG", help="with --truth: save the uncertainty reliability curve")
    add_review_arguments(p)
    p.set_defaults(func=_run)
