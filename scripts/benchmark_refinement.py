#!/usr/bin/env python
"""Refinement on vs off: the same two-stage checkpoint without its refinement stage and with it
(combined with the first stage by ``fuse``, the default, and by ``replace``), on the same films
(paired), per site and per landmark, and the time each takes per film. ``--unknown-spacing``
predicts the films as PNG/JPEG files without a stated spacing are predicted, and adds the stage
with such films taken at its default spacing instead of the scale their landmarks show.
``--shift-mm`` adds the stage with other test-time patch shifts (0: one centred patch per
landmark), each paired against the checkpoint's own setting.

All runs read every film once (``Predictor.prepare``) and differ only in the refinement stage;
the per-film MREs are compared with a paired Wilcoxon test (:func:`maht_net.bench.metrics.paired_comparison`).
Writes ``<out>/refinement.json`` and prints markdown tables. Example (docs/benchmarks.md)::

    python scripts/benchmark_refinement.py --checkpoint runs/refine/model_2stage.pt \\
        --datalist datalists/two_sites.json --section test --out runs/refine
    python scripts/benchmark_refinement.py --checkpoint bundle/models/model.pt \
        --datalist datalists/two_sites.json --section validation --shift-mm 0 1 3 --out runs/refine-shifts
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from maht_net.bench.evaluation import predictor_errors  # noqa: E402
from maht_net.bench.metrics import paired_comparison, summarize  # noqa: E402
from maht_net.inference.predictor import Predictor  # noqa: E402
from maht_net.inference.refine import COMBINE_MODES  # noqa: E402
from maht_net.io.checkpoint import checkpoint_stages, load_checkpoint_file  # noqa: E402
from maht_net.io.datalist import datalist_root, load_datalist  # noqa: E402

DEFAULT_SPACING = "refined (fuse), default spacing"
"""The ``--unknown-spacing`` variant: films of unknown spacing taken at the codec's ``default_spacing``."""

OWN = "refined (fuse)"
"""The checkpoint's refinement stage as it predicts (its combine mode and patch shifts)."""


def shifted(mm: float) -> str:
    """The ``--shift-mm`` variant's name."""
    return f"refined (fuse), shifts {mm:g} mm"


def paired_row(site: str, films: int, label: str, paired: dict) -> str:
    """A table row of a paired difference between two refined variants."""
    ci = paired["mean_difference_ci95"]
    return (f"| {site} | {films} | {label} | | | | {paired['mean_difference']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] | "
            f"{paired['a_better']} / {paired['b_better']} | {paired['p_value']:.2g} | |")


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
    ap.add_argument("--unknown-spacing", action="store_true", help="predict the films as if their files stated no spacing (PNG/JPEG "
                    "without --spacing; scored with the datalist's): adds the stage with its films' scale at the codec's default spacing")  # fmt: skip
    ap.add_argument("--shift-mm", type=float, nargs="+", default=[], metavar="MM", help="add the fused stage with these "
                    "test-time patch shifts (0: one centred patch per landmark), each paired against the checkpoint's own")
    ap.add_argument("--out", type=Path, default=Path("runs/refine"))
    args = ap.parse_args(argv)
    if "refine" not in checkpoint_stages(load_checkpoint_file(args.checkpoint)):
        raise SystemExit(f"{args.checkpoint}: no refinement stage (train one with maht-net refine)")
    torch.set_num_threads(args.threads)
    root = datalist_root(args.datalist, args.data_root)
    items = load_datalist(args.datalist, args.section, base_dir=root, check_files=True)
    coarse = Predictor.from_checkpoint(args.checkpoint, refine=False)
    variants = {"first stage": coarse}
    for combine in COMBINE_MODES:  # the same refinement stage, two ways of combining it with the first
        variants[f"refined ({combine})"] = Predictor.from_checkpoint(args.checkpoint)
        variants[f"refined ({combine})"].refiner.combine = combine
    if args.unknown_spacing:  # the stage as before it estimated a film's scale from its landmarks
        fixed = variants[DEFAULT_SPACING] = Predictor.from_checkpoint(args.checkpoint)
        fixed.refiner.codec = replace(fixed.refiner.codec, landmark_rms_mm=None)
    for mm in args.shift_mm:
        other = variants[shifted(mm)] = Predictor.from_checkpoint(args.checkpoint)
        try:
            other.refiner.shift_mm = other.refiner.codec.check_shift(mm)
        except ValueError as e:
            ap.error(f"--shift-mm: {e}")
    own_shift = variants[OWN].refiner.shift_mm
    names = coarse.info["landmark_names"]
    results: dict = {"checkpoint": str(args.checkpoint), "datalist": str(args.datalist), "section": args.section,
                     "unknown_spacing": args.unknown_spacing, "shift_mm": own_shift, "sites": {}}
    sites = sorted({it.get("site", "all") for it in items})
    print("| site | films | variant | MRE mm [95 % CI] | median | SDR 2 / 4 mm % | vs first stage: paired difference mm [95 % CI] | better / worse films | Wilcoxon p | s/film |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    per_landmark: dict = {}
    for site in sites:
        part = [it for it in items if it.get("site", "all") == site]
        keys = ("image", "id") if args.unknown_spacing else ("image", "id", "spacing")
        prepared = variants[OWN].prepare([{k: it[k] for k in keys if k in it} for it in part])  # with the films, for the refinement stage
        site_result = results["sites"][site] = {"films": len(part)}
        errors = {}
        for name, predictor in variants.items():
            errors[name], seconds = timed_errors(predictor, part, prepared)
            summary = summarize(errors[name], landmark_names=names, n_bootstrap=1000)["overall"]
            row = {"summary": summary, "seconds_per_film": seconds, "per_landmark_mre": np.nanmean(errors[name], 0).tolist()}
            paired_text = "- | - | -"
            if name != "first stage":
                row["paired_vs_first_stage"] = paired = paired_comparison(errors[name], errors["first stage"], ids=[it["id"] for it in part], n_bootstrap=1000)
                ci = paired["mean_difference_ci95"]
                paired_text = (f"{paired['mean_difference']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] | {paired['a_better']} / {paired['b_better']} | "
                               f"{paired['p_value']:.2g}")
            site_result[name] = row
            ci = summary["mre_ci95"]
            print(f"| {site} | {len(part)} | {name} | {summary['mre']:.3f} [{ci[0]:.2f}-{ci[1]:.2f}] | {summary['median']:.2f} | "
                  f"{summary['sdr']['2.0']:.1f} / {summary['sdr']['4.0']:.1f} | {paired_text} | {seconds:.3f} |")
        ids = [it["id"] for it in part]
        if args.unknown_spacing:
            site_result["scale_estimate_vs_default_spacing"] = paired = paired_comparison(errors[OWN], errors[DEFAULT_SPACING], ids=ids, n_bootstrap=1000)
            print(paired_row(site, len(part), "fuse: scale estimated minus default spacing", paired))
        for mm in args.shift_mm:
            site_result[shifted(mm)]["paired_vs_own_shift"] = paired = paired_comparison(errors[OWN], errors[shifted(mm)], ids=ids, n_bootstrap=1000)
            print(paired_row(site, len(part), f"fuse: shifts {own_shift:g} mm (the checkpoint's) minus {mm:g} mm", paired))
        per_landmark[site] = {name: np.nanmean(e, 0) for name, e in errors.items()}
    print("\n| landmark | " + " | ".join(f"{s}: " + " / ".join(variants) + " mm" for s in sites) + " |")
    print("|---|" + "---|" * len(sites))
    for j, name in enumerate(names):
        print(f"| {name} | " + " | ".join(" / ".join(f"{per_landmark[s][v][j]:.2f}" for v in variants) for s in sites) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "refinement.json").write_text(json.dumps(results, indent=1))
    print(f"\n{args.out / 'refinement.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
