"""Camera sources behind one small interface, and saving each capture before anything else.

`capture` only needs `capture() -> PIL.Image` and `close()`. `Picamera2Source` is the thin
adapter for a Raspberry Pi camera (picamera2 imported only when it is used): it runs an
autofocus cycle where the camera has autofocus (Camera Module 3), then locks exposure, gain and
white balance at the settled values, so every frame of one series is exposed alike and
frames of one film can be compared. Captures are kept as JPEG (quality 90, long side at most
2048 px by default: about 0.3 to 1 MB instead of a 20 MB 12 MP PNG), or as a downscaled PNG;
`FakeCameraSource` replays image files so tests and demos can drive the whole
capture -> save -> classify path without hardware. Select the fake with the
`--fake-camera PATH` option or `EDGE_TOOLKIT_FAKE_CAMERA=PATH`.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from edge_toolkit.files import atomic_write
from edge_toolkit.images import DEFAULT_MAX_PIXELS, collected_warnings

FAKE_CAMERA_ENV = "EDGE_TOOLKIT_FAKE_CAMERA"
PICAMERA2_HINT = (
    "picamera2 is not installed: on Raspberry Pi OS `sudo apt install python3-picamera2` (and "
    "create the venv with --system-site-packages), or "
    "`pip install fracture-edge-toolkit[camera]` (needs libcap-dev and libcamera)"
)
NUMPY_HINT = ("Raspberry Pi OS's picamera2 is built for its own numpy 1.x: in the venv made "
              "with --system-site-packages run `pip install \"numpy<2\"`")
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
    """A still from a Pi camera via picamera2; `warmup` lets exposure and gain settle, then
    autofocus runs once (if the camera has it) and exposure is locked for the series."""

    def __init__(self, warmup: float = 1.0, camera_num: int = 0, autofocus: bool = True,
                 lock_exposure: bool = True) -> None:
        try:
            from picamera2 import Picamera2  # type: ignore[import-not-found]
        except ImportError as exc:
            if exc.name == "picamera2":
                raise CameraError(PICAMERA2_HINT) from None
            hint = f"; {NUMPY_HINT}" if "numpy" in f"{exc.name} {exc}" else ""
            raise CameraError(f"picamera2 is installed but cannot be imported ({exc}){hint}"
                              ) from None
        except (ValueError, AttributeError, RuntimeError) as exc:
            # Pi OS's picamera2 and simplejpeg are built against its numpy 1.x; the venv's
            # numpy 2 shadows it and their import fails with "numpy.dtype size changed".
            raise CameraError(f"picamera2 cannot be imported beside this numpy ({exc}); "
                              f"{NUMPY_HINT}") from None
        try:
            self._cam: Any = Picamera2(camera_num)
            self._cam.configure(self._cam.create_still_configuration())
            self._cam.start()
        except (IndexError, RuntimeError, OSError) as exc:
            raise CameraError(f"{NO_CAMERA_HINT} ({type(exc).__name__}: {exc})") from None
        time.sleep(warmup)
        self.focused = self.focus() if autofocus else None
        self.locked = self.lock_exposure() if lock_exposure else {}

    def focus(self) -> bool | None:
        """One autofocus cycle; None when the camera has no autofocus (fixed focus), else
        whether it reported success (a film on a light box has enough contrast)."""
        if "AfMode" not in getattr(self._cam, "camera_controls", {}):
            return None
        try:
            self._cam.set_controls({"AfMode": 1})  # 1 = auto: focus on request, then hold
            return bool(self._cam.autofocus_cycle())
        except (RuntimeError, OSError):
            return False

    def lock_exposure(self) -> dict[str, Any]:
        """Fix exposure time, gain and colour gains at what auto-exposure settled on, so
        later frames of the series do not drift; returns the locked values."""
        try:
            meta = self._cam.capture_metadata()
        except (RuntimeError, OSError):
            return {}
        controls: dict[str, Any] = {"AeEnable": False, "AwbEnable": False}
        for key in ("ExposureTime", "AnalogueGain", "ColourGains"):
            if meta.get(key) is not None:
                controls[key] = meta[key]
        try:
            self._cam.set_controls(controls)
        except (RuntimeError, OSError):
            return {}
        return controls

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
        try:
            with collected_warnings():  # a huge picture is refused, not warned of
                with Image.open(path) as img:
                    if img.width * img.height > DEFAULT_MAX_PIXELS:
                        raise ValueError("too many pixels; possible pixel bomb")
                    img.load()
                    return img.copy()
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise CameraError(f"fake camera: {path}: not a readable picture ({reason})"
                              ) from None

    def close(self) -> None:
        pass


def open_camera(fake: str | None = None, warmup: float = 1.0, autofocus: bool = True,
                lock_exposure: bool = True) -> CameraSource:
    """The fake camera if asked for (argument or environment), else the Pi camera."""
    fake = fake or os.environ.get(FAKE_CAMERA_ENV)
    if fake:
        return FakeCameraSource(fake)
    return Picamera2Source(warmup=warmup, autofocus=autofocus, lock_exposure=lock_exposure)


@dataclass(frozen=True)
class SaveOptions:
    """How captures are kept: JPEG (default) or PNG, long side capped (0 = full size)."""

    format: str = "jpeg"  # "jpeg" or "png"
    quality: int = 90
    max_side: int = 2048

    @property
    def suffix(self) -> str:
        return ".jpg" if self.format == "jpeg" else ".png"


def capture_name(now: _dt.datetime | None = None, suffix: str = ".jpg") -> str:
    now = now or _dt.datetime.now()
    return f"capture-{now:%Y%m%d-%H%M%S-%f}{suffix}"


def _fit(img: Image.Image, opts: SaveOptions) -> Image.Image:
    """Downscale to the long-side cap and into a mode the format can store."""
    if opts.max_side and max(img.size) > opts.max_side:
        scale = opts.max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.LANCZOS)
    if img.mode.startswith("I"):  # 16-bit gray: keep the top 8 bits
        import numpy as np

        img = Image.fromarray((np.asarray(img).astype(np.int64) >> 8).clip(0, 255)
                              .astype(np.uint8))
    keep = ("L", "RGB") if opts.format == "jpeg" else ("1", "L", "LA", "P", "RGB", "RGBA")
    if img.mode not in keep:
        img = img.convert("L" if img.mode in ("1", "LA") and opts.format == "jpeg" else "RGB")
    return img


def save_capture(img: Image.Image, folder: str | Path,
                 opts: SaveOptions = SaveOptions()) -> Path:
    """Save under a timestamped name and fsync, before anything can go wrong.

    Written to a temp name and renamed, so a pulled plug leaves a whole file or none.
    """
    if opts.format not in ("jpeg", "png"):
        raise ValueError(f"save format must be jpeg or png, not {opts.format!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / capture_name(suffix=opts.suffix)
    n = 1
    while path.exists():  # two captures in one microsecond, or a clock step back
        path = folder / f"{path.stem.split('~')[0]}~{n}{opts.suffix}"
        n += 1
    img = _fit(img, opts)

    def save(f: Any) -> None:
        if opts.format == "jpeg":
            img.save(f, format="JPEG", quality=opts.quality)
        else:
            img.save(f, format="PNG", compress_level=1)  # fast on a Pi; lossless

    return atomic_write(path, save)
