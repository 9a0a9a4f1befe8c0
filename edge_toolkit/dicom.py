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
import logging
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edge_toolkit.images import (  # has_dicom_preamble: re-exported, it was defined here
    ImageLoadError,
    ImageWarning,
    collected_warnings,
    has_dicom_preamble,
    note,
    reduce_factor,
    to_luminance,
)

DICOM_SUFFIXES = (".dcm", ".dicom")
DICOMDIR = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage: an index, no picture
INSTALL_HINT = "install the DICOM extra: pip install 'fracture-edge-toolkit[dicom]'"
# What a compressed transfer syntax needs when pydicom cannot decode it with what is
# installed: pip commands, each runnable as printed; only permissively licensed decoders.
DECODER_HINTS = {
    "1.2.840.10008.1.2.4.50": ("pillow",),  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": ("python-gdcm",),  # JPEG Extended, 12-bit samples
    "1.2.840.10008.1.2.4.57": ("python-gdcm",),  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": ("python-gdcm",),  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": ("pyjpegls", "python-gdcm"),  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": ("pyjpegls", "python-gdcm"),  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": ("pylibjpeg pylibjpeg-openjpeg", "python-gdcm"),  # JPEG 2000
    "1.2.840.10008.1.2.4.91": ("pylibjpeg pylibjpeg-openjpeg", "python-gdcm"),
    "1.2.840.10008.1.2.4.201": ("pylibjpeg pylibjpeg-openjpeg",),  # HTJ2K
    "1.2.840.10008.1.2.4.202": ("pylibjpeg pylibjpeg-openjpeg",),
    "1.2.840.10008.1.2.4.203": ("pylibjpeg pylibjpeg-openjpeg",),
    "1.2.840.10008.1.2.5": ("pylibjpeg pylibjpeg-rle",),  # RLE (pydicom's own decoder too)
}
# Codestream markers that start a frame header and carry its size: JPEG's SOF0..SOF15
# (C4, C8 and CC are other segments) and JPEG-LS's SOF55.
_SOF_MARKERS = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7})


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

    The returned image's `info["study"]` is `study_hash` of the StudyInstanceUID (or absent)
    and `info["dicom_modality"]` the Modality tag (the input gate refuses what is not a plain
    radiograph). pydicom's own warnings quote tag values, which may be identifiers: they
    become one `ImageWarning` that counts them and shows none.
    """
    path = Path(path)
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise ImageLoadError(path, f"DICOM file, but pydicom is not installed; {INSTALL_HINT}"
                             ) from None
    # this thread's warnings only (safe in a thread pool); pydicom's notes are counted from
    # its log, which every one of them reaches whatever the warning filters say
    with collected_warnings() as caught, _PYDICOM_NOTES.counting() as logged:
        try:
            ds = pydicom.dcmread(path, force=path.suffix.lower() in DICOM_SUFFIXES)
        except InvalidDicomError:
            raise ImageLoadError(path, "not a valid DICOM file") from None
        except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError,
                Warning) as exc:  # a Warning: filters set to "error" (it quotes values)
            raise ImageLoadError(path, f"damaged DICOM file ({type(exc).__name__})") from None
        img = dataset_to_image(ds, max_pixels, path)
    _pass_on(caught, logged[0], path)
    return img


def dataset_to_image(ds: Any, max_pixels: int, name: str | Path = "<dataset>") -> Image.Image:
    """A pydicom Dataset (read by the caller, e.g. in a notebook) -> the 8-bit picture the
    model sees, through the same display pipeline as `read_dicom`; raises ImageLoadError.
    A dataset without a transfer syntax (an old file without file meta) gets one set on it,
    from how it was read; pydicom's own warnings reach the caller as pydicom gives them
    (`read_dicom` is what counts them without quoting values)."""
    path = Path(name)
    if "PixelData" not in ds:
        raise ImageLoadError(path, _no_image_reason(ds))
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        photometric = str(ds.PhotometricInterpretation).upper().strip()
    except (AttributeError, TypeError, ValueError):
        raise ImageLoadError(path, "damaged DICOM file (image size or photometric "
                                   "interpretation missing)") from None
    if rows * cols > max_pixels:
        raise ImageLoadError(path, f"too many pixels ({cols}x{rows} > {max_pixels:,}); "
                                   "possible pixel bomb")
    frames = _frames(ds)
    if frames > 1:
        note(f"{path}: multi-frame DICOM ({frames} frames); using the first")
    _set_transfer_syntax(ds)
    _check_codestream(ds, path, rows, cols, frames)
    arr = _first_frame(ds, path, frames)
    try:
        img = _to_gray(ds, arr, photometric)
    except (AttributeError, TypeError, ValueError, IndexError, KeyError) as exc:
        raise ImageLoadError(path, f"cannot apply the DICOM display settings ({exc})"
                             ) from None
    study = study_hash(ds.get("StudyInstanceUID"))
    if study:
        img.info["study"] = study
    img.info["dicom_modality"] = str(ds.get("Modality", "") or "").upper().strip()
    return img


def _pass_on(caught: list[warnings.WarningMessage], logged: int, path: Path) -> None:
    """Pass on this module's own notes; pydicom's (counted from its log, or from the
    warnings that got through the filters, whichever saw more) become one note that quotes
    no value. Pillow's pixel-bomb warning is dropped: the size checks decide."""
    others = 0
    for w in caught:
        if isinstance(w.message, ImageWarning):
            note(str(w.message))
        elif not issubclass(w.category, Image.DecompressionBombWarning):
            others += 1
    if max(others, logged):
        note(f"{path}: {max(others, logged)} DICOM value(s) do not follow the standard; read "
             "anyway")


class _LogCounter(logging.Handler):
    """Counts the "pydicom" logger's warnings in the threads that ask (`counting`): pydicom
    logs each note it also warns of, and a log record passes no warning filter."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.local = threading.local()
        self.attached = False
        self.lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        count = getattr(self.local, "count", None)
        if count is not None and record.levelno == logging.WARNING:  # not a decoder's error
            count[0] += 1

    @contextmanager
    def counting(self) -> Iterator[list[int]]:
        with self.lock:
            if not self.attached:
                logging.getLogger("pydicom").addHandler(self)
                self.attached = True
        outer = getattr(self.local, "count", None)
        self.local.count = count = [0]
        try:
            yield count
        finally:
            self.local.count = outer


_PYDICOM_NOTES = _LogCounter()


def _no_image_reason(ds: Any) -> str:
    """Why a file without pixel data is refused: its SOP class names what it holds (an SR,
    a DICOMDIR); an image class without pixels, or no class at all, is a damaged file."""
    sop = ds.get("SOPClassUID")
    meta = getattr(ds, "file_meta", None)
    if sop is None and meta is not None and meta.get("MediaStorageSOPClassUID") == DICOMDIR:
        sop = meta.MediaStorageSOPClassUID
    name = str(getattr(sop, "name", sop) or "")
    if sop is None or ("Image" in name and "Storage" in name):
        return "damaged or incomplete DICOM file (no image data found)"
    return f"DICOM file holds no image ({name})"


def _frames(ds: Any) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _set_transfer_syntax(ds: Any) -> None:
    """A file without file meta (older exports) still says how it was encoded: pydicom
    needs that as a transfer syntax to decode its pixels."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None or little is None:
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _check_codestream(ds: Any, path: Path, rows: int, cols: int, frames: int) -> None:
    """Refuse compressed data that holds a bigger picture than the header says, before
    decoding it: the pixel-bomb check reads the header, the decoder the stream."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None or not getattr(syntax, "is_encapsulated", False):
        return
    from pydicom.encaps import get_frame

    try:
        first = get_frame(ds.PixelData, 0, number_of_frames=frames)
    except Exception:  # damaged encapsulation: the decoder reports it  # noqa: BLE001
        return
    size = codestream_size(first[:65536])
    if size is not None and size[0] * size[1] > rows * cols:
        raise ImageLoadError(path, f"compressed pixel data holds {size[0]}x{size[1]} pixels "
                                   f"but the header says {cols}x{rows}: damaged, or a pixel "
                                   "bomb")


def codestream_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) that a JPEG, JPEG-LS or JPEG 2000 stream declares in its header, or
    None when it is none of them or its header is cut short."""
    j2k = data.find(b"\xff\x4f\xff\x51", 0, 4096)  # SOC then SIZ
    if j2k >= 0 and len(data) >= j2k + 24:
        x, y, x0, y0 = struct.unpack(">IIII", data[j2k + 8:j2k + 24])
        return x - x0, y - y0
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _SOF_MARKERS:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return (width, height) if width and height else None
        elif marker in (0xDA, 0xD9):  # scan data or the end before any frame header
            return None
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            i += 2
        else:
            i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None


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
        if _no_usable_decoder(str(exc)):
            raise ImageLoadError(path, f"compressed DICOM ({name}) needs a decoder that is "
                                       f"not installed: {_install_hint(syntax)}") from None
        if "decompression bomb" in str(exc).lower():
            raise ImageLoadError(path, "too many pixels in the compressed data; possible "
                                       "pixel bomb") from None
        raise ImageLoadError(path, f"damaged DICOM pixel data ({name} could not be "
                                   "decoded)") from None
    except MemoryError:
        raise
    except Exception as exc:  # pydicom raises many kinds for damaged pixel data
        raise ImageLoadError(path, f"damaged DICOM pixel data ({type(exc).__name__})"
                             ) from None
    if arr.ndim == 3 and frames > 1 and arr.shape[-1] not in (3, 4):
        arr = arr[0]
    return arr


def _no_usable_decoder(message: str) -> bool:
    """pydicom's RuntimeError says whether no decoder is installed (or an installed one
    cannot do this variant, as Pillow with 12-bit JPEG) or whether every decoder failed on
    the data: only the first is fixed by installing something."""
    text = message.lower()
    return "missing dependencies" in text or "does not support" in text


def _install_hint(syntax: Any) -> str:
    """Runnable pip commands for a transfer syntax's decoders ('pip install X (or: ...)')."""
    options = DECODER_HINTS.get(str(syntax))
    if not options:
        return "install a decoder pydicom supports for it (pydicom's documentation lists them)"
    first, *rest = (f"pip install {o}" for o in options)
    return first + "".join(f" (or: {r})" for r in rest)


def _to_gray(ds: Any, arr: np.ndarray, photometric: str) -> Image.Image:
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"photometric interpretation {photometric} is not supported")
        if arr.dtype != np.uint8:  # colour with more than 8 bits: scale by its bits stored
            bits = int(ds.get("BitsStored", 16))
            arr = np.clip(np.rint(arr.astype(np.float32) / (2 ** bits - 1) * 255), 0, 255)
        return to_luminance(Image.fromarray(arr.astype(np.uint8), "RGB"))
    arr = _reduce(arr)
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    gray = _voi_lut(values, ds)
    window = _window_settings(ds)
    if gray is None and window is not None:
        gray = _window(values, *window, str(ds.get("VOILUTFunction", "LINEAR")).upper())
    if gray is None:  # no display settings stored: the full range of the values
        lo, hi = float(values.min()), float(values.max())
        gray = (values - lo) / np.float32(hi - lo) if hi > lo else np.zeros_like(values)
    if photometric == "MONOCHROME1":  # low values are white
        gray = 1.0 - gray
    out8 = np.clip(np.rint(gray * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(out8, "L")


def _window_settings(ds: Any) -> tuple[float, float] | None:
    """The first window (centre, width), or None when either is absent or empty."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None or center == "" or width == "":
        return None
    try:
        return _first(center), _first(width)
    except (IndexError, TypeError, ValueError):
        return None


def _voi_lut(values: np.ndarray, ds: Any) -> np.ndarray | None:
    """The first VOI LUT applied to the modality values, mapped to 0..1; None when the file
    stores none (or an empty one). Looked up in numpy: pydicom's `apply_voi` indexes an
    8-bit LUT with 8-bit integers, so every value above 255 wraps around."""
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    item = seq[0]
    if "LUTDescriptor" not in item or "LUTData" not in item:
        return None
    entries, first, bits = (int(v) for v in item.LUTDescriptor[:3])
    entries = entries or 65536
    if first > 32767 and int(ds.get("PixelRepresentation", 0) or 0) == 1:
        first -= 65536  # the first mapped value is signed when the pixels are
    lut = _lut_data(item, ds, entries, bits)
    if lut.size == 0:
        return None
    index = np.clip(np.rint(values - first), 0, lut.size - 1).astype(np.int64)
    return lut[index].astype(np.float32) / np.float32(2 ** _lut_depth(lut, bits) - 1)


def _lut_data(item: Any, ds: Any, entries: int, bits: int) -> np.ndarray:
    """LUTData as integers, whether stored as US values or as OW bytes (in the file's byte
    order; one byte an entry for an 8-bit LUT whose bytes are as many as its entries, plus
    one byte of padding to an even length when that count is odd)."""
    value = item.LUTData
    if isinstance(value, (bytes, bytearray)):
        if bits <= 8 and len(value) in (entries, entries + 1):
            return np.frombuffer(value[:entries], np.uint8).astype(np.int64)
        little = getattr(ds, "original_encoding", (None, True))[1] is not False
        return np.frombuffer(value[:2 * entries], "<u2" if little else ">u2").astype(np.int64)
    values = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") \
        else [value]
    return np.asarray(values[:entries], dtype=np.int64)


def _lut_depth(lut: np.ndarray, bits: int) -> int:
    """The LUT's output depth: its descriptor's (8 to 16), except that a LUT declared 16-bit
    whose values all fit fewer bits (a common mislabel) uses those, as DCMTK does, and values
    beyond the declared depth (invalid) widen it rather than overflow."""
    needed = max(8, int(lut.max()).bit_length())
    depth = min(max(bits, 8), 16)
    if depth == 16 or needed > depth:
        return needed
    return depth


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
