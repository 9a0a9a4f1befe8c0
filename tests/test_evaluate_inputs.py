"""`edge-toolkit evaluate` on awkward inputs: a damaged run card, a file that is no model or
has no card, a model answering NaN, a split that does not exist, one-class splits and
sources. One line naming the file and exit 2, or honest numbers in strict JSON."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from conftest import write_tiny_dataset
from tiny_models import cached_models

from edge_toolkit.card import embed_card, read_card
from edge_toolkit.train.cli import evaluate


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return cached_models(tmp_path_factory, {"float": {}, "bare": {"with_card": False}})


@pytest.fixture
def data(tmp_path):
    return write_tiny_dataset(tmp_path / "d1", per_class=4, size=32)


def one_error_line(res, *words: str) -> str:
    """The refusal: exit 2, one `Error:` line holding `words`, no traceback."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, res.output
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


def strict(text: str):
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in JSON"))


@pytest.mark.parametrize("card_text, why", [
    ("{not json", "not valid JSON"),
    (json.dumps({"family": "x"}), "unknown model card schema"),
])
def test_a_run_folder_with_a_damaged_card_is_one_line(tmp_path, data, card_text, why):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"never loaded: the card is read first")
    (run / "card.json").write_text(card_text)
    res = CliRunner().invoke(evaluate, [str(run), "--data", str(data), "--bootstrap", "0"])
    one_error_line(res, str(run / "card.json"), why)


def test_a_file_that_is_no_model_or_has_no_card_exits_2(models, tmp_path, data):
    junk = tmp_path / "junk.tflite"
    junk.write_text("not a model")
    for model, why in ((junk, "not a TFLite model"), (models["bare"], "no model card")):
        res = CliRunner().invoke(evaluate, [str(model), "--data", str(data)])
        one_error_line(res, str(model), why)


def test_json_is_strict_where_a_number_is_undefined(models, data):
    """One class in test and no bootstrap: AUC and its interval are undefined; --json
    wrote bare NaN, which strict JSON readers refuse."""
    shutil.rmtree(data / "test" / "not fractured")
    res = CliRunner().invoke(evaluate, [str(models["float"]), "--data", str(data),
                                        "--bootstrap", "0", "--json"])
    assert res.exit_code == 0, res.output
    metrics = strict(res.stdout)
    assert metrics["test"]["auc"] is None and metrics["val"]["auc_ci95"] == [None, None]
    assert metrics["val"]["auc"] is not None
    assert "warning: test: images of one class only" in res.stderr


def test_a_source_of_one_class_is_warned_of(models, data, tmp_path):
    other = write_tiny_dataset(tmp_path / "d2", per_class=4, size=32)
    shutil.rmtree(other / "test" / "fractured")
    res = CliRunner().invoke(evaluate, [str(models["float"]), "--data", str(data), "--data",
                                        str(other), "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    assert "warning: test/d2: images of one class only" in res.stderr, res.stderr
    assert "warning: test:" not in res.stderr  # pooled, test has both classes


def test_nan_outputs_are_refused_in_one_line(models, data, monkeypatch):
    import numpy as np

    from edge_toolkit.runtime.classifier import Classifier

    def some_nan(self, x):
        out = np.linspace(0.1, 0.9, len(x)).astype(np.float32)
        out[:3] = np.nan
        return out

    monkeypatch.setattr(Classifier, "predict_raw_batch", some_nan)
    res = CliRunner().invoke(evaluate, [str(models["float"]), "--data", str(data)])
    one_error_line(res, str(models["float"]), "3 non-finite model outputs", "8 val images")


def test_a_split_that_does_not_exist_is_named_with_those_that_do(models, data):
    res = CliRunner().invoke(evaluate, [str(models["float"]), "--data", str(data),
                                        "--splits", "val,tset"])
    line = one_error_line(res, "no split tset")
    assert "(its splits: test, train, val)" in line and "[" not in line


def test_the_stored_threshold_is_reported_when_it_is_not_a_named_one(models, data, tmp_path):
    from edge_toolkit.evaluate import evaluate_model

    card = read_card(models["float"])
    card.threshold, card.thresholds = 0.37, {"balanced": 0.5}
    model = tmp_path / "edited.tflite"
    model.write_bytes(embed_card(models["float"].read_bytes(), card))
    metrics, _ = evaluate_model(model, [data], bootstrap=0)
    ops = metrics["val"]["operating_points"]
    assert ops["stored"]["threshold"] == pytest.approx(0.37) and "balanced" in ops
