"""``maht-net audit`` and ``maht-net infer`` through the real CLI entry point."""

import json

import numpy as np
from PIL import Image

from maht_net.cli import main
from maht_net.io.datalist import make_item, write_datalist


def test_audit_reports_problems_and_draws_the_mean_shape(tmp_path, capsys):
    rng = np.random.default_rng(0)
    items = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (120, 100), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        pts = rng.uniform(5, 90, (19, 2))
        if i == 1:
            pts[3] = np.nan
        if i == 2:
            pts[5] = [150.0, 40.0]  # outside the 100 px wide image
        items.append(make_item(tmp_path / f"{i}.png", pts, (0.1, 0.1), str(i)))
    items.append(make_item(tmp_path / "gone.png", rng.uniform(5, 90, (19, 2)), None, "gone"))
    dl = write_datalist(tmp_path / "d.json", {"training": items[:3], "test": items[3:]})
    code = main(["audit", str(dl), "--out-dir", str(tmp_path / "audit")])
    out = capsys.readouterr().out
    assert code == 1
    assert "sections: training=3, test=2" in out and "100x120 (4)" in out
    assert "missing landmarks: 1 (porion=1)" in out
    assert "2: supramentale at (150.0, 40.0) outside 100x120" in out
    assert "gone.png: file not found" in out
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert report["images"] == 5 and (tmp_path / "audit" / "mean_shape.png").stat().st_size > 1000


def test_audit_of_a_clean_datalist_exits_zero(tmp_path, capsys):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "a.png")
    dl = write_datalist(tmp_path / "d.json", {"training": [make_item(tmp_path / "a.png", np.full((19, 2), 10.0), None, "a")]})
    assert main(["audit", str(dl)]) == 0
    assert "problems: 0" in capsys.readouterr().out


def test_a_section_drawn_from_another_on_purpose_is_no_leak_but_must_really_be_drawn_from_it(tmp_path, capsys):
    """``drawn_from``: monitoring films that are also training films count once; a film in two
    sections without it, or one the declared section does not hold, is a problem."""
    for i in range(3):
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / f"{i}.png")
    items = [make_item(tmp_path / f"{i}.png", np.full((19, 2), 10.0 + i), None, str(i)) for i in range(3)]
    doc = {"training": items, "validation": items[:1]}
    leaky = write_datalist(tmp_path / "leaky.json", doc)
    assert main(["audit", str(leaky)]) == 1 and "id '0' appears 2 times" in capsys.readouterr().out
    drawn = tmp_path / "drawn.json"
    drawn.write_text(json.dumps({**json.loads(leaky.read_text()), "drawn_from": {"validation": "training"}}))
    assert main(["audit", str(drawn)]) == 0
    out = capsys.readouterr().out
    assert "sections: training=3, validation=1 (validation drawn from training)" in out and "images: 3 " in out
    moved = json.loads(drawn.read_text())
    moved["validation"][0]["landmarks"][0] = [20.0, 20.0]  # not the training item any more
    moved["drawn_from"]["test"] = "training"
    drawn.write_text(json.dumps(moved))
    assert main(["audit", str(drawn)]) == 1
    out = capsys.readouterr().out
    assert "id '0' of 'validation' is not the same item in 'training'" in out and "drawn_from: 'test' from 'training'" in out


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.json'}: datalist not found"
