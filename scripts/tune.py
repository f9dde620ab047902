#!/usr/bin/env python
"""Hyper-parameter search (Optuna, SQLite, resumable) over the bundle's training recipe, scored by
the validation MRE on the development films only: the datalist's test films are never read (see
maht_net.bench.tuning and docs/tuning.md). Needs the 'tune' extra: pip install -c constraints.txt -e '.[tune]'.

    python scripts/tune.py --track cpu --trials 30 --folds 3              # Hamedan, the benchmark's split
    python scripts/tune.py --track cpu --trials 40 --folds 3              # later: resumes, runs 10 more trials
    python scripts/tune.py --datalist my.json --study-name mine --trials 20 --budget-minutes 30 --folds 0
    python scripts/tune.py --track cpu --trials 30 --epochs 40           # equal epochs, not equal minutes

Outputs in --out: study.db (every study), and per study best.json, best_args.json (the best
recipe as train.json overrides, for `python -m monai.bundle run training ... --args_file`),
trials.md, development.json and folds/.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from benchmark_accuracy import HAMEDAN, prepare_hamedan  # same films, same split as the accuracy benchmark

from maht_net.bench.accuracy import TRACKS
from maht_net.bench.tuning import run_study
from maht_net.datasets.common import fold_count
from maht_net.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HAMEDAN, help="Hamedan-style folder (images/, annotations/annotator{1,2}/)")
    ap.add_argument("--datalist", type=Path, help="use this datalist (training/validation; a test section is ignored) instead of --data")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "tune")
    ap.add_argument("--study-name", help="default: maht_net_<track>; re-run with the same name to resume")
    ap.add_argument("--trials", type=int, default=20, help="finished trials the study should hold (stored ones count)")
    ap.add_argument("--track", choices=sorted(TRACKS), default="cpu", help="input size, batch size and default budget")
    ap.add_argument("--budget-minutes", type=float, help="training budget per trial, shared by its folds (default: the track's)")
    ap.add_argument("--folds", type=fold_count, default=3, help="k-fold CV over the development films (0 = training/validation split)")
    ap.add_argument("--epochs", type=int, help="fixed epochs per fold instead of fitting them to the budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-prune", action="store_true", help="no median pruning after each fold")
    ap.add_argument("--keep-runs", action="store_true", help="keep every trial's models and logs")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.datalist is None and not (args.data / "images").is_dir():
        print(f"error: {args.data}: no images/ folder (pass --data or --datalist)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    datalist = args.datalist or prepare_hamedan(args.data, args.out)
    study_name = args.study_name or f"maht_net_{args.track}"
    try:
        best = run_study(
            datalist, args.out, study_name=study_name, n_trials=args.trials, track=args.track, budget_minutes_per_trial=args.budget_minutes,
            folds=args.folds, seed=args.seed, epochs=args.epochs, prune=not args.no_prune, keep_runs=args.keep_runs, progress=True,
        )
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    study_dir = args.out / study_name
    print((study_dir / "trials.md").read_text())
    print(f"best: trial {best['trial']}, {best['metric']} {best['value']:.3f} ({best['n_complete']} complete trials)")
    print(f"results: {study_dir / 'best.json'}, {study_dir / 'trials.md'}; apply with:")
    print(f"  python -m monai.bundle run training --config_file bundle/configs/train.json "
          f"--meta_file bundle/configs/metadata.json --args_file {study_dir / 'best_args.json'} --datalist {datalist}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
