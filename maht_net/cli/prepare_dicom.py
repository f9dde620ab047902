"""``maht-net prepare dicom``."""

from __future__ import annotations

import argparse

import maht_net.datasets.dicom
from maht_net.datasets.dicom import prepare_dicom


def _run(args: argparse.Namespace) -> int:
    path, lines = prepare_dicom(args.dicom_dir, args.out, args.annotations, args.export_png, args.landmark_set)
    for line in lines:
        print(line)
    print(f"wrote {path}")
    return 0


def register_prepare(subparsers: argparse._SubParsersAction) -> None:
    """Add ``prepare dicom`` to the ``prepare`` sub-parsers."""
    p = subparsers.add_parser(
        "dicom",
        help="DICOM cephalograms (DX/CR) -> datalist, with optional LabelMe landmarks and PNG export",
        description=maht_net.datasets.dicom.__doc__.split("\n\n")[0],
    )
    p.add_argument("--dicom-dir", required=True, help="folder searched recursively for DICOM files")
    p.add_argument("--out", required=True, help="datalist JSON to write")
    p.add_argument("--annotations", help="folder of LabelMe JSON files named like the DICOM files")
    p.add_argument("--export-png", metavar="DIR", help="also write 8-bit PNGs there and point the datalist at them")
    p.add_argument("--landmark-set", default="isbi2015", choices=("isbi2015", "cldetection2023"))
    p.set_defaults(func=_run)
