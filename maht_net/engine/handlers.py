"""Pieces MONAI's Ignite engines need for landmark training: batch preparation, the
progressive 3-stage schedule, a wall-clock budget, a warm-up/cosine LR schedule and the
inference spec stored in every checkpoint. The bundle configs wire them together.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from ignite import distributed as idist
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointSaver, StatsHandler, TensorBoardStatsHandler

from maht_net.io.atomic import atomic_write, remove_unfinished_writes
from maht_net.io.checkpoint import load_checkpoint_file

__all__ = [
    "prepare_landmark_batch",
    "warmup_cosine_scheduler",
    "ProgressiveTrainingHandler",
    "TimeBudgetHandler",
    "BestMetricState",
    "GradientClipHandler",
    "TrainingCheckpoint",
    "AtomicDiskSaver",
    "AtomicCheckpointSaver",
    "ProgressBarHandler",
    "Attach",
    "all_rank_handlers",
    "output_points",
]

logger = logging.getLogger(__name__)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def prepare_landmark_batch(batchdata: Mapping[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any):
    """``prepare_batch`` for MONAI's ``SupervisedTrainer``/``SupervisedEvaluator``.

    Returns ``(image, target)``: image ``(B, 1, H, W)``; target dict with ``landmarks``
    ``(B, N, 2)``, ``mask`` ``(B, N)`` and ``spacing`` ``(B, 2)`` (1 mm/px where unknown, so
    the coordinate loss falls back to pixels).
    """
    image = batchdata["image"].to(device=device, non_blocking=non_blocking)
    if hasattr(image, "as_tensor"):
        image = image.as_tensor()
    spacing = batchdata["spacing"].to(device=device, non_blocking=non_blocking)
    target = {
        "landmarks": batchdata["landmarks"].to(device=device, non_blocking=non_blocking),
        "mask": batchdata["landmark_mask"].to(device=device, non_blocking=non_blocking),
        "spacing": torch.where(torch.isfinite(spacing), spacing, torch.ones_like(spacing)),
    }
    return image, target


def output_points(output: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``output_transform`` for :class:`~maht_net.bench.metrics.RadialErrorMetric` on an evaluator
    whose postprocessing is :class:`~maht_net.transforms.targets.DecodeLandmarksd`: predicted and
    true points in original pixels, and the original spacing (``None`` when unknown)."""
    spacing = output["true_spacing"]
    return output["pred_points"], output["true_points"], (spacing if bool(torch.isfinite(spacing).all()) else None)


class WarmupCosine:
    """Learning-rate factor of an epoch: linear warm-up, then cosine decay to ``min_factor`` at
    ``total`` epochs. An object, not a closure, so that :class:`TimeBudgetHandler` can stretch the
    schedule to the epochs its budget holds and ``LambdaLR.state_dict`` keeps ``total`` on resume."""

    def __init__(self, total: int, warmup: int = 1, min_factor: float = 0.02) -> None:
        self.total, self.warmup, self.min_factor = max(1, int(total)), max(0, int(warmup)), float(min_factor)

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup:
            return (epoch + 1) / (self.warmup + 1)
        progress = min(1.0, (epoch - self.warmup) / max(1, self.total - self.warmup))
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, total_epochs: int, warmup_epochs: int = 1, min_factor: float = 0.02):
    """``LambdaLR`` of :class:`WarmupCosine` (stepped per epoch).

    ``LambdaLR`` multiplies each group's ``base_lrs`` entry, so changing those (as the
    progressive schedule does) keeps the curve's shape.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_epochs, warmup_epochs, min_factor))


class ProgressiveTrainingHandler:
    """The 3-stage progressive schedule, switched at ``EPOCH_STARTED``.

    Each stage is a dict: ``epochs`` (``None`` = until the end), ``transformer`` (bool: ViT
    bottleneck on), ``freeze_encoder`` (bool), ``encoder_lr_factor`` (encoder LR relative to the
    base LR), ``loss_weights`` (dict for :meth:`LandmarkLoss.set_weights`, optional). The default
    is (1) CNN encoder + decoder, transformer bypassed; (2) transformer on, encoder frozen;
    (3) everything, encoder at a tenth of the LR.

    The optimizer must have the two groups of :meth:`MAHTNet.parameter_groups` (encoder first).
    A network without ``use_transformer`` (the U-Net baseline), or built with it off, is trained
    end to end with the stages changing only encoder freezing, learning rates and loss weights.
    """

    DEFAULT_STAGES = (
        {"epochs": 10, "transformer": False, "freeze_encoder": False, "encoder_lr_factor": 1.0},
        {"epochs": 5, "transformer": True, "freeze_encoder": True, "encoder_lr_factor": 0.0},
        {"epochs": None, "transformer": True, "freeze_encoder": False, "encoder_lr_factor": 0.1},
    )

    def __init__(
        self,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        base_lr: float,
        stages: Sequence[Mapping[str, Any]] | None = None,
        loss: Any = None,
        scheduler: Any = None,
        enabled: bool = True,
    ) -> None:
        self.network = network.module if hasattr(network, "module") else network
        # a network built with the bottleneck off (the "no transformer" ablation) keeps it off
        self.transformer_available = bool(getattr(self.network, "use_transformer", False))
        self.optimizer, self.base_lr, self.loss, self.scheduler = optimizer, float(base_lr), loss, scheduler
        self.stages = [dict(s) for s in (stages or self.DEFAULT_STAGES)]
        for s in self.stages[:-1]:
            if not s.get("epochs") or s["epochs"] < 0:
                raise ValueError(f"every stage but the last needs a positive 'epochs', got {s}")
        self.enabled = bool(enabled)
        self.current: int | None = None

    def stage_at(self, epoch: int) -> int:
        """0-based stage of a 1-based epoch."""
        end = 0
        for i, s in enumerate(self.stages):
            end += s.get("epochs") or 10**9
            if epoch <= end:
                return i
        return len(self.stages) - 1

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def rescale(self, factor: float) -> None:
        """Stretch (or shrink) every bounded stage by ``factor``, at least one epoch each: the
        schedule of a run whose epoch count :class:`TimeBudgetHandler` refits."""
        for s in self.stages[:-1]:
            s["epochs"] = max(1, round(s["epochs"] * factor))

    def __call__(self, engine: Engine) -> None:
        if not self.enabled:
            return
        stage = self.stage_at(engine.state.epoch)
        if stage != self.current:
            self.apply(stage, engine.state.epoch)

    def apply(self, stage: int, epoch: int) -> None:
        s = self.stages[stage]
        net = self.network
        if hasattr(net, "use_transformer"):
            net.use_transformer = self.transformer_available and bool(s.get("transformer", True))
        if hasattr(net, "freeze_encoder"):
            net.freeze_encoder(None if s.get("freeze_encoder") else 0)
            net.train(net.training)
        factors = [float(s.get("encoder_lr_factor", 1.0)), 1.0] if len(self.optimizer.param_groups) == 2 else [1.0] * len(self.optimizer.param_groups)
        for i, (group, f) in enumerate(zip(self.optimizer.param_groups, factors)):
            group["lr"] = self.base_lr * f
            if self.scheduler is not None:  # keep the schedule's shape: lr = base_lr * factor(epoch)
                self.scheduler.base_lrs[i] = self.base_lr * f
                group["lr"] *= self.scheduler.lr_lambdas[i](self.scheduler.last_epoch)
        if self.loss is not None and s.get("loss_weights"):
            self.loss.set_weights(s["loss_weights"])
        self.current = stage
        logger.info(
            "progressive training: stage %d/%d starts at epoch %d (transformer=%s, encoder %s, lr=%s)",
            stage + 1,
            len(self.stages),
            epoch,
            "on" if getattr(net, "use_transformer", False) else "off",
            "frozen" if s.get("freeze_encoder") else "trainable",
            ", ".join(f"{g['lr']:.2e}" for g in self.optimizer.param_groups),
        )


class TimeBudgetHandler:
    """Stop training cleanly once ``minutes`` of wall-clock time have passed since it started.

    Checked after every iteration; the engine then completes normally, so ``COMPLETED``
    handlers (final checkpoint, logs) run and the best checkpoint stays. The first epoch always
    runs to its end (and its validation), so a budgeted run always leaves a validated model.

    ``fit_epochs``: the epoch count is a plan made before training (from a timing of a few
    steps, which can be off by a fifth), so when the second epoch ends (the first reads films and
    warms allocators up) the run is re-planned from the time that epoch took, validation
    included: ``max_epochs``, the ``scheduler``'s :class:`WarmupCosine` total and the
    ``progressive`` handler's stages stretch or shrink to the epochs the rest of the budget holds,
    so the learning rate anneals by the budget's end instead of stopping early or mid-schedule.
    That plan prices every epoch like the first stage's, but the stages cost differently (on 2 CPU
    cores an epoch with the encoder frozen takes about half the time), so when the first epoch of
    each later stage ends the rest of the run is re-planned again (:attr:`replans`) from each
    stage's own measured epoch (stages not reached yet priced at the dearest measured): the
    remaining epochs of every bounded stage scale by one factor, the last stage takes what is left.
    """

    MARGIN = 0.97  # of the budget left: checkpoints and the last validation

    def __init__(self, minutes: float | None, fit_epochs: bool = False, scheduler: Any = None, progressive: Any = None) -> None:
        self.seconds = None if minutes is None or minutes <= 0 else float(minutes) * 60.0
        self.fit_epochs, self.scheduler, self.progressive = bool(fit_epochs), scheduler, progressive
        self.start: float | None = None
        self._epoch_start: float | None = None
        self.stopped = False
        self._stop_after_epoch = False
        self.refit: dict[str, Any] | None = None
        self.replans: list[dict[str, Any]] = []
        self._stage_seconds: dict[int, float] = {}  # measured seconds of one epoch, per progressive stage

    def attach(self, engine: Engine) -> None:
        if self.seconds is None:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        if self.fit_epochs:
            engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)

    def _started(self, engine: Engine) -> None:
        self.start = time.monotonic()

    def _epoch_started(self, engine: Engine) -> None:
        now = time.monotonic()
        if self._epoch_start is not None:
            ended, seconds = engine.state.epoch - 1, now - self._epoch_start
            if ended == 2 and self.refit is None:
                self._stage_seconds[self._stage(ended)] = seconds
                self._refit(engine, seconds, now - self.start)
            elif self.refit is not None and self._staged() and ended > 2:
                stage = self._stage(ended)
                if stage not in self._stage_seconds and stage != self._stage(ended - 1):  # a later stage's first epoch
                    self._stage_seconds[stage] = seconds
                    self._replan(engine, now - self.start)
        self._epoch_start = now

    def _staged(self) -> bool:
        return self.progressive is not None and self.progressive.enabled and len(self.progressive.stages) > 1

    def _stage(self, epoch: int) -> int:
        return self.progressive.stage_at(epoch) if self._staged() else 0

    def _replan(self, engine: Engine, elapsed_s: float) -> None:
        """Fit the epochs not run yet to the budget left, priced per stage (see the class notes)."""
        stages, done, total = self.progressive.stages, engine.state.epoch - 1, int(engine.state.max_epochs)
        ends = list(itertools.accumulate(int(s["epochs"]) for s in stages[:-1])) + [total]
        starts = [0] + ends[:-1]
        left = [max(0, end - max(done, start)) for start, end in zip(starts, ends)]
        dearest = max(self._stage_seconds.values())
        price = [self._stage_seconds.get(i, dearest) for i in range(len(stages))]
        budget_s = self.MARGIN * (self.seconds - elapsed_s)
        factor = budget_s / max(sum(n * p for n, p in zip(left, price)), 1e-6)
        if _distributed():  # every rank must plan the same schedule
            flag = torch.tensor([factor])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            factor = float(flag.item())
        new = [max(1, round(n * factor)) if n else 0 for n in left[:-1]]
        epochs = done + sum(new) + max(1, int((budget_s - sum(n * p for n, p in zip(new, price))) / price[-1]))
        if new == left[:-1] and epochs == total:
            return
        for s, start, end, n in zip(stages[:-1], starts, ends, new):
            s["epochs"] = max(0, min(done, end) - start) + n if n else s["epochs"]
        self.replans.append({"epoch": done, "stage_epoch_seconds": {str(k + 1): round(v, 2) for k, v in sorted(self._stage_seconds.items())},
                             "planned": total, "epochs": epochs})  # fmt: skip
        self._set_epochs(engine, epochs)
        logger.info("time budget: stage epochs take %s s, so the %.1f min left hold %d epochs, not the %d planned: schedule refitted",
                    "/".join(f"{p:.0f}" for p in price), budget_s / 60, epochs, total)  # fmt: skip

    def _set_epochs(self, engine: Engine, epochs: int) -> None:
        """Run ``epochs`` in all: the trainer's and the cosine's end move there (this epoch's rate
        taken from the new curve) and the progressive handler re-applies this epoch's stage."""
        engine.state.max_epochs = epochs
        if self.scheduler is not None:
            for f, group, base in zip(self.scheduler.lr_lambdas, self.scheduler.optimizer.param_groups, self.scheduler.base_lrs):
                if isinstance(f, WarmupCosine):
                    f.total = epochs
                    group["lr"] = base * f(self.scheduler.last_epoch)
        if self.progressive is not None:
            self.progressive(engine)  # it chose this epoch's stage before the refit

    def _refit(self, engine: Engine, epoch_s: float, elapsed_s: float) -> None:
        done, planned = engine.state.epoch - 1, int(engine.state.max_epochs)
        epochs = max(done + 1, done + int(self.MARGIN * (self.seconds - elapsed_s) / max(epoch_s, 1e-6)))
        if _distributed():  # every rank must plan the same schedule
            flag = torch.tensor([float(epochs)])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            epochs = int(flag.item())
        self.refit = {"epoch_seconds": round(epoch_s, 2), "planned": planned, "epochs": epochs}
        if epochs == planned:
            return
        if self.progressive is not None:
            self.progressive.rescale(epochs / planned)
        self._set_epochs(engine, epochs)
        logger.info("time budget: epoch %d took %.0f s, so %.1f min hold %d epochs, not the %d planned: schedule refitted",
                    done, epoch_s, self.seconds / 60, epochs, planned)  # fmt: skip

    def _check(self, engine: Engine) -> None:
        if self.stopped or self._stop_after_epoch:
            return
        over = self.start is not None and time.monotonic() - self.start > self.seconds
        if _distributed():  # every rank must stop at the same iteration, or the others hang
            flag = torch.tensor([float(over)])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            over = bool(flag.item())
        if not over:
            return
        if engine.state.epoch <= 1:  # no validated model yet: finish this epoch first
            self._stop_after_epoch = True
            return
        self._stop(engine)

    def _epoch_completed(self, engine: Engine) -> None:
        if self._stop_after_epoch and not self.stopped:
            self._stop(engine)  # handlers of this event (validation, checkpoints) still run

    def _stop(self, engine: Engine) -> None:
        self.stopped = True
        logger.info("time budget of %.1f min reached at epoch %d, iteration %d: stopping", self.seconds / 60, engine.state.epoch, engine.state.iteration)
        engine.terminate()


class BestMetricState:
    """Makes an evaluator's best metric part of a checkpoint, so a resumed run keeps
    comparing against the best-so-far value instead of starting over."""

    def __init__(self, evaluator: Engine) -> None:
        self.evaluator = evaluator

    def state_dict(self) -> dict[str, Any]:
        s = self.evaluator.state
        return {"best_metric": float(getattr(s, "best_metric", -1)), "best_metric_epoch": int(getattr(s, "best_metric_epoch", -1))}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.evaluator.state.best_metric = state["best_metric"]
        self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]


class GradientClipHandler:
    """Clip the gradient norm after backward and before the optimizer step (unscaling first
    under AMP, so the threshold applies to true gradients)."""

    def __init__(self, max_norm: float | None = 1.0) -> None:
        self.max_norm = None if not max_norm or max_norm <= 0 else float(max_norm)

    def attach(self, engine: Engine) -> None:
        if self.max_norm is not None:
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if getattr(engine, "scaler", None) is not None and engine.amp:
            engine.scaler.unscale_(engine.optimizer)
        params = [p for g in engine.optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.max_norm)


class TrainingCheckpoint:
    """Keep ``checkpoint_last.pt`` (everything needed to resume) after every epoch and at the
    end, and resume from it at start when ``resume`` is set.

    ``objects`` are things with ``state_dict``/``load_state_dict`` (network, optimizer,
    scheduler, EMA model, :class:`CheckpointInfo`, :class:`BestMetricState`); the trainer is
    added at :meth:`attach` (a config cannot reference the trainer from its own handlers).
    Writes are atomic: a kill mid-write leaves the previous checkpoint intact (and its temporary
    file is removed at the next start). Under DDP every
    rank resumes, rank 0 alone writes.
    """

    def __init__(self, save_dir: str | Path, objects: Mapping[str, Any], resume: bool = True, filename: str = "checkpoint_last.pt") -> None:
        self.path = Path(save_dir) / filename
        self.objects = dict(objects)
        self.resume = bool(resume)

    def attach(self, engine: Engine) -> None:
        self.objects["trainer"] = engine
        engine.add_event_handler(Events.STARTED, self._load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._save)
        engine.add_event_handler(Events.COMPLETED, self._save)

    def _load(self, engine: Engine) -> None:
        if not _distributed() or torch.distributed.get_rank() == 0:
            remove_unfinished_writes(self.path.parent, self.path.name)  # a write a killed run never finished
        if not (self.resume and self.path.is_file()):
            return
        state = load_checkpoint_file(self.path)
        max_epochs = engine.state.max_epochs
        for name, obj in self.objects.items():
            if name in state:
                obj.load_state_dict(state[name])
        engine.state.max_epochs = max(max_epochs, engine.state.epoch)
        logger.info("resumed from %s at epoch %d", self.path, engine.state.epoch)

    def _save(self, engine: Engine) -> None:
        if _distributed() and torch.distributed.get_rank() != 0:
            return
        state = {name: obj.state_dict() for name, obj in self.objects.items()}
        with atomic_write(self.path, "wb") as f:
            torch.save(state, f)


class AtomicDiskSaver(DiskSaver):
    """Ignite's ``DiskSaver`` writing through :func:`~maht_net.io.atomic.atomic_write`: a kill at
    any moment leaves the previous file or the complete new one (never none, never a torn one),
    with the mode a plain ``open`` gives. ``filename``, when given, replaces the name Ignite
    builds (as MONAI's ``CheckpointSaver`` does for ``key_metric_filename``); the old file under
    that name is then replaced by the rename, not deleted first. Temporary files a killed run
    left in ``dirname`` are removed on construction.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None, **kwargs: Any) -> None:
        super().__init__(dirname, atomic=True, require_empty=False, **kwargs)
        self.filename = filename
        if idist.get_rank() == self.save_on_rank:
            remove_unfinished_writes(self.dirname, filename or "*")

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)

    def _save_func(self, checkpoint: Mapping, path: Path, func: Any) -> None:
        with atomic_write(path, "wb") as f:
            func(checkpoint, f, **self.kwargs)

    def remove(self, filename: str) -> None:
        if self.filename is None:
            super().remove(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) whose files are written atomically.

    MONAI's saver deletes the old best ``model.pt`` and then writes the new one in place
    (Ignite's ``DiskSaver`` with ``atomic=False``): a kill in between leaves no model or a torn
    one. Here each of its Ignite ``Checkpoint`` objects saves through an :class:`AtomicDiskSaver`.
    """

    def __init__(self, save_dir: str, save_dict: dict, *args: Any, **kwargs: Any) -> None:
        super().__init__(save_dir, save_dict, *args, **kwargs)
        # MONAI builds its private DiskSavers in __init__ with no way to pass one in
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(save_dir, checkpoint.save_handler.filename)


class ProgressBarHandler:
    """Ignite's tqdm progress bar over the iterations of each epoch, when ``enabled``."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = bool(enabled)

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            from ignite.handlers import ProgressBar

            ProgressBar(persist=False).attach(engine)


def all_rank_handlers(handlers: Sequence[Any]) -> list[Any]:
    """The handlers every DDP rank runs: all but logging, progress and checkpoint writers,
    which rank 0 alone runs (:class:`TrainingCheckpoint` itself writes on rank 0 only)."""
    rank0_only = (StatsHandler, TensorBoardStatsHandler, CheckpointSaver, ProgressBarHandler)
    return [h for h in handlers if not isinstance(getattr(h, "handler", h), rank0_only)]


class Attach:
    """Attach a handler defined under its own config id (so other ids can reference it, e.g.
    the EMA model or the early-stop handler) from inside a handler list, where MONAI's bundle
    property check expects every entry to be a ``{"_target_": ...}`` dict."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    def attach(self, engine: Engine) -> None:
        self.handler.attach(engine)
