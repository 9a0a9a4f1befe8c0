"""Camera sources behind one small interface, and saving each capture before anything else.

`capture` only needs `capture() -> PIL.Image` and `close()`. `Picamera2Source` is the thin
adapter for a Raspberry Pi camera (picamera2 imported only when it is used);
`FakeCameraSource` replays image files so tests and demos can drive the whole
capture -> save -> classify path without hardware. Select the fake with the hidden
`--fake-camera PATH` option or `EDGE_TOOLKIT_FAKE_CAMERA=PATH`.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

FAKE_CAMERA_ENV = "EDGE_TOOLKIT_FAKE_CAMERA"
PICAMERA2_HINT = (
    "picamera2 is not installed: on Raspberry Pi OS `sudo apt install python3-picamera2` (and "
    "create the venv with --system-site-packages), or `pip install fracture-edge-toolkit[camera]` "
    "(needs libcap-dev and libcamera)"
)
NO_CAMERA_HINT = (
    "no camera found: check the ribbon cable and that the camera is enabled, run "
    "`rpicam-hello --list-cameras` (`libcamera-hello` on older systems), and make sure no "
    "other program is using the camera"
)


class CameraError(Exception):
    """The camera cannot be used; the message says what to install or check."""


class CameraSource(Protocol):
    def capture(self) -> Image.Image: ...
    def close(self) -> None: ...


class Picamera2Source:
    """A still from a Pi camera via picamera2; `warmup` lets exposure and gain settle."""

    def __init__(self, warmup: float = 1.0, camera_num: int = 0) -> None:
        try:
            from picamera2 import Picamera2  # type: ignore[import-not-found]
        except ImportError:
            raise CameraError(PICAMERA2_HINT) from None
        try:
            self._cam: Any = Picamera2(camera_num)
            self._cam.configure(self._cam.create_still_configuration())
            self._cam.start()
        except (IndexError, RuntimeError, OSError) as exc:
            raise CameraError(f"{NO_CAMERA_HINT} ({type(exc).__name__}: {exc})") from None
        time.sleep(warmup)

    def capture(self) -> Image.Image:
        try:
            return self._cam.capture_image("main")
        except (RuntimeError, OSError) as exc:
            raise CameraError(f"capture failed ({exc}); {NO_CAMERA_HINT}") from None

    def close(self) -> None:
        try:
            self._cam.stop()
        finally:
            self._cam.close()


class FakeCameraSource:
    """Replays images (files, a folder, or a glob), cycling when it runs out."""

    def __init__(self, images: list[str | Path] | str | Path) -> None:
        from edge_toolkit.runtime.sources import expand_paths

        items = [images] if isinstance(images, str | Path) else list(images)
        self.paths = [Path(s.file) for s in expand_paths(items) if s.problem is None]
        if not self.paths:
            raise CameraError(f"fake camera: no images in {images}")
        self._i = 0

    def capture(self) -> Image.Image:
        path = self.paths[self._i % len(self.paths)]
        self._i += 1
        with Image.open(path) as img:
            img.load()
            return img.copy()

    def close(self) -> None:
        pass


def open_camera(fake: str | None = None, warmup: float = 1.0) -> CameraSource:
    """The fake camera if asked for (argument or environment), else the Pi camera."""
    fake = fake or os.environ.get(FAKE_CAMERA_ENV)
    if fake:
        return FakeCameraSource(fake)
    return Picamera2Source(warmup=warmup)


def capture_name(now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now()
    return f"capture-{now:%Y%m%d-%H%M%S-%f}.png"


def save_capture(img: Image.Image, folder: str | Path) -> Path:
    """Save losslessly under a timestamped name and fsync, before anything can go wrong.

    Written to a temp name and renamed, so a pulled plug leaves a whole PNG or none.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / capture_name()
    n = 1
    while path.exists():  # two captures in one microsecond, or a clock step back
        path = folder / f"{path.stem.split('~')[0]}~{n}.png"
        n += 1
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        if img.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
            img = img.convert("RGB")
        img.save(f, format="PNG", compress_level=1)  # fast on a Pi; still lossless
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path
