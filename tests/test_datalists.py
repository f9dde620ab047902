"""The standard splits in ``datalists/``: documented, consistent with each other, and clean under
``maht-net audit`` (skipped without the shared data)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maht_net.datasets.audit import audit_datalist
from maht_net.io.checkpoint import file_sha256
from maht_net.io.datalist import datalist_root, datalist_sections, load_datalist, write_datalist

REPO = Path(__file__).resolve().parents[1]
DATALISTS = sorted((REPO / "datalists").glob("*.json"))


def _doc(path: Path) -> dict:
    return json.loads(path.read_text())


def _data_root(path: Path) -> Path:
    return datalist_root(path)


def test_datalist_root_reads_data_root_relative_to_the_repository(tmp_path):
    assert datalist_root(REPO / "datalists" / "two_sites.json").resolve() == (REPO.parent / "shared" / "data").resolve()
    assert datalist_root(REPO / "datalists" / "two_sites.json", tmp_path) == tmp_path  # an explicit folder wins
    plain = write_datalist(tmp_path / "plain.json", {"training": []})
    assert datalist_root(plain) is None  # paths relative to the datalist itself
    # load_datalist resolves against the data root by default
    items = load_datalist(REPO / "datalists" / "two_sites.json", "test")
    assert Path(items[0]["image"]).resolve().is_relative_to((REPO.parent / "shared" / "data").resolve())


def test_every_datalist_is_documented_and_names_its_data_root():
    readme = (REPO / "datalists" / "README.md").read_text()
    assert {p.name for p in DATALISTS} >= {"two_sites.json", "hamedan.json", "isbi2015_train_mean.json", "isbi2015_train_senior.json"}
    for path in DATALISTS:
        doc = _doc(path)
        assert f"`{path.name}`" in readme, f"{path.name} is not in datalists/README.md"
        assert doc["data_root"] == "../shared/data" and doc["landmark_set"] == "isbi2015"
        for section in datalist_sections(doc):
            for item in doc[section]:
                assert re.match(r"^(hamedan-ceph|isbi2015-ceph)/", item["image"]), item["image"]  # relative to the data root


def test_hamedan_split_is_the_two_site_split():
    two = {s: {it["id"]: it for it in _doc(REPO / "datalists" / "two_sites.json")[s] if it["site"] == "hamedan"} for s in ("training", "validation", "test")}
    ham = _doc(REPO / "datalists" / "hamedan.json")
    for section, items in two.items():
        assert sorted(f"hamedan-{it['id']}" for it in ham[section]) == sorted(items)
        for it in ham[section]:
            np.testing.assert_allclose(it["landmarks"], items[f"hamedan-{it['id']}"]["landmarks"], atol=1e-9)


def test_isbi_truths_mean_and_senior():
    mean, senior = (_doc(REPO / "datalists" / f"isbi2015_train_{t}.json") for t in ("mean", "senior"))
    assert mean["truth"] == "mean" and senior["truth"] == "senior"
    assert [it["image"] for it in mean["training"]] == [it["image"] for it in senior["training"]] and len(mean["training"]) == 150
    two = {it["image"]: it for s in ("training", "validation", "test") for it in _doc(REPO / "datalists" / "two_sites.json")[s] if it["site"] == "isbi2015"}
    gap = []
    for m, s in zip(mean["training"], senior["training"]):
        np.testing.assert_allclose(m["landmarks"], two[m["image"]]["landmarks"], atol=1e-9)  # the shipped model's truth
        assert m["spacing"] == s["spacing"] == [0.1, 0.1]
        gap.append(np.linalg.norm(np.subtract(m["landmarks"], s["landmarks"]), axis=-1).mean())
    assert 0.5 < np.mean(gap) * 0.1 < 2.0  # the mean sits half way to the junior doctor: about 1 mm from the senior


@pytest.mark.parametrize("path", DATALISTS, ids=lambda p: p.name)
def test_audit_passes_on_the_shared_data(path):
    if not _data_root(path).is_dir():
        pytest.skip(f"the data root {_data_root(path)} is not here")
    report = audit_datalist(path, base_dir=_data_root(path), mean_images=0)
    assert report["problems"] == [], report["problems"]
    n = sum(len(load_datalist(path, s, base_dir=_data_root(path), check_files=True)) for s in datalist_sections(_doc(path)))
    assert n == sum(len(_doc(path)[s]) for s in datalist_sections(_doc(path)))


def _two_site_tree(root: Path) -> Path:
    """A data root in the shared layout: 3 ISBI 2015 training films (JPEG) and 10 Hamedan films
    with both annotators' LabelMe files."""
    from PIL import Image
    from test_labelme_prepare import _base_points, _shape, _write
    from test_readers import _isbi_tree

    _isbi_tree(root / "isbi2015-ceph", n_train=3, suffix=".jpg")
    rng = np.random.default_rng(0)
    (root / "hamedan-ceph" / "images").mkdir(parents=True)
    for i in range(1, 11):
        Image.fromarray(np.zeros((100, 200), np.uint8)).save(root / "hamedan-ceph" / "images" / f"{i:03d}.png")
        points = _base_points(rng)
        for annotator in ("annotator1", "annotator2"):
            _write(root / "hamedan-ceph" / "annotations" / annotator / f"{i:03d}.json", [_shape(f"l{k + 1}", *q) for k, q in enumerate(points)])
    return root


def test_make_datalists_writes_every_split_present_relative_to_the_data_root(tmp_path):
    """On a data root with both sets (the ISBI release complete: Test1/Test2 too), the script
    writes each split for both truths, with paths that resolve from the data root."""
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_datalists
    finally:
        sys.path.remove(str(REPO / "scripts"))
    root = _two_site_tree(tmp_path / "data")
    out = tmp_path / "datalists"
    assert make_datalists.main(["--data-root", str(root), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.glob("*.json"))
    assert names == sorted(["hamedan.json"] + [f"isbi2015_{s}_{t}.json" for s in ("train", "test1", "test2") for t in ("mean", "senior")])
    for path in out.glob("*.json"):
        doc = _doc(path)
        assert doc["data_root"] == str(root.resolve())  # not beside the repository: an absolute root
        for section in datalist_sections(doc):
            assert load_datalist(path, section, base_dir=root, check_files=True)
    test1 = _doc(out / "isbi2015_test1_senior.json")
    assert test1["truth"] == "senior" and [Path(it["image"]).name for it in test1["test"]] == ["151.jpg", "152.jpg", "153.jpg"]
    assert [len(_doc(out / "hamedan.json")[s]) for s in ("training", "validation", "test")] == [7, 1, 2]


def _pretrained_script():
    """``scripts/pretrained.py`` as a module."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import pretrained
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return pretrained


def test_pretrained_runs_record_whether_the_code_differs_from_the_commit(tmp_path, monkeypatch):
    pretrained = _pretrained_script()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(git[:5] + ["init", "-q", str(tmp_path)], check=True)
    (tmp_path / "code.py").write_text("a = 1\n")
    subprocess.run(git + ["add", "code.py"], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    monkeypatch.setattr(pretrained, "REPO", tmp_path)
    (tmp_path / "untracked.txt").write_text("runs/ and notes do not count")
    assert len(pretrained.git_head()) == 40 and pretrained.git_tree_dirty() is False
    (tmp_path / "code.py").write_text("a = 2\n")
    assert pretrained.git_tree_dirty() is True


def test_pretrained_split_of_another_seed_leaves_the_standard_datalist_alone(tmp_path, monkeypatch):
    """``scripts/pretrained.py --seed N`` (N != 0) writes its own split beside its run, with an
    absolute data root, and the cross-site copy (``--train-sites``) resolves its films too."""
    pretrained = _pretrained_script()
    root = _two_site_tree(tmp_path / "data")
    monkeypatch.setattr(pretrained, "ISBI_SPLIT", (1, 1, 1))  # training / validation / test films of 3
    standard = (REPO / "datalists" / "two_sites.json").read_bytes()
    run = tmp_path / "run"
    split = pretrained.prepare(root, run, seed=1)
    assert (REPO / "datalists" / "two_sites.json").read_bytes() == standard
    assert split == run / "data" / "two_sites_seed1.json" and _doc(split)["data_root"] == str(root.resolve())
    hamedan_only = pretrained.restrict(split, ["hamedan"], run)
    for path, n in ((split, 13), (hamedan_only, 11)):  # the copy drops the 2 ISBI training and validation films
        assert len(load_datalist(path, ["training", "validation", "test"], check_files=True)) == n  # found through data_root alone
    assert {it["site"] for it in _doc(hamedan_only)["training"]} == {"hamedan"}
    assert {it["site"] for it in _doc(hamedan_only)["test"]} == {"hamedan", "isbi2015"}


def test_pretrained_drop_disputed_leaves_the_film_out_after_the_split(tmp_path, monkeypatch):
    """``--drop-disputed``: the Hamedan film whose annotators disagree far more than on the others
    leaves every section of its fold; the other films keep the sections they have without it."""
    from test_labelme_prepare import _shape, _write

    pretrained = _pretrained_script()
    root = _two_site_tree(tmp_path / "data")
    rng = np.random.default_rng(1)
    for i in range(1, 11):  # annotator 2 about 1 px off annotator 1, on film 004 by 20 px
        path = root / "hamedan-ceph" / "annotations" / "annotator1" / f"{i:03d}.json"
        points = np.array([s["points"][0] for s in json.loads(path.read_text())["shapes"]])
        moved = points + rng.normal(0, 1.0, points.shape) + ([16.0, 12.0] if i == 4 else 0.0)
        moved = np.clip(moved, 0.0, [199.0, 99.0])  # inside the 200 x 100 films
        _write(path.parent.parent / "annotator2" / path.name, [_shape(f"l{k + 1}", *q) for k, q in enumerate(moved)])
    monkeypatch.setattr(pretrained, "CV_FOLDS", 2)
    monkeypatch.setattr(pretrained, "CV_VALIDATION", {"hamedan": 2, "isbi2015": 0})
    for k in range(2):
        kept = _doc(pretrained.prepare(root, tmp_path / f"keep{k}", seed=0, fold=k))
        split = pretrained.prepare(root, tmp_path / f"drop{k}", seed=0, fold=k, drop_disputed=True)
        assert split.name == f"two_sites_fold{k}_undisputed.json"
        dropped = _doc(split)
        assert "left out, their annotators disputed (audit of hamedan.json): hamedan-004" in dropped["description"]
        for section in ("training", "validation", "test"):
            assert [it["id"] for it in dropped[section]] == [it["id"] for it in kept[section] if it["id"] != "hamedan-004"]
        assert any(it["id"] == "hamedan-004" for section in ("training", "validation", "test") for it in kept[section])


def test_pretrained_cross_validation_tests_every_film_once_and_pools_the_folds(tmp_path, monkeypatch):
    """``scripts/pretrained.py --fold K``: each site's films fall in exactly one fold's test
    section, never in that fold's training or validation films; ``--pool-folds`` scores every
    fold's test predictions as one set per site and refuses an incomplete cross-validation."""
    from PIL import Image

    from maht_net.io.predictions import build_prediction, write_prediction

    pretrained = _pretrained_script()
    root = _two_site_tree(tmp_path / "data")
    monkeypatch.setattr(pretrained, "CV_FOLDS", 3)
    monkeypatch.setattr(pretrained, "CV_VALIDATION", {"hamedan": 2, "isbi2015": 0})
    runs, tested = [], {"hamedan": [], "isbi2015": []}
    for k in range(3):
        run = tmp_path / f"fold{k}"
        split = pretrained.prepare(root, run, seed=0, fold=k)
        assert split == run / "data" / f"two_sites_fold{k}.json"
        doc = _doc(split)
        ids = {s: {it["id"] for it in doc[s]} for s in ("training", "validation", "test")}
        assert not (ids["test"] & (ids["training"] | ids["validation"])) and not (ids["training"] & ids["validation"])
        assert sum(it["site"] == "hamedan" for it in doc["validation"]) == 2
        # what evaluate() leaves behind: per site the test datalist and predictions 3, 4 px off the truth
        for site in tested:
            items = [dict(it, id=Path(it["image"]).stem, image=str(root / it["image"])) for it in doc["test"] if it["site"] == site]
            tested[site] += [it["image"] for it in items]
            folder = run / "eval" / site
            (folder / "predictions").mkdir(parents=True)
            (folder / "test.json").write_text(json.dumps({"landmark_set": "isbi2015", "test": items}))
            for it in items:
                width, height = Image.open(it["image"]).size
                points = np.asarray(it["landmarks"], float) + [3.0, 4.0]
                pred = build_prediction(it["image"], width, height, points, spacing=it["spacing"], item_id=it["id"])
                write_prediction(pred, folder / "predictions", formats=("json",))
        (run / "summary.json").write_text(json.dumps({"datalist": str(split), "command": f"fold {k}", "git_commit": "0" * 40, "test": {}}))
        runs.append(run)
    assert len(tested["hamedan"]) == len(set(tested["hamedan"])) == 10 and len(set(tested["isbi2015"])) == 3
    pooled = pretrained.pool_folds(runs, tmp_path / "cv", "pool", {"git_commit": "c" * 40, "git_tree_dirty": False})
    assert pooled["test"]["hamedan"]["films"] == 10 and pooled["test"]["isbi2015"]["films"] == 3
    assert pooled["test"]["hamedan"]["mre"] == pytest.approx(5 * 0.127) and pooled["test"]["isbi2015"]["mre"] == pytest.approx(5 * 0.1)
    assert [f["command"] for f in pooled["cross_validation"]["folds"]] == ["fold 0", "fold 1", "fold 2"]
    assert sorted(i for f in pooled["cross_validation"]["folds"] for i in f["test_ids"]["hamedan"]) == sorted(Path(i).stem for i in tested["hamedan"])
    assert _doc(tmp_path / "cv" / "summary.json")["test"]["hamedan"]["sdr"]["2.0"] == 100.0
    assert pooled["refine_shift_mm"] == 0.0  # folds scored before the shifts existed: one centred patch
    with pytest.raises(SystemExit, match="expected the 3 fold runs"):
        pretrained.pool_folds(runs[:2], tmp_path / "cv2", "pool", {"git_commit": "c" * 40, "git_tree_dirty": False})
    # folds of another recipe do not pool with these: another training site, or the first stage alone
    single_site = pretrained.restrict(runs[1] / "data" / "two_sites_fold1.json", ["isbi2015"], runs[1])
    assert single_site.name == "two_sites_fold1_trained_on_isbi2015.json"
    summary = _doc(runs[1] / "summary.json")
    # ... or the refinement scored with other test-time patch shifts
    for changed in ({"datalist": str(single_site)}, {"no_refine": True}, {"refine_shift_mm": 2.0}):
        (runs[1] / "summary.json").write_text(json.dumps(dict(summary, **changed)))
        with pytest.raises(SystemExit, match="folds of different runs"):
            pretrained.pool_folds(runs, tmp_path / "cv3", "pool", {"git_commit": "c" * 40, "git_tree_dirty": False})
    (runs[1] / "summary.json").write_text(json.dumps(summary))
    # shipping with these figures: eval_metrics and the checkpoint's provenance say how they were obtained
    how, record = pretrained.held_out_record(pooled, REPO / "datalists" / "two_sites_all.json")
    assert how.startswith("3-fold cross-validation") and "not cross-validation" not in how
    assert record["cross_validation"]["folds"][1]["datalist_sha256"] == file_sha256(runs[1] / "data" / "two_sites_fold1.json")
    metrics = pretrained.eval_metrics(pooled, how)
    assert metrics["hamedan"]["films"] == 10 and metrics["isbi2015"]["mean_radial_error_mm"] == pytest.approx(0.5)
    # folds that left the disputed films out say so, and whether the shipped model trained on them
    undisputed = {"cross_validation": {"folds": [dict(f, datalist=f["datalist"].replace(".json", "_undisputed.json")) for f in pooled["cross_validation"]["folds"]]}}
    shipped_dl = tmp_path / "two_sites_all.json"
    for recorded, trained_on_them in (({}, True), ({"disputed_left_out": {"hamedan": ["hamedan-123"]}}, False)):
        shipped_dl.write_text(json.dumps({"training": [], **recorded}))
        how, _ = pretrained.held_out_record(dict(pooled, **undisputed), shipped_dl)
        assert "(the audit's 'disputed') are in no fold" in how and ("the shipped model trained on them" in how) is trained_on_them
    split = dict(pooled, datalist="datalists/two_sites.json")
    del split["cross_validation"]
    how, record = pretrained.held_out_record(split, REPO / "datalists" / "two_sites_all.json")
    assert how.endswith("one seeded split, not cross-validation") and len(record["ids"]["hamedan"]) == 20


def test_pretrained_restamp_changes_the_shipped_figures_not_the_weights(tmp_path, monkeypatch):
    """``scripts/pretrained.py --restamp SUMMARY``: the shipped checkpoint's held-out provenance,
    large_files.yml and metadata.json's eval_metrics follow SUMMARY; the weights stay bit for bit."""
    import torch

    pretrained = _pretrained_script()
    monkeypatch.setattr(pretrained, "REPO", tmp_path)
    (tmp_path / "bundle" / "configs").mkdir(parents=True)
    (tmp_path / "bundle" / "configs" / "metadata.json").write_text(json.dumps({"version": "9.9.9", "eval_metrics": {}}))
    target = tmp_path / "bundle" / "models" / "model.pt"
    target.parent.mkdir()
    weights = {"w": torch.randn(3, 3).half()}
    stage = {"model": {"r": torch.randn(2).half()}, "info": {"network": "refine_net"}}  # before the shifts: one centred patch
    torch.save({"model": weights, "refine": stage, "info": {"provenance": {"datalist": "datalists/all.json", "held_out": {"old": 1}}}}, target)
    figures = {"films": 20, "spacing_mm": 0.127, "mre": 0.91, "median": 0.7, "mre_ci95": [0.8, 1.0], "sdr": {"2.0": 92.0, "4.0": 99.5}}
    folds = [{"datalist": f"fold{k}.json", "test_ids": {"hamedan": [f"h{k}"]}} for k in range(5)]
    cv = {"command": "pool", "git_commit": "1" * 40, "refine_shift_mm": 2.0, "cross_validation": {"folds": folds}, "test": {"hamedan": figures}}
    pretrained.restamp(cv, target)
    shipped = torch.load(target, map_location="cpu", weights_only=True)
    assert torch.equal(shipped["model"]["w"], weights["w"]) and shipped["info"]["provenance"]["datalist"] == "datalists/all.json"
    # the refinement stage predicts as the figures were measured: with their patch shifts, same weights
    assert shipped["refine"]["info"] == {"network": "refine_net", "shift_mm": 2.0} and torch.equal(shipped["refine"]["model"]["r"], stage["model"]["r"])
    assert shipped["info"]["provenance"]["held_out"]["refine_shift_mm"] == 2.0
    assert shipped["info"]["provenance"]["held_out"]["cross_validation"]["folds"] == folds
    meta = _doc(tmp_path / "bundle" / "configs" / "metadata.json")
    assert meta["version"] == "9.9.9" and meta["eval_metrics"]["hamedan"]["mean_radial_error_mm"] == 0.91
    assert meta["eval_metrics"]["hamedan"]["how"].startswith("5-fold cross-validation")
    assert file_sha256(target) in (tmp_path / "bundle" / "large_files.yml").read_text()
    assert not list(target.parent.glob("*.tmp"))
    # figures of another recipe are refused and leave the shipped files as they were
    before = target.read_bytes()
    for other in ({**cv, "no_refine": True}, {**cv, "cross_validation": {"folds": [dict(folds[0], datalist="fold0_trained_on_hamedan.json")]}}):
        with pytest.raises(SystemExit, match="another recipe"):
            pretrained.restamp(other, target)
    assert target.read_bytes() == before


def test_pretrained_all_films_trains_on_every_film_and_borrows_a_held_out_calibration(tmp_path, monkeypatch):
    """``--all-films``: every film in training, the validation films kept to monitor it; the
    calibration comes from a shipped model whose datalist held exactly these validation films
    out (or that carried one itself), and its recorded held-out figures can be ``--figures``."""
    import torch

    pretrained = _pretrained_script()
    monkeypatch.setattr(pretrained, "REPO", tmp_path)
    items = {s: [{"id": f"{s}{i}", "site": "hamedan"} for i in range(n)] for s, n in (("training", 5), ("validation", 2), ("test", 3))}
    (tmp_path / "datalists").mkdir()
    split = tmp_path / "datalists" / "two_sites.json"
    split.write_text(json.dumps({"description": "split", **items}))
    old = dict(items, training=items["training"] + items["test"])
    del old["test"]
    (tmp_path / "datalists" / "two_sites_all.json").write_text(json.dumps(old))  # the shipped model's datalist
    record = {"scale": [0.5], "common_scale": 0.5}
    held_out = {"command": "pool", "git_commit": "1" * 40, "cross_validation": {"folds": []},
                "test": {"hamedan": {"films": 10, "mre": 1.0, "median": 0.8, "sdr": {"2.0": 90.0, "4.0": 99.0}, "mre_ci95": [0.9, 1.1]}}}
    provenance = {"bundle_version": "0.4.2", "datalist": "datalists/two_sites_all.json",
                  "datalist_sha256": file_sha256(tmp_path / "datalists" / "two_sites_all.json"), "held_out": held_out}
    shipped = tmp_path / "model.pt"
    torch.save({"model": {}, "info": {"uncertainty_calibration": record, "provenance": provenance}}, shipped)
    validation = {"validation0", "validation1"}
    why = pretrained.calibration_donor(shipped, validation)
    assert why.startswith("fitted on the 2 validation films held out of bundle 0.4.2's model") and "8 training films" in why
    with pytest.raises(SystemExit, match="not calibrated on these validation films"):
        pretrained.calibration_donor(shipped, {"validation0", "training1"})
    everything = pretrained.all_films(split)
    doc = _doc(everything)
    assert everything.name == "two_sites_all.json" and "test" not in doc
    assert sorted(it["id"] for it in doc["training"]) == sorted(it["id"] for s in items.values() for it in s)
    assert {it["id"] for it in doc["validation"]} == validation and "only monitor" in doc["description"]
    assert doc["drawn_from"] == {"validation": "training"}  # so that the audit does not call them a leak
    # the standard split without its disputed films (a run folder's) is the shipped datalist too; another seed's stays put
    run_data = tmp_path / "runs" / "all" / "data"
    run_data.mkdir(parents=True)
    for stem, where in (("two_sites_undisputed", tmp_path / "datalists"), ("two_sites_seed1_undisputed", run_data)):
        source = run_data / f"{stem}.json"
        source.write_text(json.dumps({"description": "split", "data_root": "/abs/data", "disputed_left_out": {"hamedan": ["h9"]}, **items}))
        written = pretrained.all_films(source)
        assert written == where / "two_sites_all.json" and _doc(written)["disputed_left_out"] == {"hamedan": ["h9"]}
        assert _doc(written)["data_root"] == ("../shared/data" if where.name == "datalists" else "/abs/data")
    pretrained.all_films(split)  # the datalist the calibration checks below expect
    with pytest.raises(SystemExit, match="not the one it was trained on"):  # the datalist has changed since: no way to tell
        pretrained.calibration_donor(shipped, validation)
    torch.save({"model": {}, "info": {"uncertainty_calibration": dict(record, carried_from={"why": why}), "provenance": provenance}}, shipped)
    assert pretrained.calibration_donor(shipped, validation) == why  # a carried calibration names its first fit
    figures = pretrained.figures_of(shipped)
    assert figures["test"]["hamedan"]["spacing_mm"] == 0.127 and figures["test"]["hamedan"]["mre"] == 1.0
    assert pretrained.eval_metrics(figures, "cv")["hamedan"]["sdr_2mm_percent"] == 90.0


def test_pretrained_scores_and_ships_a_refinement_stage_with_the_shifts_it_was_measured_with(tiny_checkpoint, tmp_path, monkeypatch):
    """``refine_shift``: the refinement's test-time patch shifts a run predicts with (the stage's,
    or ``--refine-shift-mm``); ``ship`` refuses figures measured with other shifts than the model's."""
    import shutil

    import torch

    from maht_net.codec.patches import PatchCodec
    from maht_net.io.checkpoint import attach_refine_stage, load_checkpoint_file
    from maht_net.models import create_network

    pretrained = _pretrained_script()
    first = load_checkpoint_file(tiny_checkpoint)["info"]
    info = {"network": "refine_net_small", "network_kwargs": {}, "landmark_names": first["landmark_names"], "normalize": first["normalize"],
            "clahe": first["clahe"], **PatchCodec().info(), "shift_mm": 2.0}  # fmt: skip
    stage = {"model": create_network("refine_net_small", num_landmarks=19).state_dict(), "info": info}
    two = tmp_path / "two.pt"
    shutil.copy(tiny_checkpoint, two)
    attach_refine_stage(two, stage)
    assert pretrained.refine_shift(two, None) == 2.0 and pretrained.refine_shift(two, 0.0) == 0.0
    assert pretrained.refine_shift(tiny_checkpoint, None) is None  # one stage: nothing to shift
    with pytest.raises(ValueError, match="shift_mm"):
        pretrained.refine_shift(two, -1.0)
    monkeypatch.setattr(pretrained, "REPO", tmp_path)
    (tmp_path / "bundle" / "configs").mkdir(parents=True)
    (tmp_path / "bundle" / "configs" / "metadata.json").write_text(json.dumps({"version": "9.9.9", "eval_metrics": {}}))
    datalist = tmp_path / "all.json"
    datalist.write_text(json.dumps({"training": []}))
    figures = {"films": 1, "spacing_mm": 0.1, "mre": 1.0, "median": 1.0, "mre_ci95": [0.9, 1.1], "sdr": {"2.0": 90.0, "4.0": 99.0}}
    measured = {"command": "pool", "git_commit": "1" * 40, "refine_shift_mm": 0.0, "test": {"isbi2015": figures},
                "cross_validation": {"folds": [{"datalist": "fold0.json", "test_ids": {"isbi2015": ["1"]}}]}}  # fmt: skip
    target = tmp_path / "bundle" / "models" / "model.pt"
    with pytest.raises(SystemExit, match="measured with 0 mm refinement patch shifts"):
        pretrained.ship(two, datalist, measured, {"command": "train", "git_commit": "2" * 40, "train_minutes": 1.0}, target)
    assert not target.exists()
    assert torch.load(two, weights_only=True)["refine"]["info"]["shift_mm"] == 2.0
