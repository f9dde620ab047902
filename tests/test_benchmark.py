"""The accuracy benchmark machinery on tiny settings (the figures themselves: docs/benchmarks.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maht_net.bench import accuracy as benchmark
from maht_net.datasets.phantom import make_phantom_dataset
from maht_net.errors import InputError
from maht_net.io.datalist import load_datalist, read_datalist

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


@pytest.mark.slow  # a minute of training on CPU; make test-slow
def test_two_stage_contender_spends_the_rest_of_the_budget_on_refinement(datalist, tmp_path):
    contender = benchmark.Contender("two_stage", "test", batch_size=2, refine_share=0.3)
    model = benchmark.train_bundle_contender(contender, datalist, TINY_TRACK, 0.4, tmp_path, progress=False, epochs=1)
    assert model.refiner is not None and model.stats["batch_size"] == 2  # the contender's batch, not the track's 4
    refine = model.stats["refine"]
    assert refine["iterations"] >= 1 and refine["seconds"] > 0 and model.stats["train_seconds"] > refine["seconds"]
    assert model.stats["train_seconds"] <= 0.4 * 60 + 20  # one budget for both stages (plus checkpoint writes)
    items = load_datalist(datalist, "test")
    first, _ = benchmark.predict(model.network, model.info, items)
    both, _ = benchmark.predict(model.network, model.info, items, refiner=model.refiner)
    assert first.shape == both.shape and not np.allclose(first, both)  # the stage moved the landmarks


def test_mixed_sites_get_per_site_figures_and_paired_tests(tmp_path):
    """Per-site summaries and paired tests are those of each site's films alone."""
    rng = np.random.default_rng(0)
    ids, sites = [f"f{i}" for i in range(8)], ["a"] * 5 + ["b"] * 3
    ref_errors, other_errors = rng.gamma(2.0, 0.6, (8, 19)), rng.gamma(2.0, 0.6, (8, 19)) + np.array([0.0] * 5 + [1.0] * 3)[:, None]
    names = [f"l{k}" for k in range(19)]
    ref = benchmark._result("ref", ref_errors, ids, names, {}, sites)
    other = benchmark._result("other", other_errors, ids, names, {}, sites)
    benchmark._add_paired(ref, other, ids, sites)
    assert set(other["by_site"]) == {"a", "b"}
    assert other["by_site"]["b"]["overall"]["mre"] == pytest.approx(other_errors[5:].mean())
    assert other["by_site"]["b"]["counts"]["images"] == 3
    diff_b = other["paired_vs_reference_by_site"]["b"]["mean_difference"]
    assert diff_b == pytest.approx(np.mean(other_errors[5:].mean(1) - ref_errors[5:].mean(1)))
    assert other["paired_vs_reference"]["n"] == 8 and other["paired_vs_reference_by_site"]["a"]["n"] == 5
    assert "by_site" not in benchmark._result("one", ref_errors, ids, names, {}, ["a"] * 8)  # one site: no split
    results = {
        "track": "tiny", "settings": {**TINY_TRACK, "folds": 0, "test_images": 8}, "mean_shape_baseline_mre": 5.0,
        "date": "today", "machine": {"processor": "cpu", "cpu_count": 2, "torch": "x", "cuda": None},
        "contenders": [dict(ref, train_seconds=60, epochs=[3], params=10**6, seconds_per_image=0.1), dict(other, train_seconds=60, epochs=[3], params=10**6, seconds_per_image=0.1)],
        "ensembles": [],
    }  # fmt: skip
    table = benchmark.format_markdown(results)
    assert "Per site" in table and table.count("\n| other | b | 3 |") == 1 and "| ref | a | 5 |" in table


def test_resume_keeps_the_earlier_rows_and_trains_only_the_missing_contenders(datalist, tmp_path, monkeypatch):
    """Training is replaced by offsets from the truth, so this checks the resume plumbing alone."""
    monkeypatch.setitem(benchmark.TRACKS, "tiny", TINY_TRACK)
    offset = {"maht_net": 0.5, "unet": 2.0, "landmarker": 1.0}
    trained = []

    def fake_train(name, *args, **kwargs):
        trained.append(name)
        return benchmark.TrainedModel(name, None, {"name": name}, {"train_seconds": 1.0, "epochs": 1, "params": 10})

    def fake_predict(network, info, items, tta=False, refiner=None):
        truth = np.stack([np.asarray(it["landmarks"], float) for it in items])
        return truth + offset[info["name"]], 0.01

    monkeypatch.setattr(benchmark, "train_contender", fake_train)
    monkeypatch.setattr(benchmark, "predict", fake_predict)
    first = benchmark.run_accuracy_benchmark(datalist, tmp_path, "tiny", ["maht_net", "landmarker"], progress=False)
    second = benchmark.run_accuracy_benchmark(datalist, tmp_path, "tiny", ["maht_net", "unet", "landmarker"], progress=False, resume=True)
    assert trained == ["maht_net", "landmarker", "unet"]  # the second run trained U-Net alone
    assert [r["name"] for r in second["contenders"]] == ["maht_net", "unet", "landmarker"]
    assert second["contenders"][2]["errors"] == first["contenders"][1]["errors"]
    assert [e["name"] for e in second["ensembles"]] == ["maht_net + TTA"]  # the reference's TTA row, kept
    assert second["contenders"][1]["paired_vs_reference"]["mean_difference"] > 0  # U-Net's offset is larger
    second["contenders"][0]["date"] = "earlier"  # how a row kept from another day shows in the table
    assert "Rows kept from an earlier run (`--resume`): maht_net (earlier)" in benchmark.format_markdown(second)
    with pytest.raises(InputError, match="settings differ in .*seed"):
        benchmark.run_accuracy_benchmark(datalist, tmp_path, "tiny", ["unet"], seed=1, progress=False, resume=True)


def test_absolute_datalist_resolves_against_the_data_root(tmp_path):
    root = tmp_path / "data"
    (root / "site").mkdir(parents=True)
    (tmp_path / "repo" / "datalists").mkdir(parents=True)
    doc = {"landmark_set": "isbi2015", "data_root": "../data", "test": [{"id": "x", "image": "site/x.png", "landmarks": [[1, 2]] * 19}]}
    src = tmp_path / "repo" / "datalists" / "d.json"
    src.write_text(json.dumps(doc))
    out = benchmark.absolute_datalist(src, tmp_path / "abs.json")
    assert read_datalist(out)["test"][0]["image"] == str((root / "site" / "x.png").resolve())
    other = benchmark.absolute_datalist(src, tmp_path / "abs2.json", base_dir=tmp_path / "elsewhere")
    assert read_datalist(other)["test"][0]["image"] == str((tmp_path / "elsewhere" / "site" / "x.png").resolve())


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
