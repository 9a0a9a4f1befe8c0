"""DICOM radiographs (CR/DR exports) in, one 8-bit grayscale picture out, or a clear error.

Needs pydicom (`pip install 'fracture-edge-toolkit[dicom]'`); imported only when a DICOM
file is met, so the device install without it still reads every other format. The display
pipeline is the standard one: modality LUT (rescale slope/intercept), then the VOI LUT or
window centre/width, then MONOCHROME1 inverted, then scaled to 8 bits. Large images are reduced
before any float conversion (issue 12). No patient identifier ever leaves this module: errors
name the file and the problem, and the only identifier a caller gets is a hash of the
StudyInstanceUID.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edge_toolkit.images import (  # has_dicom_preamble: re-exported, it was defined here
    ImageLoadError,
    ImageWarning,
    has_dicom_preamble,
    reduce_factor,
    to_luminance,
)

DICOM_SUFFIXES = (".dcm", ".dicom")
INSTALL_HINT = "install the DICOM extra: pip install 'fracture-edge-toolkit[dicom]'"
# What a compressed transfer syntax needs when pydicom cannot decode it with what is
# installed; only permissively licensed decoders are named.
DECODER_HINTS = {
    "1.2.840.10008.1.2.4.51": "python-gdcm",  # JPEG Extended, 12-bit samples
    "1.2.840.10008.1.2.4.57": "python-gdcm",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": "python-gdcm",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "pyjpegls or python-gdcm",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls or python-gdcm",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.201": "pylibjpeg with pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.4.202": "pylibjpeg with pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg with pylibjpeg-openjpeg",
}


def is_dicom(path: str | Path) -> bool:
    """A `.dcm`/`.dicom` name, or a file without an image suffix that has the preamble."""
    name = str(path).lower()
    if name.endswith(DICOM_SUFFIXES):
        return True
    from edge_toolkit.images import IMAGE_SUFFIXES

    return not name.endswith(IMAGE_SUFFIXES) and has_dicom_preamble(path)


def study_hash(uid: str | None) -> str | None:
    """A short, one-way stand-in for a StudyInstanceUID: groups results by study, names no one."""
    if not uid:
        return None
    return hashlib.sha256(str(uid).encode()).hexdigest()[:16]


def read_dicom(path: str | Path, max_pixels: int) -> Image.Image:
    """Decode the first frame of a DICOM image to 8-bit 'L'; raises ImageLoadError.

    The returned image's `info["study"]` is `study_hash` of the StudyInstanceUID (or absent).
    """
    path = Path(path)
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise ImageLoadError(path, f"DICOM file, but pydicom is not installed; {INSTALL_HINT}"
                             ) from None
    try:
        ds = pydicom.dcmread(path, force=path.suffix.lower() in DICOM_SUFFIXES)
    except InvalidDicomError:
        raise ImageLoadError(path, "not a valid DICOM file") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ImageLoadError(path, f"damaged DICOM file ({type(exc).__name__})") from None
    if "PixelData" not in ds:
        sop = ds.get("SOPClassUID")
        if sop is None:
            raise ImageLoadError(path, "damaged or incomplete DICOM file (no image data found)")
        raise ImageLoadError(path, f"DICOM file holds no image ({getattr(sop, 'name', sop)})")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        photometric = str(ds.PhotometricInterpretation).upper()
    except (AttributeError, TypeError, ValueError):
        raise ImageLoadError(path, "damaged DICOM file (image size or photometric "
                                   "interpretation missing)") from None
    if rows * cols > max_pixels:
        raise ImageLoadError(path, f"too many pixels ({cols}x{rows} > {max_pixels:,}); "
                                   "possible pixel bomb")
    frames = _frames(ds)
    if frames > 1:
        warnings.warn(ImageWarning(f"{path}: multi-frame DICOM ({frames} frames); using the "
                                   "first"), stacklevel=2)
    arr = _first_frame(ds, path, frames)
    try:
        img = _to_gray(ds, arr, photometric)
    except (AttributeError, TypeError, ValueError, IndexError, KeyError) as exc:
        raise ImageLoadError(path, f"cannot apply the DICOM display settings ({exc})"
                             ) from None
    study = study_hash(ds.get("StudyInstanceUID"))
    if study:
        img.info["study"] = study
    return img


def _frames(ds: Any) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _first_frame(ds: Any, path: Path, frames: int) -> np.ndarray:
    """Decode only the first frame, naming the decoder to install when none can."""
    from pydicom.pixels import pixel_array

    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    name = getattr(syntax, "name", None) or str(syntax)
    try:
        arr = pixel_array(ds, index=0 if frames > 1 else None)
    except NotImplementedError:
        raise ImageLoadError(path, f"DICOM transfer syntax {name} is not supported") from None
    except RuntimeError as exc:
        if "missing" in str(exc) or "plugin" in str(exc):
            hint = DECODER_HINTS.get(str(syntax), "a decoder pydicom supports for it")
            raise ImageLoadError(path, f"compressed DICOM ({name}) needs a decoder that is "
                                       f"not installed: pip install {hint}") from None
        raise ImageLoadError(path, f"cannot decode DICOM pixel data ({exc})") from None
    except MemoryError:
        raise
    except Exception as exc:  # pydicom raises many kinds for damaged pixel data
        raise ImageLoadError(path, f"damaged DICOM pixel data ({type(exc).__name__})"
                             ) from None
    if arr.ndim == 3 and frames > 1 and arr.shape[-1] not in (3, 4):
        arr = arr[0]
    return arr


def _to_gray(ds: Any, arr: np.ndarray, photometric: str) -> Image.Image:
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"photometric interpretation {photometric} is not supported")
        if arr.dtype != np.uint8:  # colour with more than 8 bits: scale by its bits stored
            bits = int(ds.get("BitsStored", 16))
            arr = np.clip(arr.astype(np.float32) / (2 ** bits - 1) * 255, 0, 255)
        return to_luminance(Image.fromarray(arr.astype(np.uint8), "RGB"))
    arr = _reduce(arr)
    from pydicom.pixels import apply_modality_lut, apply_voi

    values = apply_modality_lut(arr, ds).astype(np.float32)
    if "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        out = apply_voi(apply_modality_lut(arr, ds), ds, 0).astype(np.float32)
        gray = out / np.float32(2 ** bits - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        gray = _window(values, _first(ds.WindowCenter), _first(ds.WindowWidth),
                       str(ds.get("VOILUTFunction", "LINEAR")).upper())
    else:  # no display settings stored: the full range of the values
        lo, hi = float(values.min()), float(values.max())
        gray = (values - lo) / np.float32(hi - lo) if hi > lo else np.zeros_like(values)
    if photometric == "MONOCHROME1":  # low values are white
        gray = 1.0 - gray
    out8 = np.clip(np.rint(gray * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(out8, "L")


def _first(value: Any) -> float:
    """Window centre/width may hold several values (several presets): use the first."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """The DICOM VOI window (PS3.3 C.11.2.1.2), mapped to 0..1."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / max(width, 1e-6)))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / max(width, 1e-6) + 0.5, 0.0, 1.0)
    width = max(width, 1.0)
    return np.clip((x - (center - 0.5)) / max(width - 1.0, 1e-6) + 0.5, 0.0, 1.0)


def _reduce(arr: np.ndarray) -> np.ndarray:
    """Box-average a large frame strip by strip, keeping its integer type, before the LUTs."""
    factor = reduce_factor(arr.shape[1], arr.shape[0])
    if factor == 1:
        return arr
    h, w = (arr.shape[0] // factor) * factor, (arr.shape[1] // factor) * factor
    out = np.empty((h // factor, w // factor), arr.dtype)
    step = max(1, 1_000_000 // (w * factor))  # output rows per strip: about 1 Mpx read
    for r in range(0, h // factor, step):
        block = arr[r * factor:(r + step) * factor, :w].astype(np.float32)
        block = block.reshape(-1, factor, w // factor, factor).mean(axis=(1, 3))
        out[r:r + step] = np.rint(block).astype(arr.dtype) if arr.dtype.kind in "iu" else block
    return out
