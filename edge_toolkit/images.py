"""Safe image decoding: every common file kind in, one grayscale picture out, or a clear error.

X-rays are grayscale, so every input (8/16-bit, RGB, RGBA, palette, CMYK, EXIF-rotated) is
reduced to one 8-bit luminance image here; the model's channel count is applied later, in
`edge_toolkit.preprocess`. Errors are `ImageLoadError` with a one-line reason, never a
traceback, so a batch can report the file and go on.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edge_toolkit.files import kind_of

DEFAULT_MAX_PIXELS = 50_000_000  # a 7071x7071 film scan; anything bigger is a pixel bomb
WORK_SIZE = 1024  # large images are decoded with their short side reduced to about this
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".dcm",
                  ".dicom")


class ImageWarning(UserWarning):
    """A file loaded, but something about it deserves a line on stderr."""


# Each ImageWarning names its file: every one is shown, not only the first from a line of
# code (Python's default), so a second read of the same file still says what it said.
warnings.filterwarnings("always", category=ImageWarning)


class ImageLoadError(Exception):
    """A file could not be turned into an image; str() is a one-line reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class _Router:
    """The one process-wide `warnings.showwarning` hook behind `collected_warnings`.

    `warnings.catch_warnings` swaps process-wide state: entered per file in worker threads,
    one thread's recorder catches another's warnings, and leaving it out of order leaves a
    dead recorder in place for good. Here a thread collects only its own warnings (a
    thread-local sink), while the hook is installed, under a lock, for as long as any
    thread collects, and the warnings of threads that do not collect go where they went."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.lock = threading.Lock()
        self.users = 0
        self.shown: object = None  # the showwarning in place when the hook went in

    def show(self, message: Warning | str, category: type[Warning], filename: str,
             lineno: int, file: object = None, line: str | None = None) -> None:
        sink = getattr(self.local, "sink", None)
        if sink is not None:
            sink.append(warnings.WarningMessage(message, category, filename, lineno, file,
                                                line))
            return
        shown = self.shown if self.shown != self.show else None
        (shown or warnings._showwarning_orig)(  # type: ignore[attr-defined,operator]
            message, category, filename, lineno, file, line)

    def enter(self) -> None:
        with self.lock:
            current = warnings.showwarning
            if current != self.show:  # ours may be back from another thread's catch_warnings:
                self.shown = current  # then the hook it wraps stays the one saved before
                warnings.showwarning = self.show
            self.users += 1

    def leave(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0 and warnings.showwarning == self.show:
                warnings.showwarning = self.shown  # type: ignore[assignment]


_ROUTER = _Router()


@contextmanager
def collected_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Warnings raised in this thread while inside are collected in the list, not shown;
    other threads' are untouched. Safe in a thread pool, unlike `warnings.catch_warnings`
    (whose use in another thread meanwhile, itself unsafe, can still bypass it)."""
    _ROUTER.enter()
    outer = getattr(_ROUTER.local, "sink", None)
    sink: list[warnings.WarningMessage] = []
    _ROUTER.local.sink = sink
    try:
        yield sink
    finally:
        _ROUTER.local.sink = outer
        _ROUTER.leave()


def note(text: str) -> None:
    """An ImageWarning about a file: straight into this thread's `collected_warnings` list
    when it collects (so a station's or an audit's notes never depend on the process's
    warning filters, which a notebook may set to "ignore"), else a warning."""
    message = ImageWarning(text)
    sink = getattr(_ROUTER.local, "sink", None)
    if sink is not None:
        sink.append(warnings.WarningMessage(message, ImageWarning, __file__, 0))
    else:
        warnings.warn(message, stacklevel=3)


def is_image_name(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def has_dicom_preamble(path: str | Path) -> bool:
    """True when bytes 128..132 are `DICM` (a DICOM Part 10 file, whatever its name)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_image_file(path: str | Path) -> bool:
    """What a folder walk takes: an image name, or a file with no image suffix that carries
    DICOM's preamble (PACS exports name files `IM000001`). DICOMDIR, the index of such an
    export, has the preamble too but no picture."""
    if is_image_name(path):
        return True
    try:  # only a regular file is opened: a FIFO would block the walk forever
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
    except OSError:
        return False
    return Path(path).name.upper() != "DICOMDIR" and has_dicom_preamble(path)


def to_luminance(img: Image.Image, levels: tuple[float, float] | None = None) -> Image.Image:
    """Reduce any PIL mode to 8-bit 'L', scaling 16/32-bit data by its own range.

    `levels` (as `integer_levels` gives them) stand in for the image's own when `img` is one
    strip of a larger picture, so every strip is scaled alike.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        offset, top = levels if levels is not None else _levels_of(arr)
        # Scale by the smallest bit depth that holds the data (12-bit films stored in
        # 16-bit PNGs are common), so a dark film stays dark and a bright one bright.
        full = float(2 ** int(np.ceil(np.log2(top + 1))) - 1) if top > 255 else 255.0
        arr = (arr - offset) / full * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = levels if levels is not None else (float(arr.min()), float(arr.max()))
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent areas become black: the background of a radiograph.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    if img.mode == "CMYK":
        return img.convert("RGB").convert("L")
    if img.mode != "L":
        return img.convert("L")
    return img


def _levels_of(arr: np.ndarray, low: float | None = None) -> tuple[float, float]:
    """(offset, top) of integer pixel data: signed data is shifted so its lowest value
    (`low`, else the array's) is black, and the top is the 99.9th percentile, so a few
    burned-in annotation pixels at the format's maximum do not darken the whole film."""
    offset = min(float(arr.min()) if low is None else low, 0.0)
    return offset, float(np.percentile(arr, 99.9)) - offset


def integer_levels(img: Image.Image) -> tuple[float, float]:
    """`to_luminance`'s levels for a whole 16/32-bit picture, from a subsample of about
    512 px a side (a full-size float copy of a 7000x7000 film is 400 MB); 'F' keeps its
    exact extrema."""
    lo, hi = img.getextrema()
    if img.mode == "F":
        return float(lo), float(hi)
    w, h = img.size
    step = max(1, max(w, h) // 512)
    sample = np.asarray(img.resize((max(1, w // step), max(1, h // step)),
                                   Image.Resampling.NEAREST), dtype=np.float64)
    return _levels_of(sample, low=float(lo))


def reduce_factor(width: int, height: int, work_size: int = WORK_SIZE) -> int:
    """The integer factor that brings the short side down to about `work_size` (1 = keep)."""
    return max(1, min(width, height) // work_size)


def reduced_luminance(img: Image.Image, factor: int) -> Image.Image:
    """A loaded image -> 8-bit 'L' shrunk by `factor` (box average), converted strip by strip.

    Converting a 7000x7000 16-bit film to floats at full size takes about 400 MB; a strip of
    rows at a time keeps every copy small, so only the decoded picture itself is full size.
    """
    if factor <= 1:
        return to_luminance(img)
    if img.mode == "I;16B":  # big-endian 16-bit (some TIFFs): crop, reduce and getextrema
        img = img.convert("I")  # refuse it ("image has wrong mode")
    levels = integer_levels(img) if img.mode in ("I;16", "I;16B", "I;16L", "I", "F") else None
    w, h = img.size
    out = Image.new("L", (-(-w // factor), -(-h // factor)))
    step = factor * max(1, 1_000_000 // (w * factor))  # about 1 Mpx per strip
    for top in range(0, h, step):
        strip = to_luminance(img.crop((0, top, w, min(h, top + step))), levels)
        out.paste(strip.reduce(factor), (0, top // factor))
    return out


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def orient(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; untagged images pass through without a copy."""
    if img.getexif().get(0x0112, 1) in (0, 1):
        return img
    return ImageOps.exif_transpose(img)


def open_image(img_or_path: str | Path | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS
               ) -> Image.Image:
    """Decode a file (or take a PIL image), apply EXIF orientation, return 8-bit grayscale.

    Large pictures come back with their short side reduced to about `WORK_SIZE` pixels (far
    more than any model input), decoded small where the format allows (JPEG draft mode), so
    memory stays bounded (issue 12). DICOM files go through `edge_toolkit.dicom`. A JPEG
    that lacks only its end marker loads with an `ImageWarning`; one whose image data is cut
    short is an error.
    """
    if isinstance(img_or_path, Image.Image):  # a notebook's picture: the same limits
        img = img_or_path
        w, h = img.size
        if w * h > max_pixels:
            raise ImageLoadError("<image>", f"too many pixels ({w}x{h} > {max_pixels:,})")
        factor = reduce_factor(w, h)
        return to_luminance(orient(img)) if factor == 1 else reduced_luminance(orient(img),
                                                                              factor)
    path = Path(img_or_path)
    try:
        if path.is_symlink() and not path.exists():
            raise ImageLoadError(path, "broken symbolic link")
        if not path.exists():
            raise ImageLoadError(path, "no such file")
        if path.is_dir():
            raise ImageLoadError(path, "is a directory")
        if not path.is_file():  # a FIFO would block the decoder forever
            raise ImageLoadError(path, f"is {kind_of(path.stat().st_mode)}, not a regular file")
        if not os.access(path, os.R_OK):
            raise ImageLoadError(path, "permission denied")
        if path.stat().st_size == 0:
            raise ImageLoadError(path, "empty file (0 bytes)")
        from edge_toolkit.dicom import is_dicom, read_dicom

        if is_dicom(path):  # .dcm, or a suffix-less file with the DICM preamble
            return read_dicom(path, max_pixels)
        with collected_warnings() as caught:
            with Image.open(path) as img:
                out = _decode(img, path, max_pixels)
        reissue(caught)
        return out
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image file (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageLoadError(path, "too many pixels; possible pixel bomb") from None
    except PermissionError:
        raise ImageLoadError(path, "permission denied") from None
    except OSError as exc:
        msg = str(exc) or exc.__class__.__name__
        if "truncated" in msg.lower():
            msg = "truncated or corrupt image data"
        raise ImageLoadError(path, msg) from None
    except (ValueError, SyntaxError, MemoryError) as exc:
        raise ImageLoadError(path, f"cannot decode ({exc.__class__.__name__}: {exc})") from None


def reissue(caught: list[warnings.WarningMessage]) -> None:
    """Warnings collected during a decode, passed on in the caller's thread: notes about the
    file as notes, anything else warned again. Pillow's pixel-bomb warning is dropped: the
    size checks (`_decode`, and Pillow's own error at twice its limit) refuse what is too
    big whatever the warning filters say."""
    for w in caught:
        if issubclass(w.category, Image.DecompressionBombWarning):
            continue
        if isinstance(w.message, ImageWarning):
            note(str(w.message))
        else:
            warnings.warn(w.message, w.category if not isinstance(w.message, Warning) else None,
                          stacklevel=3)


def _decode(img: Image.Image, path: Path, max_pixels: int) -> Image.Image:
    """An opened file -> reduced, oriented 8-bit grayscale (errors propagate to the caller)."""
    w, h = img.size
    if w * h > max_pixels:
        raise ImageLoadError(path, f"too many pixels ({w}x{h} > {max_pixels:,}); possible "
                                   "pixel bomb")
    frames = getattr(img, "n_frames", 1) if img.format != "MPO" else 1  # MPO: a phone
    if frames > 1:  # photo's extra frames; a multi-page TIFF or a GIF: say which was read
        note(f"{path}: {frames} pictures in one file; using the first")
        img.seek(0)  # counting the frames moved through the file
    factor = reduce_factor(w, h)
    draft = None
    if img.format == "JPEG" and factor > 1:  # libjpeg decodes at 1/2, 1/4 or 1/8 directly
        draft = ("L" if img.mode in ("L", "RGB") else img.mode, (w // factor, h // factor))
        img.draft(*draft)
    try:
        img.load()
    except OSError as exc:
        if img.format != "JPEG" or "truncated" not in str(exc).lower():
            raise
        img = _without_end_marker(path, draft)
    factor = reduce_factor(*img.size)
    if factor == 1:
        return to_luminance(orient(img))
    orientation = img.getexif().get(0x0112, 1)
    out = reduced_luminance(img, factor)
    return out.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else out


def _without_end_marker(path: Path, draft: tuple[str, tuple[int, int]] | None) -> Image.Image:
    """Decode a JPEG whose end-of-image marker is missing, if that is all that is missing.

    libjpeg fills a scan that runs out of data with flat blocks, so a cut-short file and one
    missing only its last two bytes both "decode". Decoding twice, with different filler bytes
    before the end marker, tells them apart: complete scan data ignores the filler, a cut-short
    scan decodes it into different pixels.
    """
    data = path.read_bytes()
    decoded = []
    for filler in (b"\x00" * 64, b"\x55" * 64):
        img = Image.open(io.BytesIO(data + filler + b"\xff\xd9"))
        if draft is not None:
            img.draft(*draft)
        img.load()
        decoded.append(img)
    if decoded[0].tobytes() != decoded[1].tobytes():
        raise ImageLoadError(path, "truncated or corrupt image data")
    note(f"{path}: JPEG end marker missing; the image data is complete, loaded anyway")
    return decoded[0]
