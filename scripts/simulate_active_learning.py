#!/usr/bin/env python
"""Simulate active learning: uncertainty-driven vs random selection of images to label.

Both arms start from the same model trained on ``--initial`` randomly chosen labelled images.
Each round, an arm picks ``--k`` images from the unlabeled pool, "reveals" their true
landmarks (the annotator's work, here read from the datalist), fine-tunes its previous model on
everything it has labelled so far through the bundle's ``train.json`` (the same
:func:`maht_net.engine.workflow.train_bundle` the MONAI Label app's training task runs), and is
evaluated on a fixed held-out test set (MRE in mm, SDR at 2 mm):

- ``uncertainty``: the ``k`` unlabeled images with the highest mean landmark uncertainty
  (MC-dropout x ``--mc-samples`` + test-time shifts, seeded; the app's ``maht_uncertainty``
  scoring via :func:`maht_net.inference.active_learning.image_uncertainty`);
- ``random``: ``k`` unlabeled images drawn at random.

Data: synthetic phantoms (default, generated in ``--work``) or a real datalist (``--datalist``:
its ``training`` + ``validation`` sections form the pool, ``test`` the test set).

Example (the run in docs/active_learning.md)::

    python scripts/simulate_active_learning.py --n 48 --test 12 --initial 4 --k 4 --rounds 3 \\
        --initial-epochs 12 --epochs 4 --input-size 128 160 --tiny --mc-samples 2 --out runs/al.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from maht_net.bench.evaluation import predictor_errors  # noqa: E402
from maht_net.engine.workflow import train_bundle  # noqa: E402
from maht_net.inference.active_learning import image_uncertainty  # noqa: E402
from maht_net.inference.predictor import Predictor  # noqa: E402
from maht_net.io.datalist import load_datalist, make_item, write_datalist  # noqa: E402

TINY_NETWORK = {"encoder": "efficientnet_b0", "decoder_channels": 32, "transformer_dim": 64, "transformer_depth": 1, "transformer_heads": 4}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datalist", help="real datalist (pool = training + validation, test = test); default: phantoms")
    p.add_argument("--work", default="runs/active_learning", help="working folder (phantoms, models)")
    p.add_argument("--n", type=int, default=48, help="phantoms to generate (pool + test)")
    p.add_argument("--size", type=int, nargs=2, default=(256, 320), metavar=("W", "H"), help="phantom size")
    p.add_argument("--test", type=int, default=12, help="phantom test images (with --datalist: at most this many of 'test'; 0 = all)")
    p.add_argument("--pool", type=int, default=0, help="limit the unlabeled pool to this many images (0 = all)")
    p.add_argument("--initial", type=int, default=4, help="randomly chosen labelled images to start from")
    p.add_argument("--k", type=int, default=4, help="images labelled per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--initial-epochs", type=int, default=12, help="epochs of the initial training (from scratch)")
    p.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs per round")
    p.add_argument("--lr", type=float, default=5e-4, help="fine-tuning learning rate")
    p.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("W", "H"), help="network input (default: train.json's)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tiny", action="store_true", help="small network (as in the tests): fast on a CPU")
    p.add_argument("--override", default="{}", help="JSON object of further train.json overrides for every training, "
                   'e.g. \'{"use_ema": false, "sigma": 1.5}\'')
    p.add_argument("--mc-samples", type=int, default=4, help="MC-dropout passes for the uncertainty")
    p.add_argument("--no-tta", action="store_true", help="no test-time shifts for the uncertainty")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bundle", default=str(REPO / "bundle"), help="bundle folder (its configs/ are used)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.initial < 1 or args.k < 1 or args.rounds < 1:
        p.error("--initial, --k and --rounds must be at least 1")
    try:
        args.override = json.loads(args.override)
    except json.JSONDecodeError as e:
        p.error(f"--override is not valid JSON ({e})")
    if not isinstance(args.override, dict):
        p.error("--override must be a JSON object")
    return args


def load_data(args) -> tuple[list[dict], list[dict]]:
    work = Path(args.work)
    if args.datalist:
        pool = load_datalist(args.datalist, ["training", "validation"], check_files=True)
        test = load_datalist(args.datalist, "test", check_files=True)
        if args.test:
            test = test[: args.test]
    else:
        from maht_net.datasets.phantom import make_phantom_dataset

        datalist = make_phantom_dataset(work / "phantom", n=args.n, seed=args.seed, size=tuple(args.size))
        items = load_datalist(datalist, ["training", "validation", "test"])
        order = np.random.default_rng(args.seed).permutation(len(items))
        test = [items[i] for i in order[: args.test]]
        pool = [items[i] for i in order[args.test :]]
    if args.pool:
        pool = pool[: args.pool]
    pool = [it for it in pool if "landmarks" in it]
    needed = args.initial + args.k * args.rounds
    if len(pool) < needed:
        raise SystemExit(f"pool has {len(pool)} labelled images; --initial + --k x --rounds needs {needed}")
    if not test:
        raise SystemExit("no test images")
    return pool, test


def write_round_datalist(path: Path, items: list[dict]) -> Path:
    rows = [make_item(it["image"], it["landmarks"], it.get("spacing"), it["id"]) for it in items]
    return write_datalist(path, {"training": rows, "validation": rows}, relative_paths=False)


def evaluate(model: str, test: list[dict]) -> dict[str, float]:
    e, _ = predictor_errors(Predictor.from_checkpoint(model), test)
    e = e[np.isfinite(e)]
    return {"mre_mm": float(e.mean()), "sdr_2mm": float(100.0 * np.mean(e <= 2.0)), "points": int(e.size)}


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    configs = Path(args.bundle) / "configs"
    pool, test = load_data(args)
    print(f"pool {len(pool)} images, test {len(test)} images; initial {args.initial}, +{args.k} per round, {args.rounds} rounds", flush=True)

    base: dict[str, Any] = {"batch_size": args.batch_size, "num_workers": 0, "seed": args.seed}
    if args.input_size:
        base["input_size"] = list(args.input_size)
    if args.tiny:
        base["network_kwargs"] = dict(TINY_NETWORK)
    base.update(args.override)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(pool))
    initial = [pool[i] for i in order[: args.initial]]

    from maht_net.bench.evaluation import mean_shape_baseline

    rows = lambda items: [make_item(it["image"], it["landmarks"], it.get("spacing"), it["id"]) for it in items]  # noqa: E731
    ref = write_datalist(work / "baseline.json", {"training": rows(initial), "test": rows(test)}, relative_paths=False)
    baseline = mean_shape_baseline(ref, "training", "test")["overall"]["mre"]
    print(f"mean-shape baseline (mean of the {len(initial)} initial labels): MRE {baseline:.3f} mm", flush=True)

    t0 = time.time()
    scratch = dict(base, epochs=args.initial_epochs,
                   stage_epochs=[max(1, round(0.3 * args.initial_epochs)), max(1, round(0.1 * args.initial_epochs))])
    first = train_bundle(configs, write_round_datalist(work / "round0" / "datalist.json", initial), work / "round0", overrides=scratch)
    score0 = evaluate(first["model"], test)
    print(f"round 0  both         labelled {len(initial):3d}  MRE {score0['mre_mm']:7.3f} mm  SDR@2mm {score0['sdr_2mm']:5.1f} %"
          f"  ({first['seconds']:.0f} s training)", flush=True)

    arms: dict[str, list[dict]] = {}
    for arm in ("uncertainty", "random"):
        labelled = list(initial)
        model = first["model"]
        arm_rng = np.random.default_rng(args.seed + 1)
        history = [{"round": 0, "labelled": len(labelled), **score0, "selected": [it["id"] for it in initial]}]
        for r in range(1, args.rounds + 1):
            chosen = {it["id"] for it in labelled}
            unlabeled = [it for it in pool if it["id"] not in chosen]
            t_sel = time.time()
            scores = None
            if arm == "uncertainty":
                predictor = Predictor.from_checkpoint(model, mc_samples=args.mc_samples, tta=not args.no_tta)
                scores = {it["id"]: image_uncertainty(predictor, it, seed=args.seed)[1]["score"] for it in unlabeled}
                picked = sorted(unlabeled, key=lambda it: -scores[it["id"]])[: args.k]
            else:
                picked = [unlabeled[i] for i in arm_rng.choice(len(unlabeled), size=args.k, replace=False)]
            t_sel = time.time() - t_sel
            labelled += picked  # the annotator reveals their true landmarks
            root = work / arm / f"round{r}"
            result = train_bundle(configs, write_round_datalist(root / "datalist.json", labelled), root, init_checkpoint=model,
                                  overrides=dict(base, epochs=args.epochs, lr=args.lr))
            model = result["model"]
            score = evaluate(model, test)
            history.append({"round": r, "labelled": len(labelled), **score, "selected": [it["id"] for it in picked],
                            "selection_scores": None if scores is None else {it["id"]: scores[it["id"]] for it in picked},
                            "selection_seconds": round(t_sel, 1), "training_seconds": result["seconds"]})
            print(f"round {r}  {arm:12s} labelled {len(labelled):3d}  MRE {score['mre_mm']:7.3f} mm  SDR@2mm {score['sdr_2mm']:5.1f} %"
                  f"  (selection {t_sel:.0f} s, training {result['seconds']:.0f} s)", flush=True)
        arms[arm] = history

    print("\nMRE (mm) by round:   " + "  ".join(f"r{h['round']}" .rjust(8) for h in arms["random"]))
    for arm, history in arms.items():
        print(f"  {arm:18s} " + "  ".join(f"{h['mre_mm']:8.3f}" for h in history))
    print(f"total {time.time() - t0:.0f} s")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"arguments": vars(args), "pool": len(pool), "test": len(test),
                                   "mean_shape_baseline_mre_mm": baseline, "arms": arms}, indent=2))
        print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
