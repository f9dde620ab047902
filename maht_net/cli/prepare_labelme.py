"""``maht-net prepare labelme``."""

from __future__ import annotations

import argparse

import maht_net.datasets.labelme
from maht_net.datasets.labelme import format_audit, prepare_labelme
from maht_net.io.datalist import datalist_sections, read_datalist


def _run(args: argparse.Namespace) -> int:
    spacing = None if args.spacing is None else (args.spacing[0] if len(args.spacing) == 1 else args.spacing)
    path, audits = prepare_labelme(
        args.images,
        args.annotations,
        args.out,
        spacing=spacing,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        landmark_set=args.landmark_set,
        lenient=args.lenient,
        disputed=args.disputed,
    )
    print(format_audit(audits))
    doc = read_datalist(path)
    counts = ", ".join(f"{k}: {len(v)}" for k, v in doc.items() if k in datalist_sections(doc))
    print(f"wrote {path} ({counts}); audit in {path.name}.audit.json")
    return 0


def register_prepare(subparsers: argparse._SubParsersAction) -> None:
    """Add ``prepare labelme`` to the ``prepare`` sub-parsers."""
    p = subparsers.add_parser(
        "labelme",
        help="LabelMe point annotations (one or more annotators) -> datalist, with an audit",
        description=maht_net.datasets.labelme.__doc__.split("\n\n")[0],
    )
    p.add_argument("--images", required=True, help="folder of images (PNG/BMP/TIFF/JPEG/DICOM)")
    p.add_argument("--annotations", required=True, action="append", help="folder of LabelMe JSON; repeat per annotator")
    p.add_argument("--spacing", type=float, nargs="+", metavar="MM", help="pixel spacing in mm: one value or SX SY")
    p.add_argument("--out", required=True, help="datalist JSON to write")
    p.add_argument("--val-fraction", type=float, default=0.0)
    p.add_argument("--test-fraction", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--landmark-set", default="isbi2015")
    p.add_argument("--lenient", action="store_true", help="drop (and report) unknown labels and points outside the image")
    p.add_argument("--disputed", choices=("keep", "drop"), default="keep", help="films whose annotators disagree far more than "
                   "on the others (likely a misregistered annotation; named in the audit either way): keep them or leave them out")
    p.set_defaults(func=_run)
