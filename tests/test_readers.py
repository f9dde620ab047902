"""Data-set readers: ISBI 2015, CL-Detection 2023, DICOM, driven through ``maht-net prepare``.

All fixtures are tiny synthetic copies of the real layouts, built in ``tmp_path``.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import write_dicom as _dicom
from PIL import Image

from maht_net import cli
from maht_net.datasets.cldetection2023 import iter_stack, read_metaimage_header
from maht_net.datasets.common import cross_validation_folds
from maht_net.datasets.isbi2015 import read_isbi_annotation
from maht_net.io.datalist import load_datalist
from maht_net.io.image import load_xray
from maht_net.io.labelme import write_labelme


@pytest.fixture
def run(monkeypatch, capsys):
    """``run(*argv) -> (exit code, stdout, stderr)`` through ``maht_net.cli.main`` (prepare only)."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("maht_net.cli.prepare",))

    def _run(*argv: str) -> tuple[int, str, str]:
        code = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return _run


def _doc(path: Path) -> dict:
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- ISBI 2015

ISBI_W, ISBI_H = 64, 48  # the real images are 1935 x 2400


def _isbi_points(case: int, doctor: str) -> np.ndarray:
    """(19, 2) integer points; the junior doctor is off by (1, 2) px so the mean has halves."""
    k = np.arange(19)
    pts = np.stack([(3 * k + case) % (ISBI_W - 4) + 1, (5 * k + 2 * case) % (ISBI_H - 4) + 1], axis=1)
    return pts + (np.array([1, 2]) if doctor == "junior" else 0)


def _write_isbi_txt(path: Path, points: np.ndarray, classes: bool = True) -> None:
    lines = [f"{int(x)},{int(y)}" for x, y in points] + (["1", "2", "1", "3", "2", "1", "2", "1"] if classes else [])
    path.write_text("\n".join(lines) + "\n")


def _isbi_pixels(case: int) -> np.ndarray:
    # smooth enough that JPEG keeps it close
    yy, xx = np.mgrid[:ISBI_H, :ISBI_W]
    return ((xx * 3 + yy * 2 + case * 5) % 256).astype(np.uint8)


def _isbi_tree(
    root: Path, n_train: int = 3, nested: bool = True, suffix: str = ".bmp", splits=("TrainingData", "Test1Data", "Test2Data")
) -> Path:
    ids = {"TrainingData": range(1, n_train + 1), "Test1Data": range(151, 154), "Test2Data": range(301, 304)}
    ann = root / "AnnotationsByMD" if nested else root
    for folder in splits:
        (root / "RawImage" / folder).mkdir(parents=True)
        for case in ids[folder]:
            grey = _isbi_pixels(case)
            # the re-shared release stores grey JPEGs as RGB with R = G = B
            pixels = np.repeat(grey[..., None], 3, axis=2) if suffix in (".jpg", ".jpeg") else grey
            Image.fromarray(pixels).save(root / "RawImage" / folder / f"{case:03d}{suffix}", **({"quality": 75} if suffix == ".jpg" else {}))
            for doctor in ("senior", "junior"):
                (ann / f"400_{doctor}").mkdir(parents=True, exist_ok=True)
                _write_isbi_txt(ann / f"400_{doctor}" / f"{case:03d}.txt", _isbi_points(case, doctor))
    return root


def test_read_isbi_annotation_ignores_classification_lines(tmp_path):
    path = tmp_path / "001.txt"
    _write_isbi_txt(path, _isbi_points(1, "senior"))
    np.testing.assert_array_equal(read_isbi_annotation(path), _isbi_points(1, "senior"))
    _write_isbi_txt(path, _isbi_points(1, "senior"), classes=False)
    np.testing.assert_array_equal(read_isbi_annotation(path), _isbi_points(1, "senior"))


def test_prepare_isbi2015_mean_of_doctors(tmp_path, run):
    root = _isbi_tree(tmp_path / "ISBI")
    code, out, err = run("prepare", "isbi2015", "--root", root, "--out-dir", tmp_path / "dl", "--folds", "0")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == [
        "isbi2015_test1.json",
        "isbi2015_test2.json",
        "isbi2015_train.json",
    ]
    train = _doc(tmp_path / "dl" / "isbi2015_train.json")
    assert train["landmark_set"] == "isbi2015" and train["num_landmarks"] == 19
    assert [it["id"] for it in train["training"]] == ["001", "002", "003"]
    first = train["training"][0]
    expected = (_isbi_points(1, "senior") + _isbi_points(1, "junior")) / 2.0
    assert first["landmarks"] == expected.tolist()
    sella = _isbi_points(1, "senior")[0]
    assert first["landmarks"][0] == [sella[0] + 0.5, sella[1] + 1.0]  # junior is off by (1, 2)
    assert first["spacing"] == [0.1, 0.1] and (first["width"], first["height"]) == (ISBI_W, ISBI_H)
    assert first["site"] == "isbi2015" and train["truth"] == "mean" and "mean of the senior and junior" in train["description"]
    assert first["annotators"]["junior"] == _isbi_points(1, "junior").astype(float).tolist()
    items = load_datalist(tmp_path / "dl" / "isbi2015_train.json", check_files=True)
    np.testing.assert_array_equal(items[0]["landmarks"], expected)
    assert Path(items[0]["image"]) == (root / "RawImage" / "TrainingData" / "001.bmp").resolve()
    for name, first_id in (("test1", "151"), ("test2", "301")):
        doc = _doc(tmp_path / "dl" / f"isbi2015_{name}.json")
        assert list(k for k, v in doc.items() if isinstance(v, list)) == ["test"]
        assert doc["test"][0]["id"] == first_id


@pytest.mark.parametrize("flag", ["--truth", "--annotator"])
def test_prepare_isbi2015_single_annotator_flat_layout(tmp_path, run, flag):
    root = _isbi_tree(tmp_path / "ISBI", nested=False)
    shutil.rmtree(root / "400_junior")  # not needed for --truth senior
    code, _, err = run("prepare", "isbi2015", "--root", root, "--out-dir", tmp_path, flag, "senior", "--folds", "0")
    assert code == 0, err
    doc = _doc(tmp_path / "isbi2015_test2.json")
    item = doc["test"][2]
    assert item["id"] == "303" and item["landmarks"] == _isbi_points(303, "senior").astype(float).tolist()
    assert "annotators" not in item
    assert doc["truth"] == "senior" and "the senior doctor" in doc["description"]


def test_prepare_isbi2015_jpeg_release_with_only_training_films(tmp_path, run):
    """The layout in ../shared: RGB JPEGs with equal channels, no Test1/Test2 folders."""
    root = _isbi_tree(tmp_path / "ISBI", n_train=4, suffix=".jpg", splits=("TrainingData",))
    code, out, err = run("prepare", "isbi2015", "--root", root, "--out-dir", tmp_path / "dl", "--folds", "2", "--spacing", "0.11")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == [
        "isbi2015_cv_fold0.json",
        "isbi2015_cv_fold1.json",
        "isbi2015_train.json",
    ]
    items = load_datalist(tmp_path / "dl" / "isbi2015_train.json", check_files=True)
    assert [it["id"] for it in items] == ["001", "002", "003", "004"] and items[0]["image"].endswith("001.jpg")
    assert tuple(items[0]["spacing"]) == (0.11, 0.11)
    grey = load_xray(items[0]["image"]).image
    assert grey.shape == (ISBI_H, ISBI_W)
    assert np.abs(grey * 255 - _isbi_pixels(1)).mean() < 3  # read as the grey film it is


def test_prepare_isbi2015_refuses_colour_images(tmp_path, run):
    root = _isbi_tree(tmp_path / "ISBI", suffix=".png", splits=("TrainingData",))
    colour = np.zeros((ISBI_H, ISBI_W, 3), np.uint8)
    colour[..., 0] = 200  # a red image
    Image.fromarray(colour).save(root / "RawImage" / "TrainingData" / "002.png")
    code, _, err = run("prepare", "isbi2015", "--root", root, "--out-dir", tmp_path / "dl", "--folds", "0")
    assert code == 2 and "002.png" in err and "colour image" in err
    assert not (tmp_path / "dl").exists()


def test_prepare_isbi2015_no_split_folder(tmp_path, run):
    (tmp_path / "ISBI" / "RawImage").mkdir(parents=True)
    code, _, err = run("prepare", "isbi2015", "--root", tmp_path / "ISBI", "--out-dir", tmp_path / "dl")
    assert code == 2 and "no split folder found" in err and "TrainingData" in err


def test_prepare_isbi2015_cross_validation_folds(tmp_path, run):
    root = _isbi_tree(tmp_path / "ISBI", n_train=10)
    code, _, err = run("prepare", "isbi2015", "--root", root, "--out-dir", tmp_path / "dl", "--seed", "3")
    assert code == 0, err
    all_ids = {f"{i:03d}" for i in range(1, 11)}
    validation = []
    for k in range(4):
        doc = _doc(tmp_path / "dl" / f"isbi2015_cv_fold{k}.json")
        train_ids = {it["id"] for it in doc["training"]}
        val_ids = {it["id"] for it in doc["validation"]}
        assert doc["fold"] == k and doc["folds"] == 4 and doc["seed"] == 3
        assert train_ids.isdisjoint(val_ids) and train_ids | val_ids == all_ids
        validation.append(val_ids)
    assert sorted(len(v) for v in validation) == [2, 2, 3, 3]
    assert set().union(*validation) == all_ids and sum(map(len, validation)) == 10  # each id validated once


def test_cross_validation_folds_seeded():
    ids = [str(i) for i in range(20)]
    assert cross_validation_folds(ids, 4, seed=0) == cross_validation_folds(ids, 4, seed=0)
    assert cross_validation_folds(ids, 4, seed=0) != cross_validation_folds(ids, 4, seed=1)
    with pytest.raises(ValueError):
        cross_validation_folds(ids[:3], 4)


def _corrupt_18_lines(root: Path) -> str:
    path = root / "AnnotationsByMD" / "400_junior" / "002.txt"
    _write_isbi_txt(path, _isbi_points(2, "junior")[:18])
    return "found 18"


def _corrupt_non_numeric(root: Path) -> str:
    path = root / "AnnotationsByMD" / "400_senior" / "152.txt"
    lines = path.read_text().splitlines()
    lines[1] = "abc,7"
    path.write_text("\n".join(lines))
    return "landmark 2 (nasion): expected 'x,y' numbers, got 'abc,7'"


def _corrupt_outside(root: Path) -> str:
    path = root / "AnnotationsByMD" / "400_senior" / "301.txt"
    pts = _isbi_points(301, "senior")
    pts[4] = (ISBI_W + 10, 5)
    _write_isbi_txt(path, pts)
    return f"landmark 5 (subspinale) at ({ISBI_W + 10}, 5) is outside the {ISBI_W}x{ISBI_H} image"


def _corrupt_image(root: Path) -> str:
    (root / "RawImage" / "Test1Data" / "153.bmp").write_bytes(b"BM not really a bitmap" * 10)
    return "153.bmp"


def _missing_annotation(root: Path) -> str:
    (root / "AnnotationsByMD" / "400_junior" / "003.txt").unlink()
    return "annotation file not found"


@pytest.mark.parametrize(
    "corrupt", [_corrupt_18_lines, _corrupt_non_numeric, _corrupt_outside, _corrupt_image, _missing_annotation]
)
def test_prepare_isbi2015_bad_input_writes_nothing(tmp_path, run, corrupt):
    root = _isbi_tree(tmp_path / "ISBI")
    expected = corrupt(root)
    code, out, err = run("prepare", "isbi2015", "--root", root, "--out-dir", tmp_path / "dl", "--folds", "0")
    assert code == 2
    assert err.startswith("error: ") and expected in err and "Traceback" not in err
    assert not (tmp_path / "dl").exists()


# --------------------------------------------------------------------------- CL-Detection 2023

CL_SIZES = [(40, 50), (45, 60), (38, 64)]  # (H, W) of each image before padding to (48, 64)
CL_SCALES = [0.1, 0.096, 0.125]


def _cl_images() -> list[np.ndarray]:
    """Grey images as RGB with equal channels, no zero pixel (so the padding is all that is zero)."""
    rng = np.random.default_rng(0)
    return [np.repeat(rng.integers(1, 256, (h, w, 1), dtype=np.uint8), 3, axis=2) for h, w in CL_SIZES]


def _cl_points(i: int) -> np.ndarray:
    h, w = CL_SIZES[i]
    k = np.arange(38)
    return np.stack([(7 * k + i) % w, (3 * k + 2 * i) % h], axis=1).astype(float) + 0.25


def _cl_stack_array() -> np.ndarray:
    stack = np.zeros((3, 48, 64, 3), np.uint8)
    for i, im in enumerate(_cl_images()):
        stack[i, : im.shape[0], : im.shape[1]] = im
    return stack


def _cl_gt(path: Path, drop: tuple[int, int] | None = None, move: tuple[int, int, list] | None = None) -> None:
    entries = []
    for i in range(3):
        for k, (x, y) in enumerate(_cl_points(i)):
            if drop == (i + 1, k + 1):
                continue
            if move is not None and move[:2] == (i + 1, k + 1):
                x, y = move[2]
            entries.append({"name": str(k + 1), "point": [x, y, i + 1], "scale": CL_SCALES[i]})
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"name": "Orthodontic landmarks", "type": "Multiple points", "points": entries, "version": {"major": 1}}
    path.write_text(json.dumps(doc))


def _cl_release(root: Path, compressed: bool = True, layout: str = "flat") -> Path:
    sitk = pytest.importorskip("SimpleITK")
    stack = root / ("train_stack.mha" if layout == "flat" else "images/train-stack.mha")
    stack.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(_cl_stack_array(), isVector=True), str(stack), compressed)
    _cl_gt(root / ("train-gt.json" if layout == "flat" else "labels/train-gt.json"))
    return root


@pytest.mark.parametrize("compressed", [True, False])
def test_prepare_cldetection2023(tmp_path, run, compressed):
    root = _cl_release(tmp_path / "cl", compressed)
    out = tmp_path / "dl" / "cl.json"
    code, _, err = run("prepare", "cldetection2023", "--root", root, "--out", out)
    assert code == 0, err
    doc = _doc(out)
    assert doc["landmark_set"] == "cldetection2023" and doc["num_landmarks"] == 38
    assert [it["id"] for it in doc["training"]] == ["001", "002", "003"]
    for i, (item, image) in enumerate(zip(doc["training"], _cl_images())):
        png = np.asarray(Image.open(out.parent / item["image"]))
        np.testing.assert_array_equal(png, image[..., 0])  # padding cropped, grey kept exactly
        assert item["landmarks"] == _cl_points(i).tolist()
        assert item["spacing"] == [CL_SCALES[i]] * 2 and (item["height"], item["width"]) == CL_SIZES[i]
    assert item["image"] == "cl_images/003.png"
    assert not list(out.parent.glob(".*"))  # no staging folder left behind


def test_prepare_cldetection2023_isbi_subset_and_folds(tmp_path, run):
    root = _cl_release(tmp_path / "cl", layout="nested")
    out = tmp_path / "cl19.json"
    code, _, err = run(
        "prepare", "cldetection2023", "--root", root, "--out", out, "--landmark-set", "isbi2015",
        "--images-dir", tmp_path / "png", "--folds", "3",
    )  # fmt: skip
    assert code == 0, err
    items = load_datalist(out, check_files=True)
    assert len(items) == 3 and items[1]["landmarks"].shape == (19, 2)
    np.testing.assert_array_equal(items[1]["landmarks"], _cl_points(1)[:19])
    vals = [{it["id"] for it in _doc(tmp_path / f"cl19_fold{k}.json")["validation"]} for k in range(3)]
    assert sorted(map(len, vals)) == [1, 1, 1] and set().union(*vals) == {"001", "002", "003"}


def test_metaimage_reader_matches_simpleitk(tmp_path):
    """Hand-written .mhd + external big-endian 16-bit raw data: same slices as SimpleITK reads."""
    sitk = pytest.importorskip("SimpleITK")
    data = np.random.default_rng(1).integers(0, 65535, (2, 33, 35), dtype=np.uint16)
    (tmp_path / "s.raw").write_bytes(data.astype(">u2").tobytes())
    (tmp_path / "s.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = True\n"
        "CompressedData = False\nDimSize = 35 33 2\nElementType = MET_USHORT\nElementDataFile = s.raw\n"
    )
    info = read_metaimage_header(tmp_path / "s.mhd")
    assert info.shape == (2, 33, 35) and info.channels == 1 and not info.compressed
    slices = list(iter_stack(info))
    np.testing.assert_array_equal(np.stack(slices), sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "s.mhd"))))
    np.testing.assert_array_equal(np.stack(slices), data)


def _cl_drop_landmark(root: Path) -> str:
    _cl_gt(root / "train-gt.json", drop=(2, 38))
    return "image 2: landmark(s) 38 missing"


def _cl_point_outside(root: Path) -> str:
    _cl_gt(root / "train-gt.json", move=(3, 7, [10.0, 45.0]))  # image 3 is 38 rows high once cropped
    return "(image 3): landmark 7 (pogonion) at (10, 45) is outside the 64x38 image"


def _cl_truncated(root: Path) -> str:
    stack = root / "train_stack.mha"
    stack.write_bytes(stack.read_bytes()[:-200])
    return "truncated"


def _cl_extra_image(root: Path) -> str:
    doc = _doc(root / "train-gt.json")
    doc["points"] += [{"name": str(k), "point": [1, 1, 4], "scale": 0.1} for k in range(1, 39)]
    (root / "train-gt.json").write_text(json.dumps(doc))
    return "landmarks for images beyond the stack: [4]"


def _cl_bad_name(root: Path) -> str:
    doc = _doc(root / "train-gt.json")
    doc["points"][5]["name"] = "Sella"
    (root / "train-gt.json").write_text(json.dumps(doc))
    return "points[5]: landmark name must be 1..38, got 'Sella'"


@pytest.mark.parametrize(
    "corrupt", [_cl_drop_landmark, _cl_point_outside, _cl_truncated, _cl_extra_image, _cl_bad_name]
)
def test_prepare_cldetection2023_bad_input_writes_nothing(tmp_path, run, corrupt):
    root = _cl_release(tmp_path / "cl", compressed=corrupt is not _cl_truncated)
    expected = corrupt(root)
    code, _, err = run("prepare", "cldetection2023", "--root", root, "--out", tmp_path / "dl" / "cl.json")
    assert code == 2 and expected in err, err
    assert not (tmp_path / "dl" / "cl.json").exists()
    assert not (tmp_path / "dl").exists() or not any((tmp_path / "dl").rglob("*.png"))


def test_cldetection_truncated_compressed_stack(tmp_path, run):
    root = _cl_release(tmp_path / "cl", compressed=True)
    stack = root / "train_stack.mha"
    stack.write_bytes(stack.read_bytes()[:-60])
    code, _, err = run("prepare", "cldetection2023", "--root", root, "--out", tmp_path / "cl.json")
    assert code == 2 and "train_stack.mha" in err and ("truncated" in err or "corrupt" in err), err


# --------------------------------------------------------------------------- DICOM


def _ramp(h: int = 40, w: int = 50) -> np.ndarray:
    """16-bit image whose first row starts 0, 1000, 2000, 3000, 4000."""
    arr = np.full((h, w), 2000, np.uint16)
    arr[0, :5] = [0, 1000, 2000, 3000, 4000]
    return arr


def _pydicom_shown(path: Path) -> np.ndarray:
    """pydicom's own display values: Modality LUT then VOI LUT/window."""
    import pydicom
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(str(path))
    return apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)


def _lut(first: int, entries: np.ndarray):
    """A LUT item (Modality or VOI LUT Sequence) of 16-bit entries starting at input ``first``."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.add_new("LUTDescriptor", "US", [len(entries), first, 16])
    item.add_new("LUTData", "US", [int(v) for v in entries])
    return item


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_window_and_inversion(tmp_path, photometric):
    window = {"WindowCenter": 2000, "WindowWidth": 2000}  # maps about 1000..3000 to the 16-bit range
    path = _dicom(tmp_path / "a.dcm", _ramp(), photometric, ImagerPixelSpacing=[0.1, 0.1], **window)
    xray = load_xray(path)
    shown = _pydicom_shown(path) / 65535  # LINEAR window of unsigned 16-bit data: output 0..65535
    np.testing.assert_allclose(xray.image, shown if photometric == "MONOCHROME2" else 1 - shown, atol=1e-6)
    np.testing.assert_allclose(xray.image[0, :5], [0, 0, 0.5, 1, 1] if photometric == "MONOCHROME2" else [1, 1, 0.5, 0, 0], atol=1e-3)
    assert xray.image.shape == (40, 50) and xray.image.dtype == np.float32


def test_dicom_rescale_before_window(tmp_path):
    rescale = {"RescaleSlope": 2, "RescaleIntercept": -1000}  # 0..4000 -> -1000..7000
    path = _dicom(tmp_path / "a.dcm", _ramp(), WindowCenter=3000, WindowWidth=8000, PixelSpacing=[0.1, 0.1], **rescale)
    low, high = -1000, 65535 * 2 - 1000  # the window's output range follows the rescaled 16-bit range
    np.testing.assert_allclose(load_xray(path).image, (_pydicom_shown(path) - low) / (high - low), atol=1e-6)
    np.testing.assert_allclose(load_xray(path).image[0, :5], [0, 0.25, 0.5, 0.75, 1], atol=1e-3)


def test_dicom_sigmoid_window(tmp_path):
    path = _dicom(tmp_path / "a.dcm", _ramp(), WindowCenter=2000, WindowWidth=1000, VOILUTFunction="SIGMOID")
    xray = load_xray(path)
    np.testing.assert_allclose(xray.image, _pydicom_shown(path) / 65535, atol=1e-6)
    assert xray.image[0, 2] == pytest.approx(0.5, abs=1e-6) and 0 < xray.image[0, 1] < 0.02  # not a clipped linear ramp
    assert "SIGMOID window from WindowCenter/WindowWidth applied" in xray.notes


def test_dicom_voi_lut_sequence_is_preferred_to_the_window(tmp_path):
    from pydicom.sequence import Sequence

    entries = np.round(100 + 3900 * np.sqrt(np.arange(4096) / 4095)).astype(int)  # a gamma curve onto 100..4000
    path = _dicom(tmp_path / "a.dcm", _ramp() // 2, VOILUTSequence=Sequence([_lut(0, entries)]), WindowCenter=10, WindowWidth=2)
    xray = load_xray(path)
    np.testing.assert_allclose(xray.image, (_pydicom_shown(path) - 100) / 3900, atol=1e-6)  # the LUT's entries span its output
    np.testing.assert_allclose(xray.image[0, :5], (entries[[0, 500, 1000, 1500, 2000]] - 100) / 3900, atol=1e-6)
    assert "VOI LUT Sequence applied" in xray.notes


def test_dicom_modality_lut_sequence_before_the_window(tmp_path):
    from pydicom.sequence import Sequence

    entries = (np.arange(4096) ** 2 // 256).astype(int)  # 0..65504, a non-linear modality curve
    path = _dicom(tmp_path / "a.dcm", _ramp() // 2, ModalityLUTSequence=Sequence([_lut(0, entries)]), WindowCenter=32768, WindowWidth=65536)
    xray = load_xray(path)
    np.testing.assert_allclose(xray.image, _pydicom_shown(path) / 65535, atol=1e-6)  # 16-bit LUT entries: output 0..65535
    np.testing.assert_allclose(xray.image[0, :5], entries[[0, 500, 1000, 1500, 2000]] / 65535, atol=2e-5)
    assert xray.notes[:2] == ["Modality LUT Sequence applied", "LINEAR window from WindowCenter/WindowWidth applied"]


@pytest.mark.parametrize(
    "tags, spacing, source, note",
    [
        # DICOM is (row, column) = (sy, sx)
        ({"ImagerPixelSpacing": [0.2, 0.1]}, (0.1, 0.2), "ImagerPixelSpacing", "detector-plane spacing, not corrected"),
        ({"ImagerPixelSpacing": [0.22, 0.11], "EstimatedRadiographicMagnificationFactor": 1.1}, (0.1, 0.2),
         "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor", "divided by EstimatedRadiographicMagnificationFactor 1.1"),
        ({"PixelSpacing": [0.3, 0.15]}, (0.15, 0.3), "PixelSpacing", "calibration unknown"),
        ({"ImagerPixelSpacing": [0.14, 0.14], "PixelSpacing": [0.1, 0.1]}, (0.1, 0.1), "PixelSpacing", "PixelSpacing differs from ImagerPixelSpacing"),
        ({"ImagerPixelSpacing": [0.14, 0.14], "PixelSpacing": [0.14, 0.14], "PixelSpacingCalibrationType": "GEOMETRY",
          "PixelSpacingCalibrationDescription": "midsagittal plane"}, (0.14, 0.14), "PixelSpacing", "calibrated at the patient (GEOMETRY: midsagittal plane)"),
        # the same value without a calibration type is the detector spacing copied: the magnification still applies
        ({"ImagerPixelSpacing": [0.11, 0.11], "PixelSpacing": [0.11, 0.11], "EstimatedRadiographicMagnificationFactor": 1.1}, (0.1, 0.1),
         "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor", "(patient plane)"),
        ({"ImagerPixelSpacing": [0.14, 0.14], "PixelSpacing": [0.14, 0.14]}, (0.14, 0.14), "ImagerPixelSpacing", "not corrected for magnification"),
    ],
)
def test_dicom_spacing_precedence(tmp_path, tags, spacing, source, note):
    xray = load_xray(_dicom(tmp_path / "a.dcm", _ramp(), **tags))
    assert xray.spacing == pytest.approx(spacing) and xray.spacing_source == source
    assert any(note in n for n in xray.notes), xray.notes


def test_dicom_without_spacing_warns(tmp_path):
    with pytest.warns(UserWarning, match="no usable ImagerPixelSpacing or PixelSpacing"):
        xray = load_xray(_dicom(tmp_path / "a.dcm", _ramp()))
    assert xray.spacing is None and xray.spacing_source is None


def test_dicom_malformed_spacing_falls_through(tmp_path):
    path = _dicom(tmp_path / "a.dcm", _ramp(), ImagerPixelSpacing=[0.1, 0.2], PixelSpacing=[0.25, 0.5])
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"0.25\\0.5", b"0.25\\abc"))  # same length, not a number
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own warning about the invalid DS value
        xray = load_xray(path)
    assert xray.spacing == pytest.approx((0.2, 0.1)) and xray.spacing_source == "ImagerPixelSpacing"
    assert "ignored malformed PixelSpacing" in xray.notes


def _dicom_folder(root: Path) -> Path:
    window = {"WindowCenter": 2000, "WindowWidth": 2000}
    _dicom(root / "ceph1.dcm", _ramp(), "MONOCHROME1", ImagerPixelSpacing=[0.2, 0.1], **window)
    _dicom(root / "ceph2.dicom", _ramp(48, 36), PixelSpacing=[0.3, 0.15])
    _dicom(root / "series" / "IM0001", _ramp(), **window)  # no suffix, no spacing
    (root / "notes.txt").write_text("not an image")
    return root


def test_prepare_dicom(tmp_path, run):
    folder = _dicom_folder(tmp_path / "dicom")
    pts = np.full((19, 2), np.nan)
    pts[0], pts[18] = (3.0, 4.5), (49.0, 39.0)
    write_labelme(tmp_path / "ann" / "ceph1.json", "ceph1.png", 50, 40, pts)
    out = tmp_path / "dl" / "dicom.json"
    with pytest.warns(UserWarning, match="IM0001: no usable"):
        code, stdout, err = run(
            "prepare", "dicom", "--dicom-dir", folder, "--out", out, "--annotations", tmp_path / "ann",
            "--export-png", tmp_path / "png",
        )  # fmt: skip
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith("ceph1.dcm: 50x40 px; spacing 0.1 x 0.2 mm (sx, sy) from ImagerPixelSpacing;")
    assert "MONOCHROME1 inverted" in lines[0] and "landmarks from ceph1.json" in lines[0]
    assert lines[1].startswith("ceph2.dicom: 36x48 px; spacing 0.15 x 0.3 mm (sx, sy) from PixelSpacing;")
    assert "MONOCHROME2 kept" in lines[1] and "no annotations" in lines[1]
    assert lines[2].startswith("series/IM0001: 50x40 px; no spacing (distances in pixels)")
    doc = _doc(out)
    by_id = {it["id"]: it for it in doc["training"]}
    assert list(by_id) == ["ceph1", "ceph2", "series_IM0001"]
    assert by_id["ceph1"]["spacing"] == [0.1, 0.2] and by_id["series_IM0001"]["spacing"] is None
    assert by_id["ceph2"]["landmarks"] is None and by_id["ceph1"]["dicom"] == "../dicom/ceph1.dcm"
    items = {it["id"]: it for it in load_datalist(out, check_files=True)}
    np.testing.assert_array_equal(items["ceph1"]["landmarks"], pts)
    png = np.asarray(Image.open(items["ceph1"]["image"]))
    assert png.dtype == np.uint8 and png.shape == (40, 50)
    np.testing.assert_array_equal(png[0, :5], [255, 255, 127, 0, 0])  # MONOCHROME1 inverted (DICOM LINEAR: 2000 -> 0.50025)
    np.testing.assert_array_equal(png, np.round(load_xray(folder / "ceph1.dcm").image * 255))


def test_prepare_dicom_without_export_points_at_dicom(tmp_path, run):
    folder = _dicom_folder(tmp_path / "dicom")
    with pytest.warns(UserWarning):
        code, _, err = run("prepare", "dicom", "--dicom-dir", folder, "--out", tmp_path / "d.json")
    assert code == 0, err
    items = _doc(tmp_path / "d.json")["training"]
    assert [it["image"] for it in items] == ["dicom/ceph1.dcm", "dicom/ceph2.dicom", "dicom/series/IM0001"]
    assert all(it["landmarks"] is None for it in items)


def _no_pixel_data(folder: Path) -> str:
    _dicom(folder / "empty.dcm", None, ImagerPixelSpacing=[0.1, 0.1])
    return "empty.dcm: DICOM file has no pixel data"


def _not_dicom(folder: Path) -> str:
    (folder / "fake.dcm").write_bytes(b"\x00\x01 this is not DICOM " * 20)
    return "fake.dcm: not a DICOM file"


def _truncated_pixels(folder: Path) -> str:
    path = folder / "ceph2.dicom"
    path.write_bytes(path.read_bytes()[:-500])
    return "ceph2.dicom"


def _annotation_outside(folder: Path) -> str:
    pts = np.full((19, 2), np.nan)
    pts[3] = (60.0, 10.0)
    write_labelme(folder.parent / "ann" / "ceph1.json", "ceph1.png", 50, 40, pts)
    return "ceph1.json: porion (l4) at (60.0, 10.0) is outside the 50x40 image"


@pytest.mark.parametrize("corrupt", [_no_pixel_data, _not_dicom, _truncated_pixels, _annotation_outside])
def test_prepare_dicom_bad_input_writes_nothing(tmp_path, run, corrupt):
    folder = _dicom_folder(tmp_path / "dicom")
    (tmp_path / "ann").mkdir()
    expected = corrupt(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, _, err = run(
            "prepare", "dicom", "--dicom-dir", folder, "--out", tmp_path / "dl" / "d.json",
            "--annotations", tmp_path / "ann", "--export-png", tmp_path / "dl" / "png",
        )  # fmt: skip
    assert code == 2 and expected in err, err
    assert not (tmp_path / "dl").exists() or not any((tmp_path / "dl").rglob("*.*"))


def test_prepare_parser_lists_every_reader(run, capsys):
    with pytest.raises(SystemExit) as exit_:
        run("prepare", "--help")
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert all(name in help_text for name in ("isbi2015", "labelme", "cldetection2023", "dicom"))
