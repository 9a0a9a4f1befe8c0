"""The feature-map output (notes/contract.md): export adds the last feature map as a second
output with the head's weights in the card; the runtime picks outputs by shape, and files with
one output still classify."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from tiny_models import cached_models, make_images

from edge_toolkit.runtime import Classifier

SPECS = {
    "float": {},  # an older file: one output
    "feat_last": {"features": "last"},
    "feat_first": {"features": "first"},  # same weights, outputs in the other order
    "feat_int8": {"features": "last", "int8": True},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("ai_edge_litert")
    return cached_models(tmp_path_factory, SPECS)


def _logit(p: float) -> float:
    p = min(max(p, 1e-7), 1 - 1e-7)
    return math.log(p / (1 - p))


def test_outputs_are_chosen_by_shape_not_index(models, tmp_path):
    images = make_images(tmp_path, 4)
    last, first = Classifier.load(models["feat_last"]), Classifier.load(models["feat_first"])
    for clf in (last, first):
        assert clf.has_features and clf.has_heatmap and clf.feature_shape == (8, 8, 8)
    for path in images:
        x = last.preprocess(path)
        a, b = last.infer(x), first.infer(x)
        assert a.raw == pytest.approx(b.raw, abs=1e-6)
        assert a.features.shape == (8, 8, 8) and a.features.dtype == np.float32
        np.testing.assert_allclose(a.features, b.features, atol=1e-6)
        assert last.predict_file(path).raw_probability == pytest.approx(a.raw, abs=1e-9)


def test_head_weights_reproduce_the_logit_float_and_int8(models, tmp_path):
    """logit = mean_hw(sum_c w_c F) + bias: the class activation map is the per-location
    logit contribution (exact for float, within quantization error for int8)."""
    for name, tol in (("feat_last", 1e-4), ("feat_int8", 0.35)):
        clf = Classifier.load(models[name])
        w = np.array(clf.card.heatmap["weights"], np.float32)
        checked = 0
        for path in make_images(tmp_path / name, 6):
            inf = clf.infer(clf.preprocess(path))
            cam = inf.features @ w
            logit = float(cam.mean()) + clf.card.heatmap["bias"]
            if 0.02 < inf.raw < 0.98:  # a saturated sigmoid hides the logit
                assert logit == pytest.approx(_logit(inf.raw), abs=tol), name
                checked += 1
        assert checked >= 2, name


def test_int8_features_are_dequantized(models, tmp_path):
    clf = Classifier.load(models["feat_int8"])
    x = clf.preprocess(make_images(tmp_path, 2)[1])
    f = clf.infer(x).features
    assert f.dtype == np.float32 and f.min() >= 0.0 and f.max() > 0.0  # ReLU map, real scale
    assert clf.infer(x, features=False).features is None


def test_single_output_files_still_classify_without_features(models, tmp_path):
    clf = Classifier.load(models["float"])
    assert not clf.has_features and not clf.has_heatmap and clf.feature_shape is None
    path = make_images(tmp_path, 1)[0]
    inf = clf.infer(clf.preprocess(path))
    assert inf.features is None
    r = clf.predict_file(path)
    assert r.ok and r.raw_probability == pytest.approx(inf.raw)


def test_mismatched_heatmap_section_is_a_model_error(models, tmp_path):
    from edge_toolkit.card import embed_card, split_tflite
    from edge_toolkit.runtime import ModelError

    bare, card = split_tflite(Path(models["feat_last"]).read_bytes())
    card.heatmap = dict(card.heatmap, weights=card.heatmap["weights"][:3])
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(embed_card(bare, card))
    with pytest.raises(ModelError, match="heatmap"):
        Classifier.load(bad)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("tensorflow_model_optimization")
    from quantize_fixtures import make_tiny_run

    from edge_toolkit.quantize.exporter import ExportConfig, export_run

    run = make_tiny_run(tmp_path_factory.mktemp("features"), epochs=2)
    cfg = ExportConfig(variants="float32,int8-ptq,int8-qat", tolerance=1.0, qat_epochs=1,
                       bootstrap=20, calibration_images=20)
    return run, export_run(run, cfg, log=lambda _: None)


def test_export_adds_the_feature_map_and_head_weights_to_every_variant(exported):
    from edge_toolkit.card import ModelCard, split_tflite
    from edge_toolkit.data import discover, load_samples

    run, report = exported
    parent = ModelCard.load(Path(run) / "card.json")
    val = load_samples(discover(parent.dataset_info.root).split("val"), parent.preprocess_config)
    for r in report.results:
        assert r.status == "validated", (r.variant, r.reason, r.traceback)
        path = Path(report.out) / r.file
        bare, card = split_tflite(path.read_bytes())
        hm = card.heatmap
        # scratch_cnn 16 px, 2 stages: 4x4 map of width*2 = 16 channels
        assert hm["feature_shape"] == [4, 4, 16] and len(hm["weights"]) == 16
        assert card.export["features"]["shape"] == [1, 4, 4, 16]
        clf = Classifier.load(path)
        assert len(clf.interpreter.get_output_details()) == 2
        assert clf.has_heatmap and clf.tensor_io()["features"] == card.export["features"]
        # validation compared probabilities through the same Classifier, built from the bytes
        p = Classifier.from_bytes(bare, card).predict_raw_batch(val.x[:6])
        np.testing.assert_allclose([clf.infer(x, features=False).raw for x in val.x[:6]], p,
                                   atol=1e-6)
        w = np.array(hm["weights"])
        tol = 1e-3 if r.variant == "float32" else 0.5
        checked = 0
        for x in val.x[:10]:
            inf = clf.infer(x)
            if 0.02 < inf.raw < 0.98:
                assert float((inf.features @ w).mean()) + hm["bias"] == pytest.approx(
                    _logit(inf.raw), abs=tol), r.variant
                checked += 1
        assert checked >= 2, r.variant
