"""A one-line progress bar on stderr that result rows and error lines can pass through.

click's progressbar cannot be told to redraw after something else printed on the terminal,
so table rows and `error:` lines would tear it; this one clears itself, lets the line out,
and redraws. It only draws when stderr is a terminal, so pipes and logs stay clean.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

MIN_FILES = 5  # below this a bar is only flicker


def wants_bar(total: int, stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    try:
        return total >= MIN_FILES and stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """`update()` after each item; `echo()` for any line that must not tear the bar."""

    def __init__(self, total: int, enabled: bool, label: str = "classifying",
                 stream: TextIO | None = None) -> None:
        self.total = total
        self.enabled = enabled
        self.label = label
        self.stream = stream or sys.stderr
        self.done = 0
        self._start = time.monotonic()
        self._drawn_at = 0.0
        self._shown = False

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._drawn_at >= 0.1 or self.done >= self.total):
            self._draw(now)

    def echo(self, line: str, stream: TextIO) -> None:
        """Write `line` to `stream` (stdout or stderr) above the bar."""
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
        stream.write(line + "\n")
        stream.flush()
        if self._shown:
            self._draw(time.monotonic())

    def close(self) -> None:
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False

    def _draw(self, now: float) -> None:
        width = 30
        frac = self.done / self.total if self.total else 1.0
        filled = int(frac * width)
        elapsed = now - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        text = (f"\r{self.label} [{'#' * filled}{'-' * (width - filled)}] "
                f"{self.done}/{self.total}  {rate:.1f}/s  eta {_clock(eta)}\033[K")
        self.stream.write(text)
        self.stream.flush()
        self._drawn_at = now
        self._shown = True


def _clock(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


class BarSafeStream:
    """A text stream that passes whole lines to `Progress.echo`, for stdout on the same
    terminal as the bar."""

    def __init__(self, progress: Progress, stream: TextIO) -> None:
        self.progress = progress
        self.stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self.progress.echo(line, self.stream)
        return len(text)

    def flush(self) -> None:  # whole lines are flushed by echo; a partial one waits
        self.stream.flush()

    def finish(self) -> None:
        """Write what is left of an unfinished line (call after the bar is closed)."""
        if self._pending:
            self.stream.write(self._pending)
            self._pending = ""
        self.stream.flush()
