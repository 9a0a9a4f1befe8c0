"""Records that tell the truth: the bundled card agrees with itself and names no machine's
folders, typed card sections read old and newer cards, a loose file without a validation
record is not-validated, and benchmark.json names the command really run."""

from __future__ import annotations

import json
import math
import sys

import pytest
from tiny_models import cached_models

from edge_toolkit.card import CardError, DatasetInfo, ModelCard, SplitMetrics, read_card
from edge_toolkit.runtime.bundled import bundled_model


def _strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def test_bundled_card_loads_and_does_not_contradict_itself():
    card = read_card(bundled_model())  # an old card: read through defaults, and validated
    note = card.export["thresholds"]
    assert "re-chosen on val for this file" in note and "not re-chosen" not in note
    parent = card.export["parent"]
    assert card.threshold != parent["threshold"]  # it was re-chosen, as the note says
    assert card.threshold == card.thresholds["high_sensitivity"]
    assert card.export_info.validation.threshold == card.threshold
    info = card.dataset_info
    sources = [src["name"] for src in card.dataset["sources"]]
    assert info.root is None and "roots" not in card.dataset
    assert sources == ["fracture-xray", "fracatlas"] and info.name == " + ".join(sources)
    assert card.data_fingerprint and card.data_fingerprint.startswith("sha256:")
    assert not [s for s in _strings(card.to_dict()) if s.startswith(("/", "~"))]


def test_bundled_file_carries_the_checksum_of_its_weights():
    from edge_toolkit.card import CHECKSUM_MEMBER, model_checksum, read_member, split_tflite

    data = bundled_model().read_bytes()
    bare, _ = split_tflite(data)
    assert read_member(data, CHECKSUM_MEMBER).decode().strip() == model_checksum(bare)


def test_typed_sections_read_old_cards_and_pass_newer_keys_through():
    base = json.loads(read_card(bundled_model()).to_json())
    base["dataset"] = {"root": "/data/x", "sources": [{"name": "a"}, {"name": "b"}]}
    base["metrics"]["test"] = {"n": 10, "auc": math.nan,
                               "sources": {"a": {"n": 4, "auc": 0.5}}}
    base["heatmap"] = {"layer": "out_relu"}
    card = ModelCard.from_dict(base)
    info = card.dataset_info
    assert (info.val_fraction, info.seed, info.val_grouping) == (0.15, 0, "name")  # defaults
    assert info.extra["sources"] == [{"name": "a"}, {"name": "b"}]
    test = card.split_metrics("test")
    assert test.n == 10 and test.extra["sources"]["a"]["auc"] == 0.5
    assert SplitMetrics.from_dict(test.to_dict()).n == 10
    assert card.split_metrics("nope") is None
    assert DatasetInfo.from_dict({}).val_fraction == 0.15
    for key, bad, message in [("heatmap", "yes", "heatmap must be an object or null"),
                              ("dataset", {"val_fraction": 2}, "dataset.val_fraction"),
                              ("metrics", {"val": {"auc": 1.5}}, "metrics.val.auc"),
                              ("export", {"validation": {"status": "great"}},
                               "export.validation.status"),
                              ("min_specificity", 1.5, "min_specificity"),
                              ("export", {"validation": {"status": "validated",
                                                         "sources": {"a": {"auc": 7}}}},
                               "export.validation.sources.a.auc")]:
        with pytest.raises(CardError, match=message):
            ModelCard.from_dict({**base, key: bad})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return cached_models(tmp_path_factory, {"float": {}})["float"]


def test_loose_file_without_validation_record_is_not_validated(tiny, tmp_path):
    from edge_toolkit.benchmark import BenchmarkError, row_from_file
    from edge_toolkit.card import embed_card
    from edge_toolkit.quantize.validate import compare_to_parent

    assert "validation" not in read_card(tiny).export
    assert row_from_file(tiny).status == "not-validated"
    import numpy as np

    card = read_card(tiny)
    y, p = np.array([0, 1, 0, 1]), np.array([0.2, 0.8, 0.3, 0.7])
    card.export["validation"] = compare_to_parent(y, p, p, card).to_dict()
    judged = tmp_path / "judged.tflite"
    judged.write_bytes(embed_card(tiny.read_bytes(), card))
    assert row_from_file(judged).status == "validated"
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"junk")
    with pytest.raises(BenchmarkError, match="junk.tflite: not a TFLite model"):
        row_from_file(junk)


def test_benchmark_records_the_command_really_run(monkeypatch):
    from edge_toolkit.benchmark import invoked_command

    monkeypatch.setattr(sys, "argv", ["/usr/bin/edge-toolkit", "pipeline", "--data",
                                      "my data", "--name", "real"])
    assert invoked_command() == "edge-toolkit pipeline --data 'my data' --name real"
