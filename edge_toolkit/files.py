"""Reading inputs and preparing outputs without hanging, crashing late or garbling messages.

A FIFO given as a model blocks `read()` forever, and a `/dev/zero` never ends; an output
folder that is missing or read-only used to fail only after the work was done; a file name
with a newline split an error line in two. Every command reads model files through
`read_regular`, checks output paths with `prepare_output` before it starts, and shows file
names through `shown`. Standard library only.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


class NotRegularFileError(OSError):
    """A path names a FIFO, socket, device or folder where a file's bytes are needed;
    str() is the reason (callers name the file)."""

    def __str__(self) -> str:
        return str(self.strerror)


class OutputPathError(OSError):
    """An output path cannot be written: str() says which and why, in one line."""

    def __str__(self) -> str:
        return str(self.strerror)


def printable(text: str) -> str:
    """`text` with the bytes of a file name that is not UTF-8 (kept by Python as lone
    surrogates) shown as `\\xff` escapes: printed raw they fail outside a C locale."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate no byte stands for (a Windows name)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def shown(name: str | os.PathLike[str]) -> str:
    """A file name safe to print on one line: control characters become escapes
    (a newline shows as `\\n`, an escape character as `\\x1b`), and so do the bytes of a
    name that is not UTF-8."""
    text = os.fspath(name)
    text = (text.decode(errors="backslashreplace") if isinstance(text, bytes)
            else printable(text))
    if not any(unicodedata.category(ch) == "Cc" for ch in text):
        return text
    return "".join(repr(ch)[1:-1] if unicodedata.category(ch) == "Cc" else ch for ch in text)


def is_lfs_pointer(head: bytes) -> bool:
    """Whether a file's first bytes are a Git LFS pointer (a clone without `git lfs pull`)
    rather than the weights or model it stands for."""
    return head.startswith(b"version https://git-lfs")


def kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def check_regular(path: str | os.PathLike[str]) -> None:
    """Raise NotRegularFileError unless `path` (followed through links) is a regular file;
    other OSErrors (missing, no permission) pass through."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(errno.EINVAL, f"is {kind_of(mode)}, not a regular file",
                                  os.fspath(path))


def read_regular(path: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """The bytes of a regular file, refusing anything else before reading a byte.

    Opened non-blocking and checked on the open descriptor, so a FIFO swapped in after the
    check cannot block either. `limit` refuses files larger than that many bytes.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(errno.EINVAL, f"is {kind_of(st.st_mode)}, not a regular "
                                      "file", os.fspath(path))
        if limit is not None and st.st_size > limit:
            raise OSError(errno.EFBIG, f"is larger than {limit:,} bytes", os.fspath(path))
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            return f.read()
    finally:
        if fd >= 0:
            os.close(fd)


def prepare_output(path: str | os.PathLike[str], *, folder: bool = False) -> Path:
    """Check, before any work, that `path` can be written: its folder is created if missing
    and must be writable; an existing target must be a regular file (or, with `folder`, a
    folder) that is writable. Raises OutputPathError with the reason in one line."""
    path = Path(path)
    target_dir = path if folder else path.parent
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputPathError(errno.ENOTDIR, f"{shown(target_dir)} exists and is not a folder"
                              ) from None
    except OSError as exc:
        raise OutputPathError(exc.errno or errno.EIO, f"cannot create folder "
                              f"{shown(target_dir)} ({exc.strerror or exc})") from None
    if not target_dir.is_dir():
        raise OutputPathError(errno.ENOTDIR, f"{shown(target_dir)} is not a folder")
    probe_folder(target_dir)
    if not folder and os.path.lexists(path):
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise OutputPathError(exc.errno or errno.EIO,
                                  f"{shown(path)}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(mode):
            raise OutputPathError(errno.EINVAL, f"{shown(path)} is {kind_of(mode)}, not a "
                                  "regular file")
        if not os.access(path, os.W_OK):
            raise OutputPathError(errno.EACCES, f"cannot write {shown(path)} (permission "
                                  "denied)")
    return path


def probe_folder(folder: Path) -> None:
    """Create and remove a hidden file in `folder`: the one sure test that it is writable
    (access() says yes to root on /sys, and knows nothing of quotas or odd mounts)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".edge-toolkit-probe-", dir=folder)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        if _read_only_fs(folder):
            why = "read-only file system"
        raise OutputPathError(exc.errno or errno.EACCES,
                              f"cannot write in {shown(folder)} ({why})") from None
    os.close(fd)
    os.unlink(name)


def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (AttributeError, OSError):
        return False


def new_file_mode() -> int:
    """The mode `open()` would give a new file under the current umask (0o666 & ~umask)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(folder: str | Path) -> None:
    """Make a new or renamed file in `folder` survive a power cut (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes | Callable[[BinaryIO], None],
                 sync_dir: bool = True, verify: Callable[[Path], None] | None = None) -> Path:
    """Write `data` (bytes, or a function writing to the open file) to a temporary file
    beside `path`, fsync it and rename it over `path`: a reader, or the file after a power
    cut, is the old file or the whole new one, never half of it. An existing file keeps its
    mode and a new one gets the umask's, as `open()` would give it (mkstemp's is 0600).
    `verify(temporary file)` runs before the rename; if it raises, `path` is untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                mode = os.stat(path).st_mode & 0o7777
            except OSError:
                mode = new_file_mode()
            os.fchmod(f.fileno(), mode)
            if isinstance(data, bytes | bytearray):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)
    return path
