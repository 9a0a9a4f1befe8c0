"""Expanding PATHs, and reading back earlier outputs for resume (no model needed)."""

from __future__ import annotations

import json
import os

import pytest

from edge_toolkit.runtime.results import EXIT_NONE_SUCCEEDED, EXIT_OK, EXIT_SOME_FAILED, Result
from edge_toolkit.runtime.results import exit_code as exit_code_for
from edge_toolkit.runtime.sources import expand_paths
from edge_toolkit.runtime.writers import (
    OutputError,
    csv_header,
    csv_row,
    format_for,
    read_existing,
)


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_expand_files_folders_globs_once_each(tmp_path):
    a = touch(tmp_path / "d" / "b.png")
    touch(tmp_path / "d" / "a.JPG")
    touch(tmp_path / "d" / "sub" / "c.tif")
    touch(tmp_path / "d" / "notes.txt")
    touch(tmp_path / "d" / ".hidden.png")
    touch(tmp_path / "d" / ".cache" / "x.png")
    named = touch(tmp_path / "e" / "scan.dat")
    os.symlink(tmp_path / "d", tmp_path / "e" / "link-to-d")
    srcs = expand_paths([tmp_path / "d", str(a), str(tmp_path / "d" / "**" / "*.tif"), named,
                         str(tmp_path / "none-*.png"), tmp_path / "missing.png",
                         tmp_path / "e"])
    names = [os.path.relpath(s.file, tmp_path) for s in srcs]
    assert names == ["d/a.JPG", "d/b.png", "d/sub/c.tif", "e/scan.dat", "none-*.png",
                     "missing.png"]
    problems = {os.path.basename(s.file): s.problem for s in srcs if s.problem}
    assert problems == {"none-*.png": "no files match this pattern",
                        "missing.png": "no such file or folder"}
    assert srcs[1].key == str(a.resolve())


def test_exit_codes():
    assert exit_code_for(3, 0) == EXIT_OK
    assert exit_code_for(3, 1) == EXIT_SOME_FAILED
    assert exit_code_for(0, 2) == EXIT_NONE_SUCCEEDED
    assert exit_code_for(0, 0) == EXIT_NONE_SUCCEEDED


def record(name, status="ok", model_id="m1"):
    r = Result(file=name, path=f"/x/{name}", status=status, model_id=model_id,
               label="fractured" if status == "ok" else None, probability=0.7 if status == "ok"
               else None, error=None if status == "ok" else "bad")
    return r.to_dict()


def test_read_existing_drops_partial_lines_and_keeps_successes(tmp_path):
    out = tmp_path / "r.csv"
    rows = [record("a"), record("b", "error"), record("c")]
    text = csv_header() + "".join(csv_row(r) for r in rows)
    out.write_text(text + csv_row(record("d"))[:10])
    got = read_existing(out, "csv", "m1")
    assert got.done == {"/x/a", "/x/c"} and got.rewrite
    assert [r["path"] for r in got.retrying({"/x/b"}).records] == ["/x/a", "/x/c"]
    assert [r["path"] for r in got.retrying(set()).records] == ["/x/a", "/x/b", "/x/c"]
    with pytest.raises(OutputError, match="another model"):
        read_existing(out, "csv", "m2")

    out = tmp_path / "r.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_existing(out, "jsonl", "m1")
    assert got.done == {"/x/a", "/x/c"} and not got.rewrite


def test_read_existing_refuses_foreign_files(tmp_path):
    out = tmp_path / "other.csv"
    out.write_text("name,score\na,1\n")
    with pytest.raises(OutputError, match="not an edge-toolkit csv"):
        read_existing(out, "csv")
    out = tmp_path / "other.json"
    out.write_text('{"a": 1}')
    with pytest.raises(OutputError, match="not a JSON array"):
        read_existing(out, "json")
    out.write_text('[{"a": 1}]')
    with pytest.raises(OutputError, match="lacks path/status"):
        read_existing(out, "json")
    assert read_existing(tmp_path / "new.json", "json").records == []
    assert format_for(tmp_path / "x.JSONL", None) == "jsonl"
    with pytest.raises(OutputError, match="cannot tell the format"):
        format_for(tmp_path / "x.txt", None)
