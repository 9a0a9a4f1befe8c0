"""The station's history: one SQLite row per result (stdlib sqlite3, WAL), never lost once shown.

Every row is committed with `synchronous=FULL` before the page that shows it is sent, so a
power cut after the page appears loses nothing; the stored picture and its display copies are
written and fsynced before the row. One connection per call (sqlite3 connections are not
shared across the web server's threads); WAL lets the history page read while an upload
writes. A data folder that has become read-only (an SD card remounted read-only after errors)
still reads: SQLite cannot open a WAL database there without its index file, so reads fall back
to opening the file as immutable. No Flask here: the store is usable (and tested) on its own.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SCHEMA_VERSION = 1
VERDICTS = ("agree", "disagree")

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL,            -- UTC, ISO 8601 to the second
    file_name TEXT NOT NULL,          -- as uploaded (or the capture's name)
    stored_image TEXT NOT NULL,       -- the bytes as received, relative to the data folder
    width INTEGER,
    height INTEGER,
    source TEXT NOT NULL,             -- upload | capture | api
    status TEXT NOT NULL,             -- ok | rejected (input gate)
    reason TEXT,                      -- why it was rejected
    label TEXT,
    probability REAL,                 -- calibrated, what the threshold applies to
    raw_probability REAL,
    threshold REAL,
    model_id TEXT NOT NULL,           -- sha256 of the model file, first 12 hex digits
    model_name TEXT,
    reference TEXT,                   -- optional patient or study reference typed by the user
    warnings TEXT NOT NULL DEFAULT '[]',  -- JSON list of strings
    heatmap TEXT,                     -- heat layer PNG, relative to the data folder
    display TEXT,                     -- display copy PNG, relative to the data folder
    ms REAL,
    verdict TEXT CHECK (verdict IS NULL OR verdict IN ('agree', 'disagree')),
    note TEXT,
    verdict_time TEXT
);
CREATE INDEX IF NOT EXISTS results_created ON results (created);
CREATE INDEX IF NOT EXISTS results_label ON results (label);
"""

CSV_COLUMNS = ("id", "created", "file_name", "reference", "status", "reason", "label",
               "probability", "threshold", "raw_probability", "model_name", "model_id",
               "warnings", "verdict", "note", "verdict_time", "source", "width", "height",
               "stored_image", "uid")


class StoreError(ValueError):
    """A bad filter or verdict; the message is for the user."""


def read_only_mount(folder: Path) -> bool:
    """Whether `folder`'s file system is mounted read-only now."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs on Windows
        return False


@dataclass(frozen=True)
class Filters:
    """What the history page can narrow by (all optional)."""

    date_from: str | None = None  # YYYY-MM-DD, inclusive (UTC)
    date_to: str | None = None  # YYYY-MM-DD, inclusive (UTC)
    label: str | None = None  # a label, or "rejected"
    reference: str | None = None  # substring
    verdict: str | None = None  # agree | disagree | none

    @classmethod
    def from_args(cls, args: Any) -> Filters:
        """From a query-string mapping; blank fields mean no filter; bad dates raise."""
        def get(key: str) -> str | None:
            v = (args.get(key) or "").strip()
            return v or None

        f = cls(get("from"), get("to"), get("label"), get("reference"), get("verdict"))
        for d in (f.date_from, f.date_to):
            if d is not None:
                try:
                    date.fromisoformat(d)
                except ValueError:
                    raise StoreError(f"{d!r} is not a date (YYYY-MM-DD)") from None
        if f.verdict not in (None, "none", *VERDICTS):
            raise StoreError(f"unknown verdict filter {f.verdict!r}")
        return f

    def where(self) -> tuple[str, list[Any]]:
        clauses, params = [], []
        if self.date_from:
            clauses.append("substr(created, 1, 10) >= ?")
            params.append(self.date_from)
        if self.date_to:
            clauses.append("substr(created, 1, 10) <= ?")
            params.append(self.date_to)
        if self.label == "rejected":
            clauses.append("status = 'rejected'")
        elif self.label:
            clauses.append("label = ?")
            params.append(self.label)
        if self.reference:
            clauses.append("instr(lower(coalesce(reference, '')), lower(?)) > 0")
            params.append(self.reference)
        if self.verdict == "none":
            clauses.append("verdict IS NULL")
        elif self.verdict:
            clauses.append("verdict = ?")
            params.append(self.verdict)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def query_string(self) -> dict[str, str]:
        pairs = {"from": self.date_from, "to": self.date_to, "label": self.label,
                 "reference": self.reference, "verdict": self.verdict}
        return {k: v for k, v in pairs.items() if v}


class HistoryStore:
    """The results table in `path` (created on first use)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: written by a newer edge-toolkit (schema "
                                 f"{version}); upgrade, or use another --data folder")
            db.executescript(SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def connect(self, immutable: bool = False) -> Iterator[sqlite3.Connection]:
        """One connection; `immutable` reads the file without the WAL index or any lock (only
        for a folder nothing can write to any more)."""
        if immutable:
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?immutable=1", uri=True,
                                 isolation_level=None)
        else:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        finally:
            db.close()

    def add(self, row: dict[str, Any]) -> int:
        """Insert one result and commit it durably; returns its id."""
        row = dict(row)
        row["warnings"] = json.dumps(list(row.get("warnings") or []))
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                cur = db.execute(f"INSERT INTO results ({cols}) VALUES ({marks})",
                                 list(row.values()))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return int(cur.lastrowid)

    def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` on a normal connection, or, where SQLite cannot open the file for reading
        (a read-only folder: "unable to open database file"), on an immutable one, so the
        pages that only read keep working."""
        try:
            with self.connect() as db:
                return work(db)
        except sqlite3.OperationalError as exc:
            # only where the folder cannot be written: an immutable read ignores the WAL,
            # so on a passing error elsewhere it would hide results just stored
            if "unable to open" not in str(exc) and not read_only_mount(self.path.parent):
                raise
            with self.connect(immutable=True) as db:
                return work(db)

    def get(self, result_id: int) -> dict[str, Any] | None:
        if not 0 < result_id < 2 ** 63:  # no such row, and SQLite could not even take it
            return None
        row = self._read(lambda db: db.execute("SELECT * FROM results WHERE id = ?",
                                                (result_id,)).fetchone())
        return _row(row) if row else None

    def set_verdict(self, result_id: int, verdict: str | None, note: str | None,
                    when: str) -> None:
        """The reader's agree/disagree and note (either may be empty)."""
        if verdict not in (None, *VERDICTS):
            raise StoreError(f"verdict must be agree or disagree, not {verdict!r}")
        with self.connect() as db:
            cur = db.execute("UPDATE results SET verdict = ?, note = ?, verdict_time = ? "
                             "WHERE id = ?", (verdict, note or None, when, result_id))
            if cur.rowcount != 1:
                raise StoreError(f"no result {result_id}")

    def query(self, filters: Filters | None = None, limit: int | None = None
              ) -> list[dict[str, Any]]:
        """Newest first."""
        where, params = (filters or Filters()).where()
        sql = f"SELECT * FROM results{where} ORDER BY id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._read(lambda db: [_row(r) for r in db.execute(sql, params)])

    def count(self, filters: Filters | None = None) -> int:
        where, params = (filters or Filters()).where()
        return self._read(lambda db: int(db.execute(f"SELECT count(*) FROM results{where}",
                                                    params).fetchone()[0]))

    def labels(self) -> list[str]:
        return self._read(lambda db: [r[0] for r in db.execute(
            "SELECT DISTINCT label FROM results WHERE label IS NOT NULL ORDER BY label")])

    def csv_text(self, filters: Filters | None = None) -> str:
        """The filtered history as CSV (oldest first), spreadsheet-safe."""
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for row in reversed(self.query(filters)):
            w.writerow([_cell(row[c] if c != "warnings" else "; ".join(row[c]))
                        for c in CSV_COLUMNS])
        return out.getvalue()


def _row(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    try:
        d["warnings"] = json.loads(d.get("warnings") or "[]")
    except json.JSONDecodeError:
        d["warnings"] = [str(d["warnings"])]
    return d


def _cell(value: Any) -> Any:
    """Text a spreadsheet would run as a formula (=, +, -, @) gets a leading quote: file names
    and notes are typed by users."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value
