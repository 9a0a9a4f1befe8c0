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
    Picamera2Source,
    SaveOptions,
    open_camera,
    save_capture,
)
from edge_toolkit.runtime.cli import capture

NAME = re.compile(r"capture-\d{8}-\d{6}-\d{6}(~\d+)?\.(png|jpg)$")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return cached_models(tmp_path_factory, RUNTIME_MODELS)


def test_capture_saves_each_picture_then_classifies_it(models, tmp_path):
    shots = make_images(tmp_path / "camera", 2)
    save_dir = tmp_path / "captures"
    out = tmp_path / "log.jsonl"
    res = CliRunner().invoke(capture, [
        str(models["float"]), "--count", "3", "--interval", "0", "--save-dir", str(save_dir),
        "--fake-camera", str(tmp_path / "camera"), "-o", str(out), "--save-format", "png"],
        catch_exceptions=False)
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
    assert "fracture-edge-toolkit[camera]" in res.stderr
    assert not list(tmp_path.iterdir())


def test_a_bad_model_fails_before_the_camera_starts(tmp_path):
    res = CliRunner().invoke(capture, [str(tmp_path / "none.tflite"), "--fake-camera",
                                       str(tmp_path)])
    assert res.exit_code == 2 and "cannot read model" in res.stderr


def test_a_fake_camera_picture_that_is_not_one_is_one_error_line(models, tmp_path):
    shot = tmp_path / "text.jpg"
    shot.write_text("not a picture")
    res = CliRunner().invoke(capture, [str(models["float"]), "--save-dir", str(tmp_path / "c"),
                                       "--fake-camera", str(shot), "--interval", "0"])
    assert res.exit_code == 3
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: capture 1: fake camera: {shot}: not a readable picture "
                      f"(cannot identify image file '{shot}')"], res.stderr
    assert "cannot write" not in res.stderr


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


def big_photo(path: Path, size: tuple[int, int] = (3000, 2250)) -> Path:
    """A camera-sized picture with texture (noise compresses as badly as a real photo)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, size[0])[None, :, None] + rng.normal(0, 20, (size[1], size[0], 3))
    Image.fromarray(x.clip(0, 255).astype(np.uint8)).save(path)
    return path


def test_capture_keeps_a_downscaled_jpeg_by_default(models, tmp_path):
    shot = big_photo(tmp_path / "camera.png")
    save_dir = tmp_path / "captures"
    res = CliRunner().invoke(capture, [
        str(models["float3"]), "--count", "2", "--interval", "0", "--save-dir", str(save_dir),
        "--fake-camera", str(shot), "-f", "jsonl"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    saved = sorted(save_dir.iterdir())
    assert len(saved) == 2 and all(p.suffix == ".jpg" and NAME.search(p.name) for p in saved)
    for p in saved:
        with Image.open(p) as img:
            assert img.format == "JPEG" and max(img.size) == 2048
            assert img.size[0] / img.size[1] == pytest.approx(3000 / 2250, rel=1e-3)
    full_png = tmp_path / "full.png"
    Image.open(shot).save(full_png, compress_level=1)  # what a lossless full-size save costs
    assert saved[0].stat().st_size < full_png.stat().st_size / 4
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert [Path(r["file"]).name for r in records] == [p.name for p in saved]


def test_save_options_modes_and_sizes(tmp_path):
    import numpy as np

    sixteen = Image.fromarray(np.full((40, 60), 40000, dtype=np.uint16))
    p = save_capture(sixteen, tmp_path)
    with Image.open(p) as img:
        assert img.mode == "L" and img.getpixel((0, 0)) in range(154, 159)  # 40000 >> 8
    for mode in ("RGBA", "RGBX", "LA", "P", "1"):
        with Image.open(save_capture(Image.new(mode, (30, 20)), tmp_path)) as img:
            assert img.format == "JPEG" and img.mode in ("L", "RGB") and img.size == (30, 20)
    png = save_capture(Image.new("RGB", (1000, 500)), tmp_path, SaveOptions("png", 90, 400))
    with Image.open(png) as img:
        assert png.suffix == ".png" and img.format == "PNG" and img.size == (400, 200)
    full = save_capture(Image.new("RGB", (1000, 500)), tmp_path, SaveOptions("png", 90, 0))
    with Image.open(full) as img:
        assert img.size == (1000, 500)
    with pytest.raises(ValueError, match="jpeg or png"):
        save_capture(Image.new("L", (4, 4)), tmp_path, SaveOptions("gif"))


class FakePicamera2:
    """Stands in for picamera2.Picamera2: records the controls the source sets."""

    has_af = True
    af_result = True

    def __init__(self, num: int = 0) -> None:
        self.camera_controls = {"ExposureTime": (1, 1000000, 0)}
        if self.has_af:
            self.camera_controls["AfMode"] = (0, 2, 0)
        self.controls: list[dict] = []
        self.af_cycles = 0
        self.started = False

    def create_still_configuration(self) -> dict:
        return {}

    def configure(self, cfg: dict) -> None:
        pass

    def start(self) -> None:
        self.started = True

    def set_controls(self, controls: dict) -> None:
        self.controls.append(dict(controls))

    def autofocus_cycle(self) -> bool:
        self.af_cycles += 1
        return self.af_result

    def capture_metadata(self) -> dict:
        return {"ExposureTime": 12000, "AnalogueGain": 1.25, "ColourGains": (1.9, 1.5),
                "Lux": 300.0}

    def capture_image(self, stream: str) -> Image.Image:
        return Image.new("RGB", (64, 48))

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        pass


@pytest.fixture
def fake_picamera2(monkeypatch):
    import sys
    import types

    module = types.ModuleType("picamera2")
    module.Picamera2 = type("Picamera2", (FakePicamera2,), {})
    monkeypatch.setitem(sys.modules, "picamera2", module)
    return module.Picamera2


def test_pi_camera_focuses_then_locks_exposure_for_the_series(fake_picamera2):
    cam = Picamera2Source(warmup=0)
    raw = cam._cam
    assert cam.focused is True and raw.af_cycles == 1
    assert raw.controls[0] == {"AfMode": 1}
    assert raw.controls[-1] == {"AeEnable": False, "AwbEnable": False, "ExposureTime": 12000,
                                "AnalogueGain": 1.25, "ColourGains": (1.9, 1.5)}
    n = len(raw.controls)
    cam.capture(), cam.capture()
    assert len(raw.controls) == n  # nothing changes exposure between frames
    cam.close()
    assert not raw.started


def test_pi_camera_without_autofocus_or_lock(fake_picamera2):
    fake_picamera2.has_af = False
    cam = Picamera2Source(warmup=0)
    assert cam.focused is None and cam._cam.af_cycles == 0
    assert all("AfMode" not in c for c in cam._cam.controls)
    fake_picamera2.has_af, fake_picamera2.af_result = True, False
    cam = Picamera2Source(warmup=0, lock_exposure=False)
    assert cam.focused is False and cam.locked == {} and cam._cam.controls == [{"AfMode": 1}]


@pytest.mark.parametrize("error", [
    ValueError("numpy.dtype size changed, may indicate binary incompatibility"),
    ImportError("numpy.core.multiarray failed to import"),
])
def test_picamera2_built_for_another_numpy_is_one_line_naming_the_fix(models, tmp_path,
                                                                      monkeypatch, error):
    """Pi OS's picamera2 imported beside numpy 2 fails with a ValueError (numpy.dtype size
    changed) or an ImportError from numpy: it used to be a traceback."""
    import sys
    import types

    broken = types.ModuleType("picamera2")

    def fail(name: str) -> None:
        raise error

    broken.__getattr__ = fail  # `from picamera2 import Picamera2` raises the ValueError
    monkeypatch.setitem(sys.modules, "picamera2", broken)
    monkeypatch.delenv(FAKE_CAMERA_ENV, raising=False)
    res = CliRunner().invoke(capture, [str(models["float"]), "--save-dir", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert str(error) in res.stderr and 'pip install "numpy<2"' in res.stderr
    assert "Traceback" not in res.output


def test_a_save_folder_that_cannot_take_pictures_is_refused_before_the_camera(models,
                                                                              tmp_path):
    """Each capture used to fail on its own ('cannot save to ...'), forever with --count 0."""
    shots = tmp_path / "camera"
    make_images(shots, 1)
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the folder should be")
    res = CliRunner().invoke(capture, [str(models["float"]), "--save-dir", str(blocker / "x"),
                                       "--fake-camera", str(shots), "--count", "2",
                                       "--interval", "0"])
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("Error: --save-dir:") and "capture 1" not in res.stderr
