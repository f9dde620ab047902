"""``maht-net prepare <dataset>``: turn a data set as released into datalists.

Each reader module in :data:`PREPARE_MODULES` exposes ``register_prepare(subparsers)``, which adds
its sub-command to ``prepare`` and sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib

__all__ = ["PREPARE_MODULES", "register"]

PREPARE_MODULES = (
    "maht_net.cli.prepare_isbi2015",
    "maht_net.cli.prepare_labelme",
    "maht_net.cli.prepare_cldetection2023",
    "maht_net.cli.prepare_dicom",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prepare`` command, with one sub-command per data-set reader."""
    parser = subparsers.add_parser(
        "prepare",
        help="convert a data set (ISBI 2015, LabelMe, CL-Detection 2023, DICOM) into datalists",
        description=__doc__.split("\n\n")[0],
    )
    readers = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name in PREPARE_MODULES:
        importlib.import_module(name).register_prepare(readers)
