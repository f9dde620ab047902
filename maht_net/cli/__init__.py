"""The ``maht-net`` command line: one sub-command per job, each a thin wrapper over the library.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func(args) -> int``. Bad input surfaces as :class:`~maht_net.errors.InputError`: printed as
``error: <file>: <problem>`` with exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from maht_net.errors import InputError
from maht_net.inference.device import default_device

COMMAND_MODULES = (
    "maht_net.cli.phantom",
    "maht_net.cli.prepare",
    "maht_net.cli.audit",
    "maht_net.cli.evaluate",
    "maht_net.cli.infer",
    "maht_net.cli.calibrate",
    "maht_net.cli.refine",
    "maht_net.cli.analyze",
    "maht_net.cli.report",
)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``, shared by the commands that run a network (default: :func:`default_device`)."""
    parser.add_argument("--device", default=default_device(), help="PyTorch device: cpu, cuda, cuda:1... (default here: %(default)s, the GPU when there is one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maht-net", description="Cephalometric landmark detection (MAHT-Net): data, training, inference."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

