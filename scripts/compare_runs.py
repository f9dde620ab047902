"""Paired comparison of two training recipes over several seeds: per site, per seed, and pooled.

Each run is a ``scripts/pretrained.py --out RUN`` folder (its ``eval/<site>/metrics.json``, as
``maht-net evaluate`` writes them), or an accuracy benchmark's ``results.json``
(``scripts/benchmark_accuracy.py``; its first contender, or the one named after a ``#``:
``results.json#maht_net_2stage``; a film's site is its id's prefix, ``hamedan-009``), so runs of the
same seed and split made on different days pair up. ``--a`` and ``--b`` list the runs of the two recipes in the
same seed order; runs of one seed must score the same films (``pretrained.py --seed`` fixes the
split), so every film's error difference is paired. Pooled rows join the films of every seed
(a film tested under two seeds counts twice); ``mean +- SD`` is over the seeds' MREs.
``--leave-out`` drops films from both sides, e.g. one whose truth is disputed (``maht-net audit``).

    python scripts/compare_runs.py --a runs/xsite/ham-phys-s{0,1,2} --b runs/xsite/ham-base-s{0,1,2} \\
        --names "physical 0.76 mm/px" letterbox --out runs/xsite/compare.json
    python scripts/compare_runs.py --a runs/bench-replan-seed0/cpu/results.json --b runs/bench-cl-seed0/cpu/results.json \
        --leave-out hamedan-123
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maht_net.bench.evaluation import error_matrix
from maht_net.bench.metrics import paired_comparison, summarize


def site_errors(run: Path, site: str) -> tuple[list[str], np.ndarray]:
    """Film ids and ``(films, N)`` errors (mm) of one run on one site's test films."""
    file, _, contender = str(run).partition("#")
    if Path(file).is_file():  # an accuracy benchmark's results.json
        doc = json.loads(Path(file).read_text())
        found = [c for c in doc["contenders"] if c["name"] == contender] if contender else doc["contenders"][:1]
        if not found:
            raise SystemExit(f"error: {file}: no contender {contender!r} (it has {[c['name'] for c in doc['contenders']]})")
        keep = [k for k, i in enumerate(doc["test_ids"]) if i.split("-")[0] == site]
        return [doc["test_ids"][k] for k in keep], np.asarray(found[0]["errors"], dtype=float)[keep]
    path = run / "eval" / site / "metrics.json"
    if not path.is_file():
        raise SystemExit(f"error: {path}: no metrics (did the run finish?)")
    return error_matrix(json.loads(path.read_text()))


def compare(runs_a: list[Path], runs_b: list[Path], sites: list[str], leave_out: Sequence[str] = ()) -> dict:
    """``{site: {"seeds": [...], "pooled": {...}}}`` with each recipe's MRE / SDR 2 mm and the paired test,
    over each site's films but those in ``leave_out`` (ids every one of which some run must have scored)."""
    left, scored = set(leave_out), set()
    result = {}
    for site in sites:
        seeds, pooled_a, pooled_b, pooled_ids = [], [], [], []
        for k, (ra, rb) in enumerate(zip(runs_a, runs_b)):
            ids_a, ea = site_errors(ra, site)
            ids_b, eb = site_errors(rb, site)
            if ids_a != ids_b:
                raise SystemExit(f"error: {ra} and {rb} scored different {site} films: not the same split")
            scored.update(ids_a)
            keep = [j for j, i in enumerate(ids_a) if i not in left]
            ids_a, ea, eb = [ids_a[j] for j in keep], ea[keep], eb[keep]
            sa, sb = summarize(ea, n_bootstrap=0)["overall"], summarize(eb, n_bootstrap=0)["overall"]
            paired = paired_comparison(ea, eb, ids_a)
            seeds.append({"a": str(ra), "b": str(rb), "films": len(ids_a), "mre_a": sa["mre"], "mre_b": sb["mre"],
                          "sdr2_a": sa["sdr"]["2.0"], "sdr2_b": sb["sdr"]["2.0"],
                          **{k2: paired[k2] for k2 in ("mean_difference", "mean_difference_ci95", "a_better", "b_better", "p_value")}})
            pooled_a.append(ea)
            pooled_b.append(eb)
            pooled_ids += [f"{k}:{i}" for i in ids_a]
        ea, eb = np.concatenate(pooled_a), np.concatenate(pooled_b)
        paired = paired_comparison(ea, eb, pooled_ids)
        result[site] = {
            "seeds": seeds,
            "pooled": {
                "films": len(pooled_ids),
                "mre_a_mean_sd": [float(np.mean([s["mre_a"] for s in seeds])), float(np.std([s["mre_a"] for s in seeds], ddof=1)) if len(seeds) > 1 else 0.0],
                "mre_b_mean_sd": [float(np.mean([s["mre_b"] for s in seeds])), float(np.std([s["mre_b"] for s in seeds], ddof=1)) if len(seeds) > 1 else 0.0],
                **{k: paired[k] for k in ("mean_difference", "mean_difference_ci95", "a_better", "b_better", "p_value")},
            },
        }
    if left - scored:
        raise SystemExit(f"error: --leave-out {sorted(left - scored)}: no run scored such a film")
    return result


def table(result: dict, name_a: str, name_b: str) -> str:
    lines = [f"| site | seed | films | {name_a} MRE mm / SDR 2 mm | {name_b} MRE mm / SDR 2 mm | A - B mm [95% CI] | A better / B better | p (Wilcoxon) |",
             "|---|---|---|---|---|---|---|---|"]
    for site, r in result.items():
        for k, s in enumerate(r["seeds"]):
            ci = s["mean_difference_ci95"]
            lines.append(f"| {site} | {k} | {s['films']} | {s['mre_a']:.2f} / {s['sdr2_a']:.1f} % | {s['mre_b']:.2f} / {s['sdr2_b']:.1f} % | "
                         f"{s['mean_difference']:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}] | {s['a_better']} / {s['b_better']} | {s['p_value']:.2g} |")
        p = r["pooled"]
        ci = p["mean_difference_ci95"]
        lines.append(f"| {site} | all ({len(r['seeds'])} seeds) | {p['films']} | {p['mre_a_mean_sd'][0]:.2f} +- {p['mre_a_mean_sd'][1]:.2f} | "
                     f"{p['mre_b_mean_sd'][0]:.2f} +- {p['mre_b_mean_sd'][1]:.2f} | {p['mean_difference']:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}] | "
                     f"{p['a_better']} / {p['b_better']} | {p['p_value']:.2g} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", nargs="+", type=Path, required=True, help="runs of recipe A, one per seed")
    ap.add_argument("--b", nargs="+", type=Path, required=True, help="runs of recipe B, same seeds in the same order")
    ap.add_argument("--sites", nargs="+", default=["hamedan", "isbi2015"])
    ap.add_argument("--names", nargs=2, default=["A", "B"], metavar=("NAME_A", "NAME_B"))
    ap.add_argument("--leave-out", nargs="+", default=[], metavar="FILM", help="film ids scored by neither side (e.g. hamedan-123)")
    ap.add_argument("--out", type=Path, help="write the comparison as JSON")
    args = ap.parse_args(argv)
    if len(args.a) != len(args.b):
        print(f"error: {len(args.a)} runs of A but {len(args.b)} of B: pair them by seed", file=sys.stderr)
        return 2
    result = compare(args.a, args.b, args.sites, args.leave_out)
    if args.out:
        args.out.write_text(json.dumps({"a": args.names[0], "b": args.names[1], "left_out": args.leave_out, "sites": result}, indent=1))
    print(table(result, *args.names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
