"""``maht-net prepare isbi2015``."""

from __future__ import annotations

import argparse

import maht_net.datasets.isbi2015
from maht_net.datasets.common import fold_count
from maht_net.datasets.isbi2015 import ISBI_SPACING_MM, TRUTHS, prepare_isbi2015


def _run(args: argparse.Namespace) -> int:
    for path in prepare_isbi2015(args.root, args.out_dir, args.truth, args.folds, args.seed, args.spacing):
        print(f"wrote {path}")
    return 0


def register_prepare(subparsers: argparse._SubParsersAction) -> None:
    """Add ``prepare isbi2015`` to the ``prepare`` sub-parsers."""
    p = subparsers.add_parser(
        "isbi2015",
        help="ISBI 2015 challenge (RawImage/ + AnnotationsByMD/) -> train/test1/test2 and CV-fold datalists",
        description=maht_net.datasets.isbi2015.__doc__.split("\n\n")[0],
    )
    p.add_argument("--root", required=True, help="folder holding RawImage/ and AnnotationsByMD/")
    p.add_argument("--out-dir", required=True, help="folder for the datalists")
    p.add_argument(
        "--truth",
        "--annotator",
        dest="truth",
        choices=TRUTHS,
        default="mean",
        help="ground truth: mean of both doctors (default), or the senior or junior doctor's points",
    )
    p.add_argument("--spacing", type=float, default=ISBI_SPACING_MM, help=f"pixel spacing in mm/px (default {ISBI_SPACING_MM})")
    p.add_argument("--folds", type=fold_count, default=4, help="cross-validation folds of the training set (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold shuffle")
    p.set_defaults(func=_run)
