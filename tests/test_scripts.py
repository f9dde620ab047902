"""The profiling/benchmark scripts run on tiny settings (figures themselves live in docs/)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # minutes of benchmark plumbing on CPU; make test-slow
def test_profile_networks_prints_a_table():
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "profile_networks.py"), "--sizes", "64", "--repeats", "1", "--batch", "2", "--only", "U-Net", "CPU recipe"],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "network" not in line]
    assert len(rows) == 2 and all("failed" not in r for r in rows)
    params = [float(r.split("|")[2]) for r in rows]
    assert all(p > 0.5 for p in params)


def _phantom_datalist(tmp_path):
    from maht_net.datasets.phantom import make_phantom_dataset

    return make_phantom_dataset(tmp_path / "phantom", n=12, seed=4, size=(128, 160))


@pytest.mark.slow  # minutes of benchmark plumbing on CPU; make test-slow
def test_benchmark_speed_prints_every_table(tiny_checkpoint, tmp_path):
    datalist = _phantom_datalist(tmp_path)
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark_speed.py"), "--checkpoint", str(tiny_checkpoint), "--datalist", str(datalist),
         "--images", "2", "--repeats", "1", "--pipeline-size", "64", "--pipeline-images", "16", "--train-sizes", "64", "--batch", "2",
         "--device", "cpu", "--device-sizes", "64x64", "--device-repeats", "3",
         "--json", str(tmp_path / "speed.json")],
        capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = __import__("json").loads((tmp_path / "speed.json").read_text())
    assert {"PyTorch eager", "TorchScript", "ONNX Runtime", "ONNX Runtime int8 (dynamic)", "ONNX Runtime int8 (static, QDQ)"} <= set(result["latency"])
    assert all(r["seconds"] > r["network_seconds"] > 0 for r in result["latency"].values())  # end to end includes the network
    eager, ts, ort = (result["latency"][k]["mre_mm"] for k in ("PyTorch eager", "TorchScript", "ONNX Runtime"))
    assert abs(eager - ts) < 0.01 and abs(eager - ort) < 0.01  # the same model, deployed three ways
    assert all(r > 0 for r in result["pipeline_images_per_s"].values())
    assert result["training_step"]["64"]["step_s"] > 0 and result["training_step"]["64"]["peak_mb"] >= 0  # tiny: may stay under the baseline
    assert "| PyTorch eager |" in run.stdout and "| 64x64 |" in run.stdout
    rows = result["device"]["rows"]  # the GPU section, run on the CPU here
    assert [(r["input"], r["precision"]) for r in rows] == [("64x64", "fp32"), ("64x64", "amp")]
    assert all(r["latency_s"] > 0 and r["images_per_s"] > 0 and r["train_step_s"] > 0 and r["train_peak_gib"] is None for r in rows)
    assert "| 64x64 | amp |" in run.stdout


def test_benchmark_robustness_script(tiny_checkpoint, tmp_path):
    datalist = _phantom_datalist(tmp_path)
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark_robustness.py"), "--checkpoint", str(tiny_checkpoint), "--datalist", str(datalist),
         "--corruptions", "blur", "crop_chin", "--severities", "2", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| blur | 2 |" in run.stdout and "| crop_chin | 2 |" in run.stdout and (tmp_path / "out" / "results.json").is_file()


@pytest.fixture
def tiny_two_stage(tiny_checkpoint, tmp_path):
    """The tiny first stage with an (almost untrained) small refinement stage attached."""
    from maht_net.engine.refine import refine_checkpoint
    from maht_net.io.datalist import load_datalist

    datalist = _phantom_datalist(tmp_path)
    out, _ = refine_checkpoint(tiny_checkpoint, load_datalist(datalist, "training")[:4], tmp_path / "two.pt", network="refine_net_small", iterations=2, batch_size=2, desc=None)
    return Path(out), datalist


@pytest.mark.slow  # half a minute of benchmark plumbing (ONNX parity of both stages: tests/test_refine.py); make test-slow
def test_benchmark_speed_times_both_stages(tiny_two_stage, tmp_path):
    checkpoint, datalist = tiny_two_stage
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark_speed.py"), "--checkpoint", str(checkpoint), "--datalist", str(datalist),
         "--images", "2", "--repeats", "1", "--latency-only", "--json", str(tmp_path / "speed.json")],
        capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    latency = __import__("json").loads((tmp_path / "speed.json").read_text())["latency"]
    assert {"PyTorch eager", "ONNX Runtime", "PyTorch eager, both stages", "ONNX Runtime, both stages"} <= set(latency)
    assert "ONNX Runtime int8 (dynamic)" not in latency  # --latency-only
    both, first = latency["PyTorch eager, both stages"], latency["PyTorch eager"]
    assert both["mre_mm"] != first["mre_mm"]  # the refinement stage ran
    assert abs(both["mre_mm"] - latency["ONNX Runtime, both stages"]["mre_mm"]) < 0.01  # the same two stages, deployed two ways
    assert "| PyTorch eager, both stages |" in run.stdout


def test_benchmark_speed_device_only_compares_the_device_with_the_cpu(tiny_two_stage, tmp_path):
    """--device-only (scripts/check_gpu.sh on a GPU), run with the CPU as the device: both stages end
    to end with their MRE per site and the largest distance to the CPU's landmarks (none here),
    then the network's device table."""
    checkpoint, datalist = tiny_two_stage
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark_speed.py"), "--checkpoint", str(checkpoint), "--datalist", str(datalist),
         "--images", "2", "--repeats", "1", "--device", "cpu", "--device-only", "--device-sizes", "64x64", "--device-repeats", "2",
         "--batch", "2", "--json", str(tmp_path / "speed.json")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = __import__("json").loads((tmp_path / "speed.json").read_text())
    assert set(result) >= {"end_to_end", "device"} and "latency" not in result
    rows = result["end_to_end"]
    assert set(rows) == {"first stage", "both stages"} and rows["both stages"]["mre_mm"] != rows["first stage"]["mre_mm"]
    assert all(r["seconds"] > 0 and r["max_distance_to_cpu_px"] == 0.0 and set(r["mre_mm"]) == {"all"} for r in rows.values())
    assert [r["input"] for r in result["device"]["rows"]] == ["64x64", "64x64"] and "| both stages |" in run.stdout


def test_benchmark_speed_memory_formats_times_both_formats_of_both_stages(tiny_two_stage, tmp_path):
    checkpoint, _ = tiny_two_stage
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark_speed.py"), "--checkpoint", str(checkpoint), "--memory-formats",
         "--batch", "2", "--repeats", "1", "--json", str(tmp_path / "formats.json")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    rows = __import__("json").loads((tmp_path / "formats.json").read_text())["memory_formats"]
    assert set(rows) == {"first stage, training step", "refinement, training step", "first stage, inference (batch 1)"}
    assert all(r["channels-last"] > 0 and r["contiguous"] > 0 for r in rows.values())
    assert "| refinement, training step |" in run.stdout and "contiguous / channels-last" in run.stdout


def test_benchmark_refinement_compares_first_stage_fuse_and_replace(tiny_two_stage, tmp_path):
    checkpoint, datalist = tiny_two_stage
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark_refinement.py"), "--checkpoint", str(checkpoint), "--datalist", str(datalist),
         "--section", "test", "--shift-mm", "0", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = __import__("json").loads((tmp_path / "out" / "refinement.json").read_text())
    (site,) = result["sites"].values()
    mre = {name: site[name]["summary"]["mre"] for name in ("first stage", "refined (fuse)", "refined (replace)", "refined (fuse), shifts 0 mm")}
    assert len(set(mre.values())) == 4, mre  # four different predictions of the same films
    assert site["refined (fuse)"]["paired_vs_first_stage"]["n"] == site["films"]
    assert "| refined (fuse) |" in run.stdout and "| refined (replace) |" in run.stdout
    # the stage's own test-time patch shifts (2 mm as trained) paired against one centred patch
    assert result["shift_mm"] == 2.0 and site["refined (fuse), shifts 0 mm"]["paired_vs_own_shift"]["n"] == site["films"]
    assert "fuse: shifts 2 mm (the checkpoint's) minus 0 mm" in run.stdout
    # films predicted as if their files stated no spacing (phantoms: 0.66 mm/px; the codec's default 0.1)
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark_refinement.py"), "--checkpoint", str(checkpoint), "--datalist", str(datalist),
         "--section", "test", "--unknown-spacing", "--out", str(tmp_path / "unknown")],
        capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (site,) = __import__("json").loads((tmp_path / "unknown" / "refinement.json").read_text())["sites"].values()
    estimated, defaulted = site["refined (fuse)"]["summary"]["mre"], site["refined (fuse), default spacing"]["summary"]["mre"]
    assert site["first stage"]["summary"]["mre"] == pytest.approx(mre["first stage"])  # the first stage needs no spacing
    # an untrained model (see tests/test_refine.py for the gain): only that the two scales were both run
    assert estimated == pytest.approx(mre["refined (fuse)"], rel=0.05) and defaulted != pytest.approx(estimated, rel=0.01), (estimated, defaulted)
    assert site["scale_estimate_vs_default_spacing"]["n"] == site["films"]


def _metrics(run: Path, site: str, ids: list[str], errors) -> None:
    path = run / "eval" / site / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"per_image": [{"id": i, "errors": list(map(float, e))} for i, e in zip(ids, errors)]}))


def test_compare_runs_pairs_films_per_seed_and_pools_the_seeds(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import compare_runs
    finally:
        sys.path.remove(str(REPO / "scripts"))
    rng = np.random.default_rng(0)
    runs_a, runs_b, diffs = [], [], []
    for seed in range(3):
        ids = [f"{seed}{k}" for k in range(6)]  # another split per seed
        eb = rng.uniform(1, 3, (6, 19))
        ea = eb - 0.5 + rng.normal(0, 0.05, (6, 19))  # A is about 0.5 mm better on every film
        runs_a.append(tmp_path / f"a{seed}"), runs_b.append(tmp_path / f"b{seed}")
        _metrics(runs_a[-1], "hamedan", ids, ea), _metrics(runs_b[-1], "hamedan", ids, eb)
        diffs.append(ea.mean(1) - eb.mean(1))
    out = tmp_path / "compare.json"
    args = ["--a", *map(str, runs_a), "--b", *map(str, runs_b), "--sites", "hamedan", "--names", "new", "old", "--out", str(out)]
    assert compare_runs.main(args) == 0
    result = json.loads(out.read_text())["sites"]["hamedan"]
    pooled = result["pooled"]
    assert pooled["films"] == 18 and pooled["a_better"] == 18 and pooled["p_value"] < 1e-3
    assert pooled["mean_difference"] == pytest.approx(np.concatenate(diffs).mean())
    assert [s["mean_difference"] for s in result["seeds"]] == pytest.approx([d.mean() for d in diffs])
    assert pooled["mre_a_mean_sd"][1] > 0 and "| hamedan | all (3 seeds) | 18 |" in capsys.readouterr().out
    _metrics(runs_b[0], "hamedan", [f"x{k}" for k in range(6)], np.ones((6, 19)))  # other films: not a pair
    with pytest.raises(SystemExit, match="not the same split"):
        compare_runs.main(args)
    assert compare_runs.main(["--a", str(runs_a[0]), "--b", *map(str, runs_b[:2])]) == 2


def test_compare_runs_reads_accuracy_benchmark_results_per_site_and_contender(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import compare_runs
    finally:
        sys.path.remove(str(REPO / "scripts"))
    ids = ["hamedan-001", "hamedan-002", "isbi2015-001", "isbi2015-002", "isbi2015-003"]
    errors = {name: np.arange(5 * 19, dtype=float).reshape(5, 19) / 10 + shift for name, shift in (("first", 1.0), ("second", 0.0))}
    for run, order in (("a", ["first", "second"]), ("b", ["second", "first"])):  # results.json of accuracy benchmarks
        (tmp_path / run).mkdir()
        (tmp_path / run / "results.json").write_text(json.dumps({"test_ids": ids, "contenders": [{"name": n, "errors": errors[n].tolist()} for n in order]}))
    a, b = tmp_path / "a" / "results.json", tmp_path / "b" / "results.json"
    result = compare_runs.compare([a], [b], ["hamedan", "isbi2015"])  # each file's first contender: "first" vs "second"
    assert [result[s]["pooled"]["films"] for s in ("hamedan", "isbi2015")] == [2, 3]
    assert result["isbi2015"]["pooled"]["mean_difference"] == pytest.approx(1.0) and result["hamedan"]["seeds"][0]["mre_b"] == pytest.approx(errors["second"][:2].mean())
    same = compare_runs.compare([Path(f"{a}#second")], [b], ["isbi2015"])["isbi2015"]["pooled"]
    assert same["mean_difference"] == 0.0 and same["a_better"] == same["b_better"] == 0
    with pytest.raises(SystemExit, match="no contender 'unet'"):
        compare_runs.compare([Path(f"{a}#unet")], [b], ["hamedan"])
    left = compare_runs.compare([a], [b], ["hamedan", "isbi2015"], leave_out=["hamedan-002"])  # e.g. a film with disputed truth
    assert [left[s]["pooled"]["films"] for s in ("hamedan", "isbi2015")] == [1, 3]
    assert left["hamedan"]["seeds"][0]["mre_a"] == pytest.approx(errors["first"][0].mean())
    with pytest.raises(SystemExit, match="hamedan-003"):
        compare_runs.compare([a], [b], ["hamedan"], leave_out=["hamedan-003"])
