"""Train, evaluate and (with ``--ship``) install the model that ships with the bundle.

    make pretrained                      # the cross-validation below, then the shipped model:
    python scripts/pretrained.py --out runs/pretrained-all --all-films --epochs 27 --refine-minutes 90 \
        --refine-iterations 2000 --drop-disputed --figures runs/cv2/summary.json --ship   # the next shipped model
    python scripts/pretrained.py --out runs/pretrained --epochs 40          # one held-out split's figures
    python scripts/pretrained.py --out runs/hamedan-only --train-sites hamedan   # a cross-site row
    python scripts/pretrained.py --out runs/cv2/fold$K --fold $K --epochs 40 \
        --refine-minutes 90 --refine-iterations 2000 --drop-disputed             # K = 0 ... 4, then:
    python scripts/pretrained.py --out runs/cv2 --pool-folds runs/cv2/fold{0,1,2,3,4}   # 5-fold CV figures
    python scripts/pretrained.py --restamp runs/cv2/summary.json  # ... as the shipped model's eval_metrics
    python scripts/pretrained.py --out runs/cv-isbi-only/fold$K --fold $K --train-sites isbi2015 --refine-minutes 0   # cross-site, CV
    python scripts/pretrained.py --out runs/cv-coarse/fold$K --fold $K --skip-training --from runs/cv/fold$K --no-refine  # first stage

Steps, each through the project's own commands (nothing here re-implements them):

1. datalists from the shared development films of both sites: Hamedan (LabelMe, truth = mean of
   the two annotators, nominal 0.127 mm/px, the benchmarks' seeded 70/10/20 split) and ISBI 2015
   (the 150 training films, truth = mean of the two doctors, 0.1 mm/px, a seeded 100/20/30 split);
   merged into one two-site datalist (every item keeps its own spacing and names its ``site``);
   ``--all-films`` puts every film in the training section (``datalists/two_sites_all.json``; its
   validation films, trained on too, only monitor the training);
2. bundle training on the ``training`` section, best checkpoint chosen and the uncertainty
   calibrated on the ``validation`` section (never trained on but with ``--all-films``), then the
   refinement stage trained on the ``training`` section (``python -m monai.bundle run training``:
   both stages); ``--all-films``: the uncertainty calibration of ``--calibration-from`` (the
   shipped model of the same recipe, fitted on these validation films held out of it) replaces
   the one fitted on films it trained on;
3. inference and evaluation on each site's ``test`` films (``--all-films``: its ``validation``
   films, a sanity check only: it trained on them) with ``maht-net infer`` /
   ``maht-net evaluate``: ``<out>/summary.json`` holds the per-site figures;
4. ``--ship``: an inference-only copy (both stages' weights in float16, recipe, calibration,
   provenance: the datalist's sha256, the git commit, the command) replaces
   ``bundle/models/model.pt``, and ``bundle/large_files.yml`` gets its sha256 and
   ``metadata.json`` its per-site ``eval_metrics``.

The shipped model trains on every development film, so its own figures would not be honest: its
``eval_metrics`` come from ``--figures``, the held-out test films of a run of the recipe without
them, or a cross-validation (``--pool-folds``: every development film scored by the one fold
model that never trained on it); both are models with fewer training
films than the shipped one (a conservative figure), and ``eval_metrics`` say which it was.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from maht_net.datasets.common import cross_validation_folds
from maht_net.engine.bundle import large_files_yml
from maht_net.inference.calibration import carry_calibration
from maht_net.inference.refine import load_refiner
from maht_net.io.checkpoint import REFINE_SHIFT_KEY, REFINE_STAGE, file_sha256, refine_stage
from maht_net.io.datalist import datalist_root
from maht_net.io.predictions import PREDICTION_SUFFIX

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SITES = {
    "hamedan": {"spacing": 0.127},
    "isbi2015": {"spacing": 0.1},
}
ISBI_SPLIT = (100, 20, 30)  # training, validation, test films of the 150
CV_FOLDS = 5  # --fold: each site's films in five test parts (20 Hamedan, 30 ISBI films each)
UNDISPUTED = "_undisputed"  # the name suffix of a --drop-disputed datalist
CV_VALIDATION = {"hamedan": 10, "isbi2015": ISBI_SPLIT[1]}  # validation films of a fold, as in the standard split
FOLD_IN_NAME = re.compile(r"_fold(\d+)")  # a fold run's datalist: two_sites_fold<K>[_trained_on_<sites>].json
TRAINED_ON = "_trained_on_"  # in the datalist name of a run restricted to some sites (restrict())


def _run(*argv: str) -> None:
    print("$", " ".join(shlex.quote(a) for a in argv), flush=True)
    subprocess.run(argv, check=True, cwd=REPO)


def _maht(*argv: str) -> None:
    _run(sys.executable, "-m", "maht_net.cli", *argv)


def _relative(items: list[dict], datalist: Path, root: Path, site: str) -> list[dict]:
    """Items with image paths relative to the data root and ids prefixed by the site (the two
    sites number their films alike)."""
    return [
        dict(it, image=(datalist.parent / it["image"]).resolve().relative_to(root).as_posix(), id=f"{site}-{it['id']}", site=site)
        for it in items
    ]


def prepare(data_root: Path, out: Path, seed: int, fold: int | None = None, drop_disputed: bool = False) -> Path:
    """Both sites' datalists and their merge -> the two-site datalist (image paths relative to
    ``data_root``, so the file and its sha256 do not depend on where the data lie): the standard
    split ``datalists/two_sites.json`` for seed 0, ``<out>/data/two_sites_seed<N>.json`` for
    another seed (another split; the committed datalist is left alone).

    ``fold`` K (0 ... ``CV_FOLDS`` - 1): ``<out>/data/two_sites_fold<K>.json`` instead, whose test
    films are the K-th of ``CV_FOLDS`` seeded parts of each site (every film is in one fold's test
    section: cross-validation); the rest split as the standard split does (Hamedan 10, ISBI 20
    validation films, seeded by ``seed`` and K), so a fold trains on as many films as the
    standard split.

    ``drop_disputed``: after the split (so the other films keep their sections), the Hamedan
    films whose two annotators disagree far more than on the others (the audit's ``disputed``,
    :func:`maht_net.datasets.labelme.disputed_films`) leave every section; the datalist's name
    ends in ``_undisputed`` and it names them (``disputed_left_out``; the standard split is left alone)."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    left_out: dict[str, dict[str, list[str]]] = {}
    hamedan, isbi = data_root / "hamedan-ceph", data_root / "isbi2015-ceph"
    ham = data / "hamedan.json"
    _maht(
        "prepare", "labelme", "--images", str(hamedan / "images"),
        "--annotations", str(hamedan / "annotations" / "annotator1"),
        "--annotations", str(hamedan / "annotations" / "annotator2"),
        "--spacing", str(SITES["hamedan"]["spacing"]),
        *(("--val-fraction", "0.1", "--test-fraction", "0.2") if fold is None else ()),
        "--seed", str(seed), "--out", str(ham),
    )  # fmt: skip
    _maht("prepare", "isbi2015", "--root", str(isbi), "--out-dir", str(data / "isbi2015"), "--folds", "0", "--truth", "mean")
    root = data_root.resolve()
    merged: dict[str, list] = {"training": [], "validation": [], "test": []}
    doc = json.loads(ham.read_text())
    isbi_dl = data / "isbi2015" / "isbi2015_train.json"
    isbi_items = _relative(json.loads(isbi_dl.read_text())["training"], isbi_dl, root, "isbi2015")
    if fold is None:
        for section in merged:
            merged[section] += _relative(doc.get(section, []), ham, root, "hamedan")
        order = np.random.default_rng(seed).permutation(len(isbi_items))
        n_train, n_val, _ = ISBI_SPLIT
        parts = {"training": order[:n_train], "validation": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
        for section, idx in parts.items():
            merged[section] += [isbi_items[i] for i in sorted(idx)]
        two = REPO / "datalists" / "two_sites.json" if seed == 0 else data / f"two_sites_seed{seed}.json"
        description = (
            "Hamedan (LabelMe, mean of 2 annotators, nominal 0.127 mm/px, 70/10/20) + ISBI 2015 training "
            f"films (mean of the 2 doctors, 0.1 mm/px, {'/'.join(map(str, ISBI_SPLIT))}), seed {seed}"
        )
    else:
        ham_items = _relative(doc["training"], ham, root, "hamedan")
        for site, items in (("hamedan", ham_items), ("isbi2015", isbi_items)):
            for section, part in fold_split(items, fold, CV_VALIDATION[site], seed).items():
                merged[section] += part
        two = data / f"two_sites_fold{fold}.json"
        description = (
            "Hamedan (LabelMe, mean of 2 annotators, nominal 0.127 mm/px) + ISBI 2015 training films (mean of the 2 "
            f"doctors, 0.1 mm/px), cross-validation fold {fold} of {CV_FOLDS}: each site's part {fold} is the test "
            f"section, {CV_VALIDATION['hamedan']} Hamedan / {CV_VALIDATION['isbi2015']} ISBI validation films, seed {seed}"
        )
    if drop_disputed:
        audit = json.loads(ham.with_name(ham.name + ".audit.json").read_text())
        gone = {f"hamedan-{i}" for i in audit["disagreement"]["disputed"]}
        merged = {section: [it for it in items if it["id"] not in gone] for section, items in merged.items()}
        two = data / f"{two.stem}{UNDISPUTED}.json"
        left_out["disputed_left_out"] = {"hamedan": sorted(gone)}  # a mapping: a list would read as a section
        description += f"; left out, their annotators disputed (audit of hamedan.json): {', '.join(sorted(gone)) or 'none'}"
    two.parent.mkdir(exist_ok=True)
    two.write_text(
        json.dumps(
            {
                "landmark_set": "isbi2015",
                "num_landmarks": 19,
                "description": f"{description}; image paths relative to the data root holding hamedan-ceph/ and "
                "isbi2015-ceph/ (../shared/data)",
                "data_root": "../shared/data" if two.is_relative_to(REPO / "datalists") else str(root),
                "sites": sorted(SITES),
                **left_out,
                **merged,
            },
            indent=1,
        )
        + "\n"
    )
    counts = {s: {site: sum(it["site"] == site for it in items) for site in SITES} for s, items in merged.items()}
    print(f"wrote {two}: {counts}", flush=True)
    return two


def fold_split(items: list[dict], fold: int, n_val: int, seed: int) -> dict[str, list[dict]]:
    """One site's films -> ``training`` / ``validation`` / ``test`` of cross-validation fold
    ``fold``: test is the fold's part of :func:`cross_validation_folds` (``CV_FOLDS`` parts, seeded
    by ``seed``), validation ``n_val`` films of the rest (seeded by ``seed`` and ``fold``)."""
    by_id = {it["id"]: it for it in items}
    rest, test = cross_validation_folds(sorted(by_id), CV_FOLDS, seed)[fold]
    order = np.random.default_rng([seed, fold]).permutation(len(rest))
    val = {rest[i] for i in order[:n_val]}
    return {
        "training": [by_id[i] for i in rest if i not in val],
        "validation": [by_id[i] for i in rest if i in val],
        "test": [by_id[i] for i in test],
    }


def all_films(datalist: Path) -> Path:
    """The two-site datalist with every film in training (``datalists/two_sites_all.json``): the
    shipped model's films. The validation section keeps its films, trained on too: they only
    monitor the training (a fixed number of epochs; the checkpoint chosen on them is about the
    last) and no longer calibrate it (:func:`carry_calibration`). The standard split's films,
    disputed ones left out or not (``two_sites_undisputed.json``), become the committed
    ``datalists/two_sites_all.json``; another seed's stay in its run folder."""
    doc = json.loads(datalist.read_text())
    doc["training"] += doc.pop("test") + doc["validation"]
    doc["drawn_from"] = {"validation": "training"}  # on purpose: the audit counts them once
    doc["description"] += "; every film in training (the shipped model): the validation films are trained on too and only monitor it"
    if datalist.stem in ("two_sites", f"two_sites{UNDISPUTED}"):  # seed 0: the shipped model's films, committed
        path = REPO / "datalists" / "two_sites_all.json"
        doc["data_root"] = "../shared/data"
    else:
        path = datalist.with_name("two_sites_all.json")
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}: {len(doc['training'])} training films ({len(doc['validation'])} of them also monitor it)", flush=True)
    return path


def calibration_donor(source: Path, validation_ids: set[str]) -> str:
    """Check that ``source`` (a shipped checkpoint) can lend the all-films model its uncertainty
    calibration and say why: its calibration was fitted on ``validation_ids``, films held out of
    it (its datalist, the committed ``datalists/two_sites_all.json`` before this run rewrites it,
    has them in validation only), or was itself carried from such a fit."""
    import torch

    info = torch.load(source, map_location="cpu", weights_only=True)["info"]
    record, prov = info.get("uncertainty_calibration") or {}, info.get("provenance", {})
    if record.get("carried_from"):
        return record["carried_from"]["why"]
    listed = REPO / prov.get("datalist", "-")
    if not listed.is_file() or file_sha256(listed) != prov.get("datalist_sha256"):
        raise SystemExit(f"error: {source}: its datalist ({listed}) is not the one it was trained on: cannot tell which films calibrated it")
    doc = json.loads(listed.read_text())
    trained = {it["id"] for it in doc["training"]}
    if {it["id"] for it in doc["validation"]} != validation_ids or trained & validation_ids:
        raise SystemExit(f"error: {source} was not calibrated on these validation films held out of it")
    return (
        f"fitted on the {len(validation_ids)} validation films held out of bundle {prov.get('bundle_version')}'s model (same recipe, "
        f"{len(trained)} training films; {prov.get('datalist')} sha256 {prov.get('datalist_sha256')}); this model trained on them"
    )


def figures_of(path: Path) -> dict:
    """``--figures``: a run's or a cross-validation's ``summary.json``, or a shipped checkpoint
    whose held-out figures (its ``provenance.held_out``) are still the recipe's."""
    if path.suffix != ".pt":
        return json.loads(path.read_text())
    import torch

    held_out = dict(torch.load(path, map_location="cpu", weights_only=True)["info"]["provenance"]["held_out"])
    held_out["test"] = {site: dict(r, spacing_mm=SITES[site]["spacing"]) for site, r in held_out["test"].items()}
    return held_out


def restrict(datalist: Path, sites: list[str], out: Path) -> Path:
    """A copy of the datalist whose training and validation sections hold only ``sites``' films
    (the test section keeps every site: the cross-site figures)."""
    doc = json.loads(datalist.read_text())
    for section in ("training", "validation"):
        doc[section] = [it for it in doc[section] if it["site"] in sites]
    doc["data_root"] = str(datalist_root(datalist))  # the copy lies elsewhere: its root, absolute
    doc["description"] += f"; training and validation restricted to {', '.join(sites)}"
    path = out / "data" / f"{datalist.stem}{TRAINED_ON}{'_'.join(sites)}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def train(
    datalist: Path, data_root: Path, out: Path, epochs: int, seed: int, time_limit: float, refine_minutes: float,
    refine_iterations: int = 1_000_000, overrides: list[str] = (),
) -> Path:
    """Both stages through the bundle's ``training``: the first for ``epochs`` (``time_limit``
    minutes at most), then the refinement stage for ``refine_minutes`` (0: none) or
    ``refine_iterations`` steps, whichever ends first (its learning rate anneals over that budget). ``overrides``:
    more ``train.json`` ids as ``KEY=VALUE`` (VALUE as the bundle's command line parses it)."""
    root = out / "bundle"
    stage_epochs = [max(1, round(0.3 * epochs)), max(1, round(0.1 * epochs))]
    _run(
        sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(REPO / "bundle" / "configs" / "train.json"),
        "--bundle_root", str(root), "--datalist", str(datalist), "--dataset_dir", str(data_root), "--epochs", str(epochs),
        "--stage_epochs", json.dumps(stage_epochs), "--seed", str(seed), "--time_limit_minutes", str(time_limit),
        "--refine_stage", str(refine_minutes > 0), "--refine_minutes", str(refine_minutes), "--refine_iterations", str(refine_iterations),
        "--resume", "False",
        *[arg for kv in overrides for arg in ("--" + kv.split("=", 1)[0], kv.split("=", 1)[1])],
    )  # fmt: skip
    return root / "models" / "model.pt"


def evaluate(
    checkpoint: Path, datalist: Path, data_root: Path, out: Path, section: str = "test", refine: bool = True, shift_mm: float | None = None
) -> dict[str, dict]:
    """Per-site metrics of ``checkpoint`` on the datalist's ``section`` (``refine=False``: a
    two-stage checkpoint's first stage alone; ``shift_mm``: the refinement's test-time patch
    shifts, default the checkpoint's)."""
    doc = json.loads(datalist.read_text())
    results = {}
    for site, spec in SITES.items():
        # predictions are named after the image file: one folder and datalist per site
        items = [dict(it, id=Path(it["image"]).stem, image=str(data_root.resolve() / it["image"])) for it in doc[section] if it["site"] == site]
        site_dl = out / site / f"{section}.json"
        site_dl.parent.mkdir(parents=True, exist_ok=True)
        site_dl.write_text(json.dumps({"landmark_set": doc["landmark_set"], "test": items}))
        preds = out / site / "predictions"
        start = time.perf_counter()
        _maht(
            "infer", "--checkpoint", str(checkpoint), "--input", *[it["image"] for it in items], "--out", str(preds),
            "--spacing", str(spec["spacing"]), "--no-overlay", *(() if refine else ("--no-refine",)),
            *(() if shift_mm is None else ("--refine-shift-mm", str(shift_mm))),
        )  # fmt: skip
        seconds = time.perf_counter() - start
        metrics = out / site / "metrics.json"
        _maht("evaluate", "--datalist", str(site_dl), "--predictions", str(preds), "--out", str(metrics))
        summary = json.loads(metrics.read_text())["summary"]
        results[site] = {
            "films": len(items),
            "spacing_mm": spec["spacing"],
            "infer_seconds_per_film": round(seconds / len(items), 3),  # includes start-up and model loading
            **{k: v for k, v in summary["overall"].items() if k != "n"},
            "per_landmark_mre": {row["name"]: row["mre"] for row in summary["per_landmark"]},
        }
    return results


def refine_shift(checkpoint: Path, shift_mm: float | None) -> float | None:
    """The refinement's test-time patch shifts a run of ``checkpoint`` predicts with: ``shift_mm``
    when given, else the checkpoint's (``None``: a single-stage checkpoint)."""
    refiner = load_refiner(checkpoint, shift_mm=shift_mm)
    return None if refiner is None else refiner.shift_mm


def pool_folds(runs: list[Path], out: Path, command: str, code: dict) -> dict:
    """Per-site figures of a cross-validation: every fold run's test predictions (``--fold K``,
    each film scored by the one fold model that never trained on it) evaluated as one set.
    ``<out>/summary.json`` has a ``test`` section like one run's, and ``cross_validation``: what
    each fold was (datalist sha256, command, commit, its own figures). ``code``: the pooling
    run's ``git_commit`` and ``git_tree_dirty``."""
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    stems = [Path(s["datalist"]).stem for s in summaries]
    folds = sorted(int(m[1]) for m in map(FOLD_IN_NAME.search, stems) if m)
    if folds != list(range(CV_FOLDS)):
        raise SystemExit(f"error: expected the {CV_FOLDS} fold runs (--fold 0 ... {CV_FOLDS - 1}), got folds {folds} "
                         f"of {', '.join(map(str, runs))}")
    # one recipe: the same training sites and the same stages scored in every fold
    if (
        len({FOLD_IN_NAME.sub("_fold", stem) for stem in stems}) > 1
        or len({s.get("no_refine", False) for s in summaries}) > 1
        or len({s.get("refine_shift_mm", 0.0) for s in summaries}) > 1
    ):
        raise SystemExit(f"error: {', '.join(map(str, runs))} are folds of different runs (training sites, --no-refine or the "
                         "refinement's patch shifts differ)")
    results = {}
    for site, spec in SITES.items():
        items, preds = [], out / "eval" / site / "predictions"
        preds.mkdir(parents=True, exist_ok=True)
        for run in runs:
            site_dl = json.loads((run / "eval" / site / "test.json").read_text())
            items += site_dl["test"]
            for it in site_dl["test"]:
                name = f"{it['id']}{PREDICTION_SUFFIX}"
                (preds / name).write_bytes((run / "eval" / site / "predictions" / name).read_bytes())
        if len({it["id"] for it in items}) != len(items):
            raise SystemExit(f"error: a {site} film is in the test section of two folds: not one cross-validation")
        pooled_dl = out / "eval" / site / "test.json"
        pooled_dl.write_text(json.dumps({"landmark_set": site_dl["landmark_set"], "test": items}))
        metrics = out / "eval" / site / "metrics.json"
        _maht("evaluate", "--datalist", str(pooled_dl), "--predictions", str(preds), "--out", str(metrics))
        summary = json.loads(metrics.read_text())["summary"]
        results[site] = {
            "films": len(items),
            "spacing_mm": spec["spacing"],
            **{k: v for k, v in summary["overall"].items() if k != "n"},
            "per_landmark_mre": {row["name"]: row["mre"] for row in summary["per_landmark"]},
        }
    per_fold = [
        {
            "datalist": s["datalist"],
            "datalist_sha256": file_sha256(run / "data" / Path(s["datalist"]).name),
            **{k: s.get(k) for k in ("command", "git_commit", "git_tree_dirty", "train_minutes")},
            "test_mre": {site: round(r["mre"], 4) for site, r in s["test"].items()},
            "test_ids": {site: [it["id"] for it in json.loads((run / "eval" / site / "test.json").read_text())["test"]] for site in SITES},
        }
        for run, s in sorted(zip(runs, summaries), key=lambda rs: rs[1]["datalist"])
    ]
    doc = {
        "command": command,
        **code,
        "no_refine": summaries[0].get("no_refine", False),
        "refine_shift_mm": summaries[0].get("refine_shift_mm", 0.0),
        "cross_validation": {"folds": per_fold},
        "test": results,
    }
    (out / "summary.json").write_text(json.dumps(doc, indent=1))
    return doc


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (as datalists are recorded), else absolute."""
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)


def _override(text: str) -> str:
    if "=" not in text or not text.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


def git_head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()


def git_tree_dirty() -> bool:
    """Tracked files differ from ``HEAD``: the run's code is not exactly the recorded commit."""
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True)
    return bool(status.stdout.strip())


def held_out_record(held_out: dict, datalist: Path) -> tuple[str, dict]:
    """Where the shipped model's figures come from: ``(how, provenance)``. ``held_out`` is a run's
    ``summary.json`` (its test films, held out of a model of the recipe) or a cross-validation's
    (:func:`pool_folds`: every development film, each scored by the fold model that never saw it)."""
    figures = {site: {k: r[k] for k in ("films", "mre", "median", "sdr", "mre_ci95")} for site, r in held_out["test"].items()}
    common = {
        "command": held_out["command"],
        "git_commit": held_out["git_commit"],
        "git_tree_dirty": held_out.get("git_tree_dirty"),
        "refine_shift_mm": held_out.get("refine_shift_mm", 0.0),
        "test": figures,
    }
    if "cross_validation" in held_out:
        folds = held_out["cross_validation"]["folds"]
        how = (
            f"{len(folds)}-fold cross-validation on the development films of both sites: each film scored by the "
            "model of the fold that held it out (fewer training films than the shipped model; each fold's command: the "
            "checkpoint's provenance, held_out.cross_validation)"
        )
        if all(Path(f["datalist"]).stem.endswith(UNDISPUTED) for f in folds):
            how += (
                "; the Hamedan films whose two annotations disagree far beyond the others (the audit's 'disputed') are in "
                "no fold" + ("" if "disputed_left_out" in json.loads(datalist.read_text()) else ", though the shipped model trained on them")
            )
        if held_out.get("refine_shift_mm"):
            how += f"; the refinement stage predicting with {held_out['refine_shift_mm']:g} mm test-time patch shifts"
        return how, {**common, "cross_validation": held_out["cross_validation"]}
    held_out_doc = json.loads((REPO / held_out["datalist"]).read_text())
    same = held_out["datalist"] == datalist.relative_to(REPO).as_posix()
    how = (
        f"held-out test films of {held_out['datalist']}, never trained on"
        if same
        else f"held-out test films of {held_out['datalist']}, scored on a model of the recipe trained without them "
        "(the shipped model trained on them too: figures for fewer training films)"
    ) + "; one seeded split, not cross-validation"
    return how, {
        "datalist": held_out["datalist"],
        "datalist_sha256": file_sha256(REPO / held_out["datalist"]),
        **common,
        **({"refine_stage": held_out["refine_stage"]} if held_out.get("refine_stage") else {}),
        "ids": {site: [it["id"] for it in held_out_doc["test"] if it["site"] == site] for site in SITES},
    }


def eval_metrics(held_out: dict, how: str) -> dict[str, dict]:
    """metadata.json's ``eval_metrics``: per site, ``held_out``'s figures and how they were obtained."""
    return {
        site: {
            "mean_radial_error_mm": round(r["mre"], 3),
            "mean_radial_error_mm_ci95": [round(v, 3) for v in r["mre_ci95"]],
            "sdr_2mm_percent": round(r["sdr"]["2.0"], 1),
            "sdr_4mm_percent": round(r["sdr"]["4.0"], 1),
            "films": r["films"],
            "spacing_mm": r["spacing_mm"],
            "how": how,
        }
        for site, r in held_out["test"].items()
    }


def ship(checkpoint: Path, datalist: Path, held_out: dict, training: dict, target: Path) -> None:
    """Write the inference-only checkpoint with provenance, its sha256 to large_files.yml and
    ``held_out``'s figures (a run's or a cross-validation's ``summary.json``, per-site ``test``
    results) to metadata.json's ``eval_metrics``."""
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    doc = json.loads(datalist.read_text())
    version = json.loads((REPO / "bundle" / "configs" / "metadata.json").read_text())["version"]

    def half(weights: dict) -> dict:
        return {k: (v.half() if v.is_floating_point() else v) for k, v in weights.items()}

    sections = {s: doc[s] for s in ("training", "validation", "test") if s in doc}
    how, held_out_provenance = held_out_record(held_out, datalist)
    stage = refine_stage(ckpt, checkpoint)
    predicts, measured = refine_shift(checkpoint, None), held_out.get("refine_shift_mm", 0.0)
    if stage is not None and predicts != measured:
        raise SystemExit(f"error: the figures were measured with {measured:g} mm refinement patch shifts, {checkpoint} predicts "
                         f"with {predicts:g} mm: score the folds with --refine-shift-mm {predicts:g}")
    shipped = {
        "model": half(ckpt["model"]),
        **({} if stage is None else {REFINE_STAGE: {"model": half(stage["model"]), "info": stage["info"]}}),
        "info": dict(
            ckpt["info"],
            provenance={
                "bundle_version": version,
                "datalist": datalist.relative_to(REPO).as_posix(),
                "datalist_sha256": file_sha256(datalist),
                "git_commit": training["git_commit"],
                "command": training["command"],
                "train_minutes": training["train_minutes"],
                # a refinement stage trained apart from the first stage (maht-net refine, or the bundle's "refining")
                **({"refine_stage": training["refine_stage"]} if training.get("refine_stage") else {}),
                "trained": time.strftime("%Y-%m-%d"),
                "weights_dtype": "float16",
                "sites": {site: {s: sum(it["site"] == site for it in items) for s, items in sections.items()} for site in SITES},
                # where eval_metrics come from: films the scored model never trained on
                "held_out": held_out_provenance,
            },
        ),
    }
    _install(shipped, target, eval_metrics(held_out, how))


def restamp(held_out: dict, target: Path) -> None:
    """Give the shipped checkpoint ``target`` other held-out figures (``held_out``: a run's or a
    cross-validation's ``summary.json``): its ``held_out`` provenance and metadata.json's
    ``eval_metrics`` change, and its refinement stage predicts with the patch shifts the figures
    were measured with; its weights and everything else stay as they are."""
    import torch

    folds = held_out.get("cross_validation", {}).get("folds", [held_out])
    if held_out.get("no_refine") or any(TRAINED_ON in f.get("datalist", "") for f in folds):
        raise SystemExit("error: figures of another recipe (the first stage alone, or trained on one site) cannot be the shipped model's")
    shipped = torch.load(target, map_location="cpu", weights_only=True)
    if REFINE_STAGE in shipped:
        shift = held_out.get("refine_shift_mm", 0.0)
        if shipped[REFINE_STAGE]["info"].get(REFINE_SHIFT_KEY, 0.0) != shift:
            print(f"the shipped refinement stage now predicts with {shift:g} mm patch shifts, as its figures were measured", flush=True)
        shipped[REFINE_STAGE]["info"][REFINE_SHIFT_KEY] = shift
    provenance = shipped["info"]["provenance"]
    how, provenance["held_out"] = held_out_record(held_out, REPO / provenance["datalist"])
    _install(shipped, target, eval_metrics(held_out, how))


def _install(shipped: dict, target: Path, metrics: dict) -> None:
    """Write ``shipped`` to ``target`` (atomically), its sha256 to large_files.yml and
    ``metrics`` to metadata.json's ``eval_metrics``."""
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    torch.save(shipped, tmp)
    os.replace(tmp, target)
    (REPO / "bundle" / "large_files.yml").write_text(large_files_yml([target]))
    meta_path = REPO / "bundle" / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["eval_metrics"] = metrics
    meta_path.write_text(json.dumps(meta, indent=4) + "\n")
    print(f"shipped {target} ({target.stat().st_size / 1e6:.1f} MB, sha256 {file_sha256(target)})", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", type=Path, default=SHARED, help="folder holding hamedan-ceph/ and isbi2015-ceph/")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "pretrained")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit-minutes", type=float, default=0, help="hard stop for the first stage's training (0: none)")
    ap.add_argument("--refine-minutes", type=float, default=50, help="the refinement stage's training time (0: a single-stage model)")
    ap.add_argument("--refine-iterations", type=int, default=1_000_000,
                    help="the refinement stage's steps at most (a budget that does not depend on the machine's load)")
    ap.add_argument("--fold", type=int, choices=range(CV_FOLDS), help=f"cross-validation: train and test fold K of {CV_FOLDS} "
                    "(<out>/data/two_sites_fold<K>.json; --seed seeds the folds)")
    ap.add_argument("--pool-folds", nargs="+", type=Path, metavar="RUN", help=f"pool the {CV_FOLDS} --fold runs' test "
                    "predictions into one cross-validated figure per site (<out>/summary.json); trains nothing")
    ap.add_argument("--drop-disputed", action="store_true", help="leave out the Hamedan films whose two annotators disagree far "
                    "more than on the others (a misregistered annotation: the audit's 'disputed'), from training and test")
    ap.add_argument("--skip-training", action="store_true", help="evaluate (and ship) <out>/bundle/models/model.pt as it is "
                    "(its training command and commit are read from <out>/summary.json)")
    ap.add_argument("--from", dest="from_run", type=Path, metavar="RUN", help="with --skip-training: score RUN's model "
                    "(RUN/bundle/models/model.pt, its command and commit from RUN/summary.json) into --out instead")
    ap.add_argument("--no-refine", action="store_true", help="score the first stage alone (a two-stage model's "
                    "refinement stage is not run); cannot --ship")
    ap.add_argument("--refine-shift-mm", type=float, metavar="MM", help="score with these refinement patch shifts "
                    "(maht-net infer --refine-shift-mm; default: the checkpoint's), e.g. an older model's folds with today's setting")
    ap.add_argument("--trained-at-commit", help="with --skip-training: the git commit the model was trained at, when "
                    "<out>/summary.json does not record it")
    ap.add_argument("--ship", action="store_true", help="install the result as bundle/models/model.pt")
    ap.add_argument("--all-films", action="store_true", help="train on every development film (datalists/two_sites_all.json; "
                    "the validation films only monitor it, --calibration-from calibrates it): the model to ship; scored on "
                    "its validation films, a sanity check only")
    ap.add_argument("--figures", type=Path, help="with --all-films --ship: <out>/summary.json of a run without --all-films "
                    "(same recipe, test films held out) or of --pool-folds, or a shipped model.pt of the same recipe (its "
                    "recorded held-out figures); the per-site test figures become eval_metrics")
    ap.add_argument("--calibration-from", type=Path, default=REPO / "bundle" / "models" / "model.pt", metavar="CKPT",
                    help="with --all-films: the model of the same recipe whose uncertainty calibration, fitted on the "
                    "validation films held out of it, the all-films model takes (default: the shipped model)")
    ap.add_argument("--restamp", type=Path, metavar="SUMMARY", help="give the shipped bundle/models/model.pt the "
                    "held-out figures of SUMMARY (a run's or --pool-folds' summary.json): eval_metrics and the checkpoint's "
                    "held_out provenance change, its weights do not; trains nothing")
    ap.add_argument("--train-sites", nargs="+", choices=sorted(SITES), default=sorted(SITES),
                    help="train (and validate) on these sites' films only; every site is still tested")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=_override,
                    help="override a train.json id (repeatable), e.g. --set input_mm_per_px=0.75")
    args = ap.parse_args()
    if args.restamp:
        held_out = json.loads(args.restamp.read_text())
        if "test" not in held_out:
            print(f"error: {args.restamp}: no test figures (an --all-films run scores only its validation films)", file=sys.stderr)
            return 2
        restamp(held_out, REPO / "bundle" / "models" / "model.pt")
        return 0
    for d in (args.data_root / "hamedan-ceph", args.data_root / "isbi2015-ceph"):
        if not d.is_dir():
            print(f"error: {d}: development films not found", file=sys.stderr)
            return 2
    if args.ship and args.no_refine:
        print("error: --no-refine scores a model's first stage; the shipped model is run with both: drop --ship or --no-refine", file=sys.stderr)
        return 2
    if args.from_run and not args.skip_training:
        print("error: --from scores another run's model: add --skip-training", file=sys.stderr)
        return 2
    if args.ship and args.seed != 0:
        print("error: the shipped model uses the standard split (datalists/two_sites.json, seed 0); drop --ship or --seed", file=sys.stderr)
        return 2
    command = "python scripts/pretrained.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    code = {"git_commit": git_head(), "git_tree_dirty": git_tree_dirty()}  # before anything runs: edits made meanwhile are not the run's
    args.out = args.out.resolve()
    if args.pool_folds:
        doc = pool_folds([run.resolve() for run in args.pool_folds], args.out, command, code)
        for site, r in doc["test"].items():
            print(f"{site}: {r['films']} films, {CV_FOLDS}-fold cross-validated MRE {r['mre']:.2f} mm "
                  f"[{r['mre_ci95'][0]:.2f}-{r['mre_ci95'][1]:.2f}], SDR 2 mm {r['sdr']['2.0']:.1f} %")
        return 0
    if args.fold is not None and (args.ship or args.all_films):
        print("error: --fold is a cross-validation run: drop --ship and --all-films", file=sys.stderr)
        return 2
    datalist = prepare(args.data_root, args.out, args.seed, args.fold, args.drop_disputed)
    if sorted(args.train_sites) != sorted(SITES):
        if args.ship:
            print("error: the shipped model trains on every site; drop --ship or --train-sites", file=sys.stderr)
            return 2
        datalist = restrict(datalist, args.train_sites, args.out)
    if args.all_films:
        if args.ship and not args.figures:
            print("error: --all-films --ship needs --figures (a held-out run's summary.json): no test film is held out", file=sys.stderr)
            return 2
        validation_ids = {it["id"] for it in json.loads(datalist.read_text())["validation"]}
        donor_why = calibration_donor(args.calibration_from, validation_ids)  # before all_films() rewrites its datalist
        datalist = all_films(datalist)
    section = "validation" if args.all_films else "test"
    start = time.time()
    trained = (args.from_run or args.out).resolve()
    checkpoint = trained / "bundle" / "models" / "model.pt"
    if args.skip_training:
        before = json.loads((trained / "summary.json").read_text())
        training = {k: before.get(k) for k in ("command", "git_commit", "git_tree_dirty", "train_minutes", "refine_stage")}
        training["git_commit"] = training["git_commit"] or args.trained_at_commit
        if not training["git_commit"]:
            print("error: the training commit is not recorded: pass --trained-at-commit", file=sys.stderr)
            return 2
    else:
        training = {"command": command, **code}
        checkpoint = train(datalist, args.data_root, args.out, args.epochs, args.seed, args.time_limit_minutes, args.refine_minutes,
                           args.refine_iterations, args.set)
        training["train_minutes"] = round((time.time() - start) / 60, 1)
        if args.all_films:
            carry_calibration(checkpoint, args.calibration_from, donor_why)
            print(f"uncertainty calibration carried over from {_shown(args.calibration_from)}: {donor_why}", flush=True)
    shift = None if args.no_refine else refine_shift(checkpoint, args.refine_shift_mm)
    summary = dict(training, datalist=_shown(datalist), no_refine=args.no_refine, **({} if shift is None else {"refine_shift_mm": shift}))
    summary[section] = results = evaluate(checkpoint, datalist, args.data_root, args.out / "eval", section, not args.no_refine, shift)
    if args.ship:
        target = REPO / "bundle" / "models" / "model.pt"
        held_out = figures_of(args.figures) if args.all_films else summary
        if "cross_validation" not in held_out:
            held_out.setdefault("datalist", "datalists/two_sites.json")  # runs before the key was recorded
        ship(checkpoint, datalist, held_out, training, target)
        # the float16 copy, scored on the same films: the figure that justifies half precision
        shipped = evaluate(target, datalist, args.data_root, args.out / "eval-shipped", section)
        summary["shipped_minus_float32_mre_mm"] = {site: shipped[site]["mre"] - results[site]["mre"] for site in SITES}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != section}, indent=1))
    for site, r in results.items():
        print(f"{site}: {r['films']} {section} films, MRE {r['mre']:.2f} mm [{r['mre_ci95'][0]:.2f}-{r['mre_ci95'][1]:.2f}], "
              f"SDR 2 mm {r['sdr']['2.0']:.1f} %, {r['infer_seconds_per_film']:.2f} s/film")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
