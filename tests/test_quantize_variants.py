"""The variant table and the TF-free side of export (no TensorFlow in this module)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edge_toolkit.card import ModelCard, Validation
from edge_toolkit.preprocess import quantize
from edge_toolkit.quantize.inspect import gzip_size
from edge_toolkit.quantize.representative import pick, representative_images
from edge_toolkit.quantize.validate import compare_to_parent
from edge_toolkit.quantize.variants import (
    DEFAULT_VARIANTS,
    FAILED_VALIDATION,
    MIXED_FLOAT_OPS,
    VALIDATED,
    VARIANTS,
    parse_variants,
    variant_of_file,
)
from edge_toolkit.runtime.classifier import Classifier, ModelError


def test_table_lists_every_variant_of_the_issue():
    assert list(DEFAULT_VARIANTS) == ["float32", "float16", "dynamic", "int8-ptq", "int8-qat",
                                      "pruned", "int8-pqat", "int8-mixed"]
    assert {v.name for v in VARIANTS.values() if v.full_integer} == {
        "int8-ptq", "int8-qat", "pruned", "int8-pqat", "int8-ptq-flip", "int8-qat-flip"}
    assert [v.name for v in VARIANTS.values() if v.mirror_average] == [
        "int8-ptq-flip", "int8-qat-flip", "int8-mixed-flip"]
    # int8 with float ops: calibrated like int8-ptq, but float input and output
    for name in ("int8-mixed", "int8-mixed-flip"):
        v = VARIANTS[name]
        assert v.float_layers == MIXED_FLOAT_OPS > 1 and v.weights == "int8" and not v.full_integer
        assert v.needs_representative_data and not v.needs_fine_tuning
    assert not VARIANTS["float32"].needs_representative_data
    assert VARIANTS["int8-qat"].needs_fine_tuning and not VARIANTS["int8-ptq"].needs_fine_tuning
    assert VARIANTS["pruned"].file_name("mobilenetv2") == "mobilenetv2-pruned.tflite"


def test_parse_variants_keeps_table_order_and_rejects_unknown():
    assert [v.name for v in parse_variants("int8-qat, float32,float32")] == ["float32",
                                                                             "int8-qat"]
    assert [v.name for v in parse_variants("all")] == [*DEFAULT_VARIANTS, "int8-ptq-flip",
                                                       "int8-qat-flip", "int8-mixed-flip"]
    assert variant_of_file("mobilenetv2-int8-ptq-flip.tflite").name == "int8-ptq-flip"
    assert variant_of_file("mobilenetv2-int8-qat-flip.tflite").name == "int8-qat-flip"
    assert variant_of_file("mobilenetv2-int8-mixed-flip.tflite").name == "int8-mixed-flip"
    assert variant_of_file("mobilenetv2-int8-mixed.tflite").name == "int8-mixed"
    assert [v.name for v in parse_variants(None)] == list(DEFAULT_VARIANTS)
    with pytest.raises(ValueError, match="unknown variant 'int4'"):
        parse_variants("float32,int4")
    with pytest.raises(ValueError, match="no variants"):
        parse_variants(" , ")


def test_variant_of_file_name():
    assert variant_of_file("export/scratch_cnn-int8-pqat.tflite").name == "int8-pqat"
    assert variant_of_file("mobilenetv2-int8-ptq.tflite").name == "int8-ptq"
    assert variant_of_file("mobilenetv2-pruned.tflite").name == "pruned"
    assert variant_of_file("other.tflite") is None


def test_table_validate_and_inspect_import_without_tensorflow():
    code = ("import sys\n"
            "import edge_toolkit.quantize.variants, edge_toolkit.quantize.validate\n"
            "import edge_toolkit.quantize.inspect, edge_toolkit.quantize.representative\n"
            "import edge_toolkit.quantize.cli\n"
            "bad = [m for m in ('tensorflow', 'tf_keras', 'keras') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_representative_pick_is_seeded_and_warns_below_100():
    assert (pick(1000, 300, 1) == pick(1000, 300, 1)).all()
    assert len(set(pick(1000, 300, 1).tolist())) == 300
    assert (pick(5, 300) == np.arange(5)).all()
    warnings: list[str] = []
    x = np.zeros((40, 8, 8, 1), np.float32)
    assert representative_images(x, 300, warn=warnings.append).shape == (40, 8, 8, 1)
    assert warnings and "only 40 train images" in warnings[0]
    warnings.clear()
    representative_images(np.zeros((150, 8, 8, 1)), 120, warn=warnings.append)
    assert not warnings
    with pytest.raises(ValueError):
        representative_images(np.zeros((0, 8, 8, 1)), 10)


def test_input_quantization_uses_the_tensors_own_parameters():
    u8 = (1 / 255, 0, np.uint8)
    x = np.array([0.0, 128 / 255, 1.0, 2.0], np.float32)
    assert quantize(x, *u8).tolist() == [0, 128, 255, 255]
    pixels = np.arange(256)  # the shared preprocessing's [0, 1] values map back to pixels
    assert (quantize(pixels.astype(np.float32) / np.float32(255), *u8) == pixels).all()
    i8 = (0.01, 5, np.int8)
    assert quantize(np.array([-1.33, -2.0, 0.0, 0.5, 2.0], np.float32), *i8).tolist() == [
        -128, -128, 5, 55, 127]


def test_compare_to_parent_marks_an_auc_drop_beyond_tolerance():
    card = ModelCard(family="t", input_size=8, channels=1, preprocessing={}, threshold=0.5)
    y = np.array([0, 0, 0, 1, 1, 1])
    parent = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    same = compare_to_parent(y, parent, parent, card, 0.02)
    assert same.status == VALIDATED and same.ok and same.agreement == 1.0
    assert same.delta_auc == 0 and same.sensitivity == 1 and same.specificity == 1
    worse = np.array([0.1, 0.2, 0.75, 0.7, 0.8, 0.9])  # one negative above two positives
    check = compare_to_parent(y, worse, parent, card, 0.02)
    assert check.status == FAILED_VALIDATION
    assert "below the float parent" in check.reason
    assert check.agreement == pytest.approx(5 / 6)
    assert compare_to_parent(y, worse, parent, card, 0.5).status == VALIDATED
    assert compare_to_parent(y, parent, parent, card, -1).status == FAILED_VALIDATION
    # the record round-trips through the card's typed export section
    back = Validation.from_dict(check.to_dict())
    assert back.status == check.status and back.reason == check.reason


def test_a_file_that_holds_pooled_but_loses_one_source_fails():
    """Source b's ranking is broken while a's improves: the pooled AUC stays within
    tolerance, b's does not, and the reason names b."""
    card = ModelCard(family="t", input_size=8, channels=1, preprocessing={}, threshold=0.5)
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 200)
    src = np.repeat(["a", "b"], 200)
    parent = np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, 0.2, 400), 0.01, 0.99)
    p = parent.copy()
    b = src == "b"
    p[b] = np.clip(parent[b] + rng.normal(0, 0.25, b.sum()), 0.01, 0.99)  # b gets noisier
    a = src == "a"
    p[a] = np.clip(0.5 + 0.45 * (2 * y[a] - 1) + rng.normal(0, 0.1, a.sum()), 0.01, 0.99)
    pooled = compare_to_parent(y, p, parent, card, 0.05)
    check = compare_to_parent(y, p, parent, card, 0.05, src)
    assert pooled.status == VALIDATED and abs(pooled.delta_auc) < 0.05
    assert check.status == FAILED_VALIDATION and "on b " in check.reason
    assert check.sources["b"]["delta_auc"] < -0.05 < check.sources["a"]["delta_auc"]
    assert Validation.from_dict(check.to_dict()).sources == check.sources
    # one source only: the pooled rule alone, no per-source record
    assert compare_to_parent(y, p, parent, card, 0.05, ["a"] * 400).sources is None
    # a pooled failure keeps the pooled reason; a source with one class has no AUC to hold
    bad = compare_to_parent(y, 1 - parent, parent, card, 0.05, src)
    assert bad.status == FAILED_VALIDATION and bad.reason.startswith("val AUC 0.")
    one_class = np.where(src == "b", "b", np.where(y == 0, "a", "c"))  # c: fractured only
    check = compare_to_parent(y, p, parent, card, 0.05, one_class)
    assert set(check.sources) == {"b"} and check.status == FAILED_VALIDATION


def test_model_file_errors_name_what_is_wrong(tmp_path):
    cases = {"empty.tflite": (b"", "empty file"),
             "zeros.tflite": (b"\x00" * 64, "no TFL3"),
             "cut.tflite": (b"\xff\xff\x00\x00TFL3" + b"\x00" * 16, "truncated")}
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelError, match=message):
            Classifier.load(tmp_path / name)
        with pytest.raises(ModelError, match=message):
            Classifier.from_bytes(data)
    with pytest.raises(ModelError, match="cannot read"):
        Classifier.load(tmp_path / "missing.tflite")


def test_gzip_size_sees_zeros():
    rng = np.random.default_rng(0)
    dense = rng.integers(-127, 127, 4096, dtype=np.int8)
    sparse = dense.copy()
    sparse[rng.random(4096) < 0.5] = 0
    assert gzip_size(sparse.tobytes()) < 0.8 * gzip_size(dense.tobytes())
