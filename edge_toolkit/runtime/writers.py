"""Writing results as they come: a table for people, csv/json/jsonl for programs.

To stdout, every format streams (json as an array written element by element). With
`--output FILE` nothing already computed may be lost to a crash or a pulled plug:

- csv and jsonl: one `write()` of a whole line per result, then flush and fsync. A kill can
  leave at most a partial last line; the next run drops it.
- json: the file is only ever replaced atomically (temp file, fsync, `os.replace`), with the
  complete array, at the end of the run (also on Ctrl-C). Until then each result is appended
  to a sidecar `FILE.partial.jsonl` (flushed and fsynced); the next run merges it.

Resume: `read_existing` loads an earlier output and drops a partial last line; the resolved
paths of its successful records are what the next run skips. Failed records of files given
again are dropped and those files retried; failures of files not in this run stay on record.
Records written by another model (a different `model_id`) or decided at another threshold
make the run refuse rather than silently mix two models' or operating points' answers,
unless `--overwrite` starts afresh.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from edge_toolkit.files import atomic_write as write_bytes_atomically
from edge_toolkit.files import new_file_mode, shown
from edge_toolkit.runtime.results import FIELDS, Result

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one writer per file is then up to the user
    fcntl = None  # type: ignore[assignment]

FORMATS = ("table", "csv", "json", "jsonl")
FILE_FORMATS = ("csv", "json", "jsonl")


class OutputError(Exception):
    """An existing `--output` file cannot be resumed (not ours, or another model's)."""


class OutputBusyError(OutputError):
    """Another run holds the lock on this `--output` file."""


def lock_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.lock")


class OutputLock:
    """An exclusive lock on an `--output` file for the whole run, so a second writer is
    refused instead of duplicating or losing results.

    The lock is a hidden `.FILE.lock` beside the output (the output itself is replaced
    atomically, which would drop a lock held on it). flock is released by the kernel when the
    process dies, so a crash leaves no stale lock; the file is removed on release, and a
    locker that finds its file unlinked meanwhile retries on the new one.
    """

    def __init__(self, output: Path) -> None:
        self.path = lock_path(output)
        self.output = output
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        if fcntl is None:
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                         new_file_mode())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                raise OutputBusyError(
                    f"{shown(self.output)}: another run is writing this file"
                    f"{f' (pid {holder})' if holder.isdigit() else ''}; wait for it to "
                    "finish or use another --output") from None
            except OSError:
                os.close(fd)
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._fd = fd
                return self
            os.close(fd)  # released and removed by its holder meanwhile: lock the new one

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class Writer(Protocol):
    def write(self, result: Result) -> None: ...
    def close(self) -> None: ...


def format_for(output: Path | None, fmt: str | None) -> str:
    """The format asked for, else the output file's suffix, else a table."""
    if fmt:
        return fmt
    if output is None:
        return "table"
    suffix = output.suffix.lower().lstrip(".")
    if suffix in FILE_FORMATS:
        return suffix
    raise OutputError(f"cannot tell the format of {output} from its name; give --format "
                      "csv, json or jsonl")


def sidecar_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial.jsonl")


# -- resume ----------------------------------------------------------------------------------


@dataclass
class Existing:
    """What an earlier run left in `--output`, as it will be kept by this run."""

    records: list[dict[str, Any]] = field(default_factory=list)  # the last one per path
    stale: int = 0  # partial, unreadable or duplicate lines, and failures to be redone
    fresh: bool = False  # --overwrite: replace whatever is there

    @property
    def done(self) -> set[str]:
        """Paths classified successfully: the files a resumed run skips."""
        return {r["path"] for r in self.records if r["status"] == "ok"}

    @property
    def rewrite(self) -> bool:
        return self.fresh or self.stale > 0

    def retrying(self, keys: set[str]) -> Existing:
        """Without the failed records of `keys`, which this run tries again; failures of
        files not in this run stay on record."""
        kept = [r for r in self.records if r["status"] == "ok" or r["path"] not in keys]
        return Existing(kept, self.stale + len(self.records) - len(kept), self.fresh)


def read_existing(output: Path, fmt: str, model_id: str | None = None,
                  threshold: float | None = None) -> Existing:
    """Load an earlier output for resuming (see module docstring). Missing file: empty.
    With `threshold`, results decided at another threshold are refused like another
    model's: one file, one operating point."""
    rows: list[dict[str, Any]] = []
    stale = 0
    if output.exists() and not output.is_file():
        raise OutputError(f"{output} is not a regular file")
    if output.exists():
        text = _read_text(output)
        if fmt == "csv":
            parsed, stale = _parse_csv(text, output)
        elif fmt == "jsonl":
            parsed, stale = _parse_jsonl(text)
        else:
            parsed = _parse_json(text, output)
        rows.extend(parsed)
    side = sidecar_path(output)
    if fmt == "json" and side.exists():
        parsed, bad = _parse_jsonl(_read_text(side))
        rows.extend(parsed)
        stale += bad + 1  # the sidecar is merged into the array, then removed
    kept: dict[str, dict[str, Any]] = {}
    for row in rows:
        if not isinstance(row, dict) or "path" not in row or "status" not in row:
            raise OutputError(f"{output} was not written by edge-toolkit classify (a record "
                              "lacks path/status); use another --output or --overwrite")
        if model_id and row.get("model_id") and row["model_id"] != model_id:
            raise OutputError(f"{output} holds results of another model (model_id "
                              f"{row['model_id']}, this one is {model_id}); use another "
                              "--output or --overwrite")
        earlier = _float_or_none(row.get("threshold"))
        if threshold is not None and earlier is not None and abs(earlier - threshold) > 1e-6:
            raise OutputError(f"{output} holds results decided at threshold {earlier:g}, this "
                              f"run's is {threshold:g}; give the same --threshold, another "
                              "--output, or --overwrite")
        if row["path"] in kept:
            stale += 1
            if kept[row["path"]]["status"] == "ok":
                continue  # a success is never replaced
            del kept[row["path"]]  # keep file order of the latest record
        kept[row["path"]] = row
    return Existing(list(kept.values()), stale)


def _float_or_none(value: Any) -> float | None:
    """A number as a JSON record or a CSV cell holds it; None where there is none."""
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise OutputError(f"cannot read {path} to resume ({exc.strerror or exc})") from None


def _parse_csv(text: str, output: Path) -> tuple[list[dict[str, Any]], int]:
    if not text:
        return [], 0
    dropped = 0
    if not text.endswith("\n"):  # killed mid-line
        text = text[: text.rfind("\n") + 1]
        dropped = 1
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return [], dropped
    if rows[0] != FIELDS:
        raise OutputError(f"{output} is not an edge-toolkit csv (its header differs); use "
                          "another --output or --overwrite")
    return [dict(zip(FIELDS, row, strict=False)) for row in rows[1:] if row], dropped


def _parse_jsonl(text: str) -> tuple[list[dict[str, Any]], int]:
    out: list[dict[str, Any]] = []
    dropped = 0
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:  # killed mid-line
        lines.pop()
        dropped += 1
    for line in lines:
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            dropped += 1
    return out, dropped


def _parse_json(text: str, output: Path) -> list[dict[str, Any]]:
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise OutputError(f"{output} is not valid JSON; use another --output or --overwrite"
                          ) from None
    if not isinstance(data, list):
        raise OutputError(f"{output} is not a JSON array of results; use another --output "
                          "or --overwrite")
    return data


# -- durable file helpers --------------------------------------------------------------------


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text` so a reader (or a crash) sees the old or the new file whole."""
    write_bytes_atomically(path, text.encode("utf-8"))


class _DurableAppender:
    """Append whole lines to a file, each flushed and fsynced before `append` returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115

    def append(self, line: str) -> None:
        self._f.write(line)
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


# -- record encodings ------------------------------------------------------------------------


def _csv_line(values: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(["" if v is None else v for v in values])
    return buf.getvalue()


def csv_header() -> str:
    return _csv_line(FIELDS)


def csv_row(record: dict[str, Any]) -> str:
    return _csv_line([record.get(k) for k in FIELDS])


def json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


# -- writers ---------------------------------------------------------------------------------


class TableWriter:
    """Aligned columns for a terminal, one row as each result comes; failures are left to the
    `error:` lines on stderr."""

    def __init__(self, stream: TextIO, positive_label: str, files: list[str]) -> None:
        self.stream = stream
        self.width = max(4, min(60, max((len(shown(f)) for f in files), default=4)))
        self.header = (f"{'FILE':<{self.width}}  {'LABEL':<14}  "
                       f"{'P(' + positive_label + ')':>14}  {'THRESHOLD':>9}  {'MS':>8}")
        self._started = False

    def write(self, result: Result) -> None:
        if not result.ok:
            return
        if not self._started:
            self._emit(self.header)
            self._started = True
        name = shown(result.file)  # a newline in a name must not break the table
        if len(name) > self.width:
            name = "..." + name[-(self.width - 3):]
        self._emit(f"{name:<{self.width}}  {result.label or '':<14}  "
                   f"{result.probability:>14.4f}  {result.threshold:>9.4f}  {result.ms:>8.1f}")

    def _emit(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class StreamWriter:
    """csv, jsonl or json (as a streamed array) to a text stream such as stdout."""

    def __init__(self, stream: TextIO, fmt: str) -> None:
        self.stream = stream
        self.fmt = fmt
        self._n = 0
        if fmt == "csv":
            self._put(csv_header())

    def write(self, result: Result) -> None:
        rec = result.to_dict()
        if self.fmt == "csv":
            self._put(csv_row(rec))
        elif self.fmt == "jsonl":
            self._put(json_line(rec))
        else:
            self._put(("[\n" if self._n == 0 else ",\n") + json.dumps(rec, ensure_ascii=False))
        self._n += 1

    def _put(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        if self.fmt == "json":
            self._put("[]\n" if self._n == 0 else "\n]\n")


class LineFileWriter:
    """csv or jsonl `--output`: keeps what an earlier run did, appends each result durably."""

    def __init__(self, output: Path, fmt: str, existing: Existing) -> None:
        self.fmt = fmt
        encode = csv_row if fmt == "csv" else json_line
        header = csv_header() if fmt == "csv" else ""
        if existing.rewrite or not output.exists() or output.stat().st_size == 0:
            # start clean: header plus the records kept (no partial line, no old failures)
            atomic_write(output, header + "".join(encode(r) for r in existing.records))
        self._encode = encode
        self._out = _DurableAppender(output)

    def write(self, result: Result) -> None:
        self._out.append(self._encode(result.to_dict()))

    def close(self) -> None:
        self._out.close()


class JsonFileWriter:
    """json `--output`: durable sidecar per result, one atomic replace of the array at the end."""

    def __init__(self, output: Path, existing: Existing) -> None:
        self.output = output
        self.records = list(existing.records)
        self.side = sidecar_path(output)
        if existing.fresh:
            self.side.unlink(missing_ok=True)
        self._side = _DurableAppender(self.side)
        self._dirty = existing.rewrite or not output.exists()

    def write(self, result: Result) -> None:
        rec = result.to_dict()
        self._side.append(json_line(rec))
        self.records.append(rec)
        self._dirty = True

    def close(self) -> None:
        self._side.close()
        if self._dirty or self.side.stat().st_size:
            text = json.dumps(self.records, indent=1, ensure_ascii=False) + "\n"
            atomic_write(self.output, text)
        self.side.unlink(missing_ok=True)


def open_writer(fmt: str, *, output: Path | None = None, existing: Existing | None = None,
                stream: TextIO | None = None, positive_label: str = "fractured",
                files: list[str] | None = None) -> Writer:
    """The writer for a format and destination (stdout when `output` is None)."""
    if output is None:
        out = stream if stream is not None else sys.stdout
        if fmt == "table":
            return TableWriter(out, positive_label, files or [])
        return StreamWriter(out, fmt)
    if fmt not in FILE_FORMATS:
        raise OutputError("--output needs --format csv, json or jsonl (a table cannot be "
                          "resumed)")
    existing = existing or Existing()
    if fmt == "json":
        return JsonFileWriter(output, existing)
    return LineFileWriter(output, fmt, existing)
