"""Turning command-line PATHs (files, folders, globs) into the list of files to classify.

The whole list is built before the first image is read, so a progress bar knows its length
and a resumed run knows what is left. Problems found here (a path that does not exist, a glob
that matches nothing, a folder that cannot be listed) become entries with a `problem`, so the
batch reports them like any other bad file and goes on.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_toolkit.images import is_image_file

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Source:
    """One input: `file` as the user will recognise it, `key` its resolved absolute path."""

    file: str
    key: str
    problem: str | None = None


def resolve_key(path: str | Path) -> str:
    """The identity of a file across runs and spellings (`a/../b.png` is `b.png`)."""
    return os.path.realpath(os.path.abspath(path))


def expand_paths(items: Iterable[str | Path]) -> list[Source]:
    """Files as given (whatever their name), folders recursively (image names, and DICOM
    files by their preamble whatever their name; hidden files and folders skipped), globs
    sorted; each file once, in first-seen order."""
    seen: set[str] = set()
    out: list[Source] = []

    def add(src: Source) -> None:
        if src.key not in seen:
            seen.add(src.key)
            out.append(src)

    for item in items:
        text = os.fspath(item)
        if os.path.lexists(text):
            if os.path.isdir(text):
                for src in _walk(text):
                    add(src)
            else:  # files, broken links and specials: the loader says what is wrong
                add(Source(text, resolve_key(text)))
        elif _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                add(Source(text, resolve_key(text), "no files match this pattern"))
            for match in matches:
                if os.path.isdir(match):
                    for src in _walk(match):
                        add(src)
                else:
                    add(Source(match, resolve_key(match)))
        else:
            add(Source(text, resolve_key(text), "no such file or folder"))
    return out


def empty_folders(items: Iterable[str | Path]) -> list[str]:
    """The folders among `items` with no image in them (hidden ones aside): named beside
    other paths they would otherwise drop out of a batch without a word."""
    out = []
    for item in items:
        text = os.fspath(item)
        if os.path.isdir(text) and not any(
                not name.startswith(".") and is_image_file(os.path.join(root, name))
                for root, dirs, files in _visible_walk(text) for name in files):
            out.append(text)
    return out


def _visible_walk(folder: str) -> Iterator[tuple[str, list[str], list[str]]]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield root, dirs, files


def _walk(folder: str) -> list[Source]:
    found: list[Source] = []

    def unreadable(err: OSError) -> None:
        name = err.filename or folder
        reason = "permission denied" if isinstance(err, PermissionError) else str(err.strerror)
        found.append(Source(str(name), resolve_key(name), f"cannot list folder ({reason})"))

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = os.path.join(root, name)
            if not name.startswith(".") and is_image_file(path):
                found.append(Source(path, resolve_key(path)))
    return found
