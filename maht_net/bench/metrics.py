"""Landmark detection metrics: radial error, MRE, SDR, bootstrap intervals, paired comparison.

Points follow :mod:`maht_net.landmarks`: ``(x, y)`` pixels of the original image (x = column,
y = row), NaN for a missing landmark. Errors are Euclidean distances in millimetres when the
pixel spacing ``(sx, sy)`` (mm/px) is known, in pixels otherwise; anisotropic spacing is applied
per axis before the distance is taken.

Definitions used throughout (stated in every summary so a reader need not guess):

- MRE: mean radial error over every evaluated point, pooled over images and landmarks.
- SD: population standard deviation (``ddof=0``) of the same points, as in the ISBI 2015
  challenge evaluation.
- SDR at ``t``: percentage of evaluated points with error ``<= t`` (inclusive).
- A point is evaluated when both truth and prediction are present; the others are skipped and
  counted as missing.
- 95% confidence intervals: percentile bootstrap over images (points of one image are
  correlated, so images, not points, are the resampling unit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from scipy import stats

from maht_net.formatting import fmt_number

__all__ = [
    "DEFAULT_THRESHOLDS",
    "SDR_DEFINITION",
    "radial_errors",
    "summarize",
    "paired_comparison",
    "format_table",
    "format_comparison",
    "RadialErrorMetric",
]

DEFAULT_THRESHOLDS: tuple[float, ...] = (2.0, 2.5, 3.0, 4.0)
"""SDR thresholds of the ISBI 2015 challenge (mm)."""

SDR_DEFINITION = "percentage of evaluated points with radial error <= threshold (inclusive)"

_CONFIDENCE = 0.95
_BOOTSTRAP_CELLS = 1 << 20  # resampling weights held in memory at once (chunk x images)


def _threshold_key(t: float) -> str:
    """JSON key of a threshold: ``2.0 -> "2.0"``, ``2.5 -> "2.5"``."""
    return str(float(t))


def _num(v: Any) -> float | None:
    """A finite number as ``float``, anything else (NaN, inf, None) as ``None`` (JSON null)."""
    return float(v) if v is not None and np.isfinite(v) else None


def radial_errors(
    pred: np.ndarray | Sequence, true: np.ndarray | Sequence, spacing: np.ndarray | Sequence[float] | None = None
) -> np.ndarray:
    """Euclidean distance between predicted and true landmarks, per point.

    Args:
        pred: ``(N, 2)`` or ``(B, N, 2)`` predicted ``(x, y)`` pixels; NaN = not placed.
        true: same shape, ground-truth ``(x, y)`` pixels; NaN = not annotated.
        spacing: ``None`` (errors in pixels), ``(sx, sy)`` mm/px for every image, or ``(B, 2)``
            per image. Applied per axis, so anisotropic pixels are handled exactly.

    Returns:
        ``(N,)`` or ``(B, N)`` errors in mm (pixels when ``spacing`` is ``None``); NaN where the
        truth or the prediction is missing.

    Raises:
        ValueError: mismatched shapes, or a spacing that is not finite and positive.
    """
    pred = np.asarray(pred, dtype=float)
    true = np.asarray(true, dtype=float)
    if pred.shape != true.shape or pred.ndim not in (2, 3) or pred.shape[-1] != 2:
        raise ValueError(f"pred and true must both be (N, 2) or (B, N, 2), got {pred.shape} and {true.shape}")
    diff = pred - true
    if spacing is not None:
        sp = np.asarray(spacing, dtype=float)
        if sp.shape == (2,):
            scale = sp
        elif sp.ndim == 2 and pred.ndim == 3 and sp.shape == (pred.shape[0], 2):
            scale = sp[:, None, :]
        else:
            raise ValueError(f"spacing must be (sx, sy) or (B, 2) for points of shape {pred.shape}, got {sp.shape}")
        if not np.all(np.isfinite(sp) & (sp > 0)):
            raise ValueError(f"spacing must be finite and positive (mm/px), got {sp.tolist()}")
        diff = diff * scale
    return np.sqrt(np.sum(diff * diff, axis=-1))


def _as_image_matrix(errors: np.ndarray | Sequence) -> np.ndarray:
    errors = np.asarray(errors, dtype=float)
    if errors.ndim == 1:
        errors = errors[None]
    if errors.ndim != 2:
        raise ValueError(f"errors must be (images, landmarks), got shape {errors.shape}")
    return errors


def _bootstrap_ratios(values: np.ndarray, counts: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """Resample images with replacement; return ``sum(values) / sum(counts)`` per replicate.

    Args:
        values: ``(M, K)`` per-image sums of ``K`` statistics.
        counts: ``(M,)`` per-image denominators (evaluated points).

    Returns:
        ``(n_bootstrap, K)``.
    """
    rng = np.random.default_rng(seed)
    m = len(counts)
    chunk = max(1, _BOOTSTRAP_CELLS // m)
    out = []
    for start in range(0, n_bootstrap, chunk):
        # multinomial weights == the number of times each image is drawn in one replicate
        w = rng.multinomial(m, np.full(m, 1.0 / m), size=min(chunk, n_bootstrap - start)).astype(float)
        out.append((w @ values) / (w @ counts)[:, None])
    return np.concatenate(out)


def _interval(samples: np.ndarray) -> list[float | None]:
    lo, hi = np.percentile(samples, [50 * (1 - _CONFIDENCE), 50 * (1 + _CONFIDENCE)])
    return [_num(lo), _num(hi)]


def _point_stats(e: np.ndarray, thresholds: Sequence[float]) -> dict[str, Any]:
    """MRE, SD, median and SDR of a flat array of evaluated (finite) errors."""
    n = int(e.size)
    return {
        "n": n,
        "mre": _num(e.mean()) if n else None,
        "sd": _num(e.std()) if n else None,
        "median": _num(np.median(e)) if n else None,
        "sdr": {_threshold_key(t): (_num(100.0 * np.mean(e <= t)) if n else None) for t in thresholds},
    }


def summarize(
    errors: np.ndarray | Sequence,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    landmark_names: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
    unit: str = "mm",
    top_k: int = 10,
) -> dict[str, Any]:
    """Summary statistics of a matrix of radial errors; JSON-serializable (NaN -> ``None``).

    Args:
        errors: ``(M, N)`` errors, one row per image, one column per landmark (a ``(N,)`` row is
            one image); NaN = not evaluated (skipped everywhere and counted as missing).
        thresholds: SDR thresholds in ``unit``; SDR counts errors ``<= t`` (inclusive).
        landmark_names: ``N`` names (default ``l1`` .. ``lN``).
        ids: ``M`` image ids (default ``"0"`` .. ``"M-1"``), used for the worst cases.
        n_bootstrap: bootstrap replicates for the 95% intervals (``0``: no intervals).
        seed: bootstrap random seed (the result is deterministic for a given seed).
        unit: ``"mm"`` or ``"px"``, recorded in the summary.
        top_k: number of worst image/landmark pairs listed.

    Returns:
        ``{"unit", "thresholds", "definitions", "counts", "overall", "per_landmark", "worst",
        "bootstrap"}``; ``overall`` holds ``mre``, ``sd``, ``median``, ``sdr`` (percent, keyed by
        ``str(float(t))``), ``mre_ci95`` and ``sdr_ci95``.
    """
    errors = _as_image_matrix(errors)
    m, n = errors.shape
    names = list(landmark_names) if landmark_names is not None else [f"l{k + 1}" for k in range(n)]
    ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(m)]
    if len(names) != n or len(ids) != m:
        raise ValueError(f"got {len(names)} landmark names and {len(ids)} ids for errors of shape {errors.shape}")
    thresholds = [float(t) for t in thresholds]
    valid = np.isfinite(errors)
    per_image_n = valid.sum(axis=1)

    overall = _point_stats(errors[valid], thresholds)
    overall["mre_ci95"] = None
    overall["sdr_ci95"] = {_threshold_key(t): None for t in thresholds}
    evaluated = per_image_n > 0
    if n_bootstrap > 0 and evaluated.any():
        e = np.where(valid, errors, 0.0)[evaluated]
        hits = [(np.where(valid, errors, np.inf) <= t)[evaluated].sum(axis=1) for t in thresholds]
        values = np.stack([e.sum(axis=1), *hits], axis=1).astype(float)
        boot = _bootstrap_ratios(values, per_image_n[evaluated].astype(float), n_bootstrap, seed)
        overall["mre_ci95"] = _interval(boot[:, 0])
        overall["sdr_ci95"] = {_threshold_key(t): _interval(100.0 * boot[:, 1 + i]) for i, t in enumerate(thresholds)}

    per_landmark = [
        {"index": k + 1, "name": names[k], **_point_stats(errors[valid[:, k], k], thresholds)} for k in range(n)
    ]
    flat = np.where(valid, errors, -np.inf).ravel()
    order = np.argsort(-flat, kind="stable")[: min(top_k, int(valid.sum()))]
    worst = [
        {"id": ids[i // n], "index": i % n + 1, "landmark": names[i % n], "error": float(flat[i])}
        for i in order.tolist()
    ]
    return {
        "unit": unit,
        "thresholds": thresholds,
        "definitions": {
            "mre": "mean radial error over evaluated points, pooled over images and landmarks",
            "sd": "population standard deviation (ddof=0) over evaluated points",
            "sdr": SDR_DEFINITION,
            "ci95": "percentile bootstrap over images",
        },
        "counts": {
            "images": m,
            "images_evaluated": int(evaluated.sum()),
            "landmarks": n,
            "points_evaluated": int(valid.sum()),
            "points_missing": int(valid.size - valid.sum()),
        },
        "overall": overall,
        "per_landmark": per_landmark,
        "worst": worst,
        "bootstrap": {"replicates": int(n_bootstrap), "seed": int(seed), "resampling_unit": "image"},
    }


def paired_comparison(
    errors_a: np.ndarray | Sequence,
    errors_b: np.ndarray | Sequence,
    ids: Sequence[str] | None = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
    unit: str = "mm",
) -> dict[str, Any]:
    """Compare two methods on the same images: per-image MRE difference ``A - B``.

    Each image's MRE is taken over the landmarks evaluated in both ``A`` and ``B`` (so a point
    one method skipped does not bias the difference); images with no such landmark are dropped.
    A negative mean difference means ``A`` has the smaller error.

    Args:
        errors_a, errors_b: ``(M, N)`` errors of the same images and landmarks, NaN = missing.
        ids: ``M`` image ids.
        n_bootstrap: replicates of the bootstrap 95% interval of the mean difference.

    Returns:
        ``{"unit", "n", "mre_a", "mre_b", "mean_difference", "mean_difference_ci95",
        "median_difference", "a_better", "b_better", "wilcoxon_statistic", "p_value",
        "per_image"}``; ``p_value`` is the two-sided Wilcoxon signed-rank test of the
        per-image differences (``1.0`` when every difference is zero, ``None`` for no image).
    """
    a, b = _as_image_matrix(errors_a), _as_image_matrix(errors_b)
    if a.shape != b.shape:
        raise ValueError(f"errors_a and errors_b must have the same shape, got {a.shape} and {b.shape}")
    ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(a.shape[0])]
    if len(ids) != a.shape[0]:
        raise ValueError(f"got {len(ids)} ids for {a.shape[0]} images")
    both = np.isfinite(a) & np.isfinite(b)
    keep = both.any(axis=1)
    count = both.sum(axis=1)[keep].astype(float)
    mre_a = np.where(both, a, 0.0)[keep].sum(axis=1) / count
    mre_b = np.where(both, b, 0.0)[keep].sum(axis=1) / count
    diff = mre_a - mre_b
    n = int(diff.size)
    result: dict[str, Any] = {
        "unit": unit,
        "n": n,
        "definition": "per-image MRE over landmarks evaluated in both; difference = A - B (negative: A better)",
        "mre_a": _num(mre_a.mean()) if n else None,
        "mre_b": _num(mre_b.mean()) if n else None,
        "mean_difference": _num(diff.mean()) if n else None,
        "mean_difference_ci95": None,
        "median_difference": _num(np.median(diff)) if n else None,
        "a_better": int(np.sum(diff < 0)),
        "b_better": int(np.sum(diff > 0)),
        "wilcoxon_statistic": None,
        "p_value": None,
        "per_image": [
            {"id": i, "mre_a": float(x), "mre_b": float(y), "difference": float(d)}
            for i, x, y, d in zip([ids[j] for j in np.flatnonzero(keep)], mre_a, mre_b, diff)
        ],
    }
    if n and n_bootstrap > 0:
        boot = _bootstrap_ratios(diff[:, None], np.ones(n), n_bootstrap, seed)
        result["mean_difference_ci95"] = _interval(boot[:, 0])
    if n and np.any(diff != 0):
        test = stats.wilcoxon(diff)
        result["wilcoxon_statistic"] = _num(test.statistic)
        result["p_value"] = _num(test.pvalue)
    elif n:
        result["wilcoxon_statistic"], result["p_value"] = 0.0, 1.0
    return result



def _fmt_ci(ci: Sequence[float | None] | None, digits: int = 2) -> str:
    return "" if ci is None else f" [95% CI {fmt_number(ci[0], digits)}-{fmt_number(ci[1], digits)}]"


def format_table(summary: dict[str, Any]) -> str:
    """A printable table of a :func:`summarize` result: overall figures, then one row per landmark."""
    u, c, o = summary["unit"], summary["counts"], summary["overall"]
    keys = [_threshold_key(t) for t in summary["thresholds"]]
    lines = [
        f"Radial error ({u}): {c['images']} images, {c['points_evaluated']} points evaluated, "
        f"{c['points_missing']} missing skipped",
        f"MRE {fmt_number(o['mre'])} +/- {fmt_number(o['sd'])} {u}{_fmt_ci(o['mre_ci95'])}, median {fmt_number(o['median'])} {u}",
    ]
    lines += [f"SDR <= {k} {u}: {fmt_number(o['sdr'][k], 1)}%{_fmt_ci(o['sdr_ci95'][k], 1)}" for k in keys]
    name_w = max([len("landmark")] + [len(r["name"]) for r in summary["per_landmark"]])
    head = f"{'#':>3} {'landmark':<{name_w}} {'n':>5} {'MRE':>7} {'SD':>7} {'median':>7}" + "".join(
        f" {'SDR' + k:>8}" for k in keys
    )
    lines += ["", head, "-" * len(head)]
    for r in summary["per_landmark"]:
        lines.append(
            f"{r['index']:>3} {r['name']:<{name_w}} {r['n']:>5} {fmt_number(r['mre']):>7} {fmt_number(r['sd']):>7} "
            f"{fmt_number(r['median']):>7}" + "".join(f" {fmt_number(r['sdr'][k], 1):>8}" for k in keys)
        )
    if summary["worst"]:
        worst = ", ".join(f"{w['id']}/{w['landmark']} {w['error']:.2f}" for w in summary["worst"])
        lines += ["", f"Worst points ({u}): {worst}"]
    return "\n".join(lines)


def format_comparison(comparison: dict[str, Any], name_a: str = "A", name_b: str = "B") -> str:
    """One paragraph for a :func:`paired_comparison` result."""
    c, u = comparison, comparison["unit"]
    p = "-" if c["p_value"] is None else f"{c['p_value']:.3g}"
    return (
        f"Paired comparison over {c['n']} images ({name_a} vs {name_b}): per-image MRE {fmt_number(c['mre_a'])} vs "
        f"{fmt_number(c['mre_b'])} {u}; mean difference ({name_a} - {name_b}) {fmt_number(c['mean_difference'], 3)} {u}"
        f"{_fmt_ci(c['mean_difference_ci95'], 3)}; {name_a} better on {c['a_better']}, {name_b} better on "
        f"{c['b_better']}; Wilcoxon signed-rank p = {p}"
    )


def _batch_array(value: Any) -> np.ndarray:
    """A tensor, array or per-sample list of them (MONAI decollated output) -> stacked float array."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64).numpy()
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (torch.Tensor, np.ndarray, list, tuple)):
        return np.stack([_batch_array(v) for v in value])
    return np.asarray(value, dtype=float)


class RadialErrorMetric(Metric):
    """Ignite metric: mean radial error (or SDR) accumulated over an epoch, distributed-safe.

    ``output_transform(engine.state.output)`` must give ``(pred_points, true_points)`` or
    ``(pred_points, true_points, spacing)``:

    - ``pred_points``, ``true_points``: ``(B, N, 2)`` ``(x, y)`` pixels (tensors or arrays, or
      per-sample lists of ``(N, 2)`` as MONAI's ``from_engine(..., first=False)`` returns for
      decollated output); NaN = missing, skipped.
    - ``spacing``: ``(B, 2)`` mm/px (or a per-sample list of ``(sx, sy)``), or ``None`` for
      pixel errors. A batch collated from tuples ``(sx, sy)`` arrives as two ``(B,)`` tensors:
      stack them to ``(B, 2)`` in ``output_transform``.

    Sums and counts are reduced across processes in :meth:`compute`, so the value is the pooled
    MRE of the whole data set, not a mean of per-process means.

    Args:
        sdr_threshold: when given, :meth:`compute` returns the SDR at this threshold (percent of
            points with error ``<= threshold``, same unit as the errors) instead of the MRE.
            Attach one instance per figure, e.g. ``"mre"`` and ``"sdr_2mm"``.
        output_transform: maps ``engine.state.output`` to the tuple above.
        device: where the accumulators live for the distributed reduction.

    Example::

        RadialErrorMetric(output_transform=lambda o: (o["pred_points"], o["points"], o["spacing"])).attach(
            evaluator, "mre")

    With MONAI's evaluators, pass ``metric_cmp_fn=lambda cur, prev: cur < prev`` when the MRE is
    the key metric (lower is better; MONAI assumes higher is better).
    """

    required_output_keys = None  # a mapping output needs an output_transform (spacing must not be dropped)

    def __init__(
        self,
        sdr_threshold: float | None = None,
        output_transform: Callable[[Any], Any] = lambda x: x,
        device: str | torch.device = torch.device("cpu"),
    ):
        self.sdr_threshold = None if sdr_threshold is None else float(sdr_threshold)
        super().__init__(output_transform=output_transform, device=device, skip_unrolling=True)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum_errors = 0.0
        self._num_points = 0
        self._num_within = 0
        self._unit: str | None = None

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        if not isinstance(output, (list, tuple)) or len(output) not in (2, 3):
            raise ValueError(
                "RadialErrorMetric expects (pred_points, true_points) or (pred_points, true_points, spacing), "
                f"got {type(output).__name__}"
            )
        pred, true = _batch_array(output[0]), _batch_array(output[1])
        spacing = output[2] if len(output) == 3 else None
        if isinstance(spacing, (list, tuple)) and all(s is None for s in spacing):
            spacing = None
        spacing = None if spacing is None else _batch_array(spacing)
        unit = "px" if spacing is None else "mm"
        if self._unit not in (None, unit):
            raise ValueError(f"RadialErrorMetric got errors in {unit} after errors in {self._unit} in the same run")
        self._unit = unit
        errors = radial_errors(pred, true, spacing)
        e = errors[np.isfinite(errors)]
        self._sum_errors += float(e.sum())
        self._num_points += int(e.size)
        if self.sdr_threshold is not None:
            self._num_within += int(np.sum(e <= self.sdr_threshold))

    @sync_all_reduce("_sum_errors", "_num_points", "_num_within")
    def compute(self) -> float:
        if self._num_points == 0:
            raise NotComputableError("RadialErrorMetric needs at least one evaluated point before compute()")
        if self.sdr_threshold is not None:
            return 100.0 * self._num_within / self._num_points
        return self._sum_errors / self._num_points
