"""A damaged card archive is one `CardError` line (exit 2 from `card`), whatever byte was hit,
and a card's undefined metrics are written as strict JSON (null) and read back as NaN."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner
from tiny_models import cached_models, tiny_card

from edge_toolkit.card import CardError, ModelCard, embed_card, read_card, split_tflite
from edge_toolkit.card_cli import card as card_command

# the smallest bytes `check_flatbuffer` takes for a flatbuffer: root offset, then "TFL3"
FAKE_FLATBUFFER = (8).to_bytes(4, "little") + b"TFL3" + bytes(24)


def test_every_single_byte_edit_of_the_archive_is_a_card_error_or_a_card():
    """zipfile raises NotImplementedError (an unknown compression method) and RuntimeError
    (the encryption flag) besides BadZipFile: both escaped as tracebacks."""
    data = embed_card(FAKE_FLATBUFFER, tiny_card())
    escaped = []
    for offset in range(len(FAKE_FLATBUFFER), len(data)):
        for value in (0x00, 0x01, 0x7F, 0x80, 0xFF):
            blob = bytearray(data)
            blob[offset] = value
            try:
                split_tflite(bytes(blob))
            except CardError:
                pass
            except Exception as exc:  # noqa: BLE001 - what escapes is the finding
                escaped.append((offset - len(FAKE_FLATBUFFER), value, type(exc).__name__))
    assert not escaped, escaped[:5]


def central_entry_offsets(data: bytes, name: bytes = b"edge_toolkit_card.json"
                          ) -> tuple[int, int]:
    """(where the `version needed` field of the card's central directory entry is, where its
    flag bits are): found in the archive, not hard-coded for one file."""
    at = data.find(b"PK\x01\x02")
    while at != -1:
        size = int.from_bytes(data[at + 28:at + 30], "little")
        if data[at + 46:at + 46 + size] == name:
            return at + 6, at + 8
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError("no central directory entry for the card")


@pytest.mark.parametrize("field, value, why", [
    (0, 0xFF, "zip file version"),  # version needed to extract: 25.5
    (1, 0x01, "encrypted"),  # the encryption flag
])
def test_card_names_a_damaged_archive_in_one_line(tmp_path_factory, tmp_path, field, value,
                                                  why):
    model = cached_models(tmp_path_factory, {"float": {}})["float"]
    data = bytearray(model.read_bytes())
    data[central_entry_offsets(bytes(data))[field]] = value
    bad = tmp_path / "damaged.tflite"
    bad.write_bytes(bytes(data))
    res = CliRunner().invoke(card_command, [str(bad)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert res.output.splitlines() == [res.output.strip()]
    assert res.output.startswith(f"error: {bad}: the embedded model card is damaged (")
    assert why in res.output


def test_an_undefined_metric_is_null_in_the_card_and_nan_when_read(tmp_path):
    card = tiny_card(card_overrides={"metrics": {"test": {
        "n": 4, "positives": 4, "auc": float("nan"), "auc_ci95": [float("nan")] * 2,
        "operating_points": {}}}})
    text = card.to_json()
    data = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name}"))
    assert data["metrics"]["test"]["auc"] is None
    assert data["metrics"]["test"]["auc_ci95"] == [None, None]
    back = ModelCard.from_json(text)
    assert math.isnan(back.metrics["test"]["auc"]) and back.to_json() == text
    path = tmp_path / "m.tflite"
    path.write_bytes(embed_card(FAKE_FLATBUFFER, card))
    res = CliRunner().invoke(card_command, [str(path), "--json"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.output, parse_constant=lambda name: pytest.fail(f"bare {name}"))
    assert shown["metrics"]["test"]["auc"] is None
    assert math.isnan(read_card(path).metrics["test"]["auc"])
