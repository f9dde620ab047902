#!/usr/bin/env python
"""Site adaptation: how many films must a new clinic label before the model is good on its machine?

A model trained on one site only (``--checkpoint``, e.g. the Hamedan-only model of
``make pretrained``'s cross-site row) is fine-tuned on 0, 5, 10, 20, 40 ... labelled films of the
other site (``--site`` items of the ``training`` section of ``--datalist``) and measured on that
site's ``test`` films, which are never selected. Films are chosen

- ``random``: a seeded random order (each seed its own);
- ``uncertainty``: the films the starting model is least sure about first (the MONAI Label app's
  ``maht_uncertainty`` score: MC dropout + test-time shifts, seeded), i.e. what the app's
  default strategy would serve a clinic that starts from the same model.

The sets are nested (the first 5 films are part of the first 10 ...), and every count is
fine-tuned from the starting model through the bundle's ``train.json`` (the same
:func:`maht_net.engine.workflow.train_bundle` the app's training runs) for the same number of
image presentations (``--presentations``; epochs = presentations / films, at least
``--min-epochs``), so a larger count is not simply a longer training. ``--seeds`` repeats every
fine-tuning with another training seed (and another random order).

Writes ``<out>/site_adaptation.json`` (every run, per film errors) and ``<out>/site_adaptation.png``
(MRE vs labelled films, mean and range over seeds), and prints the table. Example (the run in
docs/active_learning.md)::

    python scripts/site_adaptation.py --checkpoint runs/hamedan-only/bundle/models/model.pt \\
        --datalist datalists/two_sites.json --site isbi2015 --counts 0 5 10 20 40 --seeds 0 1 2 \\
        --out runs/site-adaptation
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from maht_net.bench.evaluation import predictor_errors  # noqa: E402
from maht_net.bench.metrics import summarize  # noqa: E402
from maht_net.engine.workflow import train_bundle  # noqa: E402
from maht_net.inference.active_learning import image_uncertainty  # noqa: E402
from maht_net.inference.predictor import Predictor  # noqa: E402
from maht_net.io.datalist import datalist_root, load_datalist, make_item, write_datalist  # noqa: E402
from maht_net.progress import progress  # noqa: E402

STRATEGIES = ("random", "uncertainty")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the model trained on the other site (bundle checkpoint)")
    p.add_argument("--datalist", required=True, help="datalist with 'training' (the pool) and 'test' items carrying 'site'")
    p.add_argument("--site", required=True, help="the new site: pool and test are its items only")
    p.add_argument("--data-root", help="folder the datalist's relative paths start from (default: its 'data_root' from the repository, else its folder)")
    p.add_argument("--counts", type=int, nargs="+", default=[0, 5, 10, 20, 40])
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--presentations", type=int, default=160, help="image presentations per fine-tuning (epochs x films)")
    p.add_argument("--min-epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4, help="fine-tuning learning rate (the app's default)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--mc-samples", type=int, default=4, help="MC-dropout passes of the uncertainty score (the app's default)")
    p.add_argument("--test", type=int, default=0, help="use at most this many test films (0 = all)")
    p.add_argument("--pool", type=int, default=0, help="use at most this many pool films (0 = all)")
    p.add_argument("--bundle", default=str(REPO / "bundle"), help="bundle folder (its configs/ are used)")
    p.add_argument("--out", default="runs/site-adaptation")
    args = p.parse_args(argv)
    if any(c < 0 for c in args.counts):
        p.error("--counts must be 0 or more")
    return args


def load_site(args) -> tuple[list[dict], list[dict]]:
    root = datalist_root(args.datalist, args.data_root)
    pool = [it for it in load_datalist(args.datalist, "training", base_dir=root, check_files=True) if it.get("site") == args.site]
    test = [it for it in load_datalist(args.datalist, "test", base_dir=root, check_files=True) if it.get("site") == args.site]
    if args.test:
        test = test[: args.test]
    if args.pool:
        pool = pool[: args.pool]
    if not pool or not test:
        raise SystemExit(f"{args.datalist}: no 'training' or no 'test' items with site {args.site!r}")
    if max(args.counts) > len(pool):
        raise SystemExit(f"--counts up to {max(args.counts)} but site {args.site!r} has {len(pool)} training films")
    return pool, test


def uncertainty_order(checkpoint: str, pool: list[dict], mc_samples: int) -> tuple[list[dict], dict[str, float]]:
    predictor = Predictor.from_checkpoint(checkpoint, mc_samples=mc_samples, tta=True)
    scores = {}
    for it in progress(pool, desc="uncertainty of the pool", unit="film"):
        scores[it["id"]] = image_uncertainty(predictor, {k: it[k] for k in ("image", "id", "spacing")}, seed=0)[1]["score"]
    return sorted(pool, key=lambda it: -scores[it["id"]]), scores


def fine_tune(args, items: list[dict], seed: int, root: Path) -> dict[str, Any]:
    rows = [make_item(it["image"], it["landmarks"], it["spacing"], it["id"]) for it in items]
    datalist = write_datalist(root / "datalist.json", {"training": rows, "validation": rows}, relative_paths=False)
    epochs = max(args.min_epochs, math.ceil(args.presentations / len(items)))
    # validated once, after the last epoch: the model measured is the last one (the pool has no held-out films)
    overrides = {"epochs": epochs, "lr": args.lr, "batch_size": args.batch_size, "num_workers": 0, "seed": seed, "val_interval": epochs}
    result = train_bundle(Path(args.bundle) / "configs", datalist, root, init_checkpoint=args.checkpoint, overrides=overrides)
    return {**result, "epochs": epochs}


def measure(model: str, test: list[dict]) -> dict[str, Any]:
    errors, unit = predictor_errors(Predictor.from_checkpoint(model), test)
    overall = summarize(errors, n_bootstrap=1000, unit=unit)["overall"]
    return {"unit": unit, "mre": overall["mre"], "mre_ci95": overall["mre_ci95"], "sdr_2mm": overall["sdr"]["2.0"],
            "per_film": {it["id"]: float(np.nanmean(e)) for it, e in zip(test, errors)}}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for strategy, runs in results["curves"].items():
        counts = sorted({r["films"] for r in runs})
        mre = [[r["mre"] for r in runs if r["films"] == c] for c in counts]
        mean = [float(np.mean(m)) for m in mre]
        ax.plot(counts, mean, marker="o", label=f"{strategy} (mean of {len(results['seeds'])} seeds)")
        ax.fill_between(counts, [min(m) for m in mre], [max(m) for m in mre], alpha=0.2)
    ax.set_xlabel(f"labelled films of the new site ({results['site']})")
    ax.set_ylabel(f"MRE on {results['test_films']} held-out films (mm)")
    ax.set_title(f"Site adaptation from {Path(results['checkpoint']).parent.parent.parent.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pool, test = load_site(args)
    print(f"site {args.site}: pool {len(pool)} films, test {len(test)} films; counts {args.counts}, seeds {args.seeds}", flush=True)
    start = time.time()
    base = measure(args.checkpoint, test)
    print(f"  0 films (the starting model): MRE {base['mre']:.3f} {base['unit']}, SDR 2 mm {base['sdr_2mm']:.1f} %", flush=True)
    orders: dict[str, Any] = {}
    if "uncertainty" in args.strategies:
        t0 = time.time()
        orders["uncertainty"], scores = uncertainty_order(args.checkpoint, pool, args.mc_samples)
        print(f"  uncertainty of {len(pool)} films: {time.time() - t0:.0f} s", flush=True)
    results: dict[str, Any] = {"checkpoint": str(args.checkpoint), "site": args.site, "pool_films": len(pool),
                               "test_films": len(test), "seeds": args.seeds, "arguments": vars(args), "curves": {}}
    # seed by seed, so that a run cut short still compares the strategies on the same seeds
    jobs = [(s, seed, n) for seed in args.seeds for s in args.strategies for n in sorted(args.counts)]
    for strategy, seed, n in progress(jobs, desc="fine-tunings", unit="run"):
        order = orders.get(strategy) or [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
        chosen = order[:n]
        row: dict[str, Any] = {"films": n, "seed": seed, "selected": [it["id"] for it in chosen]}
        if n == 0:
            row.update(base, train_seconds=0.0)
        else:
            run = fine_tune(args, chosen, seed, out / "runs" / f"{strategy}-seed{seed}-n{n}")
            row.update(measure(run["model"], test), train_seconds=run["seconds"], epochs=run["epochs"])
        results["curves"].setdefault(strategy, []).append(row)
        print(f"  {strategy:11s} seed {seed} {n:3d} films: MRE {row['mre']:.3f} {row['unit']}, SDR 2 mm {row['sdr_2mm']:.1f} %"
              f" ({row['train_seconds']:.0f} s training)", flush=True)
        (out / "site_adaptation.json").write_text(json.dumps(results, indent=1))
    results["total_seconds"] = round(time.time() - start, 1)
    (out / "site_adaptation.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "site_adaptation.png")
    print(f"\nMRE ({base['unit']}) on {len(test)} held-out {args.site} films, mean [min-max] over seeds")
    print("films      " + "".join(f"{s:>24s}" for s in args.strategies))
    for n in sorted(args.counts):
        cells = []
        for s in args.strategies:
            m = [r["mre"] for r in results["curves"][s] if r["films"] == n]
            cells.append(f"{np.mean(m):.2f} [{min(m):.2f}-{max(m):.2f}]")
        print(f"{n:5d}      " + "".join(f"{c:>24s}" for c in cells))
    print(f"total {results['total_seconds'] / 60:.1f} min; {out / 'site_adaptation.json'}, {out / 'site_adaptation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
