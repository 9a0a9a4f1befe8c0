"""Find every file of a dataset folder and read each one once: hash, header, pixels, signature.

The audit must accept any subset of train/val/test (the original Kaggle data has no val/) and
report unreadable or unexpected files rather than stop, so this does not use
`data.discover` (which insists on a usable training set and carves a validation split);
it reuses its class-name mapping instead. Files are hashed first; pixels are decoded once per
distinct content, downscaled early (`Image.draft`), in a thread pool (PIL and hashlib release
the GIL).
"""

from __future__ import annotations

import io
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edge_toolkit.audit.hashing import (
    THUMB,
    central_thumbnail,
    sha256_bytes,
    signatures,
    thumbnail,
)
from edge_toolkit.data import SPLITS, class_id, split_name
from edge_toolkit.images import DEFAULT_MAX_PIXELS, ImageLoadError, is_image_file, open_image

DRAFT_SIDE = 256  # JPEGs decode at the smallest DCT scale that keeps both sides >= this
_EXIF_ORIENTATION = 0x0112


class AuditError(ValueError):
    """The folder cannot be audited at all (no split folders); the message says what was found."""


@dataclass
class Record:
    """One file of the dataset. Pixel fields are None when the file could not be decoded."""

    path: Path
    rel: str  # path relative to the dataset root, with '/' separators
    split: str
    label: int
    class_folder: str
    sha256: str | None = None
    error: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    mode: str | None = None
    mean: float | None = None
    std: float | None = None

    @property
    def readable(self) -> bool:
        return self.error is None


@dataclass
class Scan:
    """Everything read from a dataset folder; `signatures[i]` belongs to `records[i]`."""

    root: Path
    records: list[Record]
    signatures: np.ndarray | None  # (n, RINGS, HARMONICS) complex64; None for exact-only scans
    # the same for the central square, for non-square images (others: a copy of `signatures`)
    crop_signatures: np.ndarray | None = None
    nonsquare: np.ndarray | None = None  # (n,) bool: the central square differs from the whole
    ignored: list[str] = field(default_factory=list)  # files that are not images by name
    unknown_folders: list[str] = field(default_factory=list)  # class folders not recognised
    class_folders: dict[int, str] = field(default_factory=dict)  # label -> first folder name
    seconds: float = 0.0

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if any(r.split == s for r in self.records)]


def list_dataset(root: Path) -> tuple[list[Record], list[str], list[str]]:
    """(records without content, ignored non-image files, unrecognised folders) under `root`."""
    if not root.is_dir():
        raise AuditError(f"{root}: no such dataset folder")
    split_dirs = sorted((split_name(d.name), d) for d in root.iterdir()
                        if d.is_dir() and split_name(d.name))
    if not split_dirs:
        found = sorted(d.name for d in root.iterdir() if d.is_dir())
        raise AuditError(f"{root}: no train/, val/ or test/ folder; found {found or 'no folders'}."
                         " Expected DATA/{train,val,test}/<class>/<image files>.")
    records: list[Record] = []
    ignored: list[str] = []
    unknown: list[str] = []
    for split, sdir in split_dirs:
        for entry in sorted(sdir.iterdir()):
            rel_entry = entry.relative_to(root).as_posix()
            if entry.is_file():
                ignored.append(rel_entry)  # a file directly under the split: no class
                continue
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            label = class_id(entry.name)
            if label is None:
                unknown.append(rel_entry)
                continue
            for p in sorted(entry.rglob("*")):
                if not p.is_file():
                    continue
                rel = p.relative_to(root).as_posix()
                if is_image_file(p):
                    records.append(Record(p, rel, split, label, entry.name))
                else:
                    ignored.append(rel)
    return records, ignored, unknown


def _decode(data: bytes, path: Path) -> tuple[Image.Image, dict[str, object]]:
    """Grayscale image (JPEG drafted down) and header facts; ImageLoadError with a reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                head: dict[str, object] = {"format": img.format, "mode": img.mode}
                if w * h > DEFAULT_MAX_PIXELS:
                    raise ValueError("too many pixels")
                if img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                    w, h = h, w
                head["width"], head["height"] = w, h
                img.draft("L", (DRAFT_SIDE, DRAFT_SIDE))
                img.load()
                return open_image(img), head
    except Exception:  # noqa: BLE001 - the shared loader below names the reason
        pass
    gray = open_image(path)  # raises ImageLoadError with the project's one-line reason
    with Image.open(path) as img:  # it decoded after all: take the header the slow way
        return gray, {"format": img.format, "mode": img.mode, "width": gray.width,
                      "height": gray.height}


def records_from_samples(root: Path, samples: Iterable[Any]) -> list[Record]:
    """Records for a caller's own split assignment (objects with .path, .label, .split)."""
    out = []
    for s in samples:
        path = Path(s.path)
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            rel = path.as_posix()
        out.append(Record(path, rel, str(s.split), int(s.label), path.parent.name))
    return out


def scan(root: str | Path, decode: bool = True, workers: int | None = None,
         progress: Callable[[int, int], None] | None = None,
         samples: Iterable[Any] | None = None) -> Scan:
    """Hash every image file; with `decode`, also decode each distinct content once.

    Without `decode` only exact duplicates can be found (and unreadable files go unnoticed),
    but it is as fast as reading the files. `samples` replaces the folder listing with a
    caller's own (path, label, split) assignment.
    """
    t0 = time.perf_counter()
    root = Path(root)
    if samples is None:
        records, ignored, unknown = list_dataset(root)
    else:
        records, ignored, unknown = records_from_samples(root, samples), [], []
    class_folders: dict[int, str] = {}
    for r in sorted(records, key=lambda r: SPLITS.index(r.split)):
        class_folders.setdefault(r.label, r.class_folder)
    n = len(records)
    thumbs = np.zeros((n, THUMB, THUMB), np.uint8) if decode else None
    crops: dict[int, np.ndarray] = {}  # central-square thumbnails of non-square images
    claimed: dict[str, int] = {}  # sha256 -> index of the record that decodes it
    lock = threading.Lock()
    done = [0]

    def work(i: int) -> None:
        rec = records[i]
        try:
            data: bytes | None = rec.path.read_bytes()
        except OSError:
            data = None
        if data is None:
            rec.error = _reason(rec.path)
        else:
            rec.sha256 = sha256_bytes(data)
            with lock:
                first = rec.sha256 not in claimed
                if first:
                    claimed[rec.sha256] = i
            if first and thumbs is not None:
                crop = _read_pixels(rec, data, thumbs[i])
                if crop is not None:
                    crops[i] = crop
        if progress is not None:
            with lock:
                done[0] += 1
                progress(done[0], n)

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        list(pool.map(work, range(n)))
    sigs = crop_sigs = nonsquare = None
    if thumbs is not None:
        sigs = signatures(thumbs)
        del thumbs
        crop_sigs = sigs.copy()
        nonsquare = np.zeros(n, bool)
        if crops:
            where = sorted(crops)
            crop_sigs[where] = signatures(np.stack([crops[i] for i in where]))
            nonsquare[where] = True
    # copies share the decoded facts of the first file with their content
    for i, rec in enumerate(records):
        j = claimed.get(rec.sha256) if rec.sha256 else None
        if j is not None and j != i:
            src = records[j]
            for name in ("error", "width", "height", "format", "mode", "mean", "std"):
                setattr(rec, name, getattr(src, name))
            if sigs is not None and crop_sigs is not None and nonsquare is not None:
                sigs[i], crop_sigs[i], nonsquare[i] = sigs[j], crop_sigs[j], nonsquare[j]
    return Scan(root, records, sigs, crop_sigs, nonsquare, ignored, unknown, class_folders,
                time.perf_counter() - t0)


def _reason(path: Path) -> str:
    """The shared loader's one-line reason why a file cannot be read."""
    try:
        open_image(path)
    except ImageLoadError as exc:
        return exc.reason
    except Exception as exc:  # noqa: BLE001 - report, never crash
        return f"cannot read file ({exc.__class__.__name__})"
    return "cannot read file"


def _read_pixels(rec: Record, data: bytes, thumb_out: np.ndarray) -> np.ndarray | None:
    """Fill the record's pixel facts and its thumbnail; return a central-square thumbnail
    when the image is not square (None otherwise, or when it does not decode)."""
    try:
        gray, head = _decode(data, rec.path)
    except ImageLoadError as exc:
        rec.error = exc.reason
        return None
    rec.width, rec.height = int(head["width"]), int(head["height"])  # type: ignore[arg-type]
    rec.format, rec.mode = str(head["format"]), str(head["mode"])
    hist = np.asarray(gray.histogram()[:256], dtype=np.float64)  # C code: no big float copy
    levels = np.arange(256, dtype=np.float64)
    count = max(hist.sum(), 1.0)
    rec.mean = float(hist @ levels / count)
    rec.std = float(np.sqrt(max(hist @ (levels * levels) / count - rec.mean**2, 0.0)))
    thumb_out[:] = thumbnail(gray)
    w, h = gray.size
    return central_thumbnail(gray) if abs(w - h) > 0.01 * max(w, h) else None
