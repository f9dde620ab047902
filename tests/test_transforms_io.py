"""Loading transforms (axis convention, spacing, landmarks, error propagation) and the per-image
intensity transforms, which change no geometry."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_inputs import write_dicom
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose
from PIL import Image

from maht_net.errors import InputError
from maht_net.transforms.intensity import (
    CLAHE,
    CLAHEd,
    NormalizeXRay,
    NormalizeXRayd,
    RandXRayIntensity,
    RandXRayIntensityd,
    RandXRayInvert,
    RandXRayInvertd,
)
from maht_net.transforms.io import (
    NONLINEAR_WARP,
    ORIG_TO_CURRENT,
    ORIGIN,
    ORIGINAL_SIZE,
    ORIGINAL_SPACING,
    SPACING_FALLBACK,
    LoadXRay,
    LoadXRayd,
    as_landmarks,
    unwrap_input_error,
    xray_meta,
)


def _png(path: Path, width: int = 97, height: int = 61) -> Path:
    """Asymmetric non-square 8-bit PNG: a white dot at (x=70, y=12), a grey one at (x=5, y=50)."""
    arr = np.zeros((height, width), np.uint8)
    arr[12, 70] = 255
    arr[50, 5] = 128
    Image.fromarray(arr).save(path)
    return path


# ----------------------------------------------------------------------------- loading


def test_load_xray_axis_convention_and_meta(tmp_path):
    img = LoadXRay()(_png(tmp_path / "a.png"))
    assert isinstance(img, MetaTensor) and img.shape == (1, 61, 97) and img.dtype == torch.float32
    assert img[0, 12, 70] == 1.0  # point (x=70, y=12) is image[0, y, x]
    assert img[0, 50, 5] == pytest.approx(128 / 255)
    assert float(img.sum()) == pytest.approx(1 + 128 / 255)
    assert img.meta[ORIGINAL_SIZE].tolist() == [97, 61]
    assert np.isnan(img.meta[ORIGINAL_SPACING]).all()
    np.testing.assert_array_equal(img.meta[ORIG_TO_CURRENT], np.eye(3))
    assert img.meta[ORIGIN].tolist() == [0.0, 0.0] and img.meta[NONLINEAR_WARP] is False
    assert img.meta["filename_or_obj"].endswith("a.png")


def test_dicom_spacing_lands_in_meta_and_item(tmp_path):
    # DICOM states (row, column) spacing: 0.12 mm between rows (y), 0.1 mm between columns (x).
    path = write_dicom(tmp_path / "a.dcm", (np.arange(40 * 50).reshape(40, 50) % 4096).astype(np.uint16), ImagerPixelSpacing=[0.12, 0.1])
    out = LoadXRayd()({"image": str(path), "spacing": None})
    np.testing.assert_allclose(out["image"].meta[ORIGINAL_SPACING], (0.1, 0.12))
    assert out["spacing"] == pytest.approx((0.1, 0.12))
    assert out["image"].shape == (1, 40, 50)


def test_datalist_spacing_wins_and_warns_when_it_disagrees(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", np.zeros((40, 50), np.uint16), ImagerPixelSpacing=[0.1, 0.1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within 1%: silent
        close = LoadXRayd()({"image": str(path), "spacing": (0.1005, 0.1)})
    assert close["spacing"] == (0.1005, 0.1)
    with pytest.warns(UserWarning, match=r"a\.dcm.*differs"):
        far = LoadXRayd()({"image": str(path), "spacing": [0.127, 0.127]})
    assert far["spacing"] == (0.127, 0.127)
    np.testing.assert_allclose(far["image"].meta[ORIGINAL_SPACING], (0.127, 0.127))


def test_png_without_spacing_gives_none(tmp_path):
    out = LoadXRayd()({"image": str(_png(tmp_path / "a.png"))})
    assert out["spacing"] is None and "landmarks" not in out


def test_default_spacing_fills_in_only_where_item_and_file_state_none(tmp_path):
    """``default_spacing`` (``maht-net infer --spacing``): a PNG takes it and its meta says so; a
    DICOM's own spacing and an item's spacing win over it."""
    png = str(_png(tmp_path / "a.png"))
    dcm = str(write_dicom(tmp_path / "a.dcm", np.zeros((40, 50), np.uint16), ImagerPixelSpacing=[0.12, 0.1]))
    load = LoadXRayd(default_spacing=0.2)
    filled = load({"image": png})
    assert filled["spacing"] == (0.2, 0.2) and filled["image"].meta[SPACING_FALLBACK] is True
    np.testing.assert_allclose(filled["image"].meta[ORIGINAL_SPACING], (0.2, 0.2))
    for item, expected in (({"image": dcm}, (0.1, 0.12)), ({"image": png, "spacing": (0.3, 0.25)}, (0.3, 0.25))):
        out = load(item)
        assert out["spacing"] == pytest.approx(expected) and out["image"].meta[SPACING_FALLBACK] is False
    assert LoadXRayd(default_spacing=[0.1, 0.15])({"image": png})["spacing"] == (0.1, 0.15)
    for bad in (0.0, [0.1, 0.1, 0.1], float("inf")):
        with pytest.raises(ValueError, match="default_spacing"):
            LoadXRayd(default_spacing=bad)


def test_landmarks_become_float32_arrays(tmp_path):
    path = str(_png(tmp_path / "a.png"))
    out = LoadXRayd()({"image": path, "landmarks": [[70, 12], None, [5.5, 50.25]], "id": "x"})
    assert out["landmarks"].dtype == np.float32 and out["landmarks"].shape == (3, 2)
    assert np.isnan(out["landmarks"][1]).all() and out["landmarks"][2].tolist() == [5.5, 50.25]
    assert out["id"] == "x"
    assert as_landmarks(torch.ones(4, 2, dtype=torch.float64)).dtype == np.float32
    with pytest.raises(ValueError, match="landmarks"):
        LoadXRayd()({"image": path, "landmarks": np.zeros((3, 3))})


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="spacing_rtol"):
        LoadXRayd(spacing_rtol=-0.1)
    with pytest.raises(ValueError, match="original_size"):
        xray_meta((10, 10, 10))
    with pytest.raises(ValueError, match="spacing"):
        LoadXRayd()({"image": str(_png(tmp_path / "a.png")), "spacing": [0.1, -0.1]})


# ----------------------------------------------------------------------------- input errors


def test_input_error_propagates_unchanged(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(InputError, match="missing.png: file not found"):
        LoadXRayd()({"image": str(missing)})


def test_input_error_is_recovered_through_compose(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(RuntimeError) as info:
        Compose([LoadXRayd()])({"image": str(bad)})
    err = unwrap_input_error(info.value)
    assert isinstance(err, InputError) and err.path == str(bad) and "not a readable image" in err.problem


def test_input_error_is_recovered_from_a_dataloader_worker(tmp_path):
    missing = tmp_path / "missing.png"
    loader = DataLoader(Dataset([{"image": str(missing)}], Compose([LoadXRayd()])), batch_size=1, num_workers=1)
    with pytest.raises(Exception) as info:
        next(iter(loader))
    err = unwrap_input_error(info.value)
    assert err is not None and str(err) == f"{missing}: file not found"


def test_unwrap_input_error_returns_none_for_other_errors():
    assert unwrap_input_error(RuntimeError("boom")) is None
    try:
        raise RuntimeError("applying transform") from KeyError("image")
    except RuntimeError as e:
        assert unwrap_input_error(e) is None


# ----------------------------------------------------------------------------- intensity


def _meta_image(arr: np.ndarray) -> MetaTensor:
    return MetaTensor(torch.as_tensor(arr, dtype=torch.float32)[None], meta=xray_meta(arr.shape[::-1], (0.1, 0.1)))


def test_normalize_percentile_and_zscore_keep_meta():
    rng = np.random.default_rng(0)
    arr = rng.normal(0.4, 0.1, (64, 80))
    arr[:4] = 5.0  # a burnt-in label: must not set the white point
    img = _meta_image(arr)
    out = NormalizeXRay()(img)
    assert isinstance(out, MetaTensor) and out.shape == img.shape
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0
    assert float(out[0, 10:].max()) < 1.0  # the tissue keeps its contrast
    np.testing.assert_array_equal(out.meta[ORIG_TO_CURRENT], np.eye(3))
    assert out.meta is not img.meta
    z = NormalizeXRayd(mode="zscore")({"image": img})["image"]
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-5) and float(z.std()) == pytest.approx(1.0, abs=1e-3)
    assert float(NormalizeXRay()(torch.full((1, 8, 8), 3.0)).abs().max()) == 0.0


def test_clahe_output_range_and_meta():
    rng = np.random.default_rng(1)
    arr = np.clip(np.linspace(0.3, 0.5, 96)[None, :] + rng.normal(0, 0.01, (64, 96)), 0, 1)
    out = CLAHEd(clip_limit=0.02, kernel_size=16)({"image": _meta_image(arr)})["image"]
    assert isinstance(out, MetaTensor) and out.shape == (1, 64, 96) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert float(out.std()) > float(np.std(arr))  # contrast was stretched
    assert out.meta[ORIGINAL_SIZE].tolist() == [96, 64]


def test_rand_intensity_is_deterministic_and_skippable():
    img = _meta_image(np.random.default_rng(2).uniform(0, 1, (64, 64)))
    first = RandXRayIntensityd(prob=1.0, component_prob=1.0).set_random_state(5)({"image": img})["image"]
    second = RandXRayIntensityd(prob=1.0, component_prob=1.0).set_random_state(5)({"image": img})["image"]
    other = RandXRayIntensityd(prob=1.0, component_prob=1.0).set_random_state(6)({"image": img})["image"]
    assert torch.equal(first, second) and not torch.equal(first, other)
    assert isinstance(first, MetaTensor) and first.meta[ORIGINAL_SIZE].tolist() == [64, 64]
    assert torch.equal(RandXRayIntensity(prob=0.0)(img), img)
    assert torch.allclose(RandXRayIntensity(prob=1.0, strength=0.0)(img), img, atol=1e-6)
    for seed in range(5):  # even very strong settings never invert the image
        strong = RandXRayIntensity(prob=1.0, component_prob=1.0, strength=5.0).set_random_state(seed)(img)
        assert np.corrcoef(strong.numpy().ravel(), img.numpy().ravel())[0, 1] > 0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: NormalizeXRay(mode="minmax"), "mode"),
        (lambda: NormalizeXRay(lower=50, upper=40), "lower"),
        (lambda: CLAHE(clip_limit=0), "clip_limit"),
        (lambda: CLAHE(kernel_size=0), "kernel_size"),
        (lambda: RandXRayIntensity(gamma=-0.1), "gamma"),
        (lambda: RandXRayIntensity(component_prob=1.5), "component_prob"),
        (lambda: RandXRayIntensity(contrast=1.0), "contrast"),
    ],
)
def test_intensity_invalid_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_blur_matches_scipy_gaussian_filter():
    from scipy.ndimage import gaussian_filter

    from maht_net.transforms.intensity import _gaussian_blur

    x = torch.rand(2, 40, 50, dtype=torch.float64)
    ref = np.stack([gaussian_filter(c.numpy(), 0.7, mode="mirror", truncate=3 / 0.7) for c in x])  # radius 3
    np.testing.assert_allclose(_gaussian_blur(x, 0.7).numpy(), ref, atol=1e-12)


def test_rand_invert_flips_polarity_within_the_range_and_keeps_meta():
    img = MetaTensor(torch.tensor([[[0.2, 0.5], [0.9, 0.3]]]), meta={"spacing": (0.1, 0.1)})
    out = RandXRayInvert(prob=1.0)(img)
    assert torch.allclose(out, torch.tensor([[[0.9, 0.6], [0.2, 0.8]]])) and out.meta["spacing"] == (0.1, 0.1)
    assert torch.equal(RandXRayInvert(prob=0.0)(img), img)
    flips = [not torch.equal(RandXRayInvertd(prob=0.5).set_random_state(k)({"image": img})["image"], img) for k in range(200)]
    assert 70 < sum(flips) < 130  # about half
