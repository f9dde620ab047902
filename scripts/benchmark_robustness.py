#!/usr/bin/env python
"""Accuracy under graded corruptions of real films (noise, blur, low resolution, exposure,
inversion, rotation, crops, JPEG): MRE per corruption and severity, and its ratio to the clean
MRE, for one model or two side by side (e.g. before/after an augmentation change).

    python scripts/benchmark_robustness.py --checkpoint runs/bench-accuracy/cpu/runs/fixed/maht_net/models/model.pt \\
        --datalist runs/bench-accuracy/cpu/hamedan.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from maht_net.bench.robustness import CORRUPTIONS, format_markdown, run_robustness_benchmark
from maht_net.inference.predictor import Predictor


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--compare", type=Path, help="a second checkpoint, tabulated beside the first")
    ap.add_argument("--datalist", type=Path, required=True, help="datalist with the test films (mm spacing)")
    ap.add_argument("--section", default="test")
    ap.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), choices=list(CORRUPTIONS))
    ap.add_argument("--severities", nargs="+", type=int, default=[1, 2, 3], choices=[1, 2, 3])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-robustness"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for ckpt in [args.checkpoint] + ([args.compare] if args.compare else []):
        res = run_robustness_benchmark(Predictor.from_checkpoint(ckpt), args.datalist, args.section, args.corruptions, args.severities)
        res["checkpoint"] = str(ckpt)
        results.append(res)
    names = (args.checkpoint.parent.parent.name, args.compare.parent.parent.name if args.compare else "")
    table = format_markdown(results[0], results[1] if len(results) > 1 else None, names)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "results.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
