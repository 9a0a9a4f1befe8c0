"""Training on several sources, per-source reports, site shift (leave one source out),
cross-validation folds and the per-device determinism decision, on tiny synthetic sites."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import write_manifest

pytest.importorskip("tensorflow")

from edge_toolkit.card import ModelCard  # noqa: E402
from edge_toolkit.evaluate import evaluate_model  # noqa: E402
from edge_toolkit.site_shift import (  # noqa: E402
    leave_one_source_out,
    site_shift_markdown,
)
from edge_toolkit.synthetic import write_synthetic  # noqa: E402
from edge_toolkit.train.tfsetup import determinism, gpus  # noqa: E402
from edge_toolkit.train.trainer import TrainConfig, cross_validate, train  # noqa: E402

TINY = {"input_size": 16, "width": 4, "stages": 2}


@pytest.fixture(scope="module")
def backbone_weights(tmp_path_factory):
    """A small MobileNetV2 backbone's weights file: what --weights points at, at 32 px."""
    from edge_toolkit.train.tfsetup import keras

    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False,
                                              weights=None)
    path = tmp_path_factory.mktemp("backbone") / "backbone.h5"
    backbone.save_weights(str(path))
    return path


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("sites")
    a = write_synthetic(root / "site-a", {"train": 10, "val": 6, "test": 5}, size=24, seed=1)
    b = write_synthetic(root / "site-b", {"train": 6, "val": 6, "test": 5}, size=24, seed=2)
    return root, a, b


def copy_flat(split: Path, flat: Path) -> None:
    """A flat clinic folder (`fractured/`, `not fractured/`) of `split`'s images, renamed."""
    for cls in ("fractured", "not fractured"):
        (flat / cls).mkdir(parents=True)
        for i, src in enumerate(sorted((split / cls).iterdir())):
            (flat / cls / f"{i}.png").write_bytes(src.read_bytes())


def cfg_for(root, data, name):
    return TrainConfig(data=data, family="scratch_cnn", out=str(root / "runs"), name=name,
                       model=dict(TINY), epochs=1, batch_size=8, bootstrap=20)


@pytest.fixture(scope="module")
def both_run(sites):
    root, a, b = sites
    return train(cfg_for(root, [str(a), str(b)], "both"), log=lambda m: None)


def test_one_model_on_two_sources_reports_each(both_run):
    card = ModelCard.load(both_run / "card.json")
    assert [s["name"] for s in card.dataset["sources"]] == ["site-a", "site-b"]
    assert len(card.dataset["roots"]) == 2 and card.dataset["source_balance"] == 1.0
    for split in ("val", "test"):
        per = card.metrics[split]["sources"]
        assert set(per) == {"site-a", "site-b"}
        n = 12 if split == "val" else 10
        assert per["site-a"]["n"] == n and per["site-b"]["n"] == n
        assert "high_sensitivity" in per["site-b"]["operating_points"]
    rows = list(csv.DictReader(open(both_run / "predictions.csv")))
    assert {r["source"] for r in rows} == {"site-a", "site-b"}
    assert card.export["training"]["determinism"]["device"] == ("gpu" if gpus() else "cpu")


def test_a_specificity_floor_reaches_the_trained_card(sites, both_run):
    """Same training (same seed, CPU-deterministic) with --min-specificity: the card records
    the floor and the stored threshold is never less sensitive than the plain run's."""
    root, a, b = sites
    run = train(replace(cfg_for(root, [str(a), str(b)], "both-floors"), min_specificity=0.3),
                log=lambda m: None)
    plain, floors = ModelCard.load(both_run / "card.json"), ModelCard.load(run / "card.json")
    assert plain.min_specificity is None and floors.min_specificity == 0.3
    assert floors.export["training"]["min_specificity"] == 0.3
    assert floors.threshold <= plain.threshold
    assert floors.thresholds["balanced"] == pytest.approx(plain.thresholds["balanced"])


def test_evaluate_scores_a_run_on_another_flat_folder(both_run, sites, tmp_path):
    root, a, _ = sites
    flat = tmp_path / "other-hospital"
    copy_flat(a / "test", flat)
    metrics, text = evaluate_model(both_run, [flat], bootstrap=20)
    assert set(metrics) == {"all"} and metrics["all"]["n"] == 10
    assert "all: n=10" in text
    metrics2, _ = evaluate_model(both_run, [a, flat], bootstrap=20)
    assert set(metrics2) == {"val", "test", "all"}
    assert metrics2["test"]["n"] == 10 and "sources" not in metrics2["test"]  # one site there
    assert metrics2["all"]["n"] == 10


def test_leave_one_source_out_scores_every_model_on_every_site(sites, both_run):
    root, a, b = sites
    res = leave_one_source_out(cfg_for(root, [str(a), str(b)], "x"), [a, b],
                               root / "shift", both_run, bootstrap=20, log=lambda m: None)
    assert res["sources"] == ["site-a", "site-b"]
    trained = [r["trained_on"] for r in res["rows"]]
    assert trained == [["site-a"], ["site-b"], ["site-a", "site-b"]]
    for row in res["rows"]:
        assert set(row["scores"]) == {"site-a", "site-b"}
        assert row["scores"]["site-b"]["n"] == 10
    only_a = ModelCard.load(root / "shift" / "scratch_cnn-only-site-a" / "card.json")
    assert [s["name"] for s in only_a.dataset["sources"]] == ["site-a"]
    md = site_shift_markdown([res])
    assert md.count("(unseen)") == 2 and "site-a + site-b" in md
    assert "one training run" in md and "several seeds" in md


def test_cross_validation_trains_each_fold_on_the_rest(sites):
    root, a, b = sites
    res = cross_validate(cfg_for(root, [str(a), str(b)], "cv"), folds=2, log=lambda m: None)
    assert len(res["per_fold"]) == 2
    assert {"site-a", "site-b", "pooled", "mean_of_sources"} <= set(res["summary"])
    saved = json.loads((root / "runs" / "cv" / "crossval.json").read_text())
    assert saved["summary"]["pooled"]["n"] == 2
    for k in (1, 2):
        card = ModelCard.load(root / "runs" / "cv" / f"fold{k}" / "card.json")
        assert "test" not in card.metrics  # folds pool train+val; test stays out
    # an interrupted CV resumes: finished folds of the same settings are reused, not retrained
    (root / "runs" / "cv" / "fold2" / "card.json").unlink()
    lines: list[str] = []
    again = cross_validate(cfg_for(root, [str(a), str(b)], "cv"), folds=2, log=lines.append,
                           resume=True)
    assert any("fold 1/2: reusing" in m for m in lines)
    assert any("fold 2/2:" in m and "held out" in m for m in lines)
    assert again["per_fold"][0] == res["per_fold"][0]
    from dataclasses import replace

    other = replace(cfg_for(root, [str(a), str(b)], "cv"), epochs=2)
    with pytest.raises(ValueError, match="trained with other settings"):
        cross_validate(other, folds=2, log=lambda m: None, resume=True)


def test_a_failing_fold_is_one_line_and_keeps_its_traceback(sites):
    """A fold that fails in its process ends the CV with one line naming the fold and the
    error; the traceback is kept in a file beside the fold's run folder."""
    from dataclasses import replace

    from edge_toolkit.train.trainer import FoldError, fold_error_file

    root, a, b = sites
    cfg = replace(cfg_for(root, [str(a), str(b)], "cv-bad"), model=dict(TINY, width=0))
    with pytest.raises(FoldError) as info:
        cross_validate(cfg, folds=2, log=lambda m: None)
    message = str(info.value)
    assert message.startswith("fold 1: ") and "\n" not in message
    error_file = fold_error_file(replace(cfg, name="cv-bad/fold1"))
    assert f"traceback in {error_file}" in message
    assert error_file.read_text().startswith("Traceback (most recent call last)")
    assert not (root / "runs" / "cv-bad" / "fold1" / "card.json").exists()


def test_a_run_without_determinism_turns_it_off_for_the_process():
    """Op determinism is process-wide: a GPU fine-tuning run that cannot honour it (frozen
    BatchNorm) must not inherit it from an earlier deterministic run in the same process."""
    from tensorflow.python.framework.config import is_op_determinism_enabled

    from edge_toolkit.train.tfsetup import set_seed

    before = is_op_determinism_enabled()
    try:
        set_seed(0, True)
        assert is_op_determinism_enabled()
        set_seed(0, determinism(True, devices=["/physical_device:GPU:0"])["deterministic"])
        assert not is_op_determinism_enabled()
    finally:
        set_seed(0, before)


def test_determinism_is_decided_per_device():
    assert determinism(True, devices=[])["deterministic"] is True
    gpu_frozen_bn = determinism(True, devices=["/physical_device:GPU:0"])
    assert gpu_frozen_bn["deterministic"] is False and "BatchNorm" in gpu_frozen_bn["reason"]
    assert determinism(False, devices=["/physical_device:GPU:0"])["deterministic"] is True


def test_exported_card_reports_each_source_and_names_no_folders(both_run, sites, tmp_path):
    from edge_toolkit.card import read_card
    from edge_toolkit.quantize.exporter import ExportConfig, export_run

    report = export_run(both_run, ExportConfig(variants="float32", out=str(tmp_path),
                                               bootstrap=20), log=lambda m: None)
    card = read_card(tmp_path / report.results[0].file)
    for split in ("val", "test"):
        assert set(card.metrics[split]["sources"]) == {"site-a", "site-b"}
    # validated on each source too, each recorded against the parent
    checked = card.export["validation"]["sources"]
    assert set(checked) == {"site-a", "site-b"}
    for scores in checked.values():
        assert scores["delta_auc"] == pytest.approx(scores["auc"] - scores["parent_auc"])
    assert "roots" not in card.dataset and "root" not in card.dataset
    assert [s["name"] for s in card.dataset["sources"]] == ["site-a", "site-b"]

    # the loose file names no folders: the benchmark takes each source's with --data
    from click.testing import CliRunner

    from edge_toolkit.benchmark_cli import benchmark

    _, a, b = sites
    res = CliRunner().invoke(benchmark, [str(tmp_path / report.results[0].file), "--data",
                                         str(a), "--data", str(b), "--threads", "1", "--runs",
                                         "2", "--warmup", "1", "--bootstrap", "20", "--out",
                                         str(tmp_path / "bench")])
    assert res.exit_code == 0, res.output
    row = json.loads((tmp_path / "bench" / "benchmark.json").read_text())["rows"][0]
    assert set(row["accuracy"]["test"]["sources"]) == {"site-a", "site-b"}
    assert "site-a test AUC" in res.output and "site-b test AUC" in res.output
    # without --data it has nothing to score on: the table is written, the file named, exit 2
    res = CliRunner().invoke(benchmark, [str(tmp_path / report.results[0].file), "--threads",
                                         "1", "--runs", "2", "--warmup", "1", "--out",
                                         str(tmp_path / "bench2")])
    assert res.exit_code == 2, res.output
    assert "not measured" in res.output and "pass --data" in res.output
    assert (tmp_path / "bench2" / "benchmark.json").exists()


def test_pretrained_backbone_gets_a_linear_probe_head_then_fine_tuning(sites, backbone_weights,
                                                                       tmp_path):
    """With weights, phase 1 is the closed-form probe; it is the first checkpoint candidate
    and its history row is scored on val like an epoch."""
    root, a, b = sites
    weights = backbone_weights
    cfg = TrainConfig(data=[str(a), str(b)], family="mobilenetv2", out=str(tmp_path),
                      name="lp", model={"input_size": 32, "weights": str(weights)},
                      fine_tune_epochs=1, fine_tune_lr=0.0, batch_size=8, bootstrap=20,
                      keep="best", average_epochs=0, probe_mix=())
    run = train(cfg, log=lambda m: None)  # lr 0: fine-tuning cannot beat the probe
    card = ModelCard.load(run / "card.json")
    training = card.export["training"]
    assert training["head"] == "probe" and training["probe"]["l2"] == 1000.0
    assert training["probe"]["features"] == 1280
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert rows[0]["phase"] == "1" and float(rows[0]["val_auc"]) >= 0
    assert {"val_auc_site-a", "val_auc_site-b"} <= set(rows[0])
    assert len(rows) == 2 and rows[1]["phase"] == "2"
    # the probe was kept: the saved model scores on val what the probe scored
    per_source = card.metrics["val"]["sources"]
    assert per_source["site-a"]["auc"] == pytest.approx(float(rows[0]["val_auc_site-a"]))


def test_average_weights_is_the_elementwise_mean_in_each_dtype():
    from edge_toolkit.train.averaging import average_weights

    a = [np.array([1.0, 2.0], np.float32), np.array([[0, 4]], np.float16)]
    b = [np.array([3.0, 6.0], np.float32), np.array([[2, 0]], np.float16)]
    mean = average_weights([a, b])
    assert np.array_equal(mean[0], [2.0, 4.0]) and mean[0].dtype == np.float32
    assert np.array_equal(mean[1], [[1, 2]]) and mean[1].dtype == np.float16


def test_interpolated_weights_run_from_start_to_end():
    from edge_toolkit.train.averaging import interpolate_weights

    start, end = [np.zeros(3, np.float32)], [np.array([4.0, 8.0, -4.0], np.float32)]
    assert np.array_equal(interpolate_weights(start, end, 0.0)[0], start[0])
    assert np.array_equal(interpolate_weights(start, end, 1.0)[0], end[0])
    assert np.array_equal(interpolate_weights(start, end, 0.25)[0], [1.0, 2.0, -1.0])


def test_weight_average_is_a_candidate_and_the_best_candidate_is_kept(sites, backbone_weights,
                                                                      tmp_path):
    """With --average-epochs the mean of the last fine-tuning epochs is scored on val as a
    history row of its own (phase 3), and so is each probe mix (phase 4); the saved model is
    whichever row scored best."""
    root, a, b = sites
    weights = backbone_weights
    cfg = TrainConfig(data=[str(a), str(b)], family="mobilenetv2", out=str(tmp_path),
                      name="swa", model={"input_size": 32, "weights": str(weights)},
                      fine_tune_epochs=3, fine_tune_lr=1e-3, patience=5, average_epochs=3,
                      probe_mix=(0.5,), keep="best", batch_size=8, bootstrap=20)
    lines: list[str] = []
    run = train(cfg, log=lines.append)
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [r["phase"] for r in rows] == ["1", "2", "2", "2", "3", "4"]
    assert any("weight average of fine-tuning epochs 1-3" in m for m in lines)
    assert any("probe mixed with fine-tuned weights, alpha 0.5" in m for m in lines)
    card = ModelCard.load(run / "card.json")
    assert card.export["training"]["average_epochs"] == 3
    kept = np.mean([m["auc"] for m in card.metrics["val"]["sources"].values()])
    best = max(rows, key=lambda r: float(r["val_auc"]))
    assert kept == pytest.approx(float(best["val_auc"]), abs=1e-6)
    assert card.export["training"]["kept"] == best["candidate"]
    assert [r["candidate"] for r in rows] == ["probe", "epoch 1", "epoch 2", "epoch 3",
                                             "average", "mix-0.5"]
    # named in advance: the mix is kept whatever val says of the others
    from dataclasses import replace

    fixed = train(replace(cfg, name="swa-fixed", keep="mix-0.5"), log=lines.append)
    rows = list(csv.DictReader(open(fixed / "history.csv")))
    card = ModelCard.load(fixed / "card.json")
    kept = np.mean([m["auc"] for m in card.metrics["val"]["sources"].values()])
    assert kept == pytest.approx(float(rows[-1]["val_auc"]), abs=1e-6)
    assert card.export["training"]["kept"] == "mix-0.5"


def test_probe_mix_starts_from_the_last_epoch_not_the_restored_best():
    """Early stopping restores the best epoch into the model; without an average a probe mix
    must still interpolate towards the end of fine-tuning (the last epoch's snapshot), and
    the model must be left as it was found."""
    from edge_toolkit.data import LoadedSplit
    from edge_toolkit.train.averaging import EpochWeights
    from edge_toolkit.train.tfsetup import keras
    from edge_toolkit.train.trainer import _weight_space_candidates

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    rng = np.random.default_rng(0)
    best = [w + 1.0 for w in model.get_weights()]
    last = [w - 1.0 for w in model.get_weights()]
    model.set_weights(best)  # what early stopping leaves in the model
    collector = EpochWeights(model, 1)
    collector.snapshots = [(3, last)]
    val = LoadedSplit(x=rng.normal(size=(20, 4)).astype("float32"),
                      y=np.array([0, 1] * 10), paths=[], skipped=[], sources=["a"] * 20)
    probe = [np.zeros_like(w) for w in last]
    cfg = TrainConfig(data="x", probe_mix=(1.0, 0.5))
    history = [{"val_auc": 0.5}]
    out = _weight_space_candidates(model, collector, probe, cfg, val, history, lambda m: None)
    for got, want in zip(out["mix-1"][1], last, strict=True):
        np.testing.assert_allclose(got, want)
    for got, want in zip(out["mix-0.5"][1], last, strict=True):
        np.testing.assert_allclose(got, want / 2)
    assert [r["candidate"] for r in history[1:]] == ["mix-1", "mix-0.5"]
    for got, want in zip(model.get_weights(), best, strict=True):
        np.testing.assert_allclose(got, want)


@pytest.mark.parametrize("keep,message", [
    ("mix-0.3", "expected one of"), ("newest", "expected one of"),
    ("average", "average_epochs of 2"), ("probe", "linear-probe head"),
])
def test_keep_must_name_a_candidate_the_run_makes(keep, message):
    from edge_toolkit.train.trainer import check_keep, resolve_defaults

    cfg = resolve_defaults(TrainConfig(data="x", family="mobilenetv2", keep=keep,
                                       probe_mix=(0.5,), average_epochs=1, head="train"))
    with pytest.raises(ValueError, match=message):
        check_keep(cfg)


def test_evaluate_counts_rotated_copies_once(both_run, sites, tmp_path):
    """A clinic folder where one radiograph was saved in several rotations: the report adds
    the family-weighted AUC, copies (`N-rotatedK`) counted as one family."""
    _, a, _ = sites
    flat = tmp_path / "copies"
    copy_flat(a / "test", flat)
    first = sorted((a / "test" / "fractured").iterdir())[0].read_bytes()
    for k in range(1, 5):
        (flat / "fractured" / f"0-rotated{k}.png").write_bytes(first)
    metrics, text = evaluate_model(both_run, [flat], bootstrap=20)
    m = metrics["all"]
    assert m["n"] == 14 and m["families"] == 10 and m["families_with_fracture"] == 5
    assert "family-weighted AUC" in text


def test_the_selection_criterion_counts_each_family_once():
    from edge_toolkit.train.trainer import selection_auc, source_aucs

    y = np.array([1] * 5 + [0] * 5 + [1] * 40)
    p = np.concatenate([np.linspace(0.2, 0.6, 5), np.linspace(0.3, 0.7, 5), np.full(40, 0.9)])
    sources = ["a"] * 50
    groups = [f"g{i}" for i in range(10)] + ["copies"] * 40
    per_image = selection_auc(source_aucs(y, p, sources))
    per_family = selection_auc(source_aucs(y, p, sources, groups))
    assert per_family < per_image - 0.05  # 40 easy copies no longer outvote 10 families
    assert per_family == pytest.approx(selection_auc(source_aucs(y[:11], p[:11], sources[:11])))
    from edge_toolkit.train.trainer import score_details

    line = score_details({"val_auc": 0.8, "val_auc_a": 0.8, "per_image_val_auc": 0.9})
    assert line == " (a 0.8000; per image 0.9000)"  # not read as a source named per_image
    assert score_details({"val_auc": 0.8, "per_image_val_auc": 0.9}) == " (per image 0.9000)"


def test_balance_within_a_column_no_manifest_has_is_refused(sites):
    root, a, b = sites
    cfg = replace(cfg_for(root, [str(a), str(b)], "no-column"), balance_within="regoin")
    with pytest.raises(ValueError, match="no source's manifest.csv has a 'regoin' column"):
        train(cfg, log=lambda m: None)


def test_balance_within_reaches_the_weights_and_the_card(tmp_path):
    """A site whose manifest has a region column: training logs the strata it balanced
    and the card records the setting (a --resume compares it)."""
    a = write_synthetic(tmp_path / "site-r", {"train": 12, "val": 6, "test": 4}, size=24,
                        seed=3)
    write_manifest(a, "region", lambda i: "hand" if i % 2 else "leg")
    logs: list[str] = []
    cfg = replace(cfg_for(tmp_path, str(a), "regions"), balance_within="region")
    run = train(cfg, log=logs.append)
    assert any("classes balanced within each region: hand, leg" in m for m in logs)
    card = ModelCard.load(run / "card.json")
    assert card.export["training"]["balance_within"] == "region"
