"""``maht-net audit``: check a datalist's films and annotations."""

from __future__ import annotations

import argparse
from pathlib import Path

from maht_net.datasets.audit import audit_datalist, format_report


def _run(args: argparse.Namespace) -> int:
    out_dir = args.out_dir or Path(args.datalist).with_suffix("").as_posix() + "_audit"
    report = audit_datalist(args.datalist, out_dir=out_dir, base_dir=args.dataset_dir)
    print(format_report(report))
    return 1 if report["problems"] else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("audit", help="check a datalist: counts, sizes, spacing, missing/outside landmarks")
    p.add_argument("datalist")
    p.add_argument("--out-dir", help="where to write audit.json and mean_shape.png (default: <datalist>_audit/)")
    p.add_argument("--dataset-dir", help="base folder for relative image paths (default: the datalist's folder)")
    p.set_defaults(func=_run)
