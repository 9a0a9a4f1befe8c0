"""What `export` does with inputs it cannot use and with a folder it exported into before:
one line naming the file and the problem, refused before any work (exit 2), never a
traceback; a second export merges into the report; Ctrl-C keeps every finished variant and
each earlier file (exit 130). Tiny 16 px runs, float32/float16 only: seconds each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from extras import require

require("tensorflow_model_optimization")
require("ai_edge_litert", "device")

from quantize_fixtures import make_tiny_run  # noqa: E402

from edge_toolkit.cli import main  # noqa: E402
from edge_toolkit.quantize.exporter import (  # noqa: E402
    ExportConfig,
    ExportError,
    export_run,
)
from edge_toolkit.quantize.variants import VARIANTS, parse_variants  # noqa: E402

QUICK = {"tolerance": 1.0, "bootstrap": 0}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("export-inputs"))


@pytest.fixture
def run(base_run, tmp_path):
    """A copy of the tiny run (its card still names the module's dataset folder)."""
    return Path(shutil.copytree(base_run, tmp_path / "run"))


def _export(run: Path, variants: str, log=None, **kw):
    return export_run(run, ExportConfig(variants=variants, **(QUICK | kw)),
                      log=log or (lambda m: None))


def _report(run: Path) -> dict:
    return json.loads((run / "export" / "report.json").read_text())


def _cli(*args: str):
    return CliRunner().invoke(main, ["export", *args])


def _one_line_refusal(res, *words: str) -> str:
    """The refusal's line: exit 2, one `Error:` line holding `words`, no traceback."""
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert "Traceback" not in res.output and len(errors) == 1, res.output
    line = errors[0]
    for w in words:
        assert w in line, line
    return line


def test_a_second_export_merges_into_the_report(run):
    """float32 then float16 into one folder: both rows stay, so benchmark lists both and
    float16 keeps its ΔAUC against float32; a row whose file is gone, or whose file came
    from another version of the run, is dropped with a line, its file left alone."""
    from edge_toolkit.benchmark import rows_from_run

    _export(run, "float32")
    first = _report(run)["results"][0]
    _export(run, "float16")
    data = _report(run)
    assert [r["variant"] for r in data["results"]] == ["float32", "float16"]
    assert data["results"][0] == first and data["kept"] == ["float32"]
    assert [r.variant for r in rows_from_run(run)] == ["float32", "float16"]
    assert "Kept from an earlier export" in (run / "export" / "report.md").read_text()
    # exported again: its row is replaced, not added twice
    _export(run, "float32")
    data = _report(run)
    assert [r["variant"] for r in data["results"]] == ["float32", "float16"]
    assert data["kept"] == ["float16"] and data["results"][0]["exported"] >= first["exported"]
    # a file that is gone takes its row with it
    (run / "export" / "scratch_cnn-float16.tflite").unlink()
    lines: list[str] = []
    _export(run, "float32", log=lines.append)
    assert [r["variant"] for r in _report(run)["results"]] == ["float32"]
    assert any("earlier row float16 not kept" in m and "is gone" in m for m in lines), lines
    # another version of the run (its card written again): the earlier rows are not its own
    card = json.loads((run / "card.json").read_text())
    card["created"] = "2026-02-02T00:00:00+00:00"
    (run / "card.json").write_text(json.dumps(card))
    lines.clear()
    _export(run, "float16", log=lines.append)
    assert [r["variant"] for r in _report(run)["results"]] == ["float16"]
    assert any("earlier row float32 not kept" in m for m in lines), lines
    assert (run / "export" / "scratch_cnn-float32.tflite").exists()  # nothing deleted


def test_ctrl_c_keeps_the_earlier_file_and_what_finished(run, monkeypatch):
    """Interrupted while re-exporting float16: its earlier file is untouched, float32 (done
    before) is in report.json, one line says so, exit 130 (not click's "Aborted!", 1)."""
    import edge_toolkit.quantize.convert as convert
    import edge_toolkit.quantize.exporter as exporter

    _export(run, "float32,float16")
    out = run / "export"
    before = (out / "scratch_cnn-float16.tflite").read_bytes()
    real = convert.to_tflite

    def interrupted(model, variant, *args, **kwargs):
        if variant.name == "float16":
            raise KeyboardInterrupt
        return real(model, variant, *args, **kwargs)

    monkeypatch.setattr(convert, "to_tflite", interrupted)
    res = _cli(str(run), "--variants", "float32,float16", "--tolerance", "1",
               "--bootstrap", "0")
    assert res.exit_code == 130, res.output
    assert "Aborted" not in res.output and "Traceback" not in res.output
    assert res.stderr.strip().splitlines() == [
        f"interrupted while exporting float16: finished float32 (in {out / 'report.json'}); "
        "float16's earlier file, if any, is kept"]
    assert (out / "scratch_cnn-float16.tflite").read_bytes() == before
    data = _report(run)
    assert [r["variant"] for r in data["results"]] == ["float32", "float16"]
    assert data["kept"] == ["float16"]
    assert not [p for p in out.rglob("*") if p.name.endswith((".partial", ".tmp"))]
    # interrupted before any variant: nothing written, still one line and 130
    def stop() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(exporter, "_versions", stop)
    res = _cli(str(run), "--variants", "float32", "--bootstrap", "0")
    assert res.exit_code == 130 and "before any variant" in res.stderr, res.output


def test_a_hand_edited_report_row_is_not_carried_into_the_table(run):
    """A kept row is printed in report.md: one whose numbers are not numbers made the
    export fail after its first file was already replaced."""
    _export(run, "float32")
    path = run / "export" / "report.json"
    data = json.loads(path.read_text())
    data["results"][0]["delta_auc"] = "x"
    path.write_text(json.dumps(data))
    lines: list[str] = []
    report = _export(run, "float16", log=lines.append)
    assert [r.variant for r in report.results] == ["float16"]
    assert any("not a readable export report" in m and "delta_auc" in m for m in lines), lines
    assert (run / "export" / "scratch_cnn-float32.tflite").exists()  # its file stays


def test_a_failed_retry_keeps_the_earlier_good_file_and_row(run, monkeypatch):
    """Exporting float16 again fails (a converter error, memory): the float16 file exported
    before from this very model, and its row, are not lost to the retry."""
    import edge_toolkit.quantize.convert as convert

    _export(run, "float16")
    out = run / "export"
    before, row = (out / "scratch_cnn-float16.tflite").read_bytes(), _report(run)["results"]

    def exploded(*args, **kwargs):
        raise MemoryError("converter ran out of memory")

    monkeypatch.setattr(convert, "to_tflite", exploded)
    lines: list[str] = []
    _export(run, "float16", log=lines.append)
    assert (out / "scratch_cnn-float16.tflite").read_bytes() == before
    assert _report(run)["results"] == row
    assert any("this export failed" in m and "are kept" in m for m in lines), lines


def test_a_validation_result_moving_status_folders_removes_the_other_only_after(run):
    """A file that validated before and fails now lands in failed/; the shipped one is
    removed only once the failed one is written (and the report says failed)."""
    out = run / "export"
    _export(run, "float32")
    assert (out / "scratch_cnn-float32.tflite").exists()
    _export(run, "float32", tolerance=-1.0)
    assert (out / "failed" / "scratch_cnn-float32.tflite").exists()
    assert not (out / "scratch_cnn-float32.tflite").exists()
    assert _report(run)["results"][0]["file"] == "failed/scratch_cnn-float32.tflite"


def test_a_dataset_without_its_val_folder_cannot_stand_in(run, tmp_path):
    """Export validates and chooses thresholds on the run's val images: a copy of the data
    without val/ (val would be carved from train) is refused, before export/ exists."""
    data = Path(json.loads((run / "card.json").read_text())["dataset"]["root"])
    copy = tmp_path / "no-val"
    for split in ("train", "test"):
        shutil.copytree(data / split, copy / split)
    with pytest.raises(ExportError, match="no val/ folder, but the run was validated on one"):
        _export(run, "float32", data=str(copy))
    assert not (run / "export").exists()
    # and the other way round: a run that carved its val, given data with a val/ folder
    card = json.loads((run / "card.json").read_text())
    card["dataset"]["carved_val"] = True
    (run / "card.json").write_text(json.dumps(card))
    with pytest.raises(ExportError, match="carved its val split from train"):
        _export(run, "float32")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a whole zip" * 10,
                                     b"version https://git-lfs.github.com/spec/v1\n"])
def test_a_damaged_model_is_one_line_and_leaves_no_export_folder(run, content):
    (run / "model.keras").write_bytes(content)
    res = _cli(str(run), "--variants", "float32")
    _one_line_refusal(res, str(run / "model.keras"))
    assert not (run / "export").exists()


def test_an_out_folder_that_cannot_be_made_is_one_line_before_any_work(run, tmp_path):
    (tmp_path / "afile").write_text("x")
    res = _cli(str(run), "--variants", "float32", "--out", str(tmp_path / "afile" / "sub"))
    _one_line_refusal(res, "afile", "in the way", "--out")
    assert "parent" not in res.output  # refused before the model and data loaded


@pytest.mark.parametrize("args,option", [
    (["--bootstrap", "-5"], "--bootstrap"),
    (["--tolerance", "-1"], "--tolerance"),
    (["--tolerance", "nan"], "--tolerance"),
    (["--tolerance", "inf"], "--tolerance"),
    (["--batch-size", "0"], "--batch-size"),
])
def test_numbers_that_cannot_work_are_refused(run, args, option):
    res = _cli(str(run), "--variants", "float32", *args)
    assert res.exit_code == 2 and option in res.output, res.output
    assert not (run / "export").exists()


def test_config_numbers_are_checked_in_the_library_too():
    for bad in ({"tolerance": float("nan")}, {"tolerance": float("inf")}, {"bootstrap": -5}):
        with pytest.raises(ValueError):
            ExportConfig(**bad).check()
    ExportConfig(bootstrap=0, tolerance=0.0).check()  # 0: no interval, no drop allowed


def test_unknown_variant_names_are_refused_beside_all(tmp_path):
    with pytest.raises(ValueError, match="unknown variant 'bogus'"):
        parse_variants("all,bogus")
    assert [v.name for v in parse_variants("all,float32")] == list(VARIANTS)
    # the command refuses it before it looks at the run folder
    res = _cli(str(tmp_path), "--variants", "all,bogus")
    assert res.exit_code == 2 and "--variants" in res.output and "bogus" in res.output


def test_a_hand_edited_card_is_named(run):
    card_path = run / "card.json"
    card = json.loads(card_path.read_text())
    bad = dict(card, threshold=7)
    card_path.write_text(json.dumps(bad))
    with pytest.raises(ExportError) as err:
        _export(run, "float32")
    assert str(err.value).startswith(f"{card_path}: invalid model card: threshold")
    card["export"]["training"]["batch_size"] = "x"
    card_path.write_text(json.dumps(card))
    res = _cli(str(run), "--variants", "float32")
    _one_line_refusal(res, str(card_path), "export.training.batch_size", "'x'")
    card_path.write_text("{not json")
    with pytest.raises(ExportError, match=f"^{card_path}: model card is not valid JSON"):
        _export(run, "float32")


def test_a_missing_data_folder_given_is_named_as_given(run, tmp_path):
    res = _cli(str(run), "--variants", "float32", "--data", str(tmp_path / "nonexist"))
    line = _one_line_refusal(res, str(tmp_path / "nonexist"), "--data")
    assert "pass --data" not in line
