"""The gate's out-of-distribution part end to end: fitted at export on a model with the
feature-map output, carried in the model file, applied by the runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_models import cached_models, make_images

from edge_toolkit.card import embed_card, split_tflite
from edge_toolkit.runtime import Classifier
from edge_toolkit.runtime.cli import classify

SPECS = {"feat_last": {"features": "last"}, "feat_int8": {"features": "last", "int8": True}}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("ai_edge_litert")
    return cached_models(tmp_path_factory, SPECS)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ood-images")
    return make_images(folder, 40, size=40, seed=3)


def gated_model(path, images, out, threshold=None, look_threshold=None):
    """`path` with a gate fitted on the first 30 images (train) and the last 10 (val)."""
    from edge_toolkit.quantize.gate_fit import fit_gate

    data = path.read_bytes()
    bare, card = split_tflite(data)
    clf = Classifier.load(path, gate=False)
    x = np.stack([clf.preprocess(p) for p in images])
    card.gate, members = fit_gate(Classifier.from_bytes(bare, card), x[:30], x[30:],
                                  train_files=images[:30], val_files=images[30:], components=4)
    if threshold is not None:
        card.gate["ood"]["threshold"] = threshold
    if look_threshold is not None:
        card.gate["appearance"]["threshold"] = look_threshold
    out.write_bytes(embed_card(data, card, members))
    return out, card.gate


@pytest.mark.parametrize("name", sorted(SPECS))
def test_export_features_match_the_runtime_and_val_rejections_stay_under_2pct(
        models, images, tmp_path, name):
    from edge_toolkit.quantize.gate_fit import pooled_features

    path, gate = gated_model(models[name], images, tmp_path / "gated.tflite")
    clf = Classifier.load(path)
    assert clf.gate.ood is not None and clf.gate.look is not None
    assert gate["val_rejected"] <= 0.02  # both checks together, on val
    bare, card = split_tflite(path.read_bytes())
    x = clf.preprocess(images[0])
    np.testing.assert_allclose(pooled_features(Classifier.from_bytes(bare, card), x[None])[0],
                               clf.infer(x).features.mean(axis=(0, 1)), rtol=1e-5, atol=1e-6)
    # with 10 val images, 1% each allows no val rejection: every val image is accepted
    assert all(clf.predict_file(p).ok for p in images[30:])


def test_runtime_rejects_beyond_the_threshold_and_no_gate_overrides(models, images, tmp_path):
    path, _ = gated_model(models["feat_last"], images, tmp_path / "strict.tflite",
                          threshold=0.0, look_threshold=1e9)
    r = Classifier.load(path).predict_file(images[0])
    assert r.status == "rejected" and r.label is None
    assert "not like the radiographs this model was trained on" in r.error
    res = CliRunner().invoke(classify, [str(path), str(images[0]), "-f", "jsonl"],
                             catch_exceptions=False)
    assert res.exit_code == 3 and json.loads(res.stdout)["status"] == "rejected"
    res = CliRunner().invoke(classify, [str(path), str(images[0]), "-f", "jsonl",
                                        "--no-gate"], catch_exceptions=False)
    assert res.exit_code == 0 and json.loads(res.stdout)["status"] == "ok"


def test_a_gate_naming_missing_arrays_is_a_model_error(models, images, tmp_path):
    from edge_toolkit.runtime import ModelError

    path, gate = gated_model(models["feat_last"], images, tmp_path / "g.tflite")
    data = path.read_bytes()
    bare, card = split_tflite(data)
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(embed_card(bare, card))  # card names the arrays, archive lacks them
    with pytest.raises(ModelError, match="input gate"):
        Classifier.load(broken)
    assert Classifier.load(broken, gate=False).gate is None
