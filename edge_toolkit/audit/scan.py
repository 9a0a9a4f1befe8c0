"""Find every file of a dataset folder and read each one once: hash, header, pixels, signature.

The audit must accept any subset of train/val/test (the original Kaggle data has no val/) and
report unreadable or unexpected files and folders rather than stop, so this does not use
`data.discover` (which insists on a usable training set and carves a validation split);
it reuses its split-folder rule and class-name mapping instead. Files are hashed first;
pixels are decoded once per distinct content, downscaled early (`Image.draft`), in a thread
pool (PIL and hashlib release the GIL).
"""

from __future__ import annotations

import errno
import io
import os
import stat
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
from edge_toolkit.data import SPLITS, DatasetError, class_id, split_folders
from edge_toolkit.dicom import is_dicom
from edge_toolkit.files import kind_of, read_regular, shown
from edge_toolkit.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    ImageWarning,
    collected_warnings,
    is_image_file,
    is_image_name,
    open_image,
)

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
    warning: str | None = None  # the loader's warning (e.g. a JPEG missing its end marker)

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
    outside: list[str] = field(default_factory=list)  # files outside any class folder
    unread_folders: list[dict[str, str]] = field(default_factory=list)  # folder, split, reason

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if any(r.split == s for r in self.records)]

    @property
    def partial_splits(self) -> list[str]:
        """Splits with a folder that could not be listed: what was read is not all of them."""
        return [s for s in SPLITS if any(f["split"] == s for f in self.unread_folders)]


@dataclass
class Listing:
    """What a folder walk found, before any file is read."""

    records: list[Record] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # not image files by name
    outside: list[str] = field(default_factory=list)  # files directly under a split folder
    unknown: list[str] = field(default_factory=list)  # class folders with unrecognised names
    unread_folders: list[dict[str, str]] = field(default_factory=list)  # folder, split, reason


def list_dataset(root: Path) -> Listing:
    """Every file under `root`'s split and class folders, without reading one.

    Split folders come from `data.split_folders` (the rule every command uses: `val/` and
    `valid/` together are refused). A split folder that cannot be listed stops the audit; a
    class folder or subfolder that cannot be listed is recorded (its split is then only
    partly read), and so is every image-named entry that is not a readable regular file.
    """
    if not root.is_dir():
        raise AuditError(f"{shown(root)}: no such dataset folder")
    try:
        split_dirs = split_folders(root)
    except DatasetError as exc:
        raise AuditError(str(exc)) from None
    except OSError as exc:
        raise AuditError(f"{shown(root)}: cannot read folder ({_os_reason(exc)})") from None
    if not split_dirs:
        found = sorted(d.name for d in root.iterdir() if d.is_dir())
        raise AuditError(f"{root}: no train/, val/ or test/ folder; found {found or 'no folders'}."
                         " Expected DATA/{train,val,test}/<class>/<image files>.")
    out = Listing()
    for split, sdir in split_dirs.items():
        try:
            entries = sorted(sdir.iterdir())
        except OSError as exc:
            raise AuditError(f"{shown(sdir)}: cannot read folder ({_os_reason(exc)})") from None
        for entry in entries:
            rel_entry = entry.relative_to(root).as_posix()
            if entry.name.startswith(".") and entry.is_dir():
                continue
            if not entry.is_dir():
                out.outside.append(rel_entry)  # no class folder: no label
                continue
            label = class_id(entry.name)
            if label is None:
                out.unknown.append(rel_entry)
                continue
            found: list[Record] = []
            _walk(entry, root, Record(entry, "", split, label, entry.name), found, out)
            out.records += sorted(found, key=lambda r: r.path)
    return out


def _walk(folder: Path, root: Path, proto: Record, found: list[Record], out: Listing) -> None:
    """Add the files under `folder` (recursively) as records like `proto`.

    os.scandir, not rglob: rglob skips a folder it cannot read without a word. Linked
    folders are not followed (as `data.discover` does not), so a link loop cannot recurse.
    """
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as exc:
        out.unread_folders.append({"folder": folder.relative_to(root).as_posix(),
                                   "split": proto.split, "reason": _os_reason(exc)})
        return
    for e in entries:
        p = Path(e.path)
        try:
            if e.is_dir(follow_symlinks=False):
                _walk(p, root, proto, found, out)
                continue
        except OSError:
            pass
        problem = _not_a_file(p)
        if problem == "folder":  # a link to a folder: not followed
            continue
        rel = p.relative_to(root).as_posix()
        if (is_image_name(p) if problem else is_image_file(p)):
            found.append(Record(p, rel, proto.split, proto.label, proto.class_folder,
                                error=problem))
        else:
            out.ignored.append(rel)


def _not_a_file(path: Path) -> str | None:
    """Why `path` (links followed) is not a readable regular file, or None; "folder" for a
    link to a folder. Only stat() is used: opening a FIFO would block."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        if path.is_symlink() and exc.errno == errno.ENOENT:
            return "broken symbolic link (its target does not exist)"
        return _os_reason(exc)
    if stat.S_ISDIR(mode):
        return "folder"
    if not stat.S_ISREG(mode):
        return f"is {kind_of(mode)}, not a regular file"
    return None


def _os_reason(exc: OSError) -> str:
    """A short reason for an OSError ('permission denied'), without the path."""
    if isinstance(exc, PermissionError):
        return "permission denied"
    return (exc.strerror or exc.__class__.__name__).lower()


def _decode(data: bytes, path: Path) -> tuple[Image.Image, dict[str, object]]:
    """Grayscale image (JPEG drafted down) and header facts; ImageLoadError with a reason.

    The bytes are tried first (drafted small, fast); anything that fails there goes through
    the shared loader, which knows DICOM and damaged files and refuses a picture over the
    pixel cap (checked here from the header, before anything is decoded).
    """
    try:
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
    if is_dicom(path):
        return gray, _dicom_head(path, gray)
    head = {"format": None, "mode": gray.mode, "width": gray.width, "height": gray.height}
    try:  # it decoded after all: the header from the bytes (PIL reads it lazily)
        with Image.open(io.BytesIO(data)) as img:
            head["format"], head["mode"] = img.format, img.mode
    except Exception:  # noqa: BLE001 - the decoded picture's facts stand in
        pass
    return gray, head


def _dicom_head(path: Path, gray: Image.Image) -> dict[str, object]:
    """Header facts of a DICOM file from its own tags (PIL cannot open DICOM): the stored
    size and photometric interpretation with bit depth; the decoded picture's size where a
    tag is missing (the picture may be reduced, so the tags are preferred)."""
    head: dict[str, object] = {"format": "DICOM", "mode": "L", "width": gray.width,
                               "height": gray.height}
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        head["width"], head["height"] = int(ds.Columns), int(ds.Rows)
        head["mode"] = f"{ds.PhotometricInterpretation} {int(ds.BitsStored)}-bit"
    except Exception:  # noqa: BLE001 - it decoded; the picture's own facts are enough
        pass
    return head


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

    Without `decode` only exact duplicates can be found (and unreadable files other than
    empty ones go unnoticed), but it is as fast as reading the files. `samples` replaces the
    folder listing with a caller's own (path, label, split) assignment.
    """
    t0 = time.perf_counter()
    root = Path(root)
    listing = (list_dataset(root) if samples is None
               else Listing(records_from_samples(root, samples)))
    records = listing.records
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
        if rec.error is None:
            data = _read_bytes(rec)
            with lock:
                first = data is not None and claimed.setdefault(str(rec.sha256), i) == i
            if first and rec.error is None and thumbs is not None:
                with collected_warnings() as caught:  # this worker's own warnings only
                    crop = _read_pixels(rec, data or b"", thumbs[i])
                _keep_warnings(rec, caught)
                if crop is not None:
                    crops[i] = crop
        if progress is not None:
            with lock:
                done[0] += 1
                progress(done[0], n)

    # on Ctrl-C, Executor.map cancels the files not started yet
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
    return Scan(root, records, sigs, crop_sigs, nonsquare, listing.ignored, listing.unknown,
                class_folders, time.perf_counter() - t0, outside=listing.outside,
                unread_folders=listing.unread_folders)


def _read_bytes(rec: Record) -> bytes | None:
    """The file's bytes (its sha256 set), or None with `rec.error` set. Only a regular file
    is read (a FIFO swapped in after the listing would block); empty is unreadable."""
    try:
        data = read_regular(rec.path)
    except OSError:
        rec.error = _reason(rec.path)
        return None
    rec.sha256 = sha256_bytes(data)
    if not data:
        rec.error = "empty file (0 bytes)"
    return data


def _keep_warnings(rec: Record, caught: list[warnings.WarningMessage]) -> None:
    """The loader's notes (a JPEG missing its end marker, a multi-frame DICOM) on the record
    they are about; Pillow's pixel-bomb warning is dropped (the loader refused that file
    already); anything else is warned again."""
    for w in caught:
        if issubclass(w.category, ImageWarning):
            text = str(w.message)
            prefix = f"{rec.path}: "
            text = text[len(prefix):] if text.startswith(prefix) else text
            rec.warning = f"{rec.warning}; {text}" if rec.warning else text
        elif not issubclass(w.category, Image.DecompressionBombWarning):
            warnings.warn(w.message, w.category if not isinstance(w.message, Warning)
                          else None, stacklevel=2)


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
    except Exception as exc:  # noqa: BLE001 - one file the loader trips on must not stop a batch
        rec.error = f"cannot decode ({exc.__class__.__name__}: {exc})"
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
