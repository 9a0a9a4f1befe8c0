"""Training end to end on tiny generated data: the run folder, the card, the rules."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from extras import require

require("tensorflow")

from edge_toolkit.card import ModelCard  # noqa: E402
from edge_toolkit.synthetic import write_synthetic  # noqa: E402
from edge_toolkit.train.augment import AugmentConfig  # noqa: E402
from edge_toolkit.train.models import (  # noqa: E402
    REGISTRY,
    build_model,
    set_backbone_trainable,
)
from edge_toolkit.train.tfsetup import keras  # noqa: E402
from edge_toolkit.train.trainer import TrainConfig, class_weights, train  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data = write_synthetic(root / "data", {"train": 12, "val": 8, "test": 6}, size=24)
    cfg = TrainConfig(data=str(data), family="scratch_cnn", out=str(root / "runs"),
                      name="tiny", model={"input_size": 16, "width": 4, "stages": 2},
                      epochs=2, batch_size=8, bootstrap=50)
    return train(cfg, log=lambda m: None), data


def test_run_folder_has_model_card_history_plots(tiny_run):
    run, _ = tiny_run
    for name in ("model.keras", "card.json", "history.csv", "predictions.csv", "metrics.json",
                 "learning_curves.png", "roc.png", "confusion_matrix.png"):
        assert (run / name).stat().st_size > 0, name
    card = ModelCard.load(run / "card.json")
    assert card.family == "scratch_cnn" and card.input_size == 16 and card.channels == 1
    assert card.preprocessing["size"] == 16 and card.preprocessing["value_range"] == "0,1"
    assert card.data_fingerprint.startswith("sha256:")
    assert set(card.thresholds) == {"high_sensitivity", "balanced"}
    assert card.threshold == card.thresholds["high_sensitivity"]
    assert card.temperature > 0 and card.versions["tensorflow"]
    assert {"val", "test"} <= set(card.metrics)
    m = card.metrics["val"]
    assert 0 <= m["auc"] <= 1 and len(m["auc_ci95"]) == 2 and "ece" in m
    assert m["operating_points"]["high_sensitivity"]["sensitivity"] >= 0.95
    rows = list(csv.DictReader(open(run / "predictions.csv")))
    assert {r["split"] for r in rows} == {"train", "val", "test"} and len(rows) == 52


def test_saved_model_reproduces_card_metrics(tiny_run):
    """Reload the saved model, predict val: the same AUC the card recorded."""
    from edge_toolkit.evaluate import evaluate_model

    run, data = tiny_run
    metrics, text = evaluate_model(run, data, ["val"], bootstrap=0)
    card = json.loads((run / "card.json").read_text())
    assert metrics["val"]["auc"] == pytest.approx(card["metrics"]["val"]["auc"], abs=1e-6)
    assert "val:" in text


def test_threshold_ignores_test_labels(tiny_run, tmp_path):
    """Swapping test labels must not move the threshold or temperature: chosen on val."""
    import shutil

    run, data = tiny_run
    swapped = tmp_path / "swapped"
    shutil.copytree(data, swapped)
    a, b = swapped / "test" / "fractured", swapped / "test" / "not fractured"
    a.rename(swapped / "test" / "tmp")
    b.rename(a)
    (swapped / "test" / "tmp").rename(b)
    cfg = TrainConfig(data=str(swapped), family="scratch_cnn", out=str(tmp_path / "runs"),
                      name="swapped", model={"input_size": 16, "width": 4, "stages": 2},
                      epochs=2, batch_size=8, bootstrap=0)
    card2 = ModelCard.load(train(cfg, log=lambda m: None) / "card.json")
    card1 = ModelCard.load(run / "card.json")
    assert card2.threshold == pytest.approx(card1.threshold, abs=1e-6)
    assert card2.temperature == pytest.approx(card1.temperature, rel=1e-6)


def test_class_weights_balance_the_classes():
    w = class_weights(np.array([1] * 10 + [0] * 30))
    assert w[1] * 10 == pytest.approx(w[0] * 30)


def test_registry_models_are_flat_and_compact():
    scratch, cfg = build_model("scratch_cnn", input_size=128)
    seed, _ = build_model("seed_cnn", input_size=128)
    assert 200_000 < scratch.count_params() < 300_000  # ~0.25 MB as int8
    assert seed.count_params() > 7_000_000  # the flatten-dense design it replaces
    for m in (scratch, seed):
        assert not any(isinstance(layer, keras.Model) for layer in m.layers)
        assert m.output_shape == (None, 1)
    assert {"mobilenetv2", "scratch_cnn", "seed_cnn"} <= set(REGISTRY)


def test_mobilenet_freezes_backbone_but_not_head():
    m, cfg = build_model("mobilenetv2", input_size=32, alpha=0.35)
    cfg["weights"] = "pretend-pretrained"  # freezing applies to pretrained backbones only
    n_frozen = set_backbone_trainable(m, "mobilenetv2", cfg, trainable=False)
    assert n_frozen == 2  # the logistic head's kernel and bias
    n_ft = set_backbone_trainable(m, "mobilenetv2", cfg, trainable=True)
    assert n_ft > n_frozen
    assert not any(layer.trainable for layer in m.layers
                   if isinstance(layer, keras.layers.BatchNormalization))
    assert not any(isinstance(layer, keras.Model) for layer in m.layers)


def test_unknown_family_and_option_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model family"):
        build_model("resnet")
    with pytest.raises(ValueError, match="unknown option"):
        build_model("scratch_cnn", colour=True)


def test_augment_config_from_cli_strings():
    from edge_toolkit.train.cli import parse_augment

    aug = parse_augment(AugmentConfig(), ("rotation=0.5", "flip=vertical"))
    assert aug.rotation == 0.5 and aug.flip == "vertical"
    with pytest.raises(ValueError):
        parse_augment(AugmentConfig(), ("spin=1",))


@pytest.mark.parametrize("setup,message", [
    ("one_class", "needs images of both classes"),
    ("empty", "no image files found"),
    ("unknown", "unknown class folder"),
    ("missing", "no such dataset folder"),
])
def test_train_cli_bad_dataset_is_one_clear_line(tmp_path, setup, message):
    from click.testing import CliRunner
    from conftest import write_tiny_dataset

    from edge_toolkit.train.cli import train as train_cmd

    root = tmp_path / "d"
    if setup == "one_class":
        write_tiny_dataset(root, classes=("fractured",))
    elif setup == "empty":
        (root / "train" / "fractured").mkdir(parents=True)
        (root / "train" / "normal").mkdir(parents=True)
    elif setup == "unknown":
        write_tiny_dataset(root, classes=("fractured", "elbows"))
    res = CliRunner().invoke(train_cmd, ["--data", str(root), "--model", "scratch_cnn",
                                         "--out", str(tmp_path / "runs")])
    assert res.exit_code == 1
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["2", "0.5,x"])
def test_train_cli_bad_probe_mix_is_a_usage_error(tmp_path, value):
    from click.testing import CliRunner

    from edge_toolkit.train.cli import train as train_cmd

    res = CliRunner().invoke(train_cmd, ["--data", str(tmp_path), "--probe-mix", value])
    assert res.exit_code == 2 and "--probe-mix" in res.output
    assert "Traceback" not in res.output


def test_train_cli_intensity_reaches_the_card(tmp_path):
    from click.testing import CliRunner

    from edge_toolkit.train.cli import train as train_cmd

    data = write_synthetic(tmp_path / "data", {"train": 8, "val": 6, "test": 4}, size=16)
    res = CliRunner().invoke(train_cmd, [
        "--data", str(data), "--model", "scratch_cnn", "--size", "16", "--epochs", "1",
        "--intensity", "equalize", "--out", str(tmp_path / "runs"), "--name", "eq"])
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "runs" / "eq" / "card.json").read_text())
    assert card["preprocessing"]["intensity"] == "equalize"


def test_mixed_precision_run_saves_a_float32_model(tmp_path):
    """A GPU run trains in mixed float16; what it saves must convert and quantize."""
    data = write_synthetic(tmp_path / "data", {"train": 8, "val": 6, "test": 4}, size=16)
    cfg = TrainConfig(data=str(data), family="scratch_cnn", out=str(tmp_path / "runs"),
                      name="mp", model={"input_size": 16, "width": 4, "stages": 2}, epochs=1,
                      batch_size=8, bootstrap=0, mixed_precision=True)
    run = train(cfg, log=lambda m: None)
    model = keras.models.load_model(run / "model.keras", compile=False)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    assert keras.mixed_precision.global_policy().name == "float32"


def test_a_run_that_fails_mid_training_leaves_float32_on(tmp_path, monkeypatch):
    """Mixed precision is process-wide: a GPU run that fails after switching it on (out of
    memory, a bad option found late) must not leave later exports in float16."""
    import edge_toolkit.train.trainer as trainer

    def fail(*args, **kwargs):
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        raise RuntimeError("out of memory")

    monkeypatch.setattr(trainer, "build_model", fail)
    data = write_synthetic(tmp_path / "data", {"train": 8, "val": 6, "test": 4}, size=16)
    cfg = TrainConfig(data=str(data), family="scratch_cnn", out=str(tmp_path / "runs"),
                      name="mp-fail", model={"input_size": 16, "width": 4, "stages": 2},
                      epochs=1, batch_size=8, bootstrap=0, mixed_precision=True)
    with pytest.raises(RuntimeError, match="out of memory"):
        train(cfg, log=lambda m: None)
    assert keras.mixed_precision.global_policy().name == "float32"


def test_a_tiny_model_learns_synthetic_data_above_an_auc_floor(tmp_path):
    """Training must learn, not only run: a bar across the image vs along it (same
    brightness, so no global cue gives it away) is learned by a tiny CNN in a few epochs.
    Flipped labels, a train/eval preprocessing skew or a broken head would fail the floor."""
    from PIL import Image, ImageDraw

    from edge_toolkit.train.augment import AugmentConfig

    rng = np.random.default_rng(0)
    size = 24
    data = tmp_path / "data"
    for split, n in (("train", 40), ("val", 30), ("test", 30)):
        for label, cls in ((1, "fractured"), (0, "not fractured")):
            folder = data / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                img = Image.fromarray(
                    np.clip(rng.normal(110, 25, (size, size)), 0, 255).astype(np.uint8))
                x0, y0 = rng.uniform(0.2, 0.8, 2) * size
                a = rng.uniform(-0.5, 0.5) + (0.0 if label else np.pi / 2)
                dx, dy = np.cos(a) * size * 0.35, np.sin(a) * size * 0.35
                ImageDraw.Draw(img).line([(x0 - dx, y0 - dy), (x0 + dx, y0 + dy)], fill=235,
                                         width=3)
                img.save(folder / f"{split}-{label}-{i}.png")
    cfg = TrainConfig(data=str(data), family="scratch_cnn", out=str(tmp_path / "runs"),
                      name="learns", model={"input_size": size, "width": 8, "stages": 2},
                      augment=AugmentConfig(0, "none", 0, 0, 0, 0), epochs=8, patience=8,
                      batch_size=16, bootstrap=0)
    card = ModelCard.load(train(cfg, log=lambda m: None) / "card.json")
    assert card.metrics["val"]["auc"] >= 0.9, card.metrics["val"]
    assert card.metrics["test"]["auc"] >= 0.9, card.metrics["test"]  # never used to choose


def test_a_family_augmentation_is_the_default_and_aug_changes_it_key_by_key(monkeypatch):
    from dataclasses import replace

    import edge_toolkit.families as families
    from edge_toolkit.train.cli import parse_augment
    from edge_toolkit.train.trainer import family_augment, resolve_defaults

    fam = families.FAMILIES["scratch_cnn"]
    custom = replace(fam, training=fam.training | {"augment": {"gamma": 0.2, "zoom": 0.0}})
    monkeypatch.setitem(families.FAMILIES, "scratch_cnn", custom)
    cfg = resolve_defaults(TrainConfig(data="x", family="scratch_cnn"))
    assert (cfg.augment.gamma, cfg.augment.zoom, cfg.augment.rotation) == (0.2, 0.0, 0.05)
    changed = parse_augment(family_augment("scratch_cnn"), ("noise=0.01",))
    assert (changed.gamma, changed.zoom, changed.noise) == (0.2, 0.0, 0.01)
    explicit = resolve_defaults(TrainConfig(data="x", family="scratch_cnn",
                                            augment=AugmentConfig()))
    assert explicit.augment.gamma == 0.0  # an explicit config is not overridden


def test_predicting_in_batches_matches_one_predict_call():
    """The trainer scores val every epoch batch by batch (a whole-array predict copies the
    array into one tensor each time); the result must be the same, ragged last batch and
    empty input included."""
    from edge_toolkit.train.tfsetup import keras, predict_in_batches

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    x = np.random.default_rng(0).normal(size=(130, 3)).astype("float32")
    np.testing.assert_allclose(predict_in_batches(model, x, 64),
                               model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    assert predict_in_batches(model, x[:0]).shape == (0, 2)


def test_a_runs_split_is_read_back_from_its_predictions(tiny_run):
    """Benchmarks re-score the exact images a run (or a fold) was scored on."""
    from edge_toolkit.evaluate import run_split_samples

    run, _ = tiny_run
    card = ModelCard.load(run / "card.json")
    val = run_split_samples(run, "val")
    assert len(val) == sum(card.dataset["counts"]["val"].values())
    assert {s.split for s in val} == {"val"} and all(s.path.exists() for s in val)
    assert sorted(s.label for s in val) == sorted(
        1 if "not" not in s.path.parent.name else 0 for s in val)


def test_label_smoothing_is_the_loss_a_run_trains_with(tmp_path):
    """`--label-smoothing S` must reach the loss the network is fitted with (targets 1 - S/2
    and S/2, so the loss is lowest at those probabilities), and the card must record it."""
    from edge_toolkit.synthetic import write_synthetic
    from edge_toolkit.train.tfsetup import keras
    from edge_toolkit.train.trainer import train

    data = write_synthetic(tmp_path / "data", {"train": 8, "val": 6, "test": 4}, size=16)
    for smoothing in (0.0, 0.4):
        cfg = TrainConfig(data=str(data), family="scratch_cnn", out=str(tmp_path / "runs"),
                          name=f"ls{smoothing}", model={"input_size": 16, "width": 4,
                                                        "stages": 2},
                          epochs=1, batch_size=8, bootstrap=0, label_smoothing=smoothing,
                          mixed_precision=False)  # a mixed-precision run saves no loss
        run = train(cfg, log=lambda m: None)
        assert ModelCard.load(run / "card.json").export["training"]["label_smoothing"] == (
            smoothing)
        loss = keras.models.load_model(run / "model.keras").loss
        grid = np.linspace(0.5, 0.99, 50, dtype=np.float32)
        values = [float(loss(np.ones((1, 1), np.float32), np.full((1, 1), p))) for p in grid]
        best = grid[int(np.argmin(values))]
        assert best == pytest.approx(1 - smoothing / 2, abs=0.011), (smoothing, best)
