#!/usr/bin/env python
"""Simulate active learning: which films should an annotator label next?

Every strategy starts, per seed, from the same model trained from scratch on ``--initial``
randomly chosen labelled films. Each round it picks ``--k`` films from the unlabelled pool,
"reveals" their true landmarks (the annotator's work, here read from the datalist), fine-tunes
its previous model on everything it has labelled so far through the bundle's ``train.json`` (the
same :func:`maht_net.engine.workflow.train_bundle` the MONAI Label app's retraining runs; the
same number of image presentations every round, ``--presentations``), and is measured on a
fixed test set that is never selected (MRE, SDR at 2 mm, per site when the items name one).

Strategies:

- ``random``: ``k`` unlabelled films drawn at random (the app's default);
- ``uncertainty``: the ``k`` films with the highest mean landmark uncertainty (the app's
  ``maht_uncertainty`` score: MC dropout x ``--mc-samples``, test-time shifts with ``--tta``);
- ``kcenter``: greedy k-centre on encoder features (the films farthest from everything labelled;
  :func:`~maht_net.inference.active_learning.k_center_greedy`);
- ``hybrid``: the ``--shortlist`` x ``k`` most uncertain films, then k-centre among them.

``--candidates`` limits the films scored per round to a seeded random subset of the unlabelled
pool (uncertainty is the expensive part: one network pass per MC sample and film).

Data: a real datalist (``--datalist``: ``training`` + ``validation`` form the pool, ``test`` the
test set; relative paths start at ``--data-root``, default its ``data_root`` from the repository)
or synthetic phantoms generated in ``--out`` (the default, for a quick check).

Writes ``<out>/active_learning.json`` (every round of every strategy and seed, after each round)
and ``<out>/active_learning.png`` (MRE vs labelled films, mean and 95 % interval over seeds,
overall and per site), and prints the curves, the films each strategy needs to reach the MRE
random reaches with all its films, and the time per round. Example (docs/active_learning.md)::

    python scripts/simulate_active_learning.py --datalist datalists/two_sites.json --seeds 0 1 2 \\
        --initial 10 --k 10 --rounds 3 --candidates 60 --out runs/active-learning
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
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from maht_net.bench.evaluation import predictor_errors  # noqa: E402
from maht_net.engine.workflow import train_bundle  # noqa: E402
from maht_net.inference.active_learning import encoder_features, k_center_greedy, uncertainty_summary  # noqa: E402
from maht_net.inference.predictor import Predictor  # noqa: E402
from maht_net.io.datalist import datalist_root, load_datalist, make_item, write_datalist  # noqa: E402
from maht_net.progress import progress  # noqa: E402

STRATEGIES = ("random", "uncertainty", "kcenter", "hybrid")
TINY_NETWORK = {"encoder": "efficientnet_b0", "decoder_channels": 32, "transformer_dim": 64, "transformer_depth": 1, "transformer_heads": 4}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datalist", help="real datalist (pool = training + validation, test = test); default: phantoms")
    p.add_argument("--data-root", help="folder the datalist's relative paths start from (default: its 'data_root' from the repository)")
    p.add_argument("--out", default="runs/active-learning", help="results, models and phantoms go here")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="each seed: its own initial films, training seed and random draws")
    p.add_argument("--initial", type=int, default=10, help="randomly chosen labelled films to start from")
    p.add_argument("--k", type=int, default=10, help="films labelled per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--initial-presentations", type=int, default=600, help="image presentations of the initial training (from scratch)")
    p.add_argument("--presentations", type=int, default=240, help="image presentations of each round's fine-tuning")
    p.add_argument("--min-epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4, help="fine-tuning learning rate (the app's default)")
    p.add_argument("--mc-samples", type=int, default=4, help="MC-dropout passes of the uncertainty score (the app's default)")
    p.add_argument("--tta", action="store_true", help="add the test-time shifts to the uncertainty (the app's default; 5x the cost)")
    p.add_argument("--shortlist", type=float, default=3.0, help="hybrid: k-centre among this many x k most uncertain films")
    p.add_argument("--candidates", type=int, default=0, help="score at most this many random unlabelled films per round (0 = all)")
    p.add_argument("--test", type=int, default=0, help="use at most this many test films (0 = all; phantoms: the number held out)")
    p.add_argument("--pool", type=int, default=0, help="limit the pool to this many films (0 = all; phantoms: the number generated)")
    p.add_argument("--size", type=int, nargs=2, default=(256, 320), metavar=("W", "H"), help="phantom size")
    p.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("W", "H"), help="network input (default: train.json's)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tiny", action="store_true", help="small network (as in the tests): fast on a CPU")
    p.add_argument("--bundle", default=str(REPO / "bundle"), help="bundle folder (its configs/ are used)")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="no training: combine active_learning.json files of runs with other "
                   "seeds (same data and settings, e.g. one seed per machine) into --out, with the summary and the PNG")
    args = p.parse_args(argv)
    if args.initial < 1 or args.k < 1 or args.rounds < 1:
        p.error("--initial, --k and --rounds must be at least 1")
    return args


def load_data(args) -> tuple[list[dict], list[dict]]:
    if args.datalist:
        root = datalist_root(args.datalist, args.data_root)
        pool = load_datalist(args.datalist, ["training", "validation"], base_dir=root, check_files=True)
        test = load_datalist(args.datalist, "test", base_dir=root, check_files=True)
    else:
        from maht_net.datasets.phantom import make_phantom_dataset

        n_test, n_pool = args.test or 8, args.pool or args.initial + args.k * args.rounds + 4
        datalist = make_phantom_dataset(Path(args.out) / "phantom", n=n_test + n_pool, seed=0, size=tuple(args.size))
        items = load_datalist(datalist, ["training", "validation", "test"])
        test, pool = items[:n_test], items[n_test:]
    test = test[: args.test] if args.test else test
    pool = [it for it in (pool[: args.pool] if args.pool else pool) if "landmarks" in it]
    needed = args.initial + args.k * args.rounds
    if len(pool) < needed:
        raise SystemExit(f"pool has {len(pool)} labelled films; --initial + --k x --rounds needs {needed}")
    if not test:
        raise SystemExit("no test films")
    return pool, test


class Simulation:
    """One pool, one test set, the films' network inputs prepared once for every model."""

    def __init__(self, args, pool: list[dict], test: list[dict]) -> None:
        self.args, self.pool, self.test = args, pool, test
        self.configs = Path(args.bundle) / "configs"
        self.base: dict[str, Any] = {"batch_size": args.batch_size, "num_workers": 0}
        if args.input_size:
            self.base["input_size"] = list(args.input_size)
        if args.tiny:
            self.base["network_kwargs"] = dict(TINY_NETWORK)
        self.inputs: dict[str, list[dict]] = {}

    def train(self, items: list[dict], root: Path, seed: int, presentations: int, init: str | None) -> dict[str, Any]:
        rows = [make_item(it["image"], it["landmarks"], it.get("spacing"), it["id"]) for it in items]
        datalist = write_datalist(root / "datalist.json", {"training": rows, "validation": rows}, relative_paths=False)
        epochs = max(self.args.min_epochs, math.ceil(presentations / len(items)))
        # validated once, after the last epoch: the model measured is the last one (no held-out films)
        overrides = dict(self.base, epochs=epochs, seed=seed, val_interval=epochs)
        if init is None:
            overrides["stage_epochs"] = [max(1, round(0.3 * epochs)), max(1, round(0.1 * epochs))]
        else:
            overrides["lr"] = self.args.lr
        return train_bundle(self.configs, datalist, root, init_checkpoint=init, overrides=overrides)

    def prepared(self, predictor: Predictor, name: str, items: list[dict]) -> list[dict]:
        if name not in self.inputs:
            self.inputs[name] = predictor.prepare([{k: it[k] for k in ("image", "id", "spacing") if it.get(k) is not None} for it in items])
        return self.inputs[name]

    def measure(self, model: str) -> dict[str, Any]:
        predictor = Predictor.from_checkpoint(model)
        errors, unit = predictor_errors(predictor, self.test, self.prepared(predictor, "test", self.test))
        row = {"unit": unit, "mre": float(np.nanmean(errors)), "sdr_2mm": float(100.0 * np.mean(errors[np.isfinite(errors)] <= 2.0)),
               "per_film": [float(np.nanmean(e)) for e in errors]}
        sites = sorted({it.get("site") for it in self.test} - {None})
        row["sites"] = {s: float(np.nanmean(errors[[it.get("site") == s for it in self.test]])) for s in sites}
        return row

    def select(self, strategy: str, model: str, labelled: list[int], rng: np.random.Generator, seed: int) -> tuple[list[int], dict[int, float]]:
        """Pool indices of the next ``k`` films, and the uncertainty scores computed (if any)."""
        k, unlabelled = self.args.k, [i for i in range(len(self.pool)) if i not in set(labelled)]
        if strategy == "random":
            return [unlabelled[i] for i in rng.choice(len(unlabelled), size=k, replace=False)], {}
        candidates = unlabelled
        if self.args.candidates and len(unlabelled) > self.args.candidates:
            candidates = sorted(rng.choice(unlabelled, size=self.args.candidates, replace=False).tolist())
        predictor = Predictor.from_checkpoint(model, mc_samples=self.args.mc_samples, tta=self.args.tta, calibrate=False)
        inputs = self.prepared(predictor, "pool", self.pool)
        scores: dict[int, float] = {}
        if strategy in ("uncertainty", "hybrid"):
            state = torch.random.get_rng_state()
            torch.manual_seed(seed)  # reproducible MC-dropout masks
            try:
                preds = predictor.predict([inputs[i] for i in candidates], prepared=True)
            finally:
                torch.random.set_rng_state(state)
            scores = {i: uncertainty_summary(p)["score"] for i, p in zip(candidates, preds)}
            ranked = sorted(candidates, key=lambda i: -scores[i])
            if strategy == "uncertainty":
                return ranked[:k], scores
            candidates = ranked[: max(k, round(self.args.shortlist * k))]
        rows = sorted(set(labelled) | set(candidates))
        images = torch.stack([torch.as_tensor(inputs[i]["image"]).as_subclass(torch.Tensor) for i in rows])
        features = torch.cat([encoder_features(predictor.network, batch) for batch in images.split(16)]).numpy()
        local = {i: j for j, i in enumerate(rows)}
        chosen = k_center_greedy(features, [local[i] for i in labelled], k, candidates=[local[i] for i in candidates])
        return [rows[j] for j in chosen], scores


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Per strategy and labelled count: mean and 95 % t-interval over seeds (overall and per site),
    mean seconds per round; and the films each strategy needs to reach random's final MRE."""
    from scipy import stats

    out: dict[str, Any] = {"curves": {}}
    for strategy, runs in results["runs"].items():
        by_count: dict[int, list[dict]] = {}
        for run in runs:
            for r in run["rounds"]:
                by_count.setdefault(r["labelled"], []).append(r)
        curve = []
        for n in sorted(by_count):
            rows = by_count[n]
            entry = {"labelled": n, "seeds": len(rows)}
            for key, values in [("mre", [r["mre"] for r in rows])] + [
                (f"mre_{s}", [r["sites"][s] for r in rows]) for s in sorted(rows[0]["sites"])
            ]:
                m = float(np.mean(values))
                half = float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
                entry[key], entry[f"{key}_ci95"] = m, [m - half, m + half]
            entry["sdr_2mm"] = float(np.mean([r["sdr_2mm"] for r in rows]))
            entry["training_seconds"] = float(np.mean([r.get("training_seconds", 0.0) for r in rows]))
            entry["selection_seconds"] = float(np.mean([r.get("selection_seconds", 0.0) for r in rows]))
            curve.append(entry)
        out["curves"][strategy] = curve
    if "random" in out["curves"]:
        target = out["curves"]["random"][-1]["mre"]
        out["target_mre"] = target
        out["films_to_target"] = {s: films_to_reach(c, target) for s, c in out["curves"].items()}
    return out


def films_to_reach(curve: list[dict], target: float) -> float | None:
    """Labelled films at which the mean curve first reaches ``target`` (linear between rounds)."""
    for a, b in zip(curve, curve[1:]):
        if a["mre"] <= target:
            return float(a["labelled"])
        if b["mre"] <= target:
            return float(a["labelled"] + (a["mre"] - target) / (a["mre"] - b["mre"]) * (b["labelled"] - a["labelled"]))
    return float(curve[-1]["labelled"]) if curve[-1]["mre"] <= target else None


def plot(summary: dict[str, Any], results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = summary["curves"]
    sites = sorted(k[4:] for k in next(iter(curves.values()))[0] if k.startswith("mre_") and not k.endswith("ci95"))
    panels = [("mre", f"all {results['test_films']} test films")] + [(f"mre_{s}", f"{s} test films") for s in sites]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for strategy, curve in curves.items():
            n = [c["labelled"] for c in curve]
            ax.plot(n, [c[key] for c in curve], marker="o", label=strategy)
            ax.fill_between(n, [c[f"{key}_ci95"][0] for c in curve], [c[f"{key}_ci95"][1] for c in curve], alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("labelled films")
        ax.set_ylabel(f"MRE ({results['unit']}), mean and 95 % CI over {len(results['seeds'])} seeds")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge(paths: list[str]) -> dict[str, Any]:
    """One result from runs of the same simulation with different seeds (a seed in two files: the first wins)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    first = parts[0]
    for p, part in zip(paths[1:], parts[1:]):
        if part["test_ids"] != first["test_ids"] or part["pool_films"] != first["pool_films"]:
            raise SystemExit(f"{p}: another pool or test set than {paths[0]}")
    merged = {k: v for k, v in first.items() if k not in ("runs", "summary", "seeds", "total_seconds")}
    merged["merged_from"] = [str(p) for p in paths]
    merged["runs"] = {}
    for part in parts:
        for strategy, runs in part["runs"].items():
            have = {r["seed"] for r in merged["runs"].get(strategy, [])}
            merged["runs"].setdefault(strategy, []).extend(r for r in runs if r["seed"] not in have)
    for runs in merged["runs"].values():
        runs.sort(key=lambda r: r["seed"])
    seeds = [{r["seed"] for r in runs} for runs in merged["runs"].values()]
    merged["seeds"] = sorted(set.intersection(*seeds))
    merged["runs"] = {s: [r for r in runs if r["seed"] in merged["seeds"]] for s, runs in merged["runs"].items()}  # strategies compared on the same seeds
    merged["total_seconds"] = sum(part.get("total_seconds", 0.0) for part in parts)
    return merged


def report(results: dict[str, Any], out: Path) -> None:
    """Summary, JSON, PNG and the printed tables."""
    results["summary"] = summary = summarize(results)
    (out / "active_learning.json").write_text(json.dumps(results, indent=1))
    plot(summary, results, out / "active_learning.png")
    unit = results["unit"]
    counts = [c["labelled"] for c in next(iter(summary["curves"].values()))]
    print(f"\nMRE ({unit}) on {results['test_films']} test films, mean [95 % CI] over seeds {results['seeds']}")
    print("strategy     " + "".join(f"{n:>22d}" for n in counts))
    for strategy, curve in summary["curves"].items():
        print(f"{strategy:12s} " + "".join(f"{c['mre']:>8.2f} [{c['mre_ci95'][0]:.2f}-{c['mre_ci95'][1]:.2f}]" for c in curve))
    if "films_to_target" in summary:
        print(f"films to reach {summary['target_mre']:.2f} {unit} (random's MRE with {counts[-1]} films): "
              + ", ".join(f"{s} {'not reached' if v is None else f'{v:.0f}'}" for s, v in summary["films_to_target"].items()))
    print("seconds per round (selection + fine-tuning), mean: "
          + ", ".join(f"{s} {np.mean([c['selection_seconds'] for c in cv[1:]]):.0f} + {np.mean([c['training_seconds'] for c in cv[1:]]):.0f}"
                      for s, cv in summary["curves"].items()))
    print(f"total {results['total_seconds'] / 60:.1f} min; {out / 'active_learning.json'}, {out / 'active_learning.png'}")


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        report(merge(args.merge), out)
        return 0
    pool, test = load_data(args)
    sim = Simulation(args, pool, test)
    print(f"pool {len(pool)} films, test {len(test)} films; initial {args.initial}, +{args.k} per round, {args.rounds} rounds, "
          f"seeds {args.seeds}, strategies {args.strategies}", flush=True)
    results: dict[str, Any] = {"arguments": vars(args), "pool_films": len(pool), "test_films": len(test),
                               "test_ids": [it["id"] for it in test], "seeds": args.seeds, "runs": {}}
    start = time.time()
    jobs = progress([(seed, s) for seed in args.seeds for s in args.strategies], desc="strategy x seed", unit="run")
    first: dict[int, tuple[list[int], dict[str, Any]]] = {}
    for seed, strategy in jobs:
        if seed not in first:  # the initial model, shared by every strategy of this seed
            initial = np.random.default_rng(seed).permutation(len(pool))[: args.initial].tolist()
            run = sim.train([pool[i] for i in initial], out / f"seed{seed}" / "round0", seed, args.initial_presentations, None)
            row = {"round": 0, "labelled": len(initial), "model": run["model"], "training_seconds": run["seconds"], **sim.measure(run["model"])}
            first[seed] = initial, row
            print(f"seed {seed} round 0 ({len(initial)} films): MRE {row['mre']:.3f} {row['unit']} ({run['seconds']:.0f} s training)", flush=True)
        labelled, row0 = list(first[seed][0]), first[seed][1]
        rounds, model = [dict(row0, selected=[pool[i]["id"] for i in labelled])], row0["model"]
        rng = np.random.default_rng([seed, STRATEGIES.index(strategy)])
        for r in range(1, args.rounds + 1):
            t0 = time.time()
            picked, scores = sim.select(strategy, model, labelled, rng, seed * 1000 + r)
            selection = time.time() - t0
            labelled += picked  # the annotator reveals their true landmarks
            run = sim.train([pool[i] for i in labelled], out / f"seed{seed}" / strategy / f"round{r}", seed, args.presentations, model)
            model = run["model"]
            row = {"round": r, "labelled": len(labelled), "model": model, **sim.measure(model), "selected": [pool[i]["id"] for i in picked],
                   "selection_scores": [scores[i] for i in picked] if scores else None,
                   "selection_seconds": round(selection, 1), "training_seconds": run["seconds"]}
            rounds.append(row)
            sites = "  ".join(f"{s} {v:.3f}" for s, v in row["sites"].items())
            print(f"seed {seed} {strategy:11s} round {r} ({len(labelled)} films): MRE {row['mre']:.3f} {row['unit']} {sites}"
                  f"  (selection {selection:.0f} s, training {run['seconds']:.0f} s)", flush=True)
        results.setdefault("runs", {}).setdefault(strategy, []).append({"seed": seed, "rounds": rounds})
        results["unit"] = row0["unit"]
        results["summary"] = summarize(results)
        (out / "active_learning.json").write_text(json.dumps(results, indent=1))
    results["total_seconds"] = round(time.time() - start, 1)
    report(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
