"""``maht-net phantom``: write the synthetic data set."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from maht_net.datasets.phantom import DEFAULT_SIZE, MIN_SIZE, make_phantom_dataset, phantom_spacing


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``phantom`` command: write a synthetic data set (PNG + LabelMe + datalist)."""
    parser = subparsers.add_parser(
        "phantom",
        help="write synthetic lateral cephalograms with landmarks (the built-in data set)",
        description="Write synthetic lateral cephalograms (PNG), their 19 ISBI 2015 landmarks (LabelMe) "
        "and a datalist with training/validation/test sections.",
    )
    parser.add_argument("--n", type=_int_at_least(1), default=100, help="number of images (default 100)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed (default 0)")
    parser.add_argument(
        "--size", type=_int_at_least(MIN_SIZE), nargs=2, metavar=("W", "H"), default=list(DEFAULT_SIZE),
        help=f"image size in pixels, at least {MIN_SIZE} (default 512 640: 0.332 mm/px; the anatomy keeps its mm size)",
    )  # fmt: skip
    parser.add_argument("--workers", type=_int_at_least(1), default=None, help="parallel processes (default 2)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    path = make_phantom_dataset(args.out, n=args.n, seed=args.seed, size=tuple(args.size), workers=args.workers)
    spacing = phantom_spacing(args.size)[0]
    print(
        f"wrote {args.n} phantoms ({args.size[0]}x{args.size[1]} px, {spacing:.3f} mm/px) "
        f"in {time.perf_counter() - start:.1f} s\n"
        f"  images:      {path.parent / 'images'}\n"
        f"  annotations: {path.parent / 'annotations'}\n"
        f"  datalist:    {path}"
    )
    return 0
