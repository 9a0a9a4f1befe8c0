"""`edge-toolkit capture` driven end to end by a fake camera: capture, save, then classify."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from tiny_models import RUNTIME_MODELS, cached_models, make_images

from edge_toolkit.runtime import Classifier
from edge_toolkit.runtime.camera import (
    FAKE_CAMERA_ENV,
    CameraError,
    FakeCameraSource,
    open_camera,
    save_capture,
)
from edge_toolkit.runtime.cli import capture

NAME = re.compile(r"capture-\d{8}-\d{6}-\d{6}(~\d+)?\.png$")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return cached_models(tmp_path_factory, RUNTIME_MODELS)


def test_capture_saves_each_picture_then_classifies_it(models, tmp_path):
    shots = make_images(tmp_path / "camera", 2)
    save_dir = tmp_path / "captures"
    out = tmp_path / "log.jsonl"
    res = CliRunner().invoke(capture, [
        str(models["float"]), "--count", "3", "--interval", "0", "--save-dir", str(save_dir),
        "--fake-camera", str(tmp_path / "camera"), "-o", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    saved = sorted(save_dir.iterdir())
    assert len(saved) == 3 and all(NAME.search(p.name) for p in saved)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["file"]).name for r in records] == [p.name for p in saved]
    clf = Classifier.load(models["float"])
    for rec, shot in zip(records, [shots[0], shots[1], shots[0]], strict=True):
        assert rec["status"] == "ok"
        # lossless save: the saved picture gives the same answer as the original
        assert rec["probability"] == pytest.approx(clf.predict_file(shot).probability)
    # --output appends: a second session adds to the same log
    res = CliRunner().invoke(capture, [
        str(models["float"]), "--interval", "0", "--save-dir", str(save_dir), "-o", str(out),
        "-f", "jsonl"], env={FAKE_CAMERA_ENV: str(shots[1])}, catch_exceptions=False)
    assert res.exit_code == 0 and len(out.read_text().splitlines()) == 4


def test_capture_prints_a_table_by_default(models, tmp_path):
    make_images(tmp_path / "camera", 1)
    res = CliRunner().invoke(capture, [
        str(models["uint8"]), "--save-dir", str(tmp_path / "c"), "--fake-camera",
        str(tmp_path / "camera")], catch_exceptions=False)
    assert res.exit_code == 0
    assert "P(fractured)" in res.stdout and "capture-" in res.stdout


def test_missing_picamera2_says_what_to_install(models, tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    try:
        import picamera2  # noqa: F401
        pytest.skip("picamera2 is installed here")
    except ImportError:
        pass
    monkeypatch.delenv(FAKE_CAMERA_ENV, raising=False)
    res = CliRunner().invoke(capture, [str(models["float"]), "--save-dir", str(tmp_path)])
    assert res.exit_code == 2
    assert "picamera2 is not installed" in res.stderr
    assert "sudo apt install python3-picamera2" in res.stderr
    assert "edge-toolkit[camera]" in res.stderr
    assert not list(tmp_path.iterdir())


def test_a_bad_model_fails_before_the_camera_starts(tmp_path):
    res = CliRunner().invoke(capture, [str(tmp_path / "none.tflite"), "--fake-camera",
                                       str(tmp_path)])
    assert res.exit_code == 2 and "cannot read model" in res.stderr


def test_camera_helpers(tmp_path):
    with pytest.raises(CameraError, match="no images"):
        FakeCameraSource(tmp_path)
    make_images(tmp_path / "cam", 2)
    cam = open_camera(str(tmp_path / "cam"))
    first, second, third = cam.capture(), cam.capture(), cam.capture()
    assert first.size != second.size and first.size == third.size  # cycles
    rgbx = Image.new("RGBX", (8, 8))
    paths = {save_capture(rgbx, tmp_path / "s") for _ in range(3)}
    assert len(paths) == 3 and all(NAME.search(p.name) for p in paths)
    assert not [p for p in (tmp_path / "s").iterdir() if p.name.startswith(".")]
