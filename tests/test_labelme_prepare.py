import json

import numpy as np
import pytest
from PIL import Image

from maht_net.datasets.labelme import format_audit, prepare_labelme
from maht_net.errors import InputError
from maht_net.io.datalist import load_datalist
from maht_net.landmarks import ISBI2015


def _write(path, shapes, image_path="x.png", w=200, h=100):
    doc = {"version": "5.0.1", "shapes": shapes, "imagePath": image_path, "imageWidth": w, "imageHeight": h}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def _shape(label, x, y):
    return {"label": label, "points": [[x, y]], "shape_type": "point"}


def _base_points(rng):
    return np.stack([rng.uniform(5, 195, 19), rng.uniform(5, 95, 19)], -1)


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "images").mkdir()
    for stem in ("a", "b"):
        Image.fromarray(np.zeros((100, 200), np.uint8)).save(tmp_path / "images" / f"{stem}.png")
    return tmp_path


def test_two_annotators_mean_and_duplicate_resolution(tree):
    rng = np.random.default_rng(0)
    p1, p2 = _base_points(rng), _base_points(rng)
    p2 = p1 + rng.normal(0, 1.0, p1.shape)
    shapes1 = [_shape(f"l{k + 1}", *p1[k]) for k in range(19)]
    shapes1.insert(5, _shape("l3", 150.0, 50.0))  # a second 'l3' far from annotator 2's l3
    _write(tree / "ann1" / "a.json", shapes1, image_path="../images/a.png")
    _write(tree / "ann2" / "a.json", [_shape(f"l{k + 1}", *p2[k]) for k in range(19)], image_path="wrong_name.png")
    # image b: annotator 1 misses l7, annotator 2 has no file at all
    _write(tree / "ann1" / "b.json", [_shape(ISBI2015[k].name, *p1[k]) for k in range(19) if k != 6])
    out = tree / "dl.json"
    path, audits = prepare_labelme(tree / "images", [tree / "ann1", tree / "ann2"], out, spacing=0.1)
    items = {it["id"]: it for it in load_datalist(path)}
    np.testing.assert_allclose(items["a"]["landmarks"], (p1 + p2) / 2, atol=1e-9)
    assert np.isnan(items["b"]["landmarks"][6]).all() and np.isfinite(items["b"]["landmarks"][[0, 7]]).all()
    assert items["a"]["spacing"] == (0.1, 0.1)
    text = format_audit(audits)
    assert "orbitale (l3) placed 2 times" in text and "dropped (150.0, 50.0)" in text
    assert "imagePath 'wrong_name.png' does not match" in text
    assert "ann2: no annotation file" in text and "missing in the ground truth: pogonion" in text
    assert json.loads((tree / "dl.json.audit.json").read_text())["images"] == 2


def test_single_annotator_duplicate_is_not_guessed(tree):
    p = _base_points(np.random.default_rng(1))
    shapes = [_shape(f"l{k + 1}", *p[k]) for k in range(19)] + [_shape("l2", 10.0, 10.0)]
    _write(tree / "ann" / "a.json", shapes)
    path, audits = prepare_labelme(tree / "images", [tree / "ann"], tree / "dl.json")
    item = load_datalist(path)[0]
    assert np.isnan(item["landmarks"][1]).all() and item["spacing"] is None
    assert "no other annotator to arbitrate" in format_audit(audits)


def test_bad_input_errors_name_file_and_write_nothing(tree):
    p = _base_points(np.random.default_rng(2))
    shapes = [_shape(f"l{k + 1}", *p[k]) for k in range(19)]
    _write(tree / "ann" / "a.json", shapes + [_shape("l42", 1.0, 1.0)])
    with pytest.raises(InputError, match=r"a\.json: unknown landmark label 'l42'"):
        prepare_labelme(tree / "images", [tree / "ann"], tree / "dl.json")
    assert not (tree / "dl.json").exists()
    shapes[3] = _shape("l4", 250.0, 50.0)
    _write(tree / "ann" / "a.json", shapes)
    with pytest.raises(InputError, match="porion .* outside the 200x100 image"):
        prepare_labelme(tree / "images", [tree / "ann"], tree / "dl.json")
    path, audits = prepare_labelme(tree / "images", [tree / "ann"], tree / "dl.json", lenient=True)
    assert np.isnan(load_datalist(path)[0]["landmarks"][3]).all()
    (tree / "ann" / "a.json").write_text("{not json")
    with pytest.raises(InputError, match="not a valid LabelMe JSON"):
        prepare_labelme(tree / "images", [tree / "ann"], tree / "dl2.json")
    assert not (tree / "dl2.json").exists()


def test_split_is_seeded_and_disjoint(tmp_path):
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(3)
    for i in range(20):
        Image.fromarray(np.zeros((100, 200), np.uint8)).save(tmp_path / "images" / f"{i:03d}.png")
        _write(tmp_path / "ann" / f"{i:03d}.json", [_shape(f"l{k + 1}", *q) for k, q in enumerate(_base_points(rng))])
    path, _ = prepare_labelme(tmp_path / "images", [tmp_path / "ann"], tmp_path / "dl.json", val_fraction=0.2, test_fraction=0.1, seed=5)
    doc = json.loads(path.read_text())
    ids = {k: {it["id"] for it in doc[k]} for k in ("training", "validation", "test")}
    assert [len(ids[k]) for k in ("training", "validation", "test")] == [14, 4, 2]
    assert not (ids["training"] & ids["validation"]) and not (ids["test"] & ids["validation"])
    path2, _ = prepare_labelme(tmp_path / "images", [tmp_path / "ann"], tmp_path / "dl2.json", val_fraction=0.2, test_fraction=0.1, seed=5)
    assert {it["id"] for it in json.loads(path2.read_text())["test"]} == ids["test"]


def test_a_film_whose_annotators_disagree_far_more_is_disputed(tmp_path, capsys):
    """Annotator 2 of film f5 is moved by 20 px (the others disagree by about 1.3 px): the audit
    names it either way; ``--disputed drop`` leaves it out of the datalist before the split."""
    from maht_net.cli import main

    rng = np.random.default_rng(3)
    (tmp_path / "images").mkdir()
    for i in range(6):
        Image.fromarray(np.zeros((100, 200), np.uint8)).save(tmp_path / "images" / f"f{i}.png")
        p1 = np.stack([rng.uniform(30, 170, 19), rng.uniform(25, 75, 19)], -1)
        p2 = p1 + rng.normal(0, 1.0, p1.shape) + ([16.0, 12.0] if i == 5 else 0.0)
        for name, p in (("ann1", p1), ("ann2", p2)):
            _write(tmp_path / name / f"f{i}.json", [_shape(f"l{k + 1}", *p[k]) for k in range(19)], image_path=f"f{i}.png")
    args = ["prepare", "labelme", "--images", str(tmp_path / "images"), "--annotations", str(tmp_path / "ann1"),
            "--annotations", str(tmp_path / "ann2"), "--spacing", "0.1"]
    assert main([*args, "--out", str(tmp_path / "keep.json")]) == 0
    out = capsys.readouterr().out
    assert "f5:\n  - disputed: the annotators' points are 20." in out and "kept (disputed=drop leaves it out)" in out
    assert "1 disputed" in out and "f4:" not in out
    audit = json.loads((tmp_path / "keep.json.audit.json").read_text())["disagreement"]
    assert audit["disputed"] == ["f5"] and audit["action"] == "keep" and 1.0 < audit["median_px"] < 1.8
    assert len(load_datalist(tmp_path / "keep.json")) == 6
    assert main([*args, "--out", str(tmp_path / "drop.json"), "--disputed", "drop"]) == 0
    assert sorted(it["id"] for it in load_datalist(tmp_path / "drop.json")) == [f"f{i}" for i in range(5)]
    assert "left out, annotators disputed: f5" in json.loads((tmp_path / "drop.json").read_text())["description"]
    # too few films annotated twice for a median: nothing is called disputed
    _, audits = prepare_labelme(tmp_path / "images", [tmp_path / "ann1", tmp_path / "ann2"], tmp_path / "few.json")
    assert sum(a.disputed for a in audits) == 1
    for i in range(2, 6):
        (tmp_path / "ann2" / f"f{i}.json").unlink()
    _, audits = prepare_labelme(tmp_path / "images", [tmp_path / "ann1", tmp_path / "ann2"], tmp_path / "few.json")
    assert not any(a.disputed for a in audits)
    with pytest.raises(ValueError, match="disputed must be"):
        prepare_labelme(tmp_path / "images", [tmp_path / "ann1"], tmp_path / "x.json", disputed="fix")


@pytest.mark.hamedan
def test_hamedan_audit_reports_real_mistakes(hamedan_dir, hamedan_spacing_mm, tmp_path, capsys):
    from maht_net.cli import main

    ann = hamedan_dir / "annotations"
    code = main(
        ["prepare", "labelme", "--images", str(hamedan_dir / "images"), "--annotations", str(ann / "annotator1"),
         "--annotations", str(ann / "annotator2"), "--spacing", str(hamedan_spacing_mm), "--out", str(tmp_path / "h.json")]
    )
    out = capsys.readouterr().out
    assert code == 0
    items = load_datalist(tmp_path / "h.json")
    assert len(items) == 100 and all(np.isfinite(it["landmarks"]).all() for it in items)
    # the four known duplicated labels of annotator 1, each resolved against annotator 2
    for case, label in (("009", "l15"), ("010", "l12"), ("064", "l7"), ("137", "l16")):
        assert f"{case}:\n  - annotator1: " in out and f"({label}) placed 2 times" in out
    by_id = {it["id"]: it for it in items}
    # 064: annotator 1 placed l7 at (805.2, 1407.5) and (872.2, 1366.2); annotator 2 at (871.9, 1361.4)
    a1 = by_id["064"]["annotators"]["annotator1"][6]
    assert a1 == pytest.approx([872.2307692307692, 1366.1538461538462])
    # 123: annotator 2's points lie 55 px (7.0 mm) from annotator 1's on average, 4.9 x the set's
    # median 11.3 px (the next film: 2.4 mm); the only disputed film
    assert "123:\n  - disputed: the annotators' points are 55.0 px (6.98 mm) apart on average, 4.9 x the set's median 11.3 px" in out
    assert json.loads((tmp_path / "h.json.audit.json").read_text())["disagreement"]["disputed"] == ["123"]
