"""Bad inputs a new user or an attacker tries, each through the real command: every one gets
the right exit code and one clear line (per problem) naming the file, never a traceback, a
hang or a crash. One test per input listed in issue 13."""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest
from click.testing import CliRunner
from tiny_models import cached_models, make_images

from edge_toolkit.card import ModelCard, embed_card, split_tflite
from edge_toolkit.card_cli import card as card_cmd
from edge_toolkit.runtime.cli import bench, classify
from edge_toolkit.runtime.writers import OutputLock

MODELS = {"float": {}}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return cached_models(tmp_path_factory, MODELS)["float"]


@pytest.fixture()
def images(tmp_path):
    return make_images(tmp_path / "img", 3)


def invoke(cmd, *args):
    return CliRunner().invoke(cmd, [str(a) for a in args], catch_exceptions=False)


def error_lines(res) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.strip()]


def carded_copy(model, tmp_path, name: str, **changes) -> object:
    """The tiny model with its card's fields replaced (no validation on the way in)."""
    bare, card = split_tflite(model.read_bytes())
    data = json.loads(card.to_json())
    for key, value in changes.items():
        if "." in key:
            section, field = key.split(".")
            data[section][field] = value
        else:
            data[key] = value
    forged = ModelCard.__new__(ModelCard)
    forged.__dict__.update(data)  # bypass the checks, as a hand-edited file would
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(embed_card(bare, forged))
    return path


BAD_CARDS = [
    ({"threshold": "high"}, "threshold must be a number in (0, 1), not 'high'"),
    ({"temperature": "hot"}, "temperature must be a number > 0, not 'hot'"),
    ({"threshold": 5.0}, "threshold must be a number in (0, 1), not 5.0"),
    ({"temperature": 0}, "temperature must be a number > 0, not 0"),
    ({"preprocessing.max_pixels": -1}, "preprocessing.max_pixels must be a positive integer"),
    ({"variant": "int9"}, "variant must be one of keras, float32"),
    ({"input_size": -32}, "input_size must be an integer from 8 to 4096"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_CARDS,
                         ids=[next(iter(c)) + "=" + repr(next(iter(c.values())))
                              for c, _ in BAD_CARDS])
def test_invalid_card_is_refused_by_classify_and_card(model, images, tmp_path, changes,
                                                      message):
    path = carded_copy(model, tmp_path, "bad", **changes)
    res = invoke(classify, path, images[0])
    assert res.exit_code == 2
    lines = error_lines(res)
    assert len(lines) == 1 and str(path) in lines[0] and message in lines[0], lines
    assert "Traceback" not in res.output
    res = invoke(card_cmd, path)
    assert res.exit_code == 2 and res.stdout == ""
    lines = error_lines(res)
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: invalid model card: ")
    assert message in lines[0]


def test_damaged_weights_are_refused_not_classified(model, images, tmp_path):
    """A file whose flatbuffer changed after export (a bad SD card, a broken copy) used to
    load and give confident answers: the checksum stored beside the card catches it."""
    data = model.read_bytes()
    bare, _ = split_tflite(data)
    damaged = bytearray(data)
    middle = len(bare) // 2
    damaged[middle:middle + 64] = bytes(64)  # inside the weights, not the card
    assert bytes(damaged[middle:middle + 64]) != data[middle:middle + 64]
    bad = tmp_path / "damaged.tflite"
    bad.write_bytes(bytes(damaged))
    for cmd, args in ((classify, [bad, *images]), (card_cmd, [bad])):
        res = invoke(cmd, *args)
        assert res.exit_code == 2, res.output
        lines = error_lines(res)
        assert len(lines) == 1 and "weights are damaged" in lines[0], lines
        assert "damaged.tflite" in lines[0]
    assert invoke(classify, model, *images).exit_code == 0  # the intact file still works
    # a file from before checksums (card only) still loads
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        card_json = zf.read("edge_toolkit_card.json")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("edge_toolkit_card.json", card_json)
    old = tmp_path / "old.tflite"
    old.write_bytes(bare + buf.getvalue())
    assert invoke(classify, old, *images).exit_code == 0


def test_a_truncated_file_is_damaged_not_cardless(model, tmp_path):
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(model.read_bytes()[:-40])  # the end of the card archive is gone
    res = invoke(card_cmd, cut)
    assert res.exit_code == 2
    lines = error_lines(res)
    assert len(lines) == 1 and "card is damaged" in lines[0], lines


def test_card_lists_every_problem_on_its_own_line(model, tmp_path):
    path = carded_copy(model, tmp_path, "worse", threshold="high", temperature=0)
    res = invoke(card_cmd, path)
    assert res.exit_code == 2
    lines = error_lines(res)
    assert len(lines) == 2 and all(ln.startswith(f"error: {path}: ") for ln in lines)
    assert "threshold" in lines[0] and "temperature" in lines[1]


def test_valid_card_still_prints(model):
    res = invoke(card_cmd, model, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["family"] == "tiny-test"


def test_card_summarises_in_a_few_lines_and_defaults_to_the_bundled_model():
    """`card` printed about 2,000 lines of JSON (heatmap weights included) for a reader who
    wanted the threshold and the scores."""
    from edge_toolkit.runtime.bundled import bundled_model

    res = invoke(card_cmd)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0] == str(bundled_model()) and len(lines) < 20
    text = res.stdout
    assert "0.3006 (rule: sensitivity >= 0.9" in text and "fractured (positive)" in text
    assert "test at export  fracatlas AUC 0.880" in text and "--json" in lines[-1]


@pytest.mark.parametrize("threads", ["65536", "0", "-3"])
def test_thread_count_out_of_range(model, images, threads):
    res = invoke(classify, model, images[0], "--threads", threads)
    assert res.exit_code == 2 and "1<=x<=64" in res.stderr and "Traceback" not in res.output
    res = invoke(bench, model, "--threads", threads, "--in-process", "--runs", "1")
    assert res.exit_code == 2 and "integer from 1 to 64" in res.stderr


def test_library_refuses_absurd_thread_count(model):
    from edge_toolkit.runtime.classifier import Classifier

    with pytest.raises(ValueError, match="from 1 to 64"):
        Classifier.load(model, num_threads=65536)


def test_fifo_as_model_or_card_is_refused_without_reading(images, tmp_path):
    fifo = tmp_path / "pipe.tflite"
    os.mkfifo(fifo)
    res = invoke(classify, fifo, images[0])  # would block forever if opened for reading
    assert res.exit_code == 2
    assert error_lines(res) == [f"Error: {fifo}: cannot read model (is a FIFO (named pipe), "
                                "not a regular file)"]
    res = invoke(card_cmd, fifo)
    assert res.exit_code == 2
    assert error_lines(res) == [f"error: {fifo}: cannot read (is a FIFO (named pipe), not a "
                                "regular file)"]


def test_fifo_as_image_is_one_failed_file(model, images, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    res = invoke(classify, model, fifo, images[0], "-f", "jsonl")
    assert res.exit_code == 1
    assert f"error: {fifo}: is a FIFO (named pipe), not a regular file" in res.stderr


def test_control_characters_in_file_names_are_escaped(model, images, tmp_path):
    odd = tmp_path / "two\nlines\x1b[31m.png"
    odd.write_text("not a picture")
    res = invoke(classify, model, odd, images[0], "-f", "jsonl")
    assert res.exit_code == 1
    errors = [ln for ln in error_lines(res) if ln.startswith("error:")]
    assert errors == [f"error: {tmp_path}/two\\nlines\\x1b[31m.png: not an image file "
                      "(unrecognised format)"]
    odd_model = tmp_path / "m\nodel.tflite"
    odd_model.write_bytes(b"junk")
    res = invoke(classify, odd_model, images[0])
    assert res.exit_code == 2
    lines = error_lines(res)
    assert len(lines) == 1 and "m\\nodel.tflite" in lines[0]
    good = tmp_path / "a\nb.png"  # a readable picture with a newline in its name
    good.write_bytes(images[0].read_bytes())
    res = invoke(classify, model, good)  # the terminal table: one row, the name escaped
    rows = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert res.exit_code == 0 and len(rows) == 2 and "a\\nb.png" in rows[1], res.stdout


def test_a_rejected_picture_with_control_characters_in_its_name_is_one_escaped_line(
        model, tmp_path):
    from PIL import Image

    odd = tmp_path / "blank\nfake.png"
    Image.new("L", (200, 200), 128).save(odd)  # near-uniform: the gate refuses it
    res = invoke(classify, model, odd, "-f", "jsonl")
    assert res.exit_code == 3
    lines = [ln for ln in error_lines(res) if not ln.startswith(("done:", "hint:"))]
    assert lines == [f"rejected: {tmp_path}/blank\\nfake.png: near-uniform frame "
                     "(contrast 0.0 < 8)"]
    assert "hint: a rejected picture is not a usable radiograph" in res.stderr


def test_a_loader_warning_for_a_name_with_control_characters_is_one_escaped_line(
        model, images, tmp_path):
    from PIL import Image

    odd = tmp_path / "two\npages.tif"
    first = Image.open(images[0]).convert("L")
    first.save(odd, save_all=True, append_images=[Image.new("L", first.size, 0)])
    res = invoke(classify, model, odd, "-f", "jsonl")
    warned = [ln for ln in error_lines(res) if ln.startswith("warning:")]
    assert warned == [f"warning: {tmp_path}/two\\npages.tif: 2 pictures in one file; "
                      "using the first"]


def test_bench_refuses_to_write_its_table_over_a_model_it_measures(model, tmp_path):
    victim = tmp_path / "victim.tflite"
    victim.write_bytes(model.read_bytes())
    res = invoke(bench, victim, "--runs", "2", "--threads", "1", "-o", victim)
    assert res.exit_code == 2 and "is also one of the models to measure" in res.stderr
    assert victim.read_bytes() == model.read_bytes()


def test_an_empty_folder_beside_other_paths_is_named(model, images, tmp_path):
    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)
    (empty / ".hidden" / "x.png").write_bytes(images[0].read_bytes())  # hidden: not walked
    (empty / "notes.txt").write_text("no pictures here")
    res = invoke(classify, model, images[0], empty)
    assert res.exit_code == 0  # a warning, not a failed image
    assert [ln for ln in error_lines(res) if ln.startswith("warning:")] == [
        f"warning: {empty}: no images in this folder"]
    assert invoke(classify, model, images[0].parent, empty).exit_code == 0


@pytest.mark.parametrize("extra", [[], ["--overwrite"], ["-f", "csv", "--overwrite"]])
def test_an_output_that_is_one_of_the_inputs_is_refused_untouched(model, images, tmp_path,
                                                                  extra):
    """`-o x.jpg` with x.jpg among the images must not empty the radiograph first."""
    target = images[1]
    before = target.read_bytes()
    res = invoke(classify, model, *images, *extra, "-o", target)
    assert res.exit_code == 2
    lines = error_lines(res)
    assert len(lines) == 1 and "is also one of the images" in lines[0]
    assert target.read_bytes() == before
    folder = invoke(classify, model, target.parent, "--overwrite", "-o", target)
    assert folder.exit_code == 2 and target.read_bytes() == before


def test_second_writer_of_one_output_is_refused(model, images, tmp_path):
    out = tmp_path / "res.jsonl"
    with OutputLock(out):  # a run in progress holds it
        res = invoke(classify, model, *images, "-o", out)
        assert res.exit_code == 2
        lines = error_lines(res)
        assert len(lines) == 1 and "another run is writing this file" in lines[0]
        assert f"pid {os.getpid()}" in lines[0]
        assert not out.exists()  # nothing written, nothing lost
    res = invoke(classify, model, *images, "-o", out)
    assert res.exit_code == 0 and len(out.read_text().splitlines()) == len(images)
    assert not list(tmp_path.glob(".res.jsonl.lock"))  # released and removed


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json"])
def test_concurrent_writers_never_duplicate_or_lose(model, tmp_path, fmt):
    """Two runs at once on one --output: one writes, the other is refused; all rows once."""
    imgs = make_images(tmp_path / "many", 8)
    out = tmp_path / f"res.{fmt}"
    codes: list[int] = []
    barrier = threading.Barrier(2)

    def one() -> None:
        barrier.wait()
        codes.append(CliRunner().invoke(classify, [str(model), *map(str, imgs), "-o",
                                                   str(out)]).exit_code)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) in ([0, 0], [0, 2])  # second started after the first finished: 0
    text = out.read_text()
    n = len(json.loads(text)) if fmt == "json" else len(text.splitlines()) - (fmt == "csv")
    assert n == len(imgs)


def test_atomic_writes_give_a_new_file_the_umasks_mode_and_keep_an_old_ones(tmp_path):
    """The writer behind calibrate's model file, capture's pictures and the web station's
    files: mkstemp's 0600 must not leak into them."""
    from edge_toolkit.files import atomic_write

    old = os.umask(0o022)
    try:
        new = atomic_write(tmp_path / "new.tflite", b"model")
        assert stat.S_IMODE(new.stat().st_mode) == 0o644
        kept = tmp_path / "kept.tflite"
        kept.write_bytes(b"old")
        kept.chmod(0o640)
        atomic_write(kept, lambda f: f.write(b"new"))
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and kept.read_bytes() == b"new"
        os.umask(0o077)
        assert stat.S_IMODE(atomic_write(tmp_path / "private", b"x").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_an_atomic_write_whose_check_fails_leaves_the_old_file(tmp_path):
    """export reads each model file back under its temporary name before the rename: a file
    that fails the check must not replace the earlier good one, nor stay behind."""
    from edge_toolkit.files import atomic_write

    path = tmp_path / "model.tflite"
    path.write_bytes(b"good")
    seen: list[bytes] = []

    def refuse(tmp) -> None:
        seen.append(tmp.read_bytes())
        raise ValueError("predicts differently")

    with pytest.raises(ValueError, match="predicts differently"):
        atomic_write(path, b"bad", verify=refuse)
    assert seen == [b"bad"] and path.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]


def test_output_files_honour_the_umask(model, images, tmp_path):
    old = os.umask(0o022)
    try:
        for fmt in ("csv", "json", "jsonl"):
            out = tmp_path / f"res.{fmt}"
            assert invoke(classify, model, *images, "-o", out).exit_code == 0
            assert stat.S_IMODE(out.stat().st_mode) == 0o644, fmt
        os.umask(0o077)
        out = tmp_path / "private.json"
        assert invoke(classify, model, *images, "-o", out).exit_code == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_unwritable_output_is_refused_before_any_work(model, images, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    res = invoke(classify, model, *images, "-o", blocker / "res.csv")
    assert res.exit_code == 2 and len(error_lines(res)) == 1
    assert "exists and is not a folder" in res.stderr
    res = invoke(bench, model, "--in-process", "--runs", "1", "-o", blocker / "b.json")
    assert res.exit_code == 2 and "exists and is not a folder" in res.stderr
    assert "ms" not in res.stdout  # refused before measuring


def pretend_read_only(monkeypatch, folder) -> None:
    """Root writes anywhere, so make the write probe in `folder` fail as on a read-only mount."""
    import errno
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*args, **kw):
        if str(kw.get("dir")) == str(folder):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_read_only_output_folder_is_refused_before_any_work(model, images, tmp_path,
                                                            monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    pretend_read_only(monkeypatch, ro)
    res = invoke(classify, model, *images, "-o", ro / "res.csv")
    assert res.exit_code == 2 and len(error_lines(res)) == 1
    assert f"cannot write in {ro} (Read-only file system)" in res.stderr
    res = invoke(bench, model, "--in-process", "--runs", "1", "-o", ro / "b.json")
    assert res.exit_code == 2 and f"cannot write in {ro} (Read-only file system)" in res.stderr


def test_missing_output_folder_is_created(model, tmp_path):
    out = tmp_path / "new" / "deeper" / "b.json"
    res = invoke(bench, model, "--in-process", "--runs", "1", "--warmup", "0", "-t", "1",
                 "-f", "json", "-o", out)
    assert res.exit_code == 0 and json.loads(out.read_text())["models"]


# -- audit ------------------------------------------------------------------------------------


@pytest.fixture()
def datasets(tmp_path):
    from PIL import Image

    root = tmp_path / "ds"
    for split in ("train", "test"):
        for cls in ("fractured", "not fractured"):
            (root / "empty" / split / cls).mkdir(parents=True)
            folder = root / "unreadable" / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                if split == "train":
                    (folder / f"{cls[0]}{i}.png").write_text(f"junk {cls} {i}")
                else:
                    Image.new("L", (20, 20), 40 * i + (cls == "fractured")).save(
                        folder / f"{cls[0]}{i}.png")
            folder = root / "dead" / split / cls
            folder.mkdir(parents=True)
            (folder / "x.png").write_text(f"junk {split} {cls}")
    return root


def audit_run(*args):
    from edge_toolkit.audit.cli import audit

    return invoke(audit, *args, "--no-shortcuts")


def test_audit_of_an_empty_dataset_says_so(datasets):
    res = audit_run(datasets / "empty")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert error_lines(res) == [f"Error: {datasets / 'empty'}: no image files in its train/, "
                                "val/ or test/ folders (0 files with other names): an empty "
                                "dataset"]


def test_audit_of_a_fully_unreadable_dataset_says_so(datasets):
    res = audit_run(datasets / "dead")
    assert res.exit_code == 2
    lines = error_lines(res)
    assert len(lines) == 1 and "none of its 4 image files could be read" in lines[0]


def test_unreadable_train_split_is_never_clean(datasets):
    res = audit_run(datasets / "unreadable", "--json")
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert doc["verdict"].startswith("VERDICT: NOT CHECKED - no train/ image could be read")
    assert doc["leakage"]["train_readable"] == 0
    assert "CLEAN" not in doc["verdict"]


def test_unreadable_eval_split_is_never_clean(datasets, tmp_path):
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(datasets / "unreadable" / "test", mixed / "train")
    shutil.copytree(datasets / "dead" / "test", mixed / "test")
    res = audit_run(mixed)
    assert res.exit_code == 0
    assert "VERDICT: NOT CHECKED - no image could be read in test/ (2 files)." in res.stdout


@pytest.mark.parametrize("option", ["--report", "--resplit"])
def test_audit_outputs_checked_before_the_work(datasets, tmp_path, monkeypatch, option):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    res = audit_run(datasets / "unreadable", option, blocker / "out")
    assert res.exit_code == 2
    assert error_lines(res) == [f"Error: {option}: {blocker} exists and is not a folder"]
    ro = tmp_path / "ro"
    ro.mkdir()
    pretend_read_only(monkeypatch, ro)
    res = audit_run(datasets / "unreadable", option, ro / "out")
    assert res.exit_code == 2
    assert error_lines(res) == [f"Error: {option}: cannot write in {ro} (Read-only file "
                                "system)"]
    res = audit_run(datasets / "unreadable", option, tmp_path / "new" / "folder" / "out")
    assert res.exit_code == 0 and (tmp_path / "new" / "folder" / "out").exists()


def test_audit_with_an_empty_train_split_is_not_checked(datasets, tmp_path):
    import shutil

    root = tmp_path / "notrain"
    (root / "train" / "fractured").mkdir(parents=True)
    shutil.copytree(datasets / "unreadable" / "test", root / "test")
    res = audit_run(root)
    assert res.exit_code == 0 and "Traceback" not in res.output
    assert "VERDICT: NOT CHECKED - no train/ split to compare val/test against." in res.stdout


def test_bench_without_a_model_measures_the_bundled_one():
    from edge_toolkit.runtime.bundled import bundled_model

    res = invoke(bench, "--runs", "2", "--threads", "1", "--in-process", "-f", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [m["model"] for m in doc["models"]] == [str(bundled_model())]


def test_a_training_command_without_tensorflow_exits_2_naming_the_extra(monkeypatch):
    import sys

    from edge_toolkit.train.cli import _need_tf

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as on a device install
    with pytest.raises(Exception) as err:
        _need_tf()
    assert err.value.exit_code == 2 and "fracture-edge-toolkit[train]" in str(err.value)


@pytest.mark.parametrize("changes", [
    {"notes": "ok\x1b[2J\n  threshold       0.99 (fake line)"},
    {"metrics": {"test": {"sources": [1, 2]}}},
    {"metrics": {"test": {"sources": {"a": 0.5}}}},
    {"metrics": {"test": {"auc": 0.8, "auc_ci95": 0.1}}},
    {"metrics": {"test": {"auc": 0.8, "auc_ci95": [0.7]}}},
    {"metrics": {"test": {"auc": 0.8, "operating_points": {
        "high_sensitivity": {"sensitivity": "0.9", "specificity": 0.5}}}}},
    {"metrics": {"val": {}}},
    {"export": {"recalibrations": {"a": 1}}},
    {"export": {"recalibrations": ["x"]}},
])
def test_the_card_summary_of_an_edited_card_is_escaped_and_never_a_traceback(model, tmp_path,
                                                                             changes):
    path = carded_copy(model, tmp_path, "edited", **changes)
    res = CliRunner().invoke(card_cmd, [str(path)])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    if res.exit_code == 0:
        assert "\x1b" not in res.stdout and "(fake line)" not in res.stdout.split("notes")[0]
        assert not any(ln.startswith("  threshold       0.99") for ln in res.stdout.splitlines())
    else:  # refused by the card's own checks: one line per problem
        assert res.exit_code == 2 and all(ln.startswith("error: ")
                                          for ln in error_lines(res))
