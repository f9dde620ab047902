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
