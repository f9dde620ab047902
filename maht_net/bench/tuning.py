"""Hyper-parameter search over the bundle's training recipe with Optuna (extra ``tune``).

Each trial samples a recipe from :data:`SEARCH_SPACE` (encoder, input size, sigma, loss,
decoding, augmentation, schedule), trains it through ``bundle/configs/train.json``
(:func:`maht_net.engine.workflow.train_bundle`, via the accuracy benchmark's budgeted trainer:
the epochs are fitted to a wall-clock budget from a timing of real training steps, and the
budget is a hard stop) and scores it by the validation MRE in mm, averaged over
cross-validation folds of the *development* images (``training`` + ``validation``). The
datalist's ``test`` section is dropped before anything else happens, so the held-out films
stay untouched by the search and can still judge the chosen recipe.

The study lives in SQLite: running the same command again resumes it (finished trials are kept
and count toward ``n_trials``). Every trial stores its ``train.json`` overrides and results as
user attributes; at the end ``best.json`` (the best recipe as ``train.json`` overrides, its
score and the trial counts), ``best_args.json`` (those overrides alone, a MONAI ``--args_file``)
and ``trials.md`` (a table of all trials) are written.

Units: MRE in mm (the datalist's spacing); ``input_size`` is ``(W, H)`` pixels; ``sigma`` in
input pixels; budgets in minutes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maht_net.bench.accuracy import TRACKS, Contender, cross_validation_datalists, train_bundle_contender
from maht_net.errors import InputError
from maht_net.io.atomic import atomic_write, write_json_atomic
from maht_net.io.datalist import load_datalist, read_datalist
from maht_net.io.jsonfile import read_json

if TYPE_CHECKING:
    import optuna

__all__ = [
    "SearchParam",
    "LOSS_WEIGHTS",
    "SEARCH_SPACE",
    "sample_overrides",
    "development_datalist",
    "run_study",
    "format_trials",
    "args_file_from_best",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchParam:
    """One searched hyper-parameter and the ``train.json`` id it overrides.

    A categorical parameter has ``choices``; a float one ``low``/``high`` (``log`` for a
    log-uniform range). ``encode(value, track)`` turns the sampled value into the config value
    (identity when ``None``). ``only_if = (name, value)``: sampled only when that other
    parameter took that value (else the ``train.json`` default stays).
    """

    name: str
    config_id: str
    description: str
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    only_if: tuple[str, Any] | None = None
    encode: Callable[[Any, Mapping[str, Any]], Any] | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def config_value(self, value: Any, track: Mapping[str, Any]) -> Any:
        return value if self.encode is None else self.encode(value, track)


#: Loss presets (``loss_weights`` of :class:`~maht_net.models.losses.LandmarkLoss`): a heatmap term,
#: optionally with the soft-argmax coordinate L1 at ``train.json``'s weight.
LOSS_WEIGHTS: dict[str, dict[str, float]] = {
    "kl+coord": {"kl": 1.0, "coord": 0.05},  # the train.json default
    "kl": {"kl": 1.0},
    "awing+coord": {"awing": 1.0, "coord": 0.05},
    "mse+coord": {"mse": 1.0, "coord": 0.05},
}


def _scaled_input_size(scale: float, track: Mapping[str, Any]) -> list[int]:
    """The track's ``(W, H)`` times ``scale``, each side rounded half up to a multiple of 32 px
    (the network's deepest stride, required by :func:`maht_net.datasets.pipeline.preprocessing_transforms`)."""
    return [32 * max(1, math.floor(scale * side / 32 + 0.5)) for side in track["input_size"]]


def _stage_epochs_expression(fraction: float, track: Mapping[str, Any]) -> str:
    """A config expression for a progressive stage's length as a share of ``@epochs``, so the
    stage keeps its share whatever number of epochs the budget (or the user) sets."""
    return f"$max(1, round({fraction:.3f} * @epochs))"


#: What the search samples, in order; each row names the ``train.json`` id it overrides.
SEARCH_SPACE: tuple[SearchParam, ...] = (
    SearchParam("encoder", "encoder", "timm backbone (random init)", choices=("efficientnet_b0", "efficientnet_b3", "resnet34", "hrnet_w18_small", "convnext_tiny")),
    SearchParam("input_scale", "input_size", "track's (W, H) x scale, sides rounded to multiples of 32 px", choices=(0.75, 1.0, 1.25), encode=_scaled_input_size),
    SearchParam("sigma", "sigma", "target Gaussian std, input px", low=1.5, high=4.0),
    SearchParam("loss", "loss_weights", "loss terms and weights (LOSS_WEIGHTS)", choices=tuple(LOSS_WEIGHTS), encode=lambda v, _: dict(LOSS_WEIGHTS[v])),
    SearchParam("decoder", "decoder", "heatmap -> point decoding", choices=("argmax", "soft_argmax", "dark")),
    SearchParam("augment", "augment", "augmentation strength (0 = none)", low=0.0, high=1.5),
    SearchParam("invert_prob", "invert_prob", "film polarity inversion probability", low=0.0, high=0.5),
    SearchParam("lr", "lr", "peak learning rate (warm-up + cosine)", low=5e-4, high=5e-3, log=True),
    SearchParam("progressive", "progressive", "3-stage progressive schedule", choices=(True, False)),
    SearchParam("stage1_fraction", "progressive_stages#0#epochs", "share of epochs in stage 1 (CNN only)", low=0.1, high=0.5, only_if=("progressive", True), encode=_stage_epochs_expression),
    SearchParam("stage2_fraction", "progressive_stages#1#epochs", "share of epochs in stage 2 (encoder frozen)", low=0.05, high=0.25, only_if=("progressive", True), encode=_stage_epochs_expression),
)


def sample_overrides(trial: optuna.Trial, space: Sequence[SearchParam], track: Mapping[str, Any]) -> dict[str, Any]:
    """Sample ``space`` in ``trial``; returns the ``train.json`` overrides (id -> value)."""
    sampled: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for param in space:
        if param.only_if is not None and sampled.get(param.only_if[0]) != param.only_if[1]:
            continue
        sampled[param.name] = param.suggest(trial)
        overrides[param.config_id] = param.config_value(sampled[param.name], track)
    return overrides


# ----------------------------------------------------------------------------- data
def development_datalist(datalist: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write ``out``: ``datalist`` without its ``test`` section (every other key kept, image
    paths made absolute). The search only ever sees this file and folds made from it.

    Raises:
        InputError: no ``training`` or no ``validation`` section.
    """
    doc = read_datalist(datalist)
    dev = {key: value for key, value in doc.items() if key != "test"}
    for section in ("training", "validation"):
        items = load_datalist(datalist, section)  # validates the items and resolves their paths
        if not items:
            raise InputError(datalist, f"the search needs a non-empty {section!r} section")
        dev[section] = [dict(raw, image=item["image"]) for raw, item in zip(doc[section], items)]
    write_json_atomic(out, dev)
    return Path(out)


def _fold_datalists(dev: Path, folds: int, out: Path, seed: int) -> list[Path]:
    """The datalists one trial trains on: ``dev`` itself (``folds = 0``) or its CV folds."""
    paths = cross_validation_datalists(dev, folds, out / "folds", seed) if folds else [dev]
    for path in paths:
        if read_datalist(path).get("test"):  # a hard check, not an assert: it must survive -O
            raise RuntimeError(f"{path}: a tuning datalist has a 'test' section; the search must never see the test films")
    return paths


def _sha1_of_sections(path: Path) -> str:
    """Fingerprint of the development items without their image paths (moving the data keeps it)."""
    doc = read_datalist(path)
    items = {s: [{k: v for k, v in it.items() if k != "image"} for it in doc[s]] for s in ("training", "validation")}
    return hashlib.sha1(json.dumps(items, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- the study
def _storage_url(storage: str | os.PathLike) -> str:
    text = os.fspath(storage)
    if text.startswith("sqlite:///"):
        return text
    Path(text).parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(text).resolve()}"


def _check_same_settings(study: optuna.Study, settings: Mapping[str, Any], storage: str) -> None:
    """A resumed study must keep the data, folds, seed, track and budget its trials were scored
    with, or its scores would not compare."""
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", dict(settings))
        return
    changed = sorted(k for k in settings if k != "datalist" and stored.get(k) != settings[k])
    if changed:
        raise InputError(
            storage,
            f"study {study.study_name!r} was run with other settings ({', '.join(f'{k}: {stored.get(k)!r} -> {settings[k]!r}' for k in changed)}); "
            "use the same ones to resume, or a new --study-name",
        )


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Complete and pruned trials: those that count toward ``n_trials``."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials with a score (a NaN score fails the trial, so every one here is finite)."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def run_study(
    datalist: str | os.PathLike,
    out_dir: str | os.PathLike,
    study_name: str = "maht_net",
    n_trials: int = 20,
    track: str | Mapping[str, Any] = "cpu",
    budget_minutes_per_trial: float | None = None,
    folds: int = 3,
    seed: int = 0,
    epochs: int | None = None,
    storage: str | os.PathLike | None = None,
    space: Sequence[SearchParam] = SEARCH_SPACE,
    prune: bool = True,
    keep_runs: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the search until the study has ``n_trials`` finished trials.

    Args:
        datalist: datalist with ``training`` and ``validation`` sections; a ``test`` section is
            dropped unread (see :func:`development_datalist`).
        out_dir: ``study.db`` (default storage) and ``<study_name>/`` (the development datalist,
            folds, trial runs, ``best.json``, ``best_args.json``, ``trials.md``).
        n_trials: finished (complete or pruned) trials the study should hold; those already in
            the storage count, so re-running the same command resumes.
        track: a key of :data:`maht_net.bench.accuracy.TRACKS` or a dict like its values
            (``input_size`` ``(W, H)``, ``batch_size``, ``budget_minutes``).
        budget_minutes_per_trial: wall-clock training budget of one trial, shared evenly by its
            folds (default: the track's ``budget_minutes``).
        folds: ``0`` = train on ``training``, score on ``validation``; ``k >= 2`` = k-fold CV over
            the development images, scored by the mean of the fold MREs.
        seed: fold split, training seed of every trial, and the sampler's seed (offset by the
            number of trials already stored, so a resumed run does not replay the first samples).
        epochs: train every fold for this many epochs instead of fitting them to the budget
            (the budget stays a hard stop): scores then do not depend on how busy the machine
            was while a trial was timed.
        storage: SQLite file (or ``sqlite:///`` URL); default ``out_dir/study.db``.
        space: the parameters to search (default :data:`SEARCH_SPACE`).
        prune: median pruning after each fold but the last (only acts with ``folds >= 2``).
        keep_runs: keep every trial's models and logs (default: deleted once scored).

    Returns:
        The content of ``best.json``.

    Raises:
        InputError: bad datalist, or a stored study with other settings; RuntimeError: no
        trial completed; ImportError: Optuna missing (``pip install maht-net[tune]``).
    """
    try:
        import optuna
    except ImportError as e:
        raise ImportError("the hyper-parameter search needs Optuna: pip install -c constraints.txt -e '.[tune]'") from e

    if isinstance(track, str):
        if track not in TRACKS:
            raise ValueError(f"unknown track {track!r}; available: {sorted(TRACKS)}")
        track = TRACKS[track]
    track = dict(track)
    budget = float(track["budget_minutes"] if budget_minutes_per_trial is None else budget_minutes_per_trial)
    out = Path(out_dir) / study_name
    out.mkdir(parents=True, exist_ok=True)
    dev = development_datalist(datalist, out / "development.json")
    splits = _fold_datalists(dev, folds, out, seed)
    url = _storage_url(storage if storage is not None else Path(out_dir) / "study.db")
    settings = {
        "datalist": str(Path(datalist).resolve()),
        "development_sha1": _sha1_of_sections(dev),
        "folds": folds,
        "seed": seed,
        "input_size": list(track["input_size"]),
        "batch_size": int(track["batch_size"]),
        "budget_minutes_per_trial": budget,
        "epochs": epochs,
    }

    already = len(optuna.load_study(study_name=study_name, storage=url).trials) if study_name in optuna.study.get_all_study_names(url) else 0
    study = optuna.create_study(
        storage=url,
        study_name=study_name,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed + already),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4) if prune else optuna.pruners.NopPruner(),
        load_if_exists=True,
    )
    _check_same_settings(study, settings, url)

    def objective(trial: optuna.Trial) -> float:
        overrides = sample_overrides(trial, space, track)
        trial.set_user_attr("overrides", overrides)
        trial_track = {**track, "input_size": overrides.get("input_size", track["input_size"])}
        contender = Contender(f"trial{trial.number:04d}", "hyper-parameter search trial", overrides=overrides)
        record: dict[str, list[Any]] = {"fold_val_mre": [], "epochs_planned": [], "epochs": [], "train_seconds": [], "seconds_per_iteration": []}
        for k, split in enumerate(splits):
            workdir = out / "runs" / f"fold{k + 1}"
            try:
                stats = train_bundle_contender(contender, split, trial_track, budget / len(splits), workdir, seed, progress, epochs=epochs).stats
            finally:
                if not keep_runs:
                    shutil.rmtree(workdir / contender.name, ignore_errors=True)
            mre = math.nan if stats["best_val_mre"] is None else float(stats["best_val_mre"])
            for key, values in record.items():
                values.append(mre if key == "fold_val_mre" else stats[key])
                trial.set_user_attr(key, values)
            trial.set_user_attr("params_count", stats["params"])
            if not math.isfinite(mre):
                return math.nan  # Optuna marks the trial failed
            if k + 1 < len(splits):  # a fully trained trial is scored, never pruned
                trial.report(mre, step=k)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"fold {k + 1} validation MRE {mre:.3f} mm")
        return statistics.fmean(record["fold_val_mre"])

    remaining = n_trials - len(_finished(study))
    logger.info("study %r in %s: %d finished trials, %d more to run", study_name, url, len(_finished(study)), max(remaining, 0))
    if remaining > 0:
        # an out-of-memory recipe fails its trial, not the search; bad data (InputError) stops it
        study.optimize(objective, n_trials=remaining, catch=(RuntimeError,), gc_after_trial=True)

    with atomic_write(out / "trials.md", "w") as f:
        f.write(format_trials(study, space))
    complete = _complete(study)
    if not complete:
        raise RuntimeError(f"{url}: study {study_name!r} has no completed trial (see {out / 'trials.md'})")
    best = min(complete, key=lambda t: t.value)
    epochs = int(statistics.median(best.user_attrs["epochs_planned"]))
    result = {
        "study_name": study_name,
        "storage": url,
        "metric": "validation MRE (mm), mean over folds" if folds else "validation MRE (mm)",
        "value": best.value,
        "fold_val_mre": best.user_attrs["fold_val_mre"],
        "trial": best.number,
        "n_complete": len(complete),
        "n_finished": len(_finished(study)),
        "n_trials": len(study.trials),
        "params": best.params,
        "train_json_overrides": {**best.user_attrs["overrides"], "batch_size": int(track["batch_size"]), "epochs": epochs},
        "settings": settings,
    }
    write_json_atomic(out / "best.json", result)
    args_file_from_best(out / "best.json", out / "best_args.json")
    return result


# ----------------------------------------------------------------------------- reporting
def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return "/".join(_cell(v) for v in value)
    return str(value)


def format_trials(study: optuna.Study, space: Sequence[SearchParam] = SEARCH_SPACE) -> str:
    """A markdown table of every trial: state, score (validation MRE mm), per-fold MREs,
    planned epochs, training minutes and the sampled parameters; the best row is marked ``*``."""
    complete = _complete(study)
    best = min(complete, key=lambda t: t.value).number if complete else None
    names = [p.name for p in space]
    lines = [
        "| trial | state | val MRE mm | fold MRE mm | epochs | train min | " + " | ".join(names) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(names),
    ]
    for t in study.trials:
        minutes = sum(t.user_attrs.get("train_seconds", [])) / 60
        lines.append(
            f"| {t.number}{' *' if t.number == best else ''} | {t.state.name.lower()} | {_cell(t.value)} | {_cell(t.user_attrs.get('fold_val_mre'))} | "
            f"{_cell(t.user_attrs.get('epochs_planned'))} | {minutes:.1f} | " + " | ".join(_cell(t.params.get(n)) for n in names) + " |"
        )
    return "\n".join(lines) + "\n"


def args_file_from_best(best_json: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the best recipe's ``train.json`` overrides alone, for MONAI's ``--args_file``::

        python -m monai.bundle run training --config_file bundle/configs/train.json \\
            --meta_file bundle/configs/metadata.json --args_file best_args.json --datalist my.json

    (``monai.bundle.scripts.run`` reads the file's pairs as overrides; arguments given on the
    command line win over the file.)

    Raises:
        InputError: ``best_json`` is missing, not JSON, or has no ``train_json_overrides`` object.
    """
    path = Path(best_json)
    if not path.is_file():
        raise InputError(path, "best.json not found (run the search first: scripts/tune.py)")
    best = read_json(path, "best.json")
    overrides = best.get("train_json_overrides") if isinstance(best, dict) else None
    if not isinstance(overrides, dict):
        raise InputError(path, "no 'train_json_overrides' object: not a best.json written by maht_net.bench.tuning")
    write_json_atomic(out, overrides)
    return Path(out)
