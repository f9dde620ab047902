"""``maht-net prepare cldetection2023``."""

from __future__ import annotations

import argparse

import maht_net.datasets.cldetection2023
from maht_net.datasets.cldetection2023 import prepare_cldetection2023
from maht_net.datasets.common import fold_count


def _run(args: argparse.Namespace) -> int:
    paths = prepare_cldetection2023(
        args.out,
        root=args.root,
        stack=args.stack,
        gt=args.gt,
        images_dir=args.images_dir,
        landmark_set=args.landmark_set,
        folds=args.folds,
        seed=args.seed,
    )
    for path in paths:
        print(f"wrote {path}")
    return 0


def register_prepare(subparsers: argparse._SubParsersAction) -> None:
    """Add ``prepare cldetection2023`` to the ``prepare`` sub-parsers."""
    p = subparsers.add_parser(
        "cldetection2023",
        help="CL-Detection 2023 (train_stack.mha + train-gt.json) -> PNG images + datalist",
        description=maht_net.datasets.cldetection2023.__doc__.split("\n\n")[0],
    )
    p.add_argument("--root", help="release folder holding the stack and train-gt.json")
    p.add_argument("--stack", help="image stack (default: found under --root)")
    p.add_argument("--gt", help="ground-truth JSON (default: found under --root)")
    p.add_argument("--out", required=True, help="datalist JSON to write")
    p.add_argument("--images-dir", help="folder for the extracted PNGs (default: <out stem>_images beside --out)")
    p.add_argument("--landmark-set", default="cldetection2023", choices=("cldetection2023", "isbi2015"))
    p.add_argument("--folds", type=fold_count, default=0, help="also write K cross-validation fold datalists")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold shuffle")
    p.set_defaults(func=_run)
