#!/usr/bin/env python
"""Refinement on vs off: the same two-stage checkpoint with and without its refinement stage, on
the same films (paired), per site and per landmark, and the time each takes per film.

Both runs read every film once (``Predictor.prepare``) and differ only in the refinement stage;
the per-film MREs are compared with a paired Wilcoxon test (:func:`maht_net.bench.metrics.paired_comparison`).
Writes ``<out>/refinement.json`` and prints markdown tables. Example (docs/benchmarks.md)::

    python scripts/benchmark_refinement.py --checkpoint runs/refine/model_2stage.pt \\
        --datalist datalists/two_sites.json --section test --out runs/refine
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from maht_net.bench.evaluation import predictor_errors  # noqa: E402
from maht_net.bench.metrics import paired_comparison, summarize  # noqa: E402
from maht_net.inference.predictor import Predictor  # noqa: E402
from maht_net.io.checkpoint import checkpoint_stages, load_checkpoint_file  # noqa: E402
from maht_net.io.datalist import load_datalist, read_datalist  # noqa: E402


def timed_errors(predictor: Predictor, items: list[dict], prepared: list[dict]) -> tuple[np.ndarray, float]:
    """Errors ``(F, N)`` and seconds per film of the network stages (films already read)."""
    start = time.perf_counter()
    errors, _ = predictor_errors(predictor, items, prepared)
    return errors, (time.perf_counter() - start) / len(items)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True, help="a two-stage checkpoint (maht-net refine)")
    ap.add_argument("--datalist", type=Path, required=True)
    ap.add_argument("--section", default="test")
    ap.add_argument("--data-root", type=Path, help="folder of the datalist's relative paths (default: its 'data_root' from the repository)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the latency figure's)")
    ap.add_argument("--out", type=Path, default=Path("runs/refine"))
    args = ap.parse_args(argv)
    if "refine" not in checkpoint_stages(load_checkpoint_file(args.checkpoint)):
        raise SystemExit(f"{args.checkpoint}: no refinement stage (train one with maht-net refine)")
    torch.set_num_threads(args.threads)
    doc = read_datalist(args.datalist)
    root = args.data_root or (REPO / doc["data_root"] if doc.get("data_root") else None)
    items = load_datalist(args.datalist, args.section, base_dir=root, check_files=True)
    both = Predictor.from_checkpoint(args.checkpoint)
    coarse = Predictor.from_checkpoint(args.checkpoint, refine=False)
    names = both.info["landmark_names"]
    results: dict = {"checkpoint": str(args.checkpoint), "datalist": str(args.datalist), "section": args.section, "sites": {}}
    sites = sorted({it.get("site", "all") for it in items})
    print("| site | films | first stage: MRE mm | SDR 2 mm | with refinement: MRE mm | SDR 2 mm | paired difference mm [95 % CI] | better / worse films | Wilcoxon p | s/film first stage | s/film both |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    per_landmark = {}
    for site in sites:
        part = [it for it in items if it.get("site", "all") == site]
        prepared = both.prepare(part)  # with the films, for the refinement stage; the first stage ignores them
        e_off, t_off = timed_errors(coarse, part, prepared)
        e_on, t_on = timed_errors(both, part, prepared)
        s_off, s_on = (summarize(e, landmark_names=names, n_bootstrap=1000)["overall"] for e in (e_off, e_on))
        paired = paired_comparison(e_on, e_off, ids=[it["id"] for it in part], n_bootstrap=1000)
        results["sites"][site] = {"films": len(part), "first_stage": s_off, "refined": s_on, "paired": paired,
                                  "seconds_per_film": {"first_stage": t_off, "both": t_on},
                                  "per_landmark_mre": {"first_stage": np.nanmean(e_off, 0).tolist(), "refined": np.nanmean(e_on, 0).tolist()}}
        per_landmark[site] = (np.nanmean(e_off, 0), np.nanmean(e_on, 0))
        ci = paired["mean_difference_ci95"]
        print(f"| {site} | {len(part)} | {s_off['mre']:.3f} | {s_off['sdr']['2.0']:.1f} | {s_on['mre']:.3f} | {s_on['sdr']['2.0']:.1f} | "
              f"{paired['mean_difference']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] | {paired['a_better']} / {paired['b_better']} | "
              f"{paired['p_value']:.2g} | {t_off:.3f} | {t_on:.3f} |")
    print("\n| landmark | " + " | ".join(f"{s}: first / refined mm" for s in sites) + " |")
    print("|---|" + "---|" * len(sites))
    for j, name in enumerate(names):
        print(f"| {name} | " + " | ".join(f"{per_landmark[s][0][j]:.2f} / {per_landmark[s][1][j]:.2f}" for s in sites) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "refinement.json").write_text(json.dumps(results, indent=1))
    print(f"\n{args.out / 'refinement.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
