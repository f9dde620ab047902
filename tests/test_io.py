"""Image reading, prediction/markups/CSV writing and atomic writes."""

import csv
import io
import json
import os
import stat

import jsonschema
import numpy as np
import pytest
from PIL import Image

from maht_net.errors import InputError
from maht_net.io.atomic import write_json_atomic
from maht_net.io.datalist import load_datalist, make_item, write_datalist
from maht_net.io.image import MAX_PIXELS, image_size, load_xray
from maht_net.io.jsonfile import read_json
from maht_net.io.predictions import (
    build_prediction,
    find_predictions,
    read_prediction,
    to_slicer_markups,
    write_prediction,
)
from maht_net.io.viewer_labels import ImageGeometry, landmarks_from_json
from maht_net.landmarks import CLDETECTION2023, ISBI2015, get_landmark_set

# The constraints of Slicer's markups-schema-v1.0.3 that a point list must meet (required keys,
# enums, fixed-length arrays), written out here so the check runs offline.
MARKUPS_RULES = {
    "type": "object",
    "required": ["@schema", "markups"],
    "properties": {
        "@schema": {"type": "string", "pattern": "markups-schema-v1\\.0\\.3\\.json#$"},
        "markups": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type"],
                "properties": {
                    "type": {"enum": ["Fiducial", "Line", "Angle", "Curve", "ClosedCurve", "Plane", "ROI"]},
                    "name": {"type": "string"},
                    "coordinateSystem": {"enum": ["LPS", "RAS"]},
                    "coordinateUnits": {"enum": ["mm", "um"]},
                    "locked": {"type": "boolean"},
                    "fixedNumberOfControlPoints": {"type": "boolean"},
                    "labelFormat": {"type": "string"},
                    "controlPoints": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "label": {"type": "string"},
                                "description": {"type": "string"},
                                "position": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
                                "orientation": {"type": "array", "items": {"type": "number"}, "minItems": 9, "maxItems": 9},
                                "selected": {"type": "boolean"},
                                "locked": {"type": "boolean"},
                                "visibility": {"type": "boolean"},
                                "positionStatus": {"enum": ["undefined", "preview", "defined"]},
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_landmark_sets_and_labels():
    assert len(ISBI2015) == 19 and ISBI2015[0].name == "sella" and ISBI2015[18].name == "articulare"
    assert len(CLDETECTION2023) == 38 and CLDETECTION2023.names[:19] == ISBI2015.names
    assert [ISBI2015.position_of(s) for s in ("l1", "L19", "sella", "Nasion", "Pog", "7", "soft tissue pogonion")] == [0, 18, 0, 1, 6, 6, 15]
    with pytest.raises(KeyError):
        ISBI2015.position_of("l20")
    with pytest.raises(ValueError, match="unknown landmark set"):
        get_landmark_set("nope")


def test_load_xray_axes_rgb_and_16bit(tmp_path):
    arr = np.zeros((40, 60), np.uint8)
    arr[5, 50] = 255  # row 5, column 50 -> (x=50, y=5)
    Image.fromarray(arr).save(tmp_path / "g.png")
    x = load_xray(tmp_path / "g.png")
    assert x.image.shape == (40, 60) and x.image.dtype == np.float32 and x.image[5, 50] == 1.0
    assert image_size(tmp_path / "g.png") == (60, 40) and x.spacing is None
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 10
    Image.fromarray(rgba).save(tmp_path / "c.png")
    assert load_xray(tmp_path / "c.png").image[0, 0] == pytest.approx(round(255 * 0.299) / 255)
    wide = (np.arange(40 * 60).reshape(40, 60) * 20).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.tif")
    img = load_xray(tmp_path / "w.tif").image
    assert img.min() == 0.0 and img.max() == 1.0 and img[20, 30] == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize(
    "name,content,problem",
    [
        ("empty.png", b"", "file is empty"),
        ("text.png", b"this is not an image at all", "not a readable image"),
        ("x.xyz", b"abc", "unsupported file type"),
    ],
)
def test_bad_files_raise_input_error(tmp_path, name, content, problem):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=problem) as err:
        load_xray(tmp_path / name)
    assert str(tmp_path / name) in str(err.value)


def test_truncated_tiny_huge_and_nan_images(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot decode"):
        load_xray(tmp_path / "t.png")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "one.png")
    with pytest.raises(InputError, match="1x1 px"):
        load_xray(tmp_path / "one.png")
    side = int(np.sqrt(MAX_PIXELS)) + 100
    Image.new("1", (side, side)).save(tmp_path / "big.png")  # 1-bit: a tiny file with a huge header size
    with pytest.raises(InputError, match="over the 64 MP limit"):
        load_xray(tmp_path / "big.png")
    f = np.ones((40, 40), np.float32)
    f[3, 3] = np.nan
    Image.fromarray(f, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(InputError, match="1 NaN/inf pixels"):
        load_xray(tmp_path / "nan.tif")


def _prediction(spacing=(0.1, 0.2)):
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 100, (19, 2))
    pts[4] = np.nan
    return build_prediction(
        "/data/case 01.png", 120, 110, pts, spacing=spacing, uncertainty_px=np.full(19, 2.0),
        confidence=np.linspace(0, 1, 19), item_id="case01",
    ), pts


def test_prediction_json_markups_csv_roundtrip(tmp_path):
    pred, pts = _prediction()
    paths = write_prediction(pred, tmp_path)
    assert sorted(p.name for p in paths.values()) == ["case01_landmarks.csv", "case01_landmarks.json", "case01_landmarks.mrk.json"]
    back = read_prediction(paths["json"])
    np.testing.assert_allclose(back["points"], pts)
    assert back["landmarks"][0]["name"] == "sella" and back["landmarks"][4]["x"] is None
    assert back["landmarks"][1]["x_mm"] == pytest.approx(pts[1, 0] * 0.1)
    assert back["landmarks"][1]["uncertainty_mm"] == pytest.approx(2.0 * 0.15)
    markups = json.loads(paths["mrk"].read_text())
    jsonschema.validate(markups, MARKUPS_RULES)
    cps = markups["markups"][0]["controlPoints"]
    assert [c["label"] for c in cps] == ISBI2015.names
    assert cps[4]["positionStatus"] == "undefined" and cps[0]["positionStatus"] == "defined"
    # read back by the one markups reader (the MONAI Label app's), in the geometry it was written
    # for; it takes only complete sets, so the undefined point is named
    geometry = ImageGeometry(pred["width"], pred["height"], spacing=(0.1, 0.2, 1.0))
    with pytest.raises(InputError, match="missing: subspinale"):
        landmarks_from_json(markups, geometry)
    full = np.where(np.isnan(pts), 50.0, pts)
    recovered, kind = landmarks_from_json(to_slicer_markups(build_prediction("x.png", 120, 110, full, spacing=(0.1, 0.2))), geometry)
    assert kind == "markups"
    np.testing.assert_allclose(recovered, full, atol=1e-9)
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert len(rows) == 19 and float(rows[2]["x"]) == pytest.approx(pts[2, 0]) and rows[4]["x"] == ""
    assert find_predictions(tmp_path) == {"case01": paths["json"]}


def test_markups_without_spacing_uses_1mm_and_says_so():
    pred, pts = _prediction(spacing=None)
    m = to_slicer_markups(pred)
    assert m["markups"][0]["controlPoints"][0]["position"] == pytest.approx([pts[0, 0], pts[0, 1], 0.0])
    assert "1 mm per pixel assumed" in m["markups"][0]["description"]
    assert pred["landmarks"][0]["uncertainty_mm"] is None and pred["landmarks"][0]["x_mm"] is None


def _itk_positions(path, pts):
    """Where ITK (and so 3D Slicer) puts pixels ``(x, y)`` of the file, LPS mm."""
    import itk

    image = itk.imread(str(path))
    index = itk.ContinuousIndex[itk.D, image.GetImageDimension()]()
    out = []
    for x, y in pts:
        index.SetElement(0, float(x)), index.SetElement(1, float(y))
        out.append(list(image.TransformContinuousIndexToPhysicalPoint(index)) + [0.0])  # a 2-D image: z = 0
    return np.array(out)


def test_markups_of_a_png_use_the_viewers_1mm_pixels_not_the_film_spacing(tmp_path):
    png = tmp_path / "film.png"
    Image.fromarray(np.zeros((110, 120), np.uint8)).save(png)
    pts = np.random.default_rng(1).uniform(0, 100, (19, 2))
    paths = write_prediction(build_prediction(str(png), 120, 110, pts, spacing=(0.1, 0.1), item_id="film"), tmp_path)
    markup = json.loads(paths["mrk"].read_text())["markups"][0]
    positions = np.array([cp["position"] for cp in markup["controlPoints"]])
    np.testing.assert_allclose(positions, _itk_positions(png, pts), atol=1e-6)  # ITK: spacing 1, origin 0
    np.testing.assert_allclose(positions[:, :2], pts, atol=1e-6)
    assert "1 x 1 mm pixels, origin (0, 0, 0)" in markup["description"] and "measurements use 0.1 x 0.1 mm" in markup["description"]
    assert read_prediction(paths["json"])["landmarks"][0]["x_mm"] == pytest.approx(pts[0, 0] * 0.1)  # mm still physical


def test_markups_of_an_nrrd_use_its_spacing_and_origin(tmp_path):
    import itk

    image = itk.image_from_array(np.zeros((110, 120), np.float32))
    image.SetSpacing([0.2, 0.3])
    image.SetOrigin([5.0, -7.0])
    nrrd = tmp_path / "film.nrrd"
    itk.imwrite(image, str(nrrd))
    pts = np.random.default_rng(2).uniform(0, 100, (19, 2))
    xray = load_xray(nrrd)
    paths = write_prediction(build_prediction(str(nrrd), xray.width, xray.height, pts, spacing=xray.spacing, item_id="film"), tmp_path)
    markup = json.loads(paths["mrk"].read_text())["markups"][0]
    positions = np.array([cp["position"] for cp in markup["controlPoints"]])
    np.testing.assert_allclose(positions, _itk_positions(nrrd, pts), atol=1e-6)
    np.testing.assert_allclose(positions[:, :2], pts * [0.2, 0.3] + [5.0, -7.0], atol=1e-6)


def test_read_prediction_rejects_bad_files(tmp_path):
    pred, _ = _prediction()
    doc = {k: v for k, v in pred.items()}
    doc["landmarks"] = doc["landmarks"][:18]
    (tmp_path / "a_landmarks.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="has 18 landmarks, expected 19"):
        read_prediction(tmp_path / "a_landmarks.json")
    doc["landmarks"] = pred["landmarks"][:18] + [dict(pred["landmarks"][18], x="12")]
    (tmp_path / "b_landmarks.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="x must be a number"):
        read_prediction(tmp_path / "b_landmarks.json")
    with pytest.raises(ValueError, match="unsafe prediction id"):
        write_prediction(dict(pred, id="../evil"), tmp_path)


def test_datalist_roundtrip_relative_paths_and_errors(tmp_path):
    pts = np.arange(38, dtype=float).reshape(19, 2)
    pts[3] = np.nan
    (tmp_path / "img").mkdir()
    item = make_item(tmp_path / "img" / "a.png", pts, (0.1, 0.1), "a")
    path = write_datalist(tmp_path / "lists" / "d.json", {"training": [item]}, description="t")
    raw = json.loads(path.read_text())
    assert raw["training"][0]["image"] == "../img/a.png" and raw["training"][0]["landmarks"][3] is None
    loaded = load_datalist(path)[0]
    assert loaded["image"] == str((tmp_path / "img" / "a.png").resolve())
    np.testing.assert_array_equal(loaded["landmarks"], pts)
    raw["training"][0]["landmarks"] = raw["training"][0]["landmarks"][:18]
    path.write_text(json.dumps(raw))
    with pytest.raises(InputError, match=r"\[training\]\[0\]: landmarks has 18 points, expected 19"):
        load_datalist(path)
    with pytest.raises(InputError, match="datalist not found"):
        load_datalist(tmp_path / "missing.json")


def test_read_json_errors_name_the_file_and_the_problem(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"a": [1, 2.5, None]}), encoding="utf-8")
    assert read_json(good) == {"a": [1, 2.5, None]}
    (tmp_path / "latin1.json").write_bytes('{"name": "Jos\xe9"}'.encode("latin-1"))
    (tmp_path / "broken.json").write_text('{"a": 1,', encoding="utf-8")
    cases = {
        tmp_path / "missing.json": "missing.json: datalist not found",
        tmp_path: "cannot read datalist",
        tmp_path / "latin1.json": "latin1.json: not a valid datalist \\(.*utf-8",
        tmp_path / "broken.json": "broken.json: not a valid datalist \\(.*line 1",
    }
    for path, message in cases.items():
        with pytest.raises(InputError, match=message) as err:
            read_json(path, "datalist")
        assert err.value.path == str(path)
    with pytest.raises(InputError) as err:
        read_json(tmp_path / "broken.json", "label JSON", name_file=False)
    assert err.value.path is None and str(err.value).startswith("not a valid label JSON")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"v": 1})
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "a.json", {"v": float("nan")})
    assert json.loads((tmp_path / "a.json").read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "a.json", {"v": 1})
        with open(tmp_path / "b.json", "w") as f:
            f.write("{}")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o666 & ~umask


def test_remove_unfinished_writes_deletes_only_temporary_files(tmp_path):
    from maht_net.io.atomic import remove_unfinished_writes

    (tmp_path / "sub").mkdir()
    for name in ("model.pt", ".model.pt.k3j.tmp", ".other.pt.x1.tmp", "sub/.ds.json.a9.tmp", "sub/.img.q7.part.nrrd", "sub/img.nrrd", ".lock"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in remove_unfinished_writes(tmp_path, "model.pt")] == [".model.pt.k3j.tmp"]
    assert sorted(p.name for p in remove_unfinished_writes(tmp_path, recursive=True)) == [".ds.json.a9.tmp", ".other.pt.x1.tmp"]
    assert [p.name for p in remove_unfinished_writes(tmp_path, recursive=True, suffix=".part.nrrd")] == [".img.q7.part.nrrd"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [".lock", "model.pt", "sub/img.nrrd"]


def test_datalist_sections_leave_out_lists_of_names():
    from maht_net.io.datalist import datalist_sections

    doc = {"training": [], "test": [{"image": "a.png"}], "sites": ["hamedan", "isbi2015"], "description": "x", "bad": [1]}
    assert datalist_sections(doc) == ["training", "test", "bad"]  # a malformed section is still a section (and an error)
