#!/usr/bin/env python
"""Accuracy benchmark on real cephalograms: every contender trained on the same split, input size
and time budget, tested on the same films, in one run (see maht_net.bench.accuracy and docs/benchmarks.md).

    python scripts/benchmark_accuracy.py --track cpu                  # fixed 70/10/20 split
    python scripts/benchmark_accuracy.py --track cpu --folds 5        # 5-fold CV + fold ensembles
    python scripts/benchmark_accuracy.py --datalist datalists/two_sites.json --track cpu \
        --contenders maht_net_2stage unet landmarker                  # two sites, per-site tables
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from maht_net.bench.accuracy import CONTENDERS, TRACKS, run_accuracy_benchmark

REPO = Path(__file__).resolve().parents[1]
HAMEDAN = REPO.parent / "shared" / "data" / "hamedan-ceph"


def prepare_hamedan(data: Path, out: Path) -> Path:
    """Datalist with truth = mean of the two annotators, nominal 0.127 mm/px, seeded 70/10/20 split."""
    datalist = out / "hamedan.json"
    if not datalist.is_file():
        ann = data / "annotations"
        subprocess.run(
            [sys.executable, "-m", "maht_net.cli", "prepare", "labelme", "--images", str(data / "images"),
             "--annotations", str(ann / "annotator1"), "--annotations", str(ann / "annotator2"),
             "--spacing", "0.127", "--val-fraction", "0.1", "--test-fraction", "0.2", "--seed", "0", "--out", str(datalist)],
            check=True,
        )
    return datalist


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HAMEDAN, help="Hamedan-style folder (images/, annotations/annotator{1,2}/)")
    ap.add_argument("--datalist", type=Path, help="use this datalist (training/validation/test) instead of --data")
    ap.add_argument("--data-root", type=Path, help="folder the datalist's image paths start from (default: its 'data_root', else its folder)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench-accuracy")
    ap.add_argument("--track", choices=sorted(TRACKS), default="cpu")
    ap.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS), help="the first is the paired tests' reference")
    ap.add_argument("--budget-minutes", type=float, help="training budget per contender (default: the track's)")
    ap.add_argument("--folds", type=int, default=0, help="k-fold CV over the development images (0 = fixed split)")
    ap.add_argument("--epochs", type=int, help="train every contender for this many epochs (the budget stays a hard stop) "
                    "instead of fitting epochs to the budget: for ablations compared at equal epochs")
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="keep the contenders already in OUT/TRACK/results.json (same settings and "
                    "test films) and train only the missing ones")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    out = args.out / args.track
    out.mkdir(parents=True, exist_ok=True)
    if args.datalist is None and not (args.data / "images").is_dir():
        print(f"error: {args.data}: no images/ folder (pass --data or --datalist)", file=sys.stderr)
        return 2
    datalist = args.datalist or prepare_hamedan(args.data, out)
    run_accuracy_benchmark(datalist, out, args.track, args.contenders, args.budget_minutes, args.folds, args.seed, not args.no_tta, epochs=args.epochs, base_dir=args.data_root, resume=args.resume)
    print((out / "results.md").read_text())
    print(f"results: {out / 'results.json'}, {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
