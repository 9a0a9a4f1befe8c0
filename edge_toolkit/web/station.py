"""What the web page does with a picture, without Flask: check it, keep it, classify it, draw
its heatmap, commit it to the history; and take one from the camera.

Order matters for "nothing shown is ever lost": the received bytes, then the display copy and
heat layer, are written and fsynced, then the history row is committed; only then does the
caller render the page. A bad upload raises UploadError with a message for the page and
leaves nothing behind; a data folder that cannot be written at all (read-only, no permission)
raises StorageError, which names the folder, so a submit stops at its first picture. The
model is shared by the server's threads behind one lock (a `Classifier` is not thread-safe;
the interpreter already uses several cores itself).
"""

from __future__ import annotations

import errno
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image

from edge_toolkit import __version__
from edge_toolkit.files import atomic_write, fsync_dir
from edge_toolkit.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    ImageWarning,
    collected_warnings,
    open_image,
)
from edge_toolkit.runtime.classifier import Classifier
from edge_toolkit.runtime.heatmap import explain_image, heat_rgba
from edge_toolkit.web.store import HistoryStore, read_only_mount

DISPLAY_SIDE = 1024  # display copies and heat layers: enough for a tablet, cheap on a Pi
NEAR_THRESHOLD = 0.05  # |p - threshold| below this: the page says the call is borderline
DISCLAIMER = "Decision support for a trained reader, not a diagnosis."
MAX_REFERENCE = 200  # characters of a patient or study reference
UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)  # the folder, not one picture, fails


class UploadError(ValueError):
    """A picture the station will not take; str() is the message the page shows."""


class StorageError(UploadError):
    """The data folder cannot be written at all: every picture after this one would fail the
    same way. str() names the folder and the reason."""


def check_reference(reference: str | None) -> str | None:
    """The reference as stored (stripped; None when blank). One over MAX_REFERENCE raises
    UploadError: a cut patient or study reference would point at another patient or none,
    so it is refused, never shortened."""
    text = (reference or "").strip()
    if len(text) > MAX_REFERENCE:
        raise UploadError(f"The reference is {len(text)} characters long; at most "
                          f"{MAX_REFERENCE} are allowed. Shorten it and submit again.")
    return text or None


@dataclass(frozen=True)
class Limits:
    """Upload caps: bytes per file and pixels per picture (pixel bombs)."""

    max_file_bytes: int = 20 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS


def _remove(paths: tuple[Path, ...]) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


def _without_path(message: str, stored: Path) -> str:
    """A decoder's note about the stored copy, without the server's file name."""
    text = message.replace(f"{stored}: ", "").replace(str(stored), "the picture")
    return text[:1].upper() + text[1:]


def _png_bytes(img: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # fast on a Pi; still lossless
    return buf.getvalue()


def safe_suffix(name: str) -> str:
    """The upload's suffix if it is short and plain (the bytes are stored as received)."""
    suffix = Path(name).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".bin"


def clean_name(name: str | None) -> str:
    """A file name as the user sent it, reduced to its last part and printable characters."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return base[:200] or "upload"


def model_name(clf: Classifier) -> str:
    """What the page calls the model: file name, family and variant."""
    c = clf.card
    return f"{Path(clf.model_path).name} ({c.family}, {c.variant})"


def model_version(clf: Classifier) -> str:
    c = clf.card
    created = f", exported {c.created[:10]}" if c.created else ""
    return f"id {clf.model_id}{created}, edge_toolkit {__version__}"


class Station:
    """The classifier, the history and the picture folders of one running station."""

    def __init__(self, clf: Classifier, data_dir: str | Path, limits: Limits | None = None,
                 camera: Any = None) -> None:
        self.clf = clf
        self.data = Path(data_dir)
        self.limits = limits or Limits()
        self.camera = camera  # () -> CameraSource, or None when there is no camera
        for sub in ("images", "display", "heat"):
            (self.data / sub).mkdir(parents=True, exist_ok=True)
        self.store = HistoryStore(self.data / "history.sqlite")
        self._model_lock = threading.Lock()
        self._decode_lock = threading.Lock()
        self._camera_lock = threading.Lock()
        self.model_name = model_name(clf)
        self.model_version = model_version(clf)

    @property
    def has_camera(self) -> bool:
        return self.camera is not None

    def warnings_for(self, img_size: tuple[int, int], probability: float | None) -> list[str]:
        """What the reader should know about this result beyond its label."""
        out = []
        w, h = img_size
        size = self.clf.config.size
        # letterboxed ('pad') pictures scale by their long side, stretched ones by the short
        side = max(w, h) if self.clf.config.fit == "pad" else min(w, h)
        if size > 2 * side:  # most training radiographs are below `size` themselves
            out.append(f"Low resolution: {w}x{h} pixels, enlarged more than twice to the "
                       f"model's {size}x{size} input; fine fracture lines may be lost.")
        if probability is not None and abs(probability - self.clf.threshold) < NEAR_THRESHOLD:
            out.append("Borderline: the probability is close to the threshold.")
        validation = self.clf.card.export_info.validation
        status = validation.status if validation is not None else None
        if status and status != "validated":
            out.append(f"This model file's export validation status is {status}.")
        if not self.clf.has_heatmap:
            out.append("This model file has no feature-map output, so no heatmap is drawn.")
        return out

    def classify_bytes(self, name: str | None, data: bytes, *, reference: str | None = None,
                       source: str = "upload") -> int:
        """Check, keep, classify and commit one picture; returns its history id.
        Raises UploadError (nothing kept) for an empty, oversized or unreadable upload or a
        reference over MAX_REFERENCE, StorageError when the data folder cannot be written."""
        name = clean_name(name)
        reference = check_reference(reference)
        if not data:
            raise UploadError(f"{name}: empty file (0 bytes)")
        if len(data) > self.limits.max_file_bytes:
            raise UploadError(f"{name}: {len(data) / 1e6:.1f} MB is over the "
                              f"{self.limits.max_file_bytes / 1e6:g} MB limit per picture")
        uid = uuid.uuid4().hex
        stored = self.data / "images" / f"{uid}{safe_suffix(name)}"
        # what this picture may leave on disk: all of it goes if it is not committed
        leftovers = (stored, self.data / "display" / f"{uid}.png",
                     self.data / "heat" / f"{uid}.png")
        try:
            atomic_write(stored, data, sync_dir=False)
            try:
                # one decode at a time bounds memory on a small device; the notes are this
                # thread's own (collected_warnings), never another request's
                with self._decode_lock, collected_warnings() as caught:
                    img = open_image(stored, max_pixels=self.limits.max_pixels)
            except ImageLoadError as exc:
                raise UploadError(f"{name}: {exc.reason}") from None
            except MemoryError:
                raise UploadError(f"{name}: too large to decode on this device") from None
            # what the decoder noted (a multi-frame DICOM read at its first frame, a JPEG
            # without its end marker) is for the reader, not only for the server's log
            notes = [_without_path(str(w.message), stored) for w in caught
                     if issubclass(w.category, ImageWarning)]
            return self._classify(uid, name, stored, img, reference, source, notes)
        except (OSError, sqlite3.Error) as exc:  # a full or failing disk: this picture only
            _remove(leftovers)
            if self.unwritable(exc):
                raise StorageError(f"{self.storage_problem(exc)}. Nothing was kept for "
                                   f"{name}.") from None
            reason = getattr(exc, "strerror", None) or exc
            raise UploadError(f"{name}: could not be stored ({reason}); nothing was kept for "
                              "it") from None
        except BaseException:
            _remove(leftovers)
            raise

    def read_only(self) -> bool:
        """Whether the data folder's file system is mounted read-only now."""
        return read_only_mount(self.data)

    def unwritable(self, exc: BaseException) -> bool:
        """Whether `exc` means the whole folder cannot be written (not one full write)."""
        if isinstance(exc, OSError) and exc.errno in UNWRITABLE:
            return True
        text = str(exc)
        return (isinstance(exc, sqlite3.Error) and ("readonly" in text
                                                    or "unable to open" in text)
                ) or self.read_only()

    def storage_problem(self, exc: BaseException) -> str:
        """The page's words for a failed write: the folder and why. On a read-only mount
        SQLite only says "unable to open database file", so the mount is asked."""
        reason = ("read-only file system" if self.read_only()
                  else str(getattr(exc, "strerror", None) or exc))
        return f"Cannot save to the data folder {self.data.resolve()}: {reason[:1].lower()}" \
               f"{reason[1:]}"

    def _classify(self, uid: str, name: str, stored: Path, img: Image.Image,
                  reference: str | None, source: str, notes: list[str] | None = None) -> int:
        t0 = time.perf_counter()
        with self._model_lock:
            ex = explain_image(self.clf, img, file=name, max_side=DISPLAY_SIDE)
        r = ex.result
        if getattr(r, "status", "ok") == "error":  # e.g. a non-finite model output
            raise UploadError(f"{name}: {r.error}")
        display = self.data / "display" / f"{uid}.png"
        atomic_write(display, _png_bytes(ex.image), sync_dir=False)
        heat = None
        if ex.heat is not None:
            heat = self.data / "heat" / f"{uid}.png"
            atomic_write(heat, _png_bytes(heat_rgba(ex.heat)), sync_dir=False)
        for sub in ("images", "display", "heat"):
            fsync_dir(self.data / sub)
        status = getattr(r, "status", "ok")
        rejected = status == "rejected"
        row = {
            "uid": uid, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "file_name": name, "stored_image": str(stored.relative_to(self.data)),
            "width": ex.original_size[0] if ex.original_size else img.width,
            "height": ex.original_size[1] if ex.original_size else img.height,
            "source": source, "status": "rejected" if rejected else "ok",
            "reason": r.error if rejected else None,
            "label": None if rejected else r.label,
            "probability": None if rejected else r.probability,
            "raw_probability": None if rejected else r.raw_probability,
            "threshold": r.threshold if r.threshold is not None else self.clf.threshold,
            "model_id": self.clf.model_id, "model_name": self.model_name,
            "reference": reference,
            "warnings": [*(notes or []), *self.warnings_for(
                ex.original_size or img.size, None if rejected else r.probability)],
            "heatmap": str(heat.relative_to(self.data)) if heat else None,
            "display": str(display.relative_to(self.data)),
            "ms": round((time.perf_counter() - t0) * 1e3, 2),
        }
        return self.store.add(row)

    def capture(self, reference: str | None = None) -> int:
        """One picture from the camera, saved and classified like an upload."""
        from edge_toolkit.runtime.camera import CameraError, capture_name

        if self.camera is None:
            raise UploadError("no camera is attached to this station")
        with self._camera_lock:
            try:
                cam = self.camera()
                try:
                    img = cam.capture()
                finally:
                    cam.close()
            except CameraError as exc:
                raise UploadError(f"camera: {exc}") from None
        return self.classify_bytes(capture_name(), _png_bytes(img), reference=reference,
                                   source="capture")

    def path_of(self, relative: str | None) -> Path | None:
        """A stored file's absolute path, only if it lies inside the data folder."""
        if not relative:
            return None
        path = (self.data / relative).resolve()
        return path if path.is_relative_to(self.data.resolve()) and path.is_file() else None
