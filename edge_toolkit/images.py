"""Safe image decoding: every common file kind in, one grayscale picture out, or a clear error.

X-rays are grayscale, so every input (8/16-bit, RGB, RGBA, palette, CMYK, EXIF-rotated) is
reduced to one 8-bit luminance image here; the model's channel count is applied later, in
`edge_toolkit.preprocess`. Errors are `ImageLoadError` with a one-line reason, never a
traceback, so a batch can report the file and go on.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edge_toolkit.files import kind_of

DEFAULT_MAX_PIXELS = 50_000_000  # a 7071x7071 film scan; anything bigger is a pixel bomb
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ImageLoadError(Exception):
    """A file could not be turned into an image; str() is a one-line reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_image_name(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def to_luminance(img: Image.Image) -> Image.Image:
    """Reduce any PIL mode to 8-bit 'L', scaling 16/32-bit data by its own range."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if img.mode != "F" and hi > 255:
            # Scale by the smallest bit depth that holds the data (12-bit films stored in
            # 16-bit PNGs are common), so a dark film stays dark and a bright one bright.
            full = float(2 ** int(np.ceil(np.log2(hi + 1))) - 1)
            arr = arr / full * 255.0
        elif img.mode == "F":
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


def orient(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; untagged images pass through without a copy."""
    if img.getexif().get(0x0112, 1) in (0, 1):
        return img
    return ImageOps.exif_transpose(img)


def open_image(img_or_path: str | Path | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS
               ) -> Image.Image:
    """Decode a file (or take a PIL image), apply EXIF orientation, return 8-bit grayscale."""
    if isinstance(img_or_path, Image.Image):
        return to_luminance(orient(img_or_path))
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
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageLoadError(
                        path, f"too many pixels ({w}x{h} > {max_pixels:,}); possible pixel bomb")
                img.load()
                return to_luminance(orient(img))
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
