"""The hyper-parameter search (maht_net.bench.tuning) on tiny settings: a few 1-epoch trials on phantoms."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

optuna = pytest.importorskip("optuna", reason="the 'tune' extra is not installed")

from maht_net.bench import tuning  # noqa: E402
from maht_net.bench.accuracy import TRACKS, TRAIN_CONFIG  # noqa: E402
from maht_net.codec.heatmaps import DECODERS  # noqa: E402
from maht_net.datasets.phantom import make_phantom_dataset  # noqa: E402
from maht_net.errors import InputError  # noqa: E402
from maht_net.io import datalist as datalist_io  # noqa: E402

TINY_TRACK = {"input_size": [32, 64], "batch_size": 4, "budget_minutes": 0.02}
HELD_OUT = "held-out-film"  # marks the test section: it must not reach any file the search writes
# the real space, but only the cheapest encoder, so a trial trains in seconds
TINY_SPACE = [dataclasses.replace(p, choices=("efficientnet_b0",)) if p.name == "encoder" else p for p in tuning.SEARCH_SPACE]


@pytest.fixture(scope="module")
def datalist(tmp_path_factory) -> Path:
    """6 training and 2 validation phantoms; the test section names films that do not exist,
    so any attempt to load them would fail."""
    path = make_phantom_dataset(tmp_path_factory.mktemp("phantom"), n=10, seed=2, size=(128, 160))
    doc = json.loads(path.read_text())
    doc["test"] = [dict(it, image=f"/nonexistent/{HELD_OUT}-{k}.png", id=f"{HELD_OUT}-{k}") for k, it in enumerate(doc["test"])]
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def runs(datalist, tmp_path_factory):
    """The same command run three times: 2 trials, then asking for 3 (resume), then 3 again.
    Every dataset the bundle builds is recorded as ``(datalist, section)``."""
    out = tmp_path_factory.mktemp("tune")
    loaded: list[tuple[str, str]] = []
    real = datalist_io.load_datalist

    def spy(path, section, *args, **kwargs):
        loaded.append((str(path), section))
        return real(path, section, *args, **kwargs)

    def run(n_trials: int) -> tuple[dict, list[optuna.trial.FrozenTrial]]:
        best = tuning.run_study(datalist, out, n_trials=n_trials, track=TINY_TRACK, folds=0, seed=0, epochs=1, space=TINY_SPACE)
        return best, optuna.load_study(study_name="maht_net", storage=f"sqlite:///{out / 'study.db'}").trials

    # one thread: these tiny networks gain nothing from more, and on a busy machine the idle
    # OpenMP threads spin (a trial took ~10x longer with 2 threads beside a CPU benchmark)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(datalist_io, "load_datalist", spy)  # train.json's datasets call maht_net.io.datalist.load_datalist
            first = run(2)
            loads_after_first = len(loaded)
            resumed = run(3)
            loads_after_resume = len(loaded)
            again = run(3)
    finally:
        torch.set_num_threads(threads)
    return {"out": out, "first": first, "resumed": resumed, "again": again, "loaded": loaded,
            "loads": (loads_after_first, loads_after_resume, len(loaded))}


def test_every_search_parameter_overrides_a_train_json_id():
    from monai.bundle import ConfigParser

    raw = json.loads(TRAIN_CONFIG.read_text())
    for p in tuning.SEARCH_SPACE:
        node = raw
        for key in p.config_id.split("#"):
            node = node[int(key) if isinstance(node, list) else key]  # KeyError: no such id
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen_progressive = set()
    for _ in range(12):
        overrides = tuning.sample_overrides(study.ask(), tuning.SEARCH_SPACE, TRACKS["cpu"])
        parser = ConfigParser()
        parser.read_config(str(TRAIN_CONFIG))
        parser.update(pairs={**overrides, "epochs": 30})
        width, height = parser.get_parsed_content("input_size")
        assert [width, height] in ([192, 256], [256, 320], [320, 416])  # multiples of 32, as the data pipeline needs
        assert parser.get_parsed_content("loss_weights") in tuning.LOSS_WEIGHTS.values()
        assert parser.get_parsed_content("decoder") in DECODERS
        assert parser.get_parsed_content("network_kwargs")["encoder"] == overrides["encoder"]
        assert 1.5 <= parser.get_parsed_content("sigma") <= 4.0
        stages = parser.get_parsed_content("progressive_stages")
        progressive = overrides["progressive"]
        seen_progressive.add(progressive)
        assert ("progressive_stages#0#epochs" in overrides) == progressive
        if progressive:  # the stage lengths follow @epochs
            assert 3 <= stages[0]["epochs"] <= 15 and 1 <= stages[1]["epochs"] <= 8
    assert seen_progressive == {True, False}


def test_fold_datalists_hold_no_test_section(datalist, tmp_path):
    dev = tuning.development_datalist(datalist, tmp_path / "development.json")
    doc = json.loads(Path(datalist).read_text())
    dev_ids = {it["id"] for s in ("training", "validation") for it in doc[s]}
    folds = [json.loads(p.read_text()) for p in tuning._fold_datalists(dev, 2, tmp_path, seed=0)]
    assert len(folds) == 2 and "test" not in json.loads(dev.read_text())
    for fold in folds:
        assert fold["test"] == []
        assert {it["id"] for s in ("training", "validation") for it in fold[s]} == dev_ids
        assert all(Path(it["image"]).is_file() for it in fold["training"] + fold["validation"])
    assert HELD_OUT not in dev.read_text() + "".join(p.read_text() for p in (tmp_path / "folds").iterdir())


def test_a_fold_datalist_with_test_films_is_refused(datalist, tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "cross_validation_datalists", lambda *args, **kwargs: [Path(datalist)])  # a faulty split
    with pytest.raises(RuntimeError, match=r"datalist\.json: a tuning datalist has a 'test' section"):
        tuning._fold_datalists(tmp_path / "development.json", 2, tmp_path, seed=0)


def test_a_datalist_without_validation_is_refused(datalist, tmp_path):
    doc = json.loads(Path(datalist).read_text())
    doc["validation"] = []
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"bad\.json: the search needs a non-empty 'validation' section"):
        tuning.run_study(bad, tmp_path / "out", n_trials=1, track=TINY_TRACK, folds=0)


def test_trials_store_their_overrides_and_scores(runs):
    best, trials = runs["first"]
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for t in trials:
        attrs = t.user_attrs
        assert attrs["overrides"] == tuning.sample_overrides(optuna.trial.FixedTrial(t.params), TINY_SPACE, TINY_TRACK)
        assert attrs["fold_val_mre"] == [t.value] and 0 < t.value < 1000  # mm
        assert attrs["epochs_planned"] == attrs["epochs"] == [1] and attrs["params_count"] > 1e6  # epochs fixed at 1
    winner = min(trials, key=lambda t: t.value)
    assert best["value"] == winner.value and best["trial"] == winner.number and best["params"] == winner.params
    assert best["n_complete"] == 2 and best["n_trials"] == 2
    assert best["train_json_overrides"] == {**winner.user_attrs["overrides"], "batch_size": 4, "epochs": winner.user_attrs["epochs_planned"][0]}


def test_rerunning_the_command_resumes_the_study(runs):
    _, first = runs["first"]
    best, resumed = runs["resumed"]
    assert len(resumed) == 3 and best["n_trials"] == 3
    for before, after in zip(first, resumed):  # the stored trials are kept, not re-run
        assert (after.number, after.params, after.value, after.datetime_start) == (before.number, before.params, before.value, before.datetime_start)
    assert resumed[2].params != resumed[0].params  # the sampler's seed moved on with the study
    _, again = runs["again"]
    after_first, after_resume, after_again = runs["loads"]
    assert len(again) == 3 and after_again == after_resume > after_first  # nothing left to run: no training


def test_the_test_section_is_never_read(runs):
    out = runs["out"]
    assert {section for _, section in runs["loaded"]} == {"training", "validation"}
    assert {path for path, _ in runs["loaded"]} == {str(out / "maht_net" / "development.json")}
    for path in out.rglob("*"):
        if path.is_file():
            assert HELD_OUT.encode() not in path.read_bytes(), path


def test_changed_settings_do_not_resume(runs, datalist):
    with pytest.raises(InputError, match=r"study\.db: study 'maht_net' was run with other settings \(seed: 0 -> 1\)"):
        tuning.run_study(datalist, runs["out"], n_trials=4, track=TINY_TRACK, folds=0, seed=1, epochs=1, space=TINY_SPACE)


def test_outputs_tabulate_trials_and_give_a_monai_args_file(runs, tmp_path):
    from monai.bundle.scripts import create_workflow, update_kwargs

    study_dir = runs["out"] / "maht_net"
    best = json.loads((study_dir / "best.json").read_text())
    table = (study_dir / "trials.md").read_text().splitlines()
    assert len(table) == 2 + 3 and sum("*" in row.split("|")[1] for row in table[2:]) == 1
    assert f"| {best['trial']} * | complete | {best['value']:.3g} |" in "\n".join(table)

    args = tuning.args_file_from_best(study_dir / "best.json", tmp_path / "args.json")
    overrides = best["train_json_overrides"]
    assert update_kwargs(args=str(args)) == overrides  # how monai.bundle run reads --args_file
    wf = create_workflow(
        config_file=str(TRAIN_CONFIG), meta_file=str(TRAIN_CONFIG.parent / "metadata.json"), workflow_type="train",
        args_file=str(args), bundle_root=str(tmp_path / "bundle"), datalist=str(study_dir / "development.json"),
    )
    for key, value in overrides.items():
        parsed = wf.parser.get_parsed_content(key)
        if isinstance(value, str) and value.startswith("$"):  # a progressive stage's share of @epochs
            assert isinstance(parsed, int) and 1 <= parsed <= overrides["epochs"]
        else:
            assert parsed == value, key
    assert wf.parser.get_parsed_content("loss").sigma == pytest.approx(overrides["sigma"])


def test_args_file_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"best\.json: best\.json not found"):
        tuning.args_file_from_best(tmp_path / "best.json", tmp_path / "args.json")
    (tmp_path / "best.json").write_text(json.dumps({"value": 1.0}))
    with pytest.raises(InputError, match=r"best\.json: no 'train_json_overrides' object"):
        tuning.args_file_from_best(tmp_path / "best.json", tmp_path / "args.json")
