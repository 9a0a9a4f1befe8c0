"""Export every variant of a tiny trained run, validate, and read the files back.

One module-scoped export of every variant (a 16 px, 2-stage scratch CNN; about a minute
on 2 CPU cores) feeds most tests; a few small exports check options one at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from extras import require

require("tensorflow_model_optimization")
require("ai_edge_litert", "device")

from quantize_fixtures import block_tensorflow_code, make_tiny_run  # noqa: E402

from edge_toolkit.card import (  # noqa: E402
    ModelCard,
    read_card,
    split_tflite,  # noqa: E402
)
from edge_toolkit.quantize.inspect import gzip_size, inspect_file, weight_tensors  # noqa: E402
from edge_toolkit.quantize.variants import (  # noqa: E402
    EXPORT_FAILED,
    FAILED_VALIDATION,
    VALIDATED,
    VARIANTS,
)
from edge_toolkit.runtime.classifier import (  # noqa: E402
    Classifier,
    MissingCardError,
    ModelError,
)

FAST = {"qat_epochs": 1, "prune_epochs": 3, "bootstrap": 50, "calibration_images": 40}
# A real tolerance: no variant may lose more than this much val AUC against the float parent
# (on 20 val images one AUC step is 0.01; fine-tuned and pruned variants may move a few).
TOLERANCE = 0.05


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("quantize"))


@pytest.fixture(scope="module")
def exported(tiny_run):
    from edge_toolkit.quantize.exporter import ExportConfig, export_run

    cfg = ExportConfig(variants="all", tolerance=TOLERANCE, **FAST)
    lines: list[str] = []
    report = export_run(tiny_run, cfg, log=lines.append)
    return report, lines


def _path(report, variant: str) -> Path:
    return Path(report.out) / report.result(variant).file


@pytest.mark.slow
def test_every_variant_exports_validates_and_carries_its_card(exported, tiny_run):
    report, _ = exported
    parent = ModelCard.load(tiny_run / "card.json")
    assert [r.variant for r in report.results] == list(VARIANTS)
    for r in report.results:
        assert r.status == VALIDATED, (r.variant, r.reason, r.traceback)
        path = _path(report, r.variant)
        assert path.name == f"scratch_cnn-{r.variant}.tflite" and path.parent == Path(report.out)
        card = read_card(path)
        assert card is not None and card.variant == r.variant
        assert card.parent == tiny_run.name
        assert card.data_fingerprint == parent.data_fingerprint
        assert card.preprocessing == parent.preprocessing and card.labels == parent.labels
        # each file's own operating point, chosen on val: the target sensitivity holds for it
        assert card.export["parent"]["threshold"] == parent.threshold
        assert card.export["parent"]["temperature"] == parent.temperature
        assert card.threshold == card.thresholds["high_sensitivity"]
        op = card.metrics["val"]["operating_points"]["high_sensitivity"]
        assert op["sensitivity"] >= card.target_sensitivity
        assert op["threshold"] == card.threshold
        assert card.sparsity == pytest.approx(r.sparsity, abs=1e-6)
        assert card.metrics["val"]["auc"] == pytest.approx(r.val_auc)
        val = card.export_info.validation
        assert val.status == VALIDATED and val.agreement == pytest.approx(r.agreement)
        assert val.tolerance == TOLERANCE and val.delta_auc >= -TOLERANCE
        assert r.delta_auc >= -TOLERANCE, (r.variant, r.delta_auc)
        # the note says what export did: thresholds re-chosen on val for this file
        assert "re-chosen" in card.export["thresholds"] and "not re-chosen" not in \
            card.export["thresholds"]
        assert card.export["parent"]["data_fingerprint"] == parent.data_fingerprint
        assert "edge_toolkit" in card.versions and "tfmot" in card.versions
        assert r.size_bytes == path.stat().st_size
        assert r.gzip_bytes == gzip_size(path.read_bytes())


@pytest.mark.slow
def test_files_run_in_litert_and_match_the_reported_metrics(exported, tiny_run):
    from edge_toolkit.data import discover, load_samples
    from edge_toolkit.metrics import apply_temperature, roc_auc
    from edge_toolkit.preprocess import PreprocessConfig

    report, _ = exported
    card = ModelCard.load(tiny_run / "card.json")
    val = load_samples(discover(card.dataset["root"]).split("val"),
                       PreprocessConfig.from_dict(card.preprocessing))
    for r in report.results:
        p = Classifier.load(_path(report, r.variant)).predict_raw_batch(val.x)
        assert p.shape == (len(val.y),) and np.all((p >= 0) & (p <= 1))
        assert roc_auc(val.y, apply_temperature(p, card.temperature)) == pytest.approx(
            r.val_auc)


@pytest.mark.slow
def test_the_flip_averaged_file_scores_an_image_and_its_mirror_alike(exported, tiny_run):
    """The int8-ptq-flip file averages both views in its own graph: a picture and its mirror
    image get the same probability from it, not from the plain int8 file; the card and the
    runtime need nothing else."""
    from edge_toolkit.data import discover, load_samples
    from edge_toolkit.preprocess import PreprocessConfig

    report, _ = exported
    card = ModelCard.load(tiny_run / "card.json")
    x = load_samples(discover(card.dataset["root"]).split("val"),
                     PreprocessConfig.from_dict(card.preprocessing)).x
    flip = Classifier.load(_path(report, "int8-ptq-flip"))
    plain = Classifier.load(_path(report, "int8-ptq"))
    mirrored = x[:, :, ::-1]
    np.testing.assert_allclose(flip.predict_raw_batch(x), flip.predict_raw_batch(mirrored),
                               atol=1e-6)
    assert not np.allclose(plain.predict_raw_batch(x), plain.predict_raw_batch(mirrored),
                           atol=1e-6)
    assert read_card(_path(report, "int8-ptq-flip")).variant == "int8-ptq-flip"
    # the QAT pair shares one fine-tuning: int8-qat-flip is the same network, mirrored too
    qat_flip = Classifier.load(_path(report, "int8-qat-flip"))
    np.testing.assert_allclose(qat_flip.predict_raw_batch(x),
                               qat_flip.predict_raw_batch(mirrored), atol=1e-6)
    assert read_card(_path(report, "int8-qat-flip")).export["fine_tune"] == read_card(
        _path(report, "int8-qat")).export["fine_tune"]
    mixed_flip = Classifier.load(_path(report, "int8-mixed-flip"))
    np.testing.assert_allclose(mixed_flip.predict_raw_batch(x),
                               mixed_flip.predict_raw_batch(mirrored), atol=1e-6)


@pytest.mark.slow
def test_int8_mixed_files_name_the_op_they_keep_float(exported):
    """int8-mixed measures each op's int8 error at export and keeps the worst in float; the
    card names it, the file takes float input and holds int8 weights otherwise."""
    report, _ = exported
    for name in ("int8-mixed", "int8-mixed-flip"):
        settings = read_card(_path(report, name)).export["converter"]
        kept = settings["float_ops"]
        assert len(kept) == 1 and kept[0]["tensor"] and kept[0]["op"]
        assert kept[0]["rmse_per_step"] > 0 and settings["layer_error_images"] > 0
        info = inspect_file(_path(report, name))
        assert info["input"]["dtype"] == "float32" and info["output"]["dtype"] == "float32"
        assert "int8" in info["weight_dtypes"]


@pytest.mark.slow
def test_full_integer_variants_take_uint8_by_default_and_store_int8_weights(exported):
    report, _ = exported
    for r in report.results:
        info = inspect_file(_path(report, r.variant))
        if VARIANTS[r.variant].full_integer:
            assert info["input"]["dtype"] == "uint8" and info["input"]["scale"] > 0
            assert info["output"]["dtype"] == "float32"
            assert set(info["weight_dtypes"]) == {"int8"}
        else:
            assert info["input"]["dtype"] == "float32"
    dtypes = {r.variant: set(inspect_file(_path(report, r.variant))["weight_dtypes"])
              for r in report.results}
    assert dtypes["float32"] == {"float32"} and dtypes["float16"] == {"float16"}


@pytest.mark.slow
def test_pruned_files_hold_the_target_sparsity_and_gzip_smaller(exported):
    report, _ = exported
    for name in ("pruned", "int8-pqat"):
        r = report.result(name)
        assert r.sparsity == pytest.approx(0.5, abs=0.05), name
        ft = read_card(_path(report, name)).export["fine_tune"]
        assert ft["prune"]["keras_sparsity"] == pytest.approx(0.5, abs=0.05)
    assert report.result("int8-ptq").sparsity < 0.2
    assert report.result("float32").sparsity < 0.01

    def weight_gzip(variant: str) -> int:
        bare, _ = split_tflite(_path(report, variant).read_bytes())
        return gzip_size(bare)

    assert weight_gzip("pruned") < weight_gzip("int8-ptq")
    assert weight_gzip("int8-pqat") < weight_gzip("int8-qat")


@pytest.mark.slow
def test_fine_tuning_is_recorded_in_the_card(exported):
    report, lines = exported
    qat = read_card(_path(report, "int8-qat")).export["fine_tune"]["qat"]
    assert qat["epochs"] == 1 and qat["learning_rate"] == 1e-5 and qat["best_epoch"] == 1
    assert qat["scheme"].startswith("Default8BitQuantizeScheme")
    assert qat["range_calibration_images"] == 40 and 0 <= qat["keras_val_auc_before"] <= 1
    assert qat["label_smoothing"] == 0.0 and qat["augment"]["mixup"] == 0.0  # as trained
    # a scratch CNN trained its BatchNorm, so fine-tuning does too; pruning LR 0.3 x 1e-3
    assert qat["frozen_batchnorm_layers"] == 0 and report.config["freeze_bn"] is False
    assert report.config["prune_lr"] == pytest.approx(3e-4)
    pqat = read_card(_path(report, "int8-pqat")).export["fine_tune"]
    assert pqat["qat"]["scheme"].startswith("Default8BitPrunePreserveQuantizeScheme")
    assert pqat["prune"]["target_sparsity"] == 0.5
    conv = read_card(_path(report, "int8-ptq")).export["converter"]
    assert conv["supported_ops"] == ["TFLITE_BUILTINS_INT8"]
    assert conv["representative_images"] == 40
    assert any("only 40 train images" in ln for ln in lines)  # fewer than 100: warned


@pytest.mark.slow
def test_report_json_and_markdown(exported):
    report, _ = exported
    data = json.loads((Path(report.out) / "report.json").read_text())
    assert [r["variant"] for r in data["results"]] == list(VARIANTS)
    assert data["parent"]["run"] == "tiny-run"
    md = (Path(report.out) / "report.md").read_text()
    for name in VARIANTS:
        assert f"| {name} | validated |" in md


@pytest.mark.slow
def test_card_reads_back_without_tensorflow(exported):
    report, _ = exported
    path = _path(report, "int8-pqat")
    code = block_tensorflow_code() + (
        "import json, sys\n"
        "from edge_toolkit.card import read_card\n"
        "from edge_toolkit.runtime.classifier import Classifier\n"
        "from edge_toolkit.quantize.inspect import inspect_file\n"
        "import numpy as np\n"
        f"clf = Classifier.load({str(path)!r})\n"
        "card = clf.card\n"
        "p = clf.predict_raw_batch(np.zeros((3, 16, 16, 1), np.float32))\n"
        f"info = inspect_file({str(path)!r})\n"
        "assert 'tensorflow' not in sys.modules\n"
        "print(json.dumps({'card': card.to_dict(), 'p': p.tolist(),\n"
        "                  'sparsity': info['sparsity']}))\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["card"] == json.loads(read_card(path).to_json())
    assert len(got["p"]) == 3
    assert got["sparsity"] == pytest.approx(report.result("int8-pqat").sparsity)


@pytest.mark.slow
def test_truncated_corrupted_and_cardless_files_give_clear_errors(exported, tmp_path):
    report, _ = exported
    data = _path(report, "int8-ptq").read_bytes()
    bare, _ = split_tflite(data)
    cases = {
        "half.tflite": data[: len(bare) // 2],
        "cut-card.tflite": data[:-20],
        "header.tflite": data[:4] + b"XXXX" + data[8:],
        "short.tflite": data[:6],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelError) as err:
            Classifier.load(tmp_path / name)
        msg = str(err.value)
        assert name in msg and any(w in msg for w in ("truncated", "corrupt", "TFL3",
                                                      "damaged")), msg
    (tmp_path / "bare.tflite").write_bytes(bare)
    with pytest.raises(MissingCardError, match="no edge_toolkit model card"):
        Classifier.load(tmp_path / "bare.tflite")
    # a cut inside the flatbuffer that keeps the root table: the interpreter refuses it
    with pytest.raises(ModelError, match="truncated or corrupt"):
        Classifier.from_bytes(bare[: int(len(bare) * 0.9)], read_card(_path(report,
                                                                            "int8-ptq")))


@pytest.mark.slow
def test_export_validation_runs_the_device_path(exported, tiny_run):
    """What export validated is what `Classifier.load` gives on the device: same outputs."""
    from edge_toolkit.data import discover, load_samples

    report, _ = exported
    card = ModelCard.load(tiny_run / "card.json")
    val = load_samples(discover(card.dataset_info.root).split("val"), card.preprocess_config)
    for r in report.results:
        path = _path(report, r.variant)
        bare, embedded = split_tflite(path.read_bytes())
        before = Classifier.from_bytes(bare, card).predict_raw_batch(val.x)
        after = Classifier.load(path).predict_raw_batch(val.x)
        assert np.array_equal(before, after), r.variant
        assert embedded.export["input"] == Classifier.load(path).tensor_io()["input"]


def test_tolerance_marks_a_variant_failed_and_keeps_it_apart(tiny_run, tmp_path):
    from edge_toolkit.quantize.exporter import ExportConfig, export_run

    out = tmp_path / "exp"
    report = export_run(tiny_run, ExportConfig(variants="float32", tolerance=-1.0, out=str(out),
                                               bootstrap=0), log=lambda m: None)
    r = report.result("float32")
    assert r.status == FAILED_VALIDATION and "tolerance -1" in r.reason
    assert r.file == "failed/scratch_cnn-float32.tflite"
    assert not (out / "scratch_cnn-float32.tflite").exists()
    card = read_card(out / r.file)
    assert card.export["validation"]["status"] == FAILED_VALIDATION
    assert "**failed-validation**" in (out / "report.md").read_text()
    assert not report.ok


def test_int8_input_when_asked_and_a_failing_variant_does_not_stop_the_rest(
        tiny_run, tmp_path, monkeypatch):
    import edge_toolkit.quantize.convert as convert
    from edge_toolkit.quantize.exporter import ExportConfig, export_run

    real = convert.to_tflite

    def flaky(model, variant, *args, **kwargs):
        if variant.name == "float16":
            raise RuntimeError("converter exploded\nsecond line")
        return real(model, variant, *args, **kwargs)

    monkeypatch.setattr(convert, "to_tflite", flaky)
    out = tmp_path / "exp"
    (out).mkdir()
    (out / "scratch_cnn-float16.tflite").write_bytes(b"stale")
    cfg = ExportConfig(variants="float16,int8-ptq", input_type="int8", output_type="int8",
                       tolerance=1.0, out=str(out), bootstrap=0, calibration_images=20)
    report = export_run(tiny_run, cfg, log=lambda m: None)
    bad, good = report.result("float16"), report.result("int8-ptq")
    assert bad.status == EXPORT_FAILED and bad.reason == "RuntimeError: converter exploded"
    assert not (out / "scratch_cnn-float16.tflite").exists()  # no stale file left behind
    assert good.status == VALIDATED
    info = inspect_file(out / good.file)
    assert info["input"]["dtype"] == "int8" and info["output"]["dtype"] == "int8"
    assert read_card(out / good.file).export["input"]["dtype"] == "int8"
    assert "export-failed" in (out / "report.md").read_text()


def test_pruning_wraps_a_copy_and_schedule_reaches_target_on_an_update_step(tiny_run):
    from edge_toolkit.quantize.prune import schedule_steps, wrap_for_pruning
    from edge_toolkit.train.tfsetup import keras

    for spe, epochs in [(1, 1), (3, 3), (84, 6), (1000, 10)]:
        begin, end, freq = schedule_steps(spe, epochs)
        assert 1 <= end <= spe * epochs and (end - begin) % freq == 0 and freq <= 100
    model = keras.models.load_model(tiny_run / "model.keras", compile=False)
    before = [w.copy() for w in model.get_weights()]
    wrapped = wrap_for_pruning(model, 0.5, 0, 2, 1)
    x = np.random.default_rng(0).random((4, 16, 16, 1)).astype("float32")
    assert np.allclose(wrapped.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert sum(hasattr(layer, "pruning_step") for layer in wrapped.layers) == 4
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert all(not hasattr(layer, "pruning_step") for layer in model.layers)


def test_weight_tensors_follow_dequantize_in_float16_files(exported):
    report, _ = exported
    bare, _ = split_tflite(_path(report, "float16").read_bytes())
    weights = weight_tensors(bare)
    assert {w.op for w in weights} == {"CONV_2D", "FULLY_CONNECTED"}
    assert len(weights) == 4 and all(w.dtype == "float16" for w in weights)


def test_cli_export_one_variant(tiny_run, tmp_path):
    from click.testing import CliRunner

    from edge_toolkit.cli import main

    out = tmp_path / "cli"
    res = CliRunner().invoke(main, ["export", str(tiny_run), "--variants", "dynamic", "--out",
                                    str(out), "--tolerance", "1", "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    assert "| dynamic | validated |" in res.output
    assert (out / "scratch_cnn-dynamic.tflite").exists() and (out / "report.md").exists()
    res = CliRunner().invoke(main, ["export", str(tiny_run), "--variants", "nope"])
    assert res.exit_code != 0 and "unknown variant" in res.output
    res = CliRunner().invoke(main, ["export", str(tmp_path)])
    assert res.exit_code != 0 and "not a run folder" in res.output


def _float32_card(run: Path, out: Path, min_specificity: float | None,
                  log: Any = None) -> ModelCard:
    """The card of `run`'s float32 file exported to `out` with this specificity floor."""
    from edge_toolkit.quantize.exporter import ExportConfig, export_run

    cfg = ExportConfig(variants="float32", tolerance=1.0, out=str(out), bootstrap=0,
                       min_specificity=min_specificity)
    report = export_run(run, cfg, log=log or (lambda m: None))
    return read_card(Path(report.out) / report.result("float32").file)


def test_a_specificity_floor_is_applied_to_each_file_and_recorded(tiny_run, tmp_path):
    plain = _float32_card(tiny_run, tmp_path / "plain", None)
    logs: list[str] = []
    floors = _float32_card(tiny_run, tmp_path / "floors", 0.3, logs.append)
    # the export says how far its threshold clears the floors, as training does
    assert any(m.startswith("float32: threshold") and "standard errors" in m
               or "WARNING: no threshold meets both" in m for m in logs)
    assert plain.min_specificity is None and floors.min_specificity == 0.3
    assert floors.temperature == plain.temperature
    assert floors.threshold <= plain.threshold  # never less sensitive than the plain rule
    op = floors.metrics["val"]["operating_points"]["high_sensitivity"]
    assert op["threshold"] == floors.threshold
    assert op["sensitivity"] >= floors.target_sensitivity


def test_a_run_s_floor_is_followed_by_default_and_0_switches_it_off(tiny_run, tmp_path):
    import shutil

    from edge_toolkit.quantize.exporter import ExportConfig

    run = tmp_path / "floored-run"
    shutil.copytree(tiny_run, run)
    card = ModelCard.load(run / "card.json")
    card.min_specificity = 0.3
    card.save(run / "card.json")
    got = {name: _float32_card(run, tmp_path / name, floor)
           for name, floor in (("default", None), ("off", 0.0))}
    assert got["default"].min_specificity == 0.3
    assert got["off"].min_specificity is None
    assert got["default"].threshold <= got["off"].threshold
    with pytest.raises(ValueError, match="between 0 and 1"):
        ExportConfig(min_specificity=1.0).check()
