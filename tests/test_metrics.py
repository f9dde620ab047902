"""Radial error, summaries, bootstrap intervals, paired comparison and the Ignite metric."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError

from maht_net.bench.metrics import (
    RadialErrorMetric,
    format_comparison,
    format_table,
    paired_comparison,
    radial_errors,
    summarize,
)

NAN = np.nan


def test_radial_errors_3_4_5_in_pixels_without_spacing():
    true = np.array([[10.0, 20.0], [0.0, 0.0]])
    pred = np.array([[13.0, 24.0], [-6.0, 8.0]])  # (dx, dy) = (3, 4) and (-6, 8)
    np.testing.assert_allclose(radial_errors(pred, true), [5.0, 10.0])


def test_radial_errors_anisotropic_spacing_per_axis():
    true = np.zeros((1, 2, 2))
    pred = np.array([[[6.0, 2.0], [3.0, 0.0]]])
    # sx = 0.5, sy = 2.0 mm/px: (6 * 0.5, 2 * 2) = (3, 4) mm -> 5; (1.5, 0) -> 1.5
    np.testing.assert_allclose(radial_errors(pred, true, (0.5, 2.0)), [[5.0, 1.5]])
    # swapping the axes of the spacing changes the answer: x really is the column axis
    np.testing.assert_allclose(radial_errors(pred, true, (2.0, 0.5)), [[np.hypot(12.0, 1.0), 6.0]])


def test_radial_errors_per_image_spacing():
    true = np.zeros((2, 1, 2))
    pred = np.array([[[3.0, 4.0]], [[3.0, 4.0]]])
    np.testing.assert_allclose(radial_errors(pred, true, [[0.1, 0.1], [0.2, 0.2]]), [[0.5], [1.0]])


def test_radial_errors_nan_where_truth_or_prediction_missing():
    true = np.array([[0.0, 0.0], [NAN, NAN], [1.0, 1.0]])
    pred = np.array([[3.0, 4.0], [1.0, 1.0], [NAN, NAN]])
    e = radial_errors(pred, true, (0.1, 0.1))
    assert e[0] == pytest.approx(0.5) and np.isnan(e[1]) and np.isnan(e[2])


@pytest.mark.parametrize(
    "pred,true,spacing",
    [
        (np.zeros((3, 2)), np.zeros((4, 2)), None),
        (np.zeros((3, 3)), np.zeros((3, 3)), None),
        (np.zeros((2, 3, 2)), np.zeros((2, 3, 2)), np.ones((3, 2))),
        (np.zeros((3, 2)), np.zeros((3, 2)), (0.1, 0.0)),
        (np.zeros((3, 2)), np.zeros((3, 2)), (0.1, NAN)),
    ],
)
def test_radial_errors_rejects_bad_shapes_and_spacing(pred, true, spacing):
    with pytest.raises(ValueError):
        radial_errors(pred, true, spacing)


def test_summarize_hand_computed():
    errors = np.array([[1.0, 2.0, 3.0], [4.0, NAN, 6.0]])
    s = summarize(errors, thresholds=(2.0, 4.0), landmark_names=["a", "b", "c"], ids=["x", "y"], n_bootstrap=0)
    o = s["overall"]
    assert s["unit"] == "mm"
    assert s["counts"] == {
        "images": 2,
        "images_evaluated": 2,
        "landmarks": 3,
        "points_evaluated": 5,
        "points_missing": 1,
    }
    assert o["mre"] == pytest.approx(16.0 / 5)
    assert o["sd"] == pytest.approx(np.std([1, 2, 3, 4, 6]))
    assert o["median"] == pytest.approx(3.0)
    assert o["sdr"] == {"2.0": pytest.approx(40.0), "4.0": pytest.approx(80.0)}
    assert o["mre_ci95"] is None
    a, b, c = s["per_landmark"]
    assert (a["index"], a["name"], a["n"], a["mre"]) == (1, "a", 2, pytest.approx(2.5))
    assert (b["n"], b["mre"], b["sd"]) == (1, pytest.approx(2.0), pytest.approx(0.0))
    assert c["sdr"] == {"2.0": 0.0, "4.0": 50.0}  # errors 3 and 6
    assert [(w["id"], w["landmark"], w["error"]) for w in s["worst"][:2]] == [("y", "c", 6.0), ("y", "a", 4.0)]
    assert len(s["worst"]) == 5  # never lists a missing point
    json.dumps(s, allow_nan=False)


def test_sdr_threshold_is_inclusive():
    # a 3-4-5 triangle at 0.5 mm/px is exactly 2.5 mm: counted within 2.5 mm, not within 2.0 mm
    e = radial_errors(np.array([[3.0, 4.0]]), np.zeros((1, 2)), (0.5, 0.5))
    assert e[0] == 2.5
    s = summarize(e[None], thresholds=(2.0, 2.5), n_bootstrap=0)
    assert s["overall"]["sdr"] == {"2.0": 0.0, "2.5": 100.0}
    assert "<=" in s["definitions"]["sdr"]


def test_summarize_all_missing_landmark_and_image():
    errors = np.array([[1.0, NAN], [NAN, NAN]])
    s = summarize(errors, n_bootstrap=100, unit="px")
    assert s["unit"] == "px"
    assert s["counts"]["images_evaluated"] == 1 and s["counts"]["points_missing"] == 3
    assert s["per_landmark"][1]["n"] == 0 and s["per_landmark"][1]["mre"] is None
    assert s["overall"]["mre_ci95"] == [1.0, 1.0]
    json.dumps(s, allow_nan=False)
    assert "px" in format_table(s)


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_images():
    rng = np.random.default_rng(1)

    def width(m: int) -> float:
        errors = rng.gamma(2.0, 0.8, size=(m, 19))
        s = summarize(errors, n_bootstrap=1000, seed=3)
        lo, hi = s["overall"]["mre_ci95"]
        assert lo <= s["overall"]["mre"] <= hi
        for key, (slo, shi) in s["overall"]["sdr_ci95"].items():
            assert slo <= s["overall"]["sdr"][key] <= shi
        return hi - lo

    small, large = width(10), width(400)
    assert large < small / 3  # ~ 1 / sqrt(40) in theory


def test_bootstrap_is_deterministic_for_a_seed():
    errors = np.random.default_rng(0).gamma(2.0, 0.8, size=(30, 5))
    a = summarize(errors, n_bootstrap=500, seed=7)["overall"]["mre_ci95"]
    b = summarize(errors, n_bootstrap=500, seed=7)["overall"]["mre_ci95"]
    c = summarize(errors, n_bootstrap=500, seed=8)["overall"]["mre_ci95"]
    assert a == b and a != c


def test_paired_comparison_detects_a_consistent_shift():
    rng = np.random.default_rng(0)
    b = rng.gamma(2.0, 0.8, size=(40, 19))
    a = b + 0.3 + rng.normal(0.0, 0.05, size=b.shape)
    c = paired_comparison(a, b, n_bootstrap=1000)
    assert c["n"] == 40 and c["p_value"] < 1e-6
    assert c["mean_difference"] == pytest.approx(0.3, abs=0.02)
    lo, hi = c["mean_difference_ci95"]
    assert 0.0 < lo <= c["mean_difference"] <= hi
    assert c["b_better"] == 40 and c["a_better"] == 0
    assert "Wilcoxon" in format_comparison(c)


def test_paired_comparison_null_is_not_significant():
    rng = np.random.default_rng(0)
    a, b = rng.gamma(2.0, 0.8, size=(2, 40, 19))
    c = paired_comparison(a, b, n_bootstrap=1000)
    assert c["p_value"] > 0.05
    lo, hi = c["mean_difference_ci95"]
    assert lo < 0.0 < hi


def test_paired_comparison_uses_points_present_in_both_and_identical_inputs():
    a = np.array([[1.0, 10.0], [2.0, 2.0], [NAN, NAN]])
    b = np.array([[1.0, NAN], [1.0, 1.0], [1.0, 1.0]])
    c = paired_comparison(a, b, ids=["p", "q", "r"], n_bootstrap=0)
    # image p: only landmark 1 is in both (1 vs 1); image r has no common point and is dropped
    assert c["n"] == 2 and [r["id"] for r in c["per_image"]] == ["p", "q"]
    assert [r["difference"] for r in c["per_image"]] == [0.0, 1.0]
    same = paired_comparison(b, b, n_bootstrap=10)
    assert same["p_value"] == 1.0 and same["mean_difference"] == 0.0
    json.dumps(c, allow_nan=False)


def test_format_table_lists_every_landmark():
    errors = np.random.default_rng(0).gamma(2.0, 0.8, size=(5, 3))
    text = format_table(summarize(errors, landmark_names=["sella", "nasion", "orbitale"], n_bootstrap=50))
    for word in ("MRE", "SDR", "sella", "nasion", "orbitale", "95% CI", "mm"):
        assert word in text


def _batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    out = []
    for b in (2, 3, 1):
        true = rng.uniform(0, 500, size=(b, 4, 2))
        pred = true + rng.normal(0, 15, size=true.shape)
        true[0, 1] = NAN  # a missing annotation per batch
        spacing = rng.uniform(0.08, 0.15, size=(b, 2))
        out.append(tuple(torch.as_tensor(a) for a in (pred, true, spacing)))
    return out


def _run_engine(metric: RadialErrorMetric, data: list, name: str = "m") -> float:
    engine = Engine(lambda engine, batch: batch)
    metric.attach(engine, name)
    return engine.run(data, max_epochs=1).metrics[name]


def test_ignite_metric_matches_radial_errors_over_three_batches():
    data = _batches()
    errors = np.concatenate([radial_errors(p.numpy(), t.numpy(), s.numpy()).ravel() for p, t, s in data])
    errors = errors[np.isfinite(errors)]
    assert _run_engine(RadialErrorMetric(), data) == pytest.approx(errors.mean())
    assert _run_engine(RadialErrorMetric(sdr_threshold=2.0), data) == pytest.approx(100.0 * np.mean(errors <= 2.0))


def test_ignite_metric_pixels_dict_output_and_decollated_lists():
    data = _batches()
    px = np.concatenate([radial_errors(p.numpy(), t.numpy()).ravel() for p, t, _ in data])
    px = px[np.isfinite(px)].mean()
    assert _run_engine(RadialErrorMetric(output_transform=lambda o: o[:2]), data) == pytest.approx(px)
    # a MONAI-style decollated output: per-sample lists of dicts, picked with an output_transform
    decollated = [[{"pred_points": p[i], "points": t[i], "spacing": s[i]} for i in range(len(p))] for p, t, s in data]

    def pick(output):
        return tuple([d[k] for d in output] for k in ("pred_points", "points", "spacing"))

    mm = np.concatenate([radial_errors(p.numpy(), t.numpy(), s.numpy()).ravel() for p, t, s in data])
    assert _run_engine(RadialErrorMetric(output_transform=pick), decollated) == pytest.approx(np.nanmean(mm))


def test_ignite_metric_resets_between_epochs_and_refuses_empty_or_mixed_units():
    data = _batches()
    engine = Engine(lambda engine, batch: batch)
    RadialErrorMetric().attach(engine, "mre")
    first = engine.run(data, max_epochs=1).metrics["mre"]
    assert engine.run(data, max_epochs=1).metrics["mre"] == pytest.approx(first)

    metric = RadialErrorMetric()
    with pytest.raises(NotComputableError):
        metric.compute()
    p, t, s = data[0]
    metric.update((p, t, s))
    with pytest.raises(ValueError, match="px"):
        metric.update((p, t, None))
