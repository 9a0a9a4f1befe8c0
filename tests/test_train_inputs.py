"""What `train` and `pipeline` do with settings and folders that cannot work: one line and
nothing trained, never a traceback after the work is done; and a run folder used again never
mixes the earlier run's files (exports, checkpoint) into the new run's."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from extras import require

require("tensorflow")

from edge_toolkit.synthetic import write_synthetic  # noqa: E402
from edge_toolkit.train.cli import train as train_cmd  # noqa: E402
from edge_toolkit.train.trainer import TrainConfig, train  # noqa: E402

TINY = {"input_size": 16, "width": 4, "stages": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("inputs") / "d",
                           {"train": 8, "val": 6, "test": 4}, size=16)


def _train(data: Path, out: Path, name: str = "r", **kw) -> Path:
    cfg = TrainConfig(data=str(data), family="scratch_cnn", out=str(out), name=name,
                      model=TINY, epochs=1, batch_size=8, bootstrap=0, **kw)
    return train(cfg, log=lambda m: None)


def test_training_again_into_a_named_folder_moves_the_earlier_run_aside(data, tmp_path):
    """An export and a checkpoint left by the earlier run must not pass for the new run's
    (a benchmark of the folder listed the old files as the new model's): the earlier run
    is moved aside whole, nothing of it deleted."""
    out = tmp_path / "runs"
    run = _train(data, out)
    (run / "export").mkdir()
    (run / "export" / "scratch_cnn-float32.tflite").write_bytes(b"old export")
    (run / "best.weights.h5").write_bytes(b"an interrupted run's checkpoint")
    old_card = (run / "card.json").read_text()
    lines: list[str] = []
    cfg = TrainConfig(data=str(data), family="scratch_cnn", out=str(out), name="r",
                      model=TINY, epochs=1, batch_size=8, bootstrap=0)
    again = train(cfg, log=lines.append)
    assert again == run and not (run / "export").exists()
    assert not (run / "best.weights.h5").exists() and (run / "card.json").exists()
    aside = [p for p in (out / ".replaced").iterdir()]
    assert len(aside) == 1 and aside[0].name.startswith("r-")
    assert (aside[0] / "export" / "scratch_cnn-float32.tflite").read_bytes() == b"old export"
    assert (aside[0] / "card.json").read_text() == old_card
    assert any("held an earlier run: moved to" in m for m in lines), lines


def test_a_named_folder_with_other_things_in_it_is_refused(data, tmp_path):
    out = tmp_path / "runs"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "mine.txt").write_text("not a run")
    with pytest.raises(ValueError, match="is not a run folder"):
        _train(data, out, name="notes")
    assert (out / "notes" / "mine.txt").read_text() == "not a run"


def test_a_file_as_out_is_one_line(data, tmp_path):
    (tmp_path / "afile").write_text("x")
    res = CliRunner().invoke(train_cmd, [
        "--data", str(data), "--model", "scratch_cnn", "--size", "16", "--epochs", "1",
        "--out", str(tmp_path / "afile"), "--name", "r"])
    last = res.output.strip().splitlines()[-1]
    assert res.exit_code == 1 and "afile" in last and "choose another --out" in last
    assert "Traceback" not in res.output and res.output.count("Error:") == 1


@pytest.mark.parametrize("args,where", [
    (["--batch-size", "0"], "--batch-size"),
    (["--target-sensitivity", "2"], "--target-sensitivity"),
    (["--target-sensitivity", "-1"], "--target-sensitivity"),
    (["--epochs", "-1"], "--epochs"),
    (["--fine-tune-epochs", "-2"], "--fine-tune-epochs"),
])
def test_settings_that_cannot_train_are_usage_errors(data, tmp_path, args, where):
    res = CliRunner().invoke(train_cmd, ["--data", str(data), "--model", "scratch_cnn",
                                         "--out", str(tmp_path / "runs"), *args])
    assert res.exit_code == 2 and where in res.output and "Traceback" not in res.output
    assert not (tmp_path / "runs").exists()


def test_zero_epochs_for_a_head_trained_by_sgd_is_refused_before_any_image_loads(data,
                                                                                  tmp_path):
    with pytest.raises(ValueError, match="epochs 0: 1 or more"):
        train(TrainConfig(data=str(data), family="scratch_cnn", out=str(tmp_path / "runs"),
                          name="z", model=TINY, epochs=0, batch_size=8, bootstrap=0),
              log=lambda m: None)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ValueError, match="target sensitivity 1.5"):
        train(TrainConfig(data=str(data), family="scratch_cnn", out=str(tmp_path / "runs"),
                          model=TINY, epochs=1, target_sensitivity=1.5), log=lambda m: None)


@pytest.mark.parametrize("content,message", [
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n", "Git LFS pointer"),
    (b"not hdf5 at all", "not an HDF5 weights file"),
])
def test_a_weights_file_that_is_not_weights_is_one_line(data, tmp_path, content, message):
    weights = tmp_path / "w.h5"
    weights.write_bytes(content)
    res = CliRunner().invoke(train_cmd, ["--data", str(data), "--size", "32",
                                         "--weights", str(weights),
                                         "--out", str(tmp_path / "runs"), "--name", "w"])
    last = res.output.strip().splitlines()[-1]
    assert res.exit_code == 1 and message in last and "w.h5" in last
    assert "Traceback" not in res.output and res.output.count("Error:") == 1


def test_a_file_name_that_is_not_utf8_trains_and_keeps_its_name(data, tmp_path):
    """The run wrote predictions.csv last and crashed on such a name, after training."""
    odd = tmp_path / "odd"
    shutil.copytree(data, odd)
    first = sorted((odd / "train" / "fractured").iterdir())[0]
    name = first.parent / (b"good\xff" + first.suffix.encode()).decode("utf-8",
                                                                     "surrogateescape")
    try:
        first.rename(name)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system does not take file names that are not UTF-8")
    run = _train(odd, tmp_path / "runs")
    with open(run / "predictions.csv", newline="", encoding="utf-8",
              errors="surrogateescape") as f:
        paths = {r["path"] for r in csv.DictReader(f)}
    assert str(name) in paths


def test_pipeline_refuses_unknown_families_and_variants_before_training(tmp_path):
    from edge_toolkit.pipeline import pipeline

    for args, where in ((["--families", ""], "--families"),
                        (["--families", "mobilenetv2,nope"], "nope"),
                        (["--variants", "bogus"], "bogus")):
        res = CliRunner().invoke(pipeline, [*args, "--out", str(tmp_path / "p")])
        assert res.exit_code == 2 and where in res.output, res.output
        assert not (tmp_path / "p").exists()
    (tmp_path / "afile").write_text("x")
    res = CliRunner().invoke(pipeline, ["--out", str(tmp_path / "afile"), "--families",
                                        "scratch_cnn"])
    assert res.exit_code == 1 and "cannot be the pipeline folder" in res.output
    assert "Traceback" not in res.output


def test_an_interrupted_stage_is_recorded_and_the_interrupt_goes_on():
    from edge_toolkit.pipeline import Stages

    saved: list[list[dict]] = []
    stages = Stages(lambda m: None, lambda: saved.append(list(stages.results)))

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stages.run("train scratch_cnn", interrupted)
    assert saved[-1][-1]["stage"] == "train scratch_cnn"
    assert saved[-1][-1]["reason"] == "interrupted (Ctrl-C)" and not stages.ok


def test_a_run_that_fails_before_writing_anything_leaves_no_empty_folder(tmp_path):
    """A val split with one class fails once the images are loaded, after the run folder
    was made: an empty folder was left behind for every failed try."""
    data = write_synthetic(tmp_path / "d", {"train": 8, "val": 6, "test": 4}, size=16)
    for p in (data / "val" / "not fractured").iterdir():
        p.unlink()
    with pytest.raises(ValueError, match="both classes"):
        _train(data, tmp_path / "runs", name="failed")
    assert not (tmp_path / "runs" / "failed").exists()
