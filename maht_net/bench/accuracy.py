"""Accuracy benchmark: contenders trained on the same split, input size and time budget, then
tested on the same films, in one run.

Contenders (:data:`CONTENDERS`): MAHT-Net with the bundle's default recipe, three ablations of
it, the U-Net baseline (all trained through ``bundle/configs/train.json``), and the peer
toolkit ``landmarker`` (its recommended static heatmap regression: ProbSpatialConfigurationNet,
Gaussian targets with sigma 3 px, NLL on the spatial softmax, Adam 1e-4) fed by the same data
pipeline. Every contender gets the same wall-clock training budget for all its stages (the
two-stage MAHT-Net spends a share of it on the refinement stage); the number of epochs (and so
the learning-rate schedule and the progressive stages) is fitted to the budget from a short
timing of real training steps, refitted from the real time of the second epoch
(:class:`~maht_net.engine.handlers.TimeBudgetHandler` ``fit_epochs``: a few steps' timing can be
off by a fifth), and the budget is also enforced as a hard stop.

A datalist that mixes sites (items naming their ``site``) gets per-site figures and per-site
paired tests besides the overall ones.

Axes: landmarks are ``(x, y)`` pixels of the original film everywhere (see
:mod:`maht_net.landmarks`); errors are in mm with the datalist's spacing.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from maht_net.bench.evaluation import mean_shape_baseline
from maht_net.bench.metrics import paired_comparison, radial_errors, summarize
from maht_net.datasets.common import fold_sections
from maht_net.datasets.pipeline import landmark_dataset, training_transforms
from maht_net.engine.handlers import ProgressBarHandler, TimeBudgetHandler, prepare_landmark_batch
from maht_net.engine.refine import load_films, refine_checkpoint
from maht_net.engine.workflow import train_bundle
from maht_net.errors import InputError
from maht_net.formatting import fmt_number
from maht_net.inference.ensemble import EnsembleNetwork
from maht_net.inference.predictor import Predictor, load_model
from maht_net.inference.refine import Refiner, load_refiner
from maht_net.io.atomic import atomic_write, write_json_atomic
from maht_net.io.checkpoint import CheckpointInfo
from maht_net.io.datalist import datalist_root, load_datalist, read_datalist
from maht_net.io.predictions import prediction_points, write_prediction
from maht_net.landmarks import get_landmark_set

__all__ = [
    "TRACKS",
    "CONTENDERS",
    "Contender",
    "TrainedModel",
    "absolute_datalist",
    "cross_validation_datalists",
    "train_bundle_contender",
    "train_contender",
    "predict",
    "item_errors",
    "run_accuracy_benchmark",
    "format_markdown",
]

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
TRAIN_CONFIG = REPO / "bundle" / "configs" / "train.json"
REPORTED_SDR_MM = (2.0, 2.5, 3.0, 4.0)

#: Benchmark tracks: input ``(W, H)``, batch size and training budget per contender.
TRACKS: dict[str, dict[str, Any]] = {
    "cpu": {"input_size": [256, 320], "batch_size": 8, "budget_minutes": 20.0},
    "full": {"input_size": [512, 640], "batch_size": 8, "budget_minutes": 60.0},
}

#: Share of the epochs spent in progressive stages 1 and 2 (train.json's 12 and 4 of 40 epochs).
STAGE_FRACTIONS = (0.3, 0.1)


@dataclass(frozen=True)
class Contender:
    """A method in the benchmark: ``kind`` ``"bundle"`` trains through ``train.json`` with
    ``overrides`` (config ids, ``#`` for nested ones); ``"landmarker"`` is the peer toolkit.
    ``batch_size`` replaces the track's (``None``: the track's); ``refine_share`` of the budget
    trains the refinement stage after the first (:func:`~maht_net.engine.refine.refine_checkpoint`)."""

    name: str
    description: str
    kind: str = "bundle"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int | None = None
    refine_share: float = 0.0


CONTENDERS: dict[str, Contender] = {
    c.name: c
    for c in (
        Contender("maht_net", "MAHT-Net, bundle default recipe (3-stage progressive)"),
        Contender("maht_net_2stage", "MAHT-Net + refinement stage (budget: 70 % first stage, 30 % refinement)", refine_share=0.3),
        # other splits of the budget (docs/benchmarks.md, "Where the 20 minutes go": no better than 70/30)
        Contender("maht_net_2stage_r20", "MAHT-Net + refinement stage (budget: 80 % first stage, 20 % refinement)", refine_share=0.2),
        Contender("maht_net_2stage_r45", "MAHT-Net + refinement stage (budget: 55 % first stage, 45 % refinement)", refine_share=0.45),
        Contender("maht_net_no_transformer", "MAHT-Net without the ViT bottleneck", overrides={"network_kwargs#use_transformer": False}),
        Contender("maht_net_no_gates", "MAHT-Net with a plain FPN (no attention gates)", overrides={"network_kwargs#attention_gates": False}),
        Contender("maht_net_no_progressive", "MAHT-Net trained end to end (no progressive schedule)", overrides={"progressive": False}),
        Contender("unet", "U-Net baseline (MONAI BasicUNet, full-resolution heatmaps)", overrides={"network_name": "unet", "network_kwargs": {}}),
        # batch 4: at batch 8 the two-site cpu track fits 7 epochs (147 steps) and the U-Net does not converge
        Contender("unet_batch4", "U-Net baseline, batch 4", overrides={"network_name": "unet", "network_kwargs": {}}, batch_size=4),
        # batch 4: more epochs in the budget than batch 8 (28 vs 16 in 20 min on 2 cores)
        Contender("landmarker", "landmarker 0.4.1 ProbSpatialConfigurationNet, sigma 3, NLL, Adam 1e-4 (its recommended recipe), batch 4", kind="landmarker", batch_size=4),
    )
}


@dataclass
class TrainedModel:
    """A trained contender ready for :func:`predict`."""

    name: str
    network: nn.Module
    info: dict[str, Any]
    stats: dict[str, Any]
    refiner: Refiner | None = None


# ----------------------------------------------------------------------------- data splits
def absolute_datalist(datalist: str | os.PathLike, out: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> Path:
    """A copy of ``datalist`` at ``out`` with absolute image paths, resolved against ``base_dir``,
    else the datalist's ``data_root`` (:func:`~maht_net.io.datalist.datalist_root`), else its folder:
    every later step (folds, bundle training, testing) reads it without a base folder."""
    doc = read_datalist(datalist)
    base = Path(datalist_root(datalist, base_dir) or Path(datalist).parent).resolve()
    for section in ("training", "validation", "test"):
        if section in doc:
            doc[section] = [dict(it, image=str((base / it["image"]).resolve())) for it in doc[section]]
    doc.pop("data_root", None)
    write_json_atomic(out, doc)
    return Path(out)


def cross_validation_datalists(datalist: str | os.PathLike, folds: int, out_dir: str | os.PathLike, seed: int = 0) -> list[Path]:
    """``folds`` datalists over the development images (``training`` + ``validation``, split by
    :func:`~maht_net.datasets.common.fold_sections`); every fold keeps the same ``test`` section,
    so fold models can be compared and ensembled on one held-out test set. Image paths are made
    absolute (the fold files live elsewhere).

    Raises:
        ValueError: fewer development images than folds.
    """
    out = Path(out_dir)
    doc = read_datalist(absolute_datalist(datalist, out / "datalist.json"))
    dev = [it for sec in ("training", "validation") for it in doc.get(sec, [])]
    paths = []
    for k, sections in enumerate(fold_sections(dev, folds, seed)):
        fold = {key: v for key, v in doc.items() if key not in ("training", "validation", "test")}
        fold.update(sections, test=doc.get("test", []), description=f"{doc.get('description', '')} | fold {k + 1}/{folds} (seed {seed})".strip(" |"))
        paths.append(out / f"fold{k + 1}.json")
        write_json_atomic(paths[-1], fold)
    return paths


# ----------------------------------------------------------------------------- training
def _bundle_parser(overrides: Mapping[str, Any], bundle_root: Path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    parser["bundle_root"] = str(bundle_root)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _seconds_per_iteration(network: nn.Module, loss_fn: Any, optimizer: torch.optim.Optimizer, loader: Any, iterations: int = 5, warmup: int = 2) -> float:
    """Median wall time of real training iterations (data, forward, backward, step) after
    ``warmup`` untimed ones (the first iterations run at half speed while allocators warm up)."""
    network.train()
    times, it = [], iter(loader)
    for i in range(iterations + warmup):
        start = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        image, target = prepare_landmark_batch(batch)
        optimizer.zero_grad()
        loss_fn(network(image), target).backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def _seconds_per_eval_image(network: nn.Module, size: Sequence[int]) -> float:
    network.eval()
    x = torch.randn(1, 1, size[1], size[0])
    with torch.no_grad():
        network(x)
        start = time.perf_counter()
        network(x)
    return time.perf_counter() - start


def _fit_epochs(budget_s: float, iter_s: float, iters_per_epoch: int, eval_s: float, n_val: int) -> tuple[int, float]:
    epoch_s = iter_s * iters_per_epoch + eval_s * n_val
    return max(1, int(0.92 * budget_s / epoch_s)), epoch_s  # 8 % margin for checkpoints and logs


def _params(network: nn.Module) -> int:
    return int(sum(p.numel() for p in network.parameters()))


def train_bundle_contender(
    contender: Contender,
    datalist: Path,
    track: Mapping[str, Any],
    budget_minutes: float,
    workdir: Path,
    seed: int = 0,
    progress: bool = True,
    epochs: int | None = None,
) -> TrainedModel:
    """Train a bundle recipe (``contender.overrides`` of ``train.json``) on ``track``'s input size and
    batch; epochs fitted to ``budget_minutes`` from a timing of real steps unless ``epochs`` is
    given (the budget stays a hard stop). The accuracy benchmark and the hyper-parameter search
    (:mod:`maht_net.bench.tuning`) both train through here."""

    batch_size = int(contender.batch_size or track["batch_size"])
    overrides: dict[str, Any] = {
        "datalist": str(datalist),
        "input_size": list(track["input_size"]),
        "batch_size": batch_size,
        "seed": seed,
        **contender.overrides,
    }
    root = workdir / contender.name
    first_minutes = budget_minutes * (1.0 - contender.refine_share)
    # time real iterations with this contender's network, loss and optimizer to fit the epochs
    parser = _bundle_parser(overrides, root)
    network, loss_fn, optimizer = (parser.get_parsed_content(k) for k in ("network", "loss", "optimizer"))
    train_ds = parser.get_parsed_content("train#dataset")
    loader = torch.utils.data.DataLoader(train_ds, batch_size=batch_size, shuffle=True, num_workers=0)
    n_val = len(load_datalist(datalist, "validation"))
    iter_s = _seconds_per_iteration(network, loss_fn, optimizer, loader)
    fitted, epoch_s = _fit_epochs(first_minutes * 60, iter_s, len(loader), _seconds_per_eval_image(network, track["input_size"]), n_val)
    epochs_fixed = epochs
    epochs = fitted if epochs is None else int(epochs)
    params = _params(network)
    del parser, network, loss_fn, optimizer, train_ds, loader

    stage_epochs = [max(1, round(f * epochs)) for f in STAGE_FRACTIONS]
    run = {
        **overrides,
        "epochs": epochs,
        "stage_epochs": stage_epochs,
        "warmup_epochs": 1 if epochs > 5 else 0,
        "early_stop_patience": max(15, epochs),  # the budget, not patience, ends a benchmark run
        "time_limit_minutes": first_minutes,
        "fit_epochs_to_budget": epochs_fixed is None,  # refit after the second epoch's real time
        "progress_bar": progress,
    }
    logger.info("%s: %.2f s/iteration, ~%.0f s/epoch -> %d epochs in %.1f min (stages %s)", contender.name, iter_s, epoch_s, epochs, first_minutes, stage_epochs)
    trained = train_bundle(TRAIN_CONFIG.parent, datalist, root, overrides=run)
    stats = {
        "train_seconds": trained["seconds"],
        "epochs_planned": epochs,
        "epochs": trained["epochs"],
        "params": params,
        "best_val_mre": trained["best_val_mre"],
        "seconds_per_iteration": round(iter_s, 3),
        "batch_size": batch_size,
    }
    refiner = None
    if contender.refine_share > 0:  # what is left of the budget reads the full-resolution films and trains the stage
        start = time.monotonic()
        recipe = load_model(trained["model"])[1]
        films = load_films(load_datalist(datalist, "training"), len(recipe["landmark_names"]), recipe.get("normalize", "percentile"), bool(recipe.get("clahe", False)))
        left_minutes = budget_minutes - (trained["seconds"] + time.monotonic() - start) / 60
        _, stage = refine_checkpoint(trained["model"], films, minutes=max(left_minutes, 0.05), iterations=10**9, seed=seed, desc=contender.name + " refinement" if progress else None)
        refiner = load_refiner(trained["model"])
        stats["train_seconds"] += time.monotonic() - start
        stats["refine"] = dict(stage["info"]["trained"], params=_params(refiner.network))
        stats["params"] += stats["refine"]["params"]
    network, info = load_model(trained["model"])
    return TrainedModel(contender.name, network, info, stats, refiner)


class _LandmarkerLoss(nn.Module):
    """landmarker's NLL on the spatial softmax against its Gaussian targets, for our batches.

    Our targets are ``(x, y)`` input pixels (see :func:`~maht_net.engine.handlers.prepare_landmark_batch`);
    landmarker's generator takes ``(y, x)``.
    """

    def __init__(self, num_landmarks: int, size: Sequence[int], sigma: float = 3.0) -> None:
        super().__init__()
        from landmarker.heatmap import GaussianHeatmapGenerator
        from landmarker.losses import NLLLoss

        self.generator = GaussianHeatmapGenerator(nb_landmarks=num_landmarks, sigmas=sigma, heatmap_size=(int(size[1]), int(size[0])))
        self.nll = NLLLoss(spatial_dims=2, apply_softmax=True)

    def forward(self, logits: torch.Tensor, target: Mapping[str, torch.Tensor]) -> torch.Tensor:
        yx = target["landmarks"].flip(-1)
        heat = self.generator(yx)
        heat = heat * target["mask"][..., None, None]  # missing landmarks add nothing
        return self.nll(logits, heat)


def _train_landmarker(contender: Contender, datalist: Path, track: Mapping[str, Any], budget_minutes: float, seed: int, progress: bool, epochs: int | None) -> TrainedModel:
    try:
        from landmarker.models import ProbSpatialConfigurationNet
    except ImportError as e:
        raise RuntimeError("the landmarker contender needs the landmarker package: run 'make bench-install' (docs/benchmarks.md)") from e
    from monai.engines import SupervisedTrainer
    from monai.utils import set_determinism

    set_determinism(seed)
    size = track["input_size"]
    landmark_set = read_datalist(datalist).get("landmark_set", "isbi2015")
    n = len(get_landmark_set(landmark_set))
    network = ProbSpatialConfigurationNet(spatial_dims=2, in_channels=1, out_channels=n)
    network.stride = 1
    loss_fn = _LandmarkerLoss(n, size)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    train_ds = landmark_dataset(load_datalist(datalist, "training"), training_transforms(size, 1.0, n), n)
    batch_size = int(contender.batch_size or track["batch_size"])
    loader = torch.utils.data.DataLoader(train_ds, batch_size=batch_size, shuffle=True, num_workers=0)
    iter_s = _seconds_per_iteration(network, loss_fn, optimizer, loader)
    epochs_fixed = epochs
    epochs = _fit_epochs(budget_minutes * 60, iter_s, len(loader), 0.0, 0)[0] if epochs is None else int(epochs)
    network = ProbSpatialConfigurationNet(spatial_dims=2, in_channels=1, out_channels=n)  # fresh weights after timing
    network.stride = 1
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=loss_fn,
        prepare_batch=prepare_landmark_batch,
        amp=False,
    )
    budget = TimeBudgetHandler(budget_minutes, fit_epochs=epochs_fixed is None)  # a constant rate: the epochs fill the budget
    budget.attach(trainer)
    ProgressBarHandler(progress).attach(trainer)
    logger.info("%s: %.2f s/iteration -> %d epochs in %.1f min", contender.name, iter_s, epochs, budget_minutes)
    start = time.monotonic()
    trainer.run()
    # landmarker's recommended decoder is argmax (its local soft-argmax returned NaN here)
    info = CheckpointInfo("landmarker.ProbSpatialConfigurationNet", landmark_set=landmark_set, input_size=size, sigma=3.0, decoder="argmax", stride=1).state_dict()
    stats = {
        "train_seconds": round(time.monotonic() - start, 1),
        "epochs_planned": epochs,
        "epochs": int(trainer.state.epoch),
        **({"epochs_refit": budget.refit} if budget.refit else {}),
        "params": _params(network),
        "best_val_mre": None,
        "seconds_per_iteration": round(iter_s, 3),
        "batch_size": batch_size,
    }
    return TrainedModel(contender.name, network.eval(), info, stats)


def train_contender(
    name: str,
    datalist: str | os.PathLike,
    track: Mapping[str, Any],
    workdir: str | os.PathLike,
    budget_minutes: float | None = None,
    seed: int = 0,
    progress: bool = True,
    epochs: int | None = None,
) -> TrainedModel:
    """Train one contender of :data:`CONTENDERS` on ``datalist``'s ``training`` section within the budget.

    ``epochs`` fixes the epoch count instead of fitting it to the budget from a timing of real
    steps (the budget stays a hard stop): ablations compared at equal epochs do not depend on how
    busy the machine was.
    """
    if name not in CONTENDERS:
        raise ValueError(f"unknown contender {name!r}; available: {sorted(CONTENDERS)}")
    contender = CONTENDERS[name]
    budget = float(track["budget_minutes"] if budget_minutes is None else budget_minutes)
    if contender.kind == "landmarker":
        return _train_landmarker(contender, Path(datalist), track, budget, seed, progress, epochs)
    return train_bundle_contender(contender, Path(datalist), track, budget, Path(workdir), seed, progress, epochs)


# ----------------------------------------------------------------------------- testing
def predict(
    network: nn.Module,
    info: Mapping[str, Any],
    items: Sequence[Mapping[str, Any]],
    tta: bool = False,
    repeats: int = 1,
    write_to: str | os.PathLike | None = None,
    refiner: Refiner | None = None,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, float]:
    """Predicted ``(B, N, 2)`` ``(x, y)`` original pixels for datalist items, and the median
    seconds per image over ``repeats`` passes after one warm-up call (read, preprocess, network,
    decode, the ``refiner``'s stage when given, and writing the prediction JSON into ``write_to``
    when given; 1 image per call). ``network`` and ``refiner`` sit on ``device``."""
    predictor = Predictor(network, info, device, tta=tta, refiner=refiner)
    predictor.predict(items[:1])
    points, seconds = [], []
    for r in range(repeats):
        for it in items:
            start = time.perf_counter()
            pred = predictor.predict([it])[0]
            if write_to is not None:
                write_prediction(pred, write_to, formats=("json",))
            seconds.append(time.perf_counter() - start)
            if r == 0:
                points.append(prediction_points(pred))
    return np.stack(points), float(np.median(seconds))


def item_errors(points: np.ndarray, items: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Radial errors ``(B, N)`` (mm, or px without spacing) of ``(B, N, 2)`` ``(x, y)`` points against the items' landmarks."""
    truth = np.stack([np.asarray(it["landmarks"], dtype=float) for it in items])
    spacing = np.array([it["spacing"] for it in items], dtype=float)
    return radial_errors(points, truth, spacing)


def _result(name: str, errors: np.ndarray, ids: list[str], names: list[str], extra: Mapping[str, Any], sites: Sequence[str | None] = ()) -> dict[str, Any]:
    """Overall summary, and one per site when the test films come from more than one."""
    summary = summarize(errors, thresholds=REPORTED_SDR_MM, landmark_names=names, ids=ids, n_bootstrap=2000)
    result = {"name": name, **extra, "summary": summary, "errors": errors.tolist()}
    if len(set(sites)) > 1:
        result["by_site"] = {
            str(site): summarize(errors[mask], thresholds=REPORTED_SDR_MM, landmark_names=names, ids=[i for i, m in zip(ids, mask) if m], n_bootstrap=2000)
            for site in sorted(set(sites), key=str)
            for mask in [np.array([s == site for s in sites])]
        }
    return result


# ----------------------------------------------------------------------------- the run
def run_accuracy_benchmark(
    datalist: str | os.PathLike,
    out_dir: str | os.PathLike,
    track: str = "cpu",
    contenders: Sequence[str] = tuple(CONTENDERS),
    budget_minutes: float | None = None,
    folds: int = 0,
    seed: int = 0,
    tta: bool = True,
    progress: bool = True,
    epochs: int | None = None,
    base_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train and test every contender; returns (and writes to ``out_dir/results.json``) the results.

    Args:
        datalist: datalist with ``training``, ``validation`` and ``test`` sections.
        track: a key of :data:`TRACKS` (input size, batch size, default budget).
        contenders: names in :data:`CONTENDERS`; the first is the reference of the paired tests.
        budget_minutes: training wall-clock budget per contender (and per fold).
        folds: ``0`` = the datalist's fixed split; ``k`` = k-fold cross-validation over the
            development images (see :func:`cross_validation_datalists`) with the same test set,
            plus the fold ensembles (mean heatmap and mean coordinates) of the first contender.
        tta: also test the first contender with test-time augmentation (gain and latency).
        epochs: train every contender for this many epochs instead of fitting them to the budget
            (see :func:`train_contender`).
        base_dir: folder the datalist's image paths start from (default: its ``data_root``, else
            its folder; see :func:`absolute_datalist`).
        resume: keep the contenders already in ``out_dir/results.json`` (a run with the same
            settings and test films, e.g. one cut short) and train only the missing ones; when the
            reference is kept, so are its TTA and ensemble rows. Each kept row keeps its ``date``.
    """
    if track not in TRACKS:
        raise ValueError(f"unknown track {track!r}; available: {sorted(TRACKS)}")
    for name in contenders:
        if name not in CONTENDERS:
            raise ValueError(f"unknown contender {name!r}; available: {sorted(CONTENDERS)}")
    cfg = dict(TRACKS[track])
    if budget_minutes is not None:
        cfg["budget_minutes"] = float(budget_minutes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    given, datalist = datalist, absolute_datalist(datalist, out / "datalist.json", base_dir)
    test_items = load_datalist(datalist, "test", check_files=True)
    if not test_items:
        raise InputError(given, "the datalist has no 'test' section to benchmark on")
    lset = get_landmark_set(read_datalist(datalist).get("landmark_set", "isbi2015"))
    ids = [it["id"] for it in test_items]
    sites = [it.get("site") for it in test_items]
    splits = cross_validation_datalists(datalist, folds, out / "folds", seed) if folds else [Path(datalist)]

    baseline = mean_shape_baseline(datalist)
    results: dict[str, Any] = {
        "benchmark": "accuracy",
        "track": track,
        "settings": {**cfg, "folds": folds, "seed": seed, "test_images": len(test_items), "datalist": str(given), "fixed_epochs": epochs},
        "machine": _machine(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "mean_shape_baseline_mre": baseline["overall"]["mre"],
        "test_ids": ids,
        "contenders": [],
        "ensembles": [],
    }
    kept = _kept_results(out / "results.json", results["settings"], ids) if resume else {}
    fold_models: dict[str, list[TrainedModel]] = {}
    for name in contenders:
        if name in kept.get("contenders", {}):
            logger.info("== %s: kept from %s (%s)", name, out / "results.json", kept["contenders"][name]["date"])
            results["contenders"].append(kept["contenders"][name])
            continue
        fold_errors, fold_stats, latencies = [], [], []
        for k, split in enumerate(splits):
            logger.info("== %s (%s track, %s)", name, track, f"fold {k + 1}/{len(splits)}" if folds else "fixed split")
            model = train_contender(name, split, cfg, out / "runs" / (f"fold{k + 1}" if folds else "fixed"), cfg["budget_minutes"], seed, progress, epochs)
            points, latency = predict(model.network, model.info, test_items, refiner=model.refiner)
            fold_errors.append(item_errors(points, test_items))
            fold_stats.append(model.stats)
            latencies.append(latency)
            if name == contenders[0]:
                fold_models.setdefault(name, []).append(model)
        errors = np.nanmean(np.stack(fold_errors), 0) if folds else fold_errors[0]
        extra = {
            "description": CONTENDERS[name].description,
            "train_seconds": float(np.mean([s["train_seconds"] for s in fold_stats])),
            "epochs": [s["epochs"] for s in fold_stats],
            "params": fold_stats[0]["params"],
            "seconds_per_image": float(np.median(latencies)),
            "folds": fold_stats,
            "date": results["date"],
        }
        if folds:
            extra["fold_mre"] = [float(np.nanmean(e)) for e in fold_errors]
        results["contenders"].append(_result(name, errors, ids, lset.names, extra, sites))
        write_json_atomic(out / "results.json", results)  # partial results survive a later failure

    reference = results["contenders"][0]
    for r in results["contenders"][1:]:
        _add_paired(reference, r, ids, sites)
    models = fold_models.get(contenders[0], [])
    if contenders[0] in kept.get("contenders", {}):
        results["ensembles"] = kept["ensembles"]
    if tta and models:
        points, latency = predict(models[0].network, models[0].info, test_items, tta=True, refiner=models[0].refiner)
        results["ensembles"].append(_result(f"{contenders[0]} + TTA", item_errors(points, test_items), ids, lset.names, {"seconds_per_image": latency, "members": 1}, sites))
    if len(models) > 1:
        ens = EnsembleNetwork([m.network for m in models]).eval()
        points, latency = predict(ens, models[0].info, test_items)  # one heatmap: the first stage only
        first = ", first stage" if models[0].refiner is not None else ""
        results["ensembles"].append(_result(f"{contenders[0]} {len(models)}-fold ensemble (mean heatmap{first})", item_errors(points, test_items), ids, lset.names, {"seconds_per_image": latency, "members": len(models)}, sites))
        each = [predict(m.network, m.info, test_items, refiner=m.refiner) for m in models]
        coords = np.mean(np.stack([p for p, _ in each]), 0)
        results["ensembles"].append(_result(f"{contenders[0]} {len(models)}-fold ensemble (mean coordinates)", item_errors(coords, test_items), ids, lset.names, {"seconds_per_image": float(sum(t for _, t in each)), "members": len(models)}, sites))
    for r in results["ensembles"]:
        _add_paired(reference, r, ids, sites)
    write_json_atomic(out / "results.json", results)
    with atomic_write(out / "results.md", "w") as f:
        f.write(format_markdown(results))
    return results


def _kept_results(path: Path, settings: Mapping[str, Any], ids: Sequence[str]) -> dict[str, Any]:
    """Contender rows (by name) and ensemble rows of an earlier run at ``path`` to resume from;
    ``{}`` when there is none. Raises :class:`InputError` when its settings or test films differ."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    now, then = json.loads(json.dumps(settings)), earlier.get("settings", {})
    differ = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
    if differ:
        raise InputError(path, f"cannot resume: the earlier run's settings differ in {differ}; use another --out")
    if earlier.get("test_ids", list(ids)) != list(ids):  # runs before 2026-12-02 stored only their number
        raise InputError(path, "cannot resume: the earlier run was tested on other films; use another --out")
    date = earlier.get("date")
    return {
        "contenders": {r["name"]: {"date": date, **r} for r in earlier.get("contenders", [])},
        "ensembles": [{"date": date, **r} for r in earlier.get("ensembles", [])],
    }


def _paired(reference: np.ndarray, other: np.ndarray, ids: list[str]) -> dict[str, Any]:
    """Paired test on per-image MRE; ``mean_difference`` = other - reference (positive: other worse)."""
    c = paired_comparison(other, reference, ids)
    return {k: c[k] for k in ("n", "mean_difference", "mean_difference_ci95", "a_better", "b_better", "p_value")}


def _add_paired(reference: Mapping[str, Any], other: dict[str, Any], ids: list[str], sites: Sequence[str | None]) -> None:
    """``other["paired_vs_reference"]`` over all test films, and per site when there are several."""
    ref, oth = np.array(reference["errors"], dtype=float), np.array(other["errors"], dtype=float)
    other["paired_vs_reference"] = _paired(ref, oth, ids)
    if "by_site" in other:
        other["paired_vs_reference_by_site"] = {}
        for site in other["by_site"]:
            mask = np.array([str(s) == site for s in sites])
            other["paired_vs_reference_by_site"][site] = _paired(ref[mask], oth[mask], [i for i, m in zip(ids, mask) if m])


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }



def _versus(p: Mapping[str, Any] | None) -> str:
    if p is None:
        return "reference"
    lo, hi = p["mean_difference_ci95"] or [None, None]
    return f"{fmt_number(p['mean_difference'], 3)} [{fmt_number(lo, 3)}, {fmt_number(hi, 3)}], p={fmt_number(p['p_value'], 3)}"


def format_markdown(results: Mapping[str, Any]) -> str:
    """Markdown tables of a :func:`run_accuracy_benchmark` result: overall, paired tests, per landmark."""
    s = results["settings"]
    ref = results["contenders"][0]["name"]
    keys = [str(float(t)) for t in REPORTED_SDR_MM]  # summarize()'s SDR keys
    kept = [r for r in results["contenders"] + results["ensembles"] if r.get("date", results["date"]) != results["date"]]
    lines = [
        f"Track `{results['track']}`: input {s['input_size'][0]}x{s['input_size'][1]} (W x H), batch {s['batch_size']}, "
        f"{s['budget_minutes']:g} min training budget per contender{' and fold' if s['folds'] else ''}"
        f"{', %d epochs each (fixed)' % s['fixed_epochs'] if s.get('fixed_epochs') else ''}, "
        f"{s['test_images']} test films, {'%d-fold CV (errors averaged over fold models)' % s['folds'] if s['folds'] else 'fixed split'}. "
        f"Mean-shape baseline MRE {fmt_number(results['mean_shape_baseline_mre'])} mm. {results['date']}; "
        f"{results['machine']['processor']}, {results['machine']['cpu_count']} cores, torch {results['machine']['torch']}"
        f"{', ' + results['machine']['cuda'] if results['machine']['cuda'] else ''}.",
        *(["Rows kept from an earlier run (`--resume`): " + ", ".join(f"{r['name']} ({r['date']})" for r in kept) + "."] if kept else []),
        "",
        "| method | MRE mm [95% CI] | median | " + " | ".join(f"SDR {k[:-2] if k.endswith('.0') else k} mm %" for k in keys) + " | train min | epochs | params M | s/image | MRE minus " + ref + "'s, mm [95% CI], Wilcoxon p |",
        "|---|---|---|" + "---|" * len(keys) + "---|---|---|---|---|",
    ]
    for r in results["contenders"] + results["ensembles"]:
        o = r["summary"]["overall"]
        ci = o["mre_ci95"] or [None, None]
        vs = _versus(r.get("paired_vs_reference"))
        lines.append(
            f"| {r['name']} | {fmt_number(o['mre'])} [{fmt_number(ci[0])}-{fmt_number(ci[1])}] | {fmt_number(o['median'])} | "
            + " | ".join(fmt_number(o["sdr"][k], 1) for k in keys)
            + f" | {fmt_number(r['train_seconds'] / 60, 1) if 'train_seconds' in r else '-'} | {'/'.join(map(str, r['epochs'])) if 'epochs' in r else '-'}"
            f" | {fmt_number(r['params'] / 1e6, 1) if 'params' in r else '-'} | {fmt_number(r['seconds_per_image'], 3)} | {vs} |"
        )
    rows = [r for r in results["contenders"] + results["ensembles"] if "by_site" in r]
    if rows:
        lines += ["", "Per site (test films of each site):", "", "| method | site | films | MRE mm [95% CI] | SDR 2 mm % | SDR 4 mm % | MRE minus " + ref + "'s, mm [95% CI], Wilcoxon p |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            for site, summary in r["by_site"].items():
                o, ci = summary["overall"], summary["overall"]["mre_ci95"] or [None, None]
                vs = _versus(r.get("paired_vs_reference_by_site", {}).get(site))
                lines.append(f"| {r['name']} | {site} | {summary['counts']['images']} | {fmt_number(o['mre'])} [{fmt_number(ci[0])}-{fmt_number(ci[1])}] | {fmt_number(o['sdr']['2.0'], 1)} | {fmt_number(o['sdr']['4.0'], 1)} | {vs} |")
    lines += ["", "Per-landmark MRE (mm):", "", "| landmark | " + " | ".join(r["name"] for r in results["contenders"]) + " |", "|---|" + "---|" * len(results["contenders"])]
    for k, row in enumerate(results["contenders"][0]["summary"]["per_landmark"]):
        lines.append(f"| {row['index']} {row['name']} | " + " | ".join(fmt_number(r["summary"]["per_landmark"][k]["mre"]) for r in results["contenders"]) + " |")
    return "\n".join(lines) + "\n"
