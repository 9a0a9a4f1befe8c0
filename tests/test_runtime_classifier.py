"""The runtime's library API: loading carded models, feeding float and int8 inputs right,
reading the card's threshold and temperature, and refusing bad or card-less model files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tiny_models import RUNTIME_MODELS, cached_models, make_bad_files, make_images

from edge_toolkit.card import read_card
from edge_toolkit.metrics import apply_temperature
from edge_toolkit.preprocess import PreprocessConfig, preprocess
from edge_toolkit.runtime import (
    CardlessOptions,
    Classifier,
    MissingCardError,
    ModelError,
    classify_paths,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return cached_models(tmp_path_factory, RUNTIME_MODELS)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"), 6)


def test_predict_file_uses_card_preprocessing(models, images):
    clf = Classifier.load(models["float"], num_threads=1)
    assert clf.has_card and clf.card.family == "tiny-test"
    r = clf.predict_file(images[0])
    assert r.ok and r.status == "ok"
    assert r.label in clf.card.labels
    assert r.threshold == pytest.approx(0.5)
    assert r.positive == (r.probability >= r.threshold)
    assert r.label == ("fractured" if r.positive else "not fractured")
    assert r.ms >= r.ms_preprocess > 0 and r.ms_inference > 0
    assert r.path == str(images[0].resolve()) and r.model_id == clf.model_id
    # the same number as the shared preprocessing fed by hand
    x = preprocess(images[0], PreprocessConfig.from_dict(clf.card.preprocessing))
    assert clf.predict_array(x) == pytest.approx(r.probability)


def test_predict_pil_and_batches(models, images):
    clf = Classifier.load(models["float"], num_threads=2)
    with Image.open(images[1]) as img:
        r = clf.predict_pil(img, file="camera")
    assert r.file == "camera" and r.probability == pytest.approx(
        clf.predict_file(images[1]).probability)
    xs = np.stack([clf.preprocess(p) for p in images])
    batch = clf.predict_array(xs)
    assert batch.shape == (len(images),)
    assert batch == pytest.approx([clf.predict_file(p).probability for p in images])
    assert np.ptp(batch) > 0.1  # the tiny model does tell the pictures apart
    with pytest.raises(ValueError, match="shape"):
        clf.predict_array(np.zeros((8, 8, 1), np.float32))
    raw = clf.predict_raw_batch(xs)  # uncalibrated, for evaluation against Keras
    assert raw.dtype == np.float64 and raw == pytest.approx(
        [clf.predict_file(p).raw_probability for p in images])
    with pytest.raises(ValueError, match="shape"):
        clf.predict_raw_batch(xs[0])


@pytest.mark.parametrize(("float_name", "int_name"), [("float", "uint8"), ("float3", "int8_3")])
def test_int8_models_are_fed_quantized_inputs(models, images, float_name, int_name):
    f = Classifier.load(models[float_name], num_threads=1)
    q = Classifier.load(models[int_name], num_threads=1)
    assert q._in_dtype.kind in "iu" and f._in_dtype == np.float32
    pf = np.array([f.predict_file(p).probability for p in images])
    pq = np.array([q.predict_file(p).probability for p in images])
    # quantization moves answers a little; feeding the wrong scale moves them a lot
    assert np.max(np.abs(pf - pq)) < 0.06
    assert np.corrcoef(pf, pq)[0, 1] > 0.95


def test_card_temperature_and_threshold_are_applied(models, images):
    clf = Classifier.load(models["calibrated"], num_threads=1)
    assert clf.threshold == pytest.approx(0.9) and clf.temperature == pytest.approx(2.0)
    for path in images:
        r = clf.predict_file(path)
        assert r.probability == pytest.approx(float(apply_temperature(r.raw_probability, 2.0)))
        assert r.positive == (r.probability >= 0.9)


def test_threshold_override_by_value_and_by_name(models, images):
    assert Classifier.load(models["float"], threshold=0.2).threshold == pytest.approx(0.2)
    named = Classifier.load(models["float"], threshold="sensitivity")
    assert named.threshold == pytest.approx(0.3)
    assert named.predict_file(images[0]).threshold == pytest.approx(0.3)
    with pytest.raises(ModelError, match="no operating point 'nope'"):
        Classifier.load(models["float"], threshold="nope")


def test_model_without_card_is_refused_unless_settings_are_given(models, images):
    assert read_card(models["bare"]) is None
    with pytest.raises(MissingCardError, match="no edge_toolkit model card.*--value-range"):
        Classifier.load(models["bare"])
    with pytest.raises(MissingCardError):  # a value range alone is not enough
        Classifier.load(models["bare"], cardless=CardlessOptions(value_range="-1,1"))
    bare = Classifier.load(models["bare"], threshold=0.5,
                           cardless=CardlessOptions(value_range="-1,1"))
    assert not bare.has_card and bare.config.shape == (32, 32, 1)
    carded = Classifier.load(models["float"])  # same seed, same weights, with a card
    for path in images[:3]:
        assert bare.predict_file(path).probability == pytest.approx(
            carded.predict_file(path).probability, abs=1e-6)


def test_bad_model_files_give_clear_errors(models, tmp_path):
    data = models["float"].read_bytes()
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match="not a valid TFLite model, truncated or corrupt"):
        Classifier.load(truncated)
    card_cut = tmp_path / "card_cut.tflite"  # flatbuffer whole, card archive cut short
    card_cut.write_bytes(data[:-40])
    with pytest.raises(ModelError, match="card is damaged"):
        Classifier.load(card_cut)
    text = tmp_path / "notes.tflite"
    text.write_text("hello")
    with pytest.raises(ModelError, match="not a TFLite model"):
        Classifier.load(text)
    with pytest.raises(ModelError, match="cannot read model"):
        Classifier.load(tmp_path / "missing.tflite")
    with pytest.raises(ModelError, match="folder"):
        Classifier.load(tmp_path)


def test_classify_paths_reports_bad_files_and_goes_on(models, tmp_path):
    good = make_images(tmp_path / "data", 3)
    bad = make_bad_files(tmp_path / "data")
    clf = Classifier.load(models["float"], num_threads=1)
    results = list(classify_paths(clf, [tmp_path / "data", tmp_path / "nothing-here.png"]))
    by_name = {r.file.rsplit("/", 1)[-1]: r for r in results}
    assert sum(r.ok for r in results) == len(good)
    reasons = {kind: by_name[path.name].error for kind, path in bad.items()}
    assert "truncated" in reasons["truncated"]
    assert "empty" in reasons["empty"]
    assert "not an image" in reasons["text"]
    assert "pixel bomb" in reasons["bomb"]
    assert "broken symbolic link" in reasons["broken_link"]
    assert by_name["nothing-here.png"].error == "no such file or folder"
    skip = {results[0].path}
    assert len(list(classify_paths(clf, [tmp_path / "data"], skip=skip))) == len(results) - 2


def test_the_cards_intensity_step_is_applied_on_the_device(models, tmp_path):
    """A model trained on normalised grey levels gets them on the device: the card says so,
    and a dim copy of an image then scores like the original."""
    from edge_toolkit.card import embed_card

    src = models["float"]
    card = read_card(src)
    card.preprocessing = {**card.preprocessing, "intensity": "autocontrast"}
    normed = tmp_path / "normed.tflite"
    normed.write_bytes(embed_card(src.read_bytes(), card))
    ramp = np.tile(np.linspace(20, 235, 48), (48, 1))
    ramp[:, 20:28] = 250
    Image.fromarray(ramp.astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray((90 + ramp * 0.3).astype(np.uint8)).save(tmp_path / "dim.png")
    plain, norm = Classifier.load(src), Classifier.load(normed)
    assert norm.config.intensity == "autocontrast" and plain.config.intensity == "none"
    gap_plain = abs(plain.predict_file(tmp_path / "a.png").probability
                    - plain.predict_file(tmp_path / "dim.png").probability)
    gap_norm = abs(norm.predict_file(tmp_path / "a.png").probability
                   - norm.predict_file(tmp_path / "dim.png").probability)
    assert gap_norm < gap_plain / 2


def test_a_non_finite_model_output_is_an_error_never_a_label(tmp_path_factory):
    """NaN compares below every threshold: it read as 'not fractured', a missed fracture."""
    from tiny_models import cached_models

    from edge_toolkit.runtime.classifier import Classifier

    clf = Classifier.load(cached_models(tmp_path_factory, {"float": {}})["float"])
    for raw in (float("nan"), float("inf")):
        r = clf.result_from(raw, 0.0, 0.0, "x.png")
        assert r.status == "error" and r.label is None and "not finite" in r.error
    assert clf.result_from(0.7, 0.0, 0.0, "x.png").status == "ok"
