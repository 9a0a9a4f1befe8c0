"""`edge-toolkit classify` end to end through click: inputs, formats, exit codes, bad files,
card-less models, and durable `--output` with resume after a crash."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_models import RUNTIME_MODELS, cached_models, make_bad_files, make_images

from edge_toolkit.runtime.cli import classify
from edge_toolkit.runtime.results import FIELDS
from edge_toolkit.runtime.writers import sidecar_path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return cached_models(tmp_path_factory, RUNTIME_MODELS)


@pytest.fixture()
def data(tmp_path):
    """data/{a,b}/ with 3 good images each, and bad/ with one file of each bad kind."""
    good = make_images(tmp_path / "data" / "a", 3) + make_images(tmp_path / "data" / "b", 3,
                                                                 seed=1)
    (tmp_path / "data" / "a" / "README.txt").write_text("not an image name: skipped")
    bad = make_bad_files(tmp_path / "bad")
    return {"root": tmp_path, "good": good, "bad": bad}


def run(*args: object, input: str | None = None):
    return CliRunner().invoke(classify, [str(a) for a in args], input=input,
                              catch_exceptions=False)


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_table_for_files_folders_and_globs(models, data):
    root = data["root"]
    res = run(models["float"], root / "data" / "a", str(root / "data" / "b" / "*.png"),
              data["good"][4])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split()[:3] == ["FILE", "LABEL", "P(fractured)"]
    # a/ has 3 images; the glob b/*.png matches 2 (png, jpg, png); b/img001.jpg given by name
    assert len(lines) == 1 + 3 + 2 + 1
    assert "README" not in res.stdout
    assert "done: 6 classified, 0 failed" in res.stderr


def test_three_formats_to_stdout(models, data):
    folder = data["root"] / "data"
    as_jsonl = jsonl(run(models["float"], folder, "-f", "jsonl", "-q").stdout)
    as_json = json.loads(run(models["float"], folder, "-f", "json", "-q").stdout)
    as_csv = list(csv.DictReader(io.StringIO(run(models["float"], folder, "-f", "csv").stdout)))
    assert len(as_jsonl) == len(as_json) == len(as_csv) == 6
    assert list(as_jsonl[0]) == FIELDS and list(as_csv[0]) == FIELDS
    for a, b, c in zip(as_jsonl, as_json, as_csv, strict=True):
        assert a["path"] == b["path"] == c["path"]
        assert a["probability"] == b["probability"] == pytest.approx(float(c["probability"]))
        assert a["label"] == b["label"] == c["label"]
        assert a["status"] == "ok" and a["threshold"] == 0.5


def test_bad_files_one_line_each_and_exit_codes(models, data):
    root = data["root"]
    res = run(models["float"], root / "data" / "a", root / "bad", "-f", "jsonl")
    assert res.exit_code == 1
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == len(data["bad"])
    for path in data["bad"].values():
        assert sum(str(path) in ln for ln in errors) == 1
    records = jsonl(res.stdout)
    assert sum(r["status"] == "ok" for r in records) == 3
    assert {r["error"] for r in records if r["status"] == "error"} >= {
        "empty file (0 bytes)", "broken symbolic link"}
    assert run(models["float"], root / "bad").exit_code == 3  # none succeeded
    assert run(models["float"], data["good"][0]).exit_code == 0
    empty = root / "empty-folder"
    empty.mkdir()
    res = run(models["float"], empty)
    assert res.exit_code == 3 and "no images found" in res.stderr
    assert run(models["float"], root / "missing.png").exit_code == 3


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without permission")
def test_unreadable_file_is_reported(models, data):
    locked = data["good"][0]
    locked.chmod(0)
    try:
        res = run(models["float"], locked.parent)
    finally:
        locked.chmod(0o644)
    assert res.exit_code == 1 and f"error: {locked}: permission denied" in res.stderr


def test_model_as_first_argument_or_bundled(models, data, monkeypatch, tmp_path):
    from edge_toolkit.runtime import bundled

    img = data["good"][0]
    first = run(models["float"], img, "--format", "jsonl", "-q")
    assert first.exit_code == 0
    monkeypatch.setattr(bundled, "MODELS_DIR", tmp_path / "none")
    res = run(img)
    assert res.exit_code == 2 and "none is bundled" in res.stderr
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "m.tflite").write_bytes(models["float"].read_bytes())
    monkeypatch.setattr(bundled, "MODELS_DIR", shipped)
    res = run(img, "--format", "jsonl", "-q")
    assert res.exit_code == 0
    assert jsonl(res.stdout)[0]["probability"] == jsonl(first.stdout)[0]["probability"]


def test_model_errors_exit_2(models, data, tmp_path):
    img = data["good"][0]
    truncated = tmp_path / "cut.tflite"
    truncated.write_bytes(models["float"].read_bytes()[:1000])
    for model, message in [(truncated, "truncated or corrupt"),
                           (img, "not a TFLite model"),
                           (tmp_path / "nope.tflite", "cannot read model"),
                           (models["bare"], "no edge_toolkit model card")]:
        res = run("--model", model, img)  # --model: an image as the model is still a model
        assert res.exit_code == 2, (model, res.output)
        assert message in res.stderr and "Traceback" not in res.output
        assert len(res.stderr.strip().splitlines()) == 1
    res = run(models["float"], img, "--format", "xml")
    assert res.exit_code == 2  # click usage error
    res = run(models["float"], img, "--value-range", "0,1")
    assert res.exit_code == 2 and "carries a model card" in res.stderr
    res = run(models["float"], img, "--threshold", "1.5")
    assert res.exit_code == 2


def test_cardless_model_with_explicit_settings(models, data):
    img = data["good"][2]
    res = run(models["bare"], img, "--value-range", "-1,1")
    assert res.exit_code == 2  # a threshold is needed too
    bare = jsonl(run(models["bare"], img, "--value-range", "-1,1", "--threshold", "0.4",
                     "-f", "jsonl").stdout)
    carded = jsonl(run(models["float"], img, "-f", "jsonl").stdout)
    assert bare[0]["threshold"] == 0.4
    assert bare[0]["probability"] == pytest.approx(carded[0]["probability"], abs=1e-5)
    # a card-less model trained on normalised grey levels can be told so
    res = run(models["bare"], img, "--value-range", "-1,1", "--threshold", "0.4",
              "--intensity", "equalize", "-f", "jsonl", "--verbose")
    assert "intensity equalize" in res.stderr
    assert jsonl(res.stdout)[0]["probability"] != pytest.approx(bare[0]["probability"],
                                                                abs=1e-5)


def test_threshold_by_name_and_help_documents_exit_codes(models, data):
    res = run(models["float"], data["good"][0], "--threshold", "sensitivity", "-f", "jsonl")
    assert jsonl(res.stdout)[0]["threshold"] == 0.3
    helptext = run("--help").stdout
    assert "Exit codes" in helptext and "no image succeeded" in helptext


def test_progress_bar_only_when_asked_or_on_a_terminal(models, data):
    folder = data["root"] / "data"
    quiet = run(models["float"], folder, "-f", "csv")
    assert "\r" not in quiet.stderr  # CliRunner's stderr is not a terminal
    shown = run(models["float"], folder, "-f", "csv", "--progress")
    assert "classifying [" in shown.stderr and "6/6" in shown.stderr


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json"])
def test_output_then_resume_after_a_crash(models, data, fmt):
    root = data["root"]
    out = root / f"results.{fmt}"
    inputs = [root / "data", root / "bad"]
    first = run(models["float"], *inputs, "-o", out)
    assert first.exit_code == 1
    records = read_output(out, fmt)
    assert len(records) == 6 + len(data["bad"])
    ok = [r for r in records if r["status"] == "ok"]

    # A crash: the last records are gone and a half-written one is left behind.
    if fmt == "json":
        out.write_text(json.dumps(ok[:2]))
        side = sidecar_path(out)
        side.write_text("".join(json.dumps(r) + "\n" for r in ok[2:4]) + '{"file": "x", "la')
    else:
        text = out.read_text()
        lines = text.splitlines(keepends=True)
        keep = (1 if fmt == "csv" else 0) + 3
        out.write_text("".join(lines[:keep]) + lines[keep][: len(lines[keep]) // 2])

    # The broken link gets a target: failed files are retried on resume.
    Path(data["bad"]["broken_link"]).unlink()
    make_images(root / "fixed", 1)[0].rename(data["bad"]["broken_link"])

    again = run(models["float"], *inputs, "-o", out)
    assert again.exit_code == 1
    done_before = 4 if fmt == "json" else 3
    assert f"{done_before} already done" in again.stderr
    records = read_output(out, fmt)
    paths = [r["path"] for r in records]
    assert len(paths) == len(set(paths)) == 6 + len(data["bad"])
    assert sum(r["status"] == "ok" for r in records) == 7
    assert not sidecar_path(out).exists()

    # Everything done: a third run computes nothing and still succeeds where it can.
    third = run(models["float"], root / "data", "-o", out)
    assert third.exit_code == 0 and "0 classified" in third.stderr
    assert len(read_output(out, fmt)) == len(records)


def test_resume_refuses_another_models_output(models, data):
    out = data["root"] / "r.jsonl"
    assert run(models["float"], data["good"][0], "-o", out).exit_code == 0
    res = run(models["uint8"], data["good"][0], "-o", out)
    assert res.exit_code == 2 and "another model" in res.stderr
    res = run(models["uint8"], data["good"][0], "-o", out, "--overwrite")
    assert res.exit_code == 0
    assert {r["model_id"] for r in read_output(out, "jsonl")} != set()
    res = run(models["float"], data["good"][0], "-o", data["root"] / "r.txt")
    assert res.exit_code == 2 and "--format" in res.stderr


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json"])
def test_resume_refuses_results_decided_at_another_threshold(models, data, fmt):
    out = data["root"] / f"t.{fmt}"
    first, rest = data["good"][0], data["good"][1:]
    assert run(models["float"], first, "-o", out).exit_code == 0
    res = run(models["float"], first, *rest, "-o", out, "--threshold", "0.9")
    assert res.exit_code == 2 and "decided at threshold" in res.stderr, res.stderr
    assert len(read_output(out, fmt)) == 1  # untouched
    assert run(models["float"], first, *rest, "-o", out).exit_code == 0  # same threshold
    assert len({r["threshold"] for r in read_output(out, fmt)}) == 1


def signal_midway(cmd: list[str], written: Path, sig: int) -> subprocess.Popen:
    """Start `cmd` and send it `sig` once `written` holds more than 30 lines (a batch in
    its middle); stderr is piped for the caller."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if written.exists() and written.read_text().count("\n") > 30:
            proc.send_signal(sig)
            break
        time.sleep(0.01)
    return proc


def test_output_survives_sigkill_and_resumes(models, tmp_path):
    """A real kill -9 in the middle of a batch: nothing written is lost, nothing is redone."""
    images = make_images(tmp_path / "many", 400, size=24)
    out = tmp_path / "out.csv"
    cmd = [sys.executable, "-m", "edge_toolkit.cli", "classify", str(models["float"]),
           str(tmp_path / "many"), "-o", str(out), "-t", "1"]
    proc = signal_midway(cmd, out, signal.SIGKILL)
    proc.communicate()
    text = out.read_text()
    before = list(csv.DictReader(io.StringIO(text[: text.rfind("\n") + 1])))
    assert proc.returncode == -signal.SIGKILL and 30 <= len(before) < len(images)
    resumed = subprocess.run(cmd + ["-q"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    after = read_output(out, "csv")
    assert [r["path"] for r in after[: len(before)]] == [r["path"] for r in before]
    assert sorted(r["path"] for r in after) == sorted(str(p.resolve()) for p in images)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_sigterm_stops_between_images_and_keeps_what_was_written(models, tmp_path, fmt):
    """What a service manager or `timeout` sends: the run ends as on Ctrl-C (exit 143),
    the output whole and its lock gone, and a rerun finishes the rest."""
    images = make_images(tmp_path / "many", 400, size=24)
    out = tmp_path / f"out.{fmt}"
    cmd = [sys.executable, "-m", "edge_toolkit.cli", "classify", str(models["float"]),
           str(tmp_path / "many"), "-o", str(out), "-t", "1"]
    written = out if fmt == "csv" else out.with_name(out.name + ".partial.jsonl")
    proc = signal_midway(cmd, written, signal.SIGTERM)
    err = proc.communicate()[1]
    assert proc.returncode == 143, err
    assert "stopped (SIGTERM)" in err and "Traceback" not in err
    before = read_output(out, fmt)  # a whole document, json included
    assert 30 <= len(before) < len(images)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".lock")]
    resumed = subprocess.run(cmd + ["-q"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(r["path"] for r in read_output(out, fmt)) == sorted(
        str(p.resolve()) for p in images)


def read_output(path: Path, fmt: str) -> list[dict]:
    text = path.read_text()
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text)))
    if fmt == "jsonl":
        return jsonl(text)
    return json.loads(text)


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_ctrl_c_keeps_what_was_done(models, data, monkeypatch, fmt):
    from edge_toolkit.runtime.classifier import Classifier

    real = Classifier.classify_source
    calls = []

    def interrupt_third(self, src):
        calls.append(src)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, src)

    monkeypatch.setattr(Classifier, "classify_source", interrupt_third)
    out = data["root"] / f"partial.{fmt}"
    res = run(models["float"], data["root"] / "data", "-o", out)
    assert res.exit_code == 130 and "interrupted: 2 classified" in res.stderr
    assert len(read_output(out, fmt)) == 2 and not sidecar_path(out).exists()
    monkeypatch.setattr(Classifier, "classify_source", real)
    res = run(models["float"], data["root"] / "data", "-o", out)
    assert res.exit_code == 0 and "2 already done" in res.stderr
    assert len(read_output(out, fmt)) == 6


def test_a_full_disk_stops_the_batch_with_a_clear_error(models, data, monkeypatch):
    import errno

    from edge_toolkit.runtime import writers

    def full(self, line):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = data["root"] / "full.jsonl"
    monkeypatch.setattr(writers._DurableAppender, "append", full)
    res = run(models["float"], data["root"] / "data", "-o", out)
    assert res.exit_code == 2
    assert "No space left on device" in res.stderr and "rerun to resume" in res.stderr
    assert "Traceback" not in res.output
