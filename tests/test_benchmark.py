"""The accuracy benchmark machinery on tiny settings (the figures themselves: docs/benchmarks.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maht_net.bench import accuracy as benchmark
from maht_net.datasets.phantom import make_phantom_dataset
from maht_net.io.datalist import read_datalist

TINY_TRACK = {"input_size": [64, 96], "batch_size": 4, "budget_minutes": 0.3}


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), n=14, seed=2, size=(128, 160))


def test_fold_datalists_share_the_test_set_and_partition_the_rest(datalist, tmp_path):
    doc = read_datalist(datalist)
    dev = {it["id"] for sec in ("training", "validation") for it in doc[sec]}
    paths = benchmark.cross_validation_datalists(datalist, 3, tmp_path, seed=1)
    folds = [json.loads(p.read_text()) for p in paths]
    vals = [{it["id"] for it in f["validation"]} for f in folds]
    assert set().union(*vals) == dev and sum(len(v) for v in vals) == len(dev)
    for f, v in zip(folds, vals):
        assert {it["id"] for it in f["training"]} == dev - v
        assert [it["id"] for it in f["test"]] == [it["id"] for it in doc["test"]]
        assert all(it["image"].startswith("/") for it in f["training"] + f["test"])


def test_epochs_are_fitted_to_the_budget():
    epochs, epoch_s = benchmark._fit_epochs(600, iter_s=1.0, iters_per_epoch=9, eval_s=0.1, n_val=10)
    assert epoch_s == pytest.approx(10.0) and epochs == int(0.92 * 60)
    assert benchmark._fit_epochs(1, 5.0, 10, 0.0, 0)[0] == 1


@pytest.mark.slow  # minutes of benchmark plumbing on CPU; make test-slow
def test_benchmark_run_trains_tests_and_tabulates(datalist, tmp_path, monkeypatch):
    monkeypatch.setitem(benchmark.TRACKS, "tiny", TINY_TRACK)
    res = benchmark.run_accuracy_benchmark(datalist, tmp_path, "tiny", ["maht_net", "unet"], folds=2, progress=False)
    names = [r["name"] for r in res["contenders"]]
    assert names == ["maht_net", "unet"]
    n_test = len(read_datalist(datalist)["test"])
    for r in res["contenders"]:
        errors = np.array(r["errors"], dtype=float)
        assert errors.shape == (n_test, 19) and np.isfinite(errors).all()
        assert r["summary"]["overall"]["mre"] == pytest.approx(errors.mean())
        assert len(r["fold_mre"]) == 2 and r["params"] > 0 and all(e >= 1 for e in r["epochs"])
        assert r["train_seconds"] < 90  # the budget (18 s) is a hard stop, plus caching and checkpoints
    unet = res["contenders"][1]["paired_vs_reference"]
    assert unet["n"] == n_test and unet["mean_difference"] == pytest.approx(
        np.mean(np.mean(res["contenders"][1]["errors"], 1) - np.mean(res["contenders"][0]["errors"], 1)))
    kinds = [e["name"] for e in res["ensembles"]]
    assert kinds == ["maht_net + TTA", "maht_net 2-fold ensemble (mean heatmap)", "maht_net 2-fold ensemble (mean coordinates)"]
    table = (tmp_path / "results.md").read_text()
    assert table.count("\n| maht_net") == 4 and "| unet |" in table and "| 19 articulare |" in table
    assert json.loads((tmp_path / "results.json").read_text())["track"] == "tiny"


def test_fixed_epochs_override_the_budget_fit(datalist, tmp_path):
    model = benchmark.train_contender("maht_net_no_gates", datalist, {**TINY_TRACK, "budget_minutes": 30.0}, tmp_path, progress=False, epochs=2)
    assert model.stats["epochs_planned"] == 2 and model.stats["epochs"] == 2  # a 30-minute budget would fit far more
    assert model.info["network_kwargs"]["attention_gates"] is False


def test_unknown_names_are_refused(datalist, tmp_path):
    with pytest.raises(ValueError, match="unknown contender"):
        benchmark.run_accuracy_benchmark(datalist, tmp_path, "cpu", ["maht_net", "nope"])
    with pytest.raises(ValueError, match="unknown track"):
        benchmark.run_accuracy_benchmark(datalist, tmp_path, "gpu")


# ----------------------------------------------------------------------------- corruptions
@pytest.mark.parametrize("name,removed", [("rotation", 0), ("crop_vault", 1), ("crop_chin", 1), ("blur", 0)])
def test_corruptions_move_landmarks_with_the_film(name, removed):
    from maht_net.bench.robustness import corrupt

    img = np.zeros((200, 160), np.float32)
    pts = np.array([[40.0, 30.0], [120.0, 110.0], [80.0, 185.0]])  # (x, y)
    for x, y in pts.astype(int):
        img[y - 1 : y + 2, x - 1 : x + 2] = 1.0
    out, moved = corrupt(name, img, pts, 2)
    kept = np.isfinite(moved).all(1)
    assert int((~kept).sum()) == removed
    for x, y in moved[kept]:
        xi, yi = int(round(x)), int(round(y))
        patch = out[yi - 4 : yi + 5, xi - 4 : xi + 5]
        yy, xx = np.mgrid[yi - 4 : yi + 5, xi - 4 : xi + 5]
        assert patch.sum() > 1.0
        assert np.hypot((patch * xx).sum() / patch.sum() - x, (patch * yy).sum() / patch.sum() - y) < 0.5


def test_robustness_benchmark_rows(tiny_checkpoint, datalist):
    from maht_net.bench.robustness import format_markdown, run_robustness_benchmark
    from maht_net.inference.predictor import Predictor

    res = run_robustness_benchmark(Predictor.from_checkpoint(tiny_checkpoint), datalist, corruptions=["inverted", "jpeg"], severities=[1, 3])
    assert [(r["corruption"], r["severity"]) for r in res["rows"]] == [("clean", 0), ("inverted", 1), ("jpeg", 1), ("jpeg", 3)]
    assert res["rows"][0]["ratio_to_clean"] == 1.0 and all(r["points"] == res["images"] * 19 for r in res["rows"])
    table = format_markdown(res, res, ("a", "b"))
    assert "| jpeg | 3 |" in table and "a MRE mm" in table and "b MRE mm" in table
