"""The clinician report: self-contained HTML + PNG, the network explanation, the ``report``
command, and a look at the page in a real (headless Chromium) browser when one is installed."""

import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
from PIL import Image
from test_analysis import MEAN_SHAPE, _run_cli

from maht_net.clinical.report import DISCLAIMER, explain_landmarks, write_report
from maht_net.errors import InputError
from maht_net.io.predictions import build_prediction, write_prediction

SCALE = 0.25  # a quarter-size film keeps rendering fast


@pytest.fixture
def prediction(tmp_path):
    """A prediction document for a synthetic 335 x 418 film (mean Hamedan face, 0.508 mm/px)."""
    h, w = 418, 335
    yy, xx = np.mgrid[0:h, 0:w]
    film = (np.clip(0.2 + 0.6 * np.exp(-(((xx - 200) / 120.0) ** 2 + ((yy - 250) / 170.0) ** 2)), 0, 1) * 255).astype(np.uint8)
    image = tmp_path / "case.png"
    Image.fromarray(film).save(image)
    unc = np.full(19, 2.0)
    unc[9] = 6.0  # gonion: 3 mm at 0.508 mm/px, above the 2 mm review threshold
    pred = build_prediction(image, w, h, MEAN_SHAPE * SCALE, spacing=(0.508, 0.508), uncertainty_px=unc,
                            confidence=np.full(19, 0.9), item_id="case")
    return write_prediction(pred, tmp_path / "pred", formats=("json",))["json"]


def test_report_is_self_contained_with_table_flags_and_disclaimer(prediction, tmp_path):
    paths = write_report(prediction, tmp_path / "out" / "report.html", n_samples=300)
    text = paths["html"].read_text(encoding="utf-8")
    assert paths["png"] == tmp_path / "out" / "report.png"
    with Image.open(paths["png"]) as im:
        assert im.format == "PNG" and max(im.size) == 1200
    assert text.count(DISCLAIMER) == 2 and "Research use only" in text
    assert re.search(r"<img[^>]+src='data:image/png;base64,", text) or re.search(r'<img[^>]+src="data:image/png;base64,', text)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|file:|//)""", text) and "<script" not in text.lower()
    for name in ("SNA", "SNB", "ANB", "ODI", "APDI", "FHI", "FMA", "MW", "gonial_angle", "UL-SnPog'"):
        assert f"<b>{name}</b>" in text.replace("&#x27;", "'")
    assert "REVIEW" in text and "landmark gonion uncertain" in text  # the flagged landmark and its measurements
    assert "needs pronasale" in text  # E-line unavailable with the ISBI set, said so
    assert "0.508 x 0.508 mm/px" in text and "Skeletal class" in text
    assert paths["analysis"]["landmarks"][9]["needs_review"]
    assert "uncertainty NOT calibrated" in text  # the fixture's prediction carries no calibration


def test_report_draws_each_landmark_s_ellipse_and_says_how_it_was_calibrated(prediction, tmp_path):
    import json

    doc = json.loads(prediction.read_text())
    doc["uncertainty_calibration"] = {"method": "sigma_scaling", "section": "validation", "n_images": 10}
    text = write_report(doc, tmp_path / "cal.html", n_samples=100)["html"].read_text()
    assert "calibrated on 10 held-out validation films" in text and "Ellipses" in text
    # a long thin ellipse along x and along y around one landmark colour different pixels of the film
    pngs = []
    for cov in ([[400.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 400.0]]):
        doc["landmarks"][0]["covariance_px"] = cov
        path = write_report(doc, tmp_path / f"e{len(pngs)}.html", n_samples=0)["png"]
        pngs.append(np.asarray(Image.open(path).convert("RGB"), dtype=int))
    changed = np.abs(pngs[0] - pngs[1]).sum(-1) > 60
    ys, xs = np.nonzero(changed)
    sella = np.array([doc["landmarks"][0]["x"], doc["landmarks"][0]["y"]]) * pngs[0].shape[1] / doc["width"]
    assert changed.sum() > 50 and np.hypot(xs - sella[0], ys - sella[1]).max() < 0.25 * pngs[0].shape[1]


def test_report_without_spacing_says_distances_are_pixels(prediction, tmp_path):
    import json

    doc = json.loads(prediction.read_text())
    doc["spacing"] = None
    for r in doc["landmarks"]:
        r["uncertainty_mm"] = None
    text = write_report(doc, tmp_path / "r.html", n_samples=100)["html"].read_text()
    assert "unknown: distances in pixels" in text and "no pixel spacing" in text


def test_report_refuses_a_missing_or_mismatched_image(prediction, tmp_path):
    with pytest.raises(InputError, match="not found"):
        write_report(prediction, tmp_path / "r.html", image=tmp_path / "nope.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(InputError, match="prediction is for 335x418"):
        write_report(prediction, tmp_path / "r.html", image=tmp_path / "small.png")


def test_explanation_renders_heatmaps_and_gate_attention(prediction, tiny_checkpoint, tmp_path):
    image = prediction.parent.parent / "case.png"
    result = explain_landmarks(tiny_checkpoint, image, tmp_path / "explain.png")
    assert result["path"].is_file() and result["png"][:4] == b"\x89PNG"
    assert result["heatmaps"].shape == (19, 24, 16)  # input (W, H) = (64, 96) at stride 4
    np.testing.assert_allclose(result["heatmaps"].reshape(19, -1).sum(1), 1.0, rtol=1e-5)
    assert len(result["gates"]) == 3 and all(((g >= 0) & (g <= 1)).all() for g in result["gates"])
    assert result["transformer"].shape == (3, 2)
    x0, x1, y1, y0 = result["extent"]
    assert ((result["points"][:, 0] >= x0) & (result["points"][:, 0] <= x1)).all()
    assert ((result["points"][:, 1] >= y0) & (result["points"][:, 1] <= y1)).all()


def test_explanation_preprocesses_the_film_at_the_prediction_s_spacing(prediction, tiny_checkpoint, tmp_path, monkeypatch):
    """A model trained at a fixed physical pixel size sees a PNG film (no spacing in the file) at
    the spacing its prediction used, so the explained input is the predicted one."""
    import torch

    import maht_net.clinical.report as report

    state = torch.load(tiny_checkpoint, weights_only=False)
    state["info"]["input_mm_per_px"] = 4.0
    physical = tmp_path / "physical.pt"
    torch.save(state, physical)
    image = prediction.parent.parent / "case.png"
    x0, x1, _, _ = explain_landmarks(physical, image, spacing=(0.508, 0.508))["extent"]
    assert x1 - x0 == pytest.approx(64 * 4.0 / 0.508, rel=0.02)  # 64 input px of ~4 mm (resampled to whole px) over 0.508 mm film px
    x0, x1, _, _ = explain_landmarks(physical, image)["extent"]
    assert x1 - x0 == pytest.approx(335, rel=1e-3)  # no spacing: the film fills the input's width
    seen = []
    monkeypatch.setattr(report, "explain_landmarks", lambda *a, **k: seen.append(k["spacing"]) or explain_landmarks(*a, **k))
    write_report(prediction, tmp_path / "r.html", checkpoint=physical, n_samples=100)
    assert seen == [[0.508, 0.508]]


def test_report_command_with_explanation(prediction, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "cli" / "report.html"
    argv = ["report", str(prediction), "--out", str(out), "--explain", "--checkpoint", str(tiny_checkpoint), "--samples", "200"]
    assert _run_cli(argv) == 0
    text = out.read_text()
    assert "Explanation (network heatmaps and attention)" in text and text.count("data:image/png;base64,") == 2
    assert (tmp_path / "cli" / "report_explain.png").is_file()
    assert "skeletal class:" in capsys.readouterr().out
    assert _run_cli(["report", str(tmp_path / "none_landmarks.json"), "--out", str(out)]) == 2


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(prediction, tmp_path):
    html = write_report(prediction, tmp_path / "report.html", n_samples=200)["html"]
    shot = tmp_path / "shot.png"
    cmd = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}",
        f"--screenshot={shot}", "--window-size=1200,1600", html.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    with Image.open(shot) as im:
        assert im.size == (1200, 1600)
        gray = np.asarray(im.convert("L"), dtype=float)
    assert gray.std() > 20  # not a blank page
    banner = np.asarray(Image.open(shot).convert("RGB"))[:200].reshape(-1, 3).astype(int)
    assert ((banner[:, 0] > 150) & (banner[:, 1] < 40) & (banner[:, 2] < 60)).sum() > 5000  # the red disclaimer is on top
