"""Awkward dataset inputs get one clear line, never a traceback, and every command reads the
same layouts: manifests in Excel's UTF-8 (byte-order mark) or another encoding, split folders
spelled `valid/` or `Training/`, a folder given twice to --data, file names that are not
UTF-8, a loose file that is no model in a benchmark batch, and out-of-range counts."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_manifest, write_tiny_dataset
from tiny_models import cached_models, tiny_card

from edge_toolkit.data import DatasetError, discover
from edge_toolkit.multisource import (
    discover_scoring,
    discover_sources,
    manifest_column,
    sample_groups,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return cached_models(tmp_path_factory, {"float": {}})["float"]


def recode(path: Path, encoding: str, text: str | None = None) -> None:
    """Rewrite a manifest in another encoding (Excel's "CSV UTF-8" is `utf-8-sig`)."""
    path.write_bytes((text or path.read_text()).encode(encoding))


def test_a_manifest_with_a_byte_order_mark_keeps_its_columns(tmp_path):
    data = write_tiny_dataset(tmp_path / "site", per_class=2)
    write_manifest(data, "group", lambda i: "fam-1")
    text = (data / "manifest.csv").read_text().replace("group", "group,region")
    text = text.replace("fam-1", "fam-1,hand")
    recode(data / "manifest.csv", "utf-8-sig", text)
    ds = discover_sources([data])
    assert set(sample_groups(ds)) == {"site:fam-1"}
    paths = [s.path for s in ds.samples]
    assert set(manifest_column(ds, paths, "region")) == {"hand"}


def test_a_manifest_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    data = write_tiny_dataset(tmp_path / "site", per_class=2)
    write_manifest(data, "region", lambda i: "händ" if i == 3 else "hand")
    recode(data / "manifest.csv", "latin-1")
    with pytest.raises(DatasetError, match=r"manifest\.csv: not UTF-8 text \(line 5, byte"):
        sample_groups(discover_sources([data]))


def test_evaluate_names_a_bad_manifest_before_scoring(tiny, tmp_path):
    from edge_toolkit.evaluate import EvaluationError, evaluate_model

    data = write_tiny_dataset(tmp_path / "site", per_class=2, size=32)
    write_manifest(data, "group", lambda i: "é")
    recode(data / "manifest.csv", "latin-1")
    with pytest.raises(EvaluationError, match=r"site/manifest\.csv: not UTF-8 text \(line 2"):
        evaluate_model(tiny, [data], bootstrap=0)


@pytest.mark.parametrize("names", [("train", "valid", "test"),
                                   ("Training", "Validation", "Testing")])
def test_evaluate_reads_every_split_spelling_train_reads(tmp_path, names):
    data = tmp_path / "site"
    write_tiny_dataset(data, per_class=2, splits=names)
    assert set(discover(data).splits) == {"train", "val", "test"}
    assert set(discover_scoring(data).splits) == {"train", "val", "test"}


def test_two_folders_for_one_split_are_refused(tmp_path):
    data = write_tiny_dataset(tmp_path / "site", per_class=2, splits=("train", "val", "valid"))
    for read in (discover, discover_scoring):
        with pytest.raises(DatasetError, match=r"both val/ and valid/ are the val split"):
            read(data)


def test_a_folder_given_twice_is_refused_by_every_command(tiny, tmp_path):
    from edge_toolkit.benchmark_cli import benchmark
    from edge_toolkit.evaluate import EvaluationError, scoring_dataset

    data = write_tiny_dataset(tmp_path / "d1", per_class=2, size=32)
    twice = [data, tmp_path / "." / "d1"]
    with pytest.raises(DatasetError, match="the same folder given twice to --data"):
        discover_sources(twice)
    with pytest.raises(EvaluationError, match="the same folder given twice to --data"):
        scoring_dataset(tiny_card(), twice)
    res = CliRunner().invoke(benchmark, [str(tiny), "--data", str(twice[0]), "--data",
                                         str(twice[1]), "--runs", "1", "--warmup", "0",
                                         "--threads", "1", "--out", str(tmp_path / "bo")])
    assert res.exit_code == 2 and "given twice to --data" in res.output, res.output
    # two different folders that share a name are two sources, in evaluate as in train
    other = write_tiny_dataset(tmp_path / "elsewhere" / "d1", per_class=2, size=32)
    assert scoring_dataset(tiny_card(), [data, other]).source_names == ["d1", "d1-2"]


def test_resplit_keeps_a_file_whose_name_is_not_utf8(tmp_path):
    from edge_toolkit.audit.cli import audit

    data = write_tiny_dataset(tmp_path / "d3", per_class=3)
    src = next((data / "train" / "fractured").iterdir())
    odd = bytes(data / "train" / "fractured") + b"/good\xff.png"
    shutil.copy(src, odd)
    out = tmp_path / "rs3"
    res = CliRunner().invoke(audit, [str(data), "--resplit", str(out), "--no-shortcuts"])
    assert res.exit_code == 0, res.output
    assert "good\\xff.png" in res.output  # printable in any locale
    with open(out / "resplit_manifest.csv", newline="", encoding="utf-8",
              errors="surrogateescape") as f:
        rows = list(csv.DictReader(f))
    assert any(r["source"] == "train/fractured/good\udcff.png" for r in rows)
    assert all((out / r["path"]).is_file() for r in rows)  # the names are the files' own


def test_evaluate_reads_back_a_non_utf8_name_from_predictions(tmp_path):
    from edge_toolkit.evaluate import run_split_samples

    with open(tmp_path / "predictions.csv", "w", newline="", encoding="utf-8",
              errors="surrogateescape") as f:  # as the trainer writes it
        csv.writer(f).writerows([["split", "source", "path", "label", "probability_raw"],
                                 ["val", "d1", "d1/val/fractured/good\udcff.png", 1, 0.5]])
    [s] = run_split_samples(tmp_path, "val")
    assert s.path == Path("d1/val/fractured/good\udcff.png")


def test_benchmark_records_a_file_that_is_no_model_and_writes_the_table(tiny, tmp_path):
    from edge_toolkit.benchmark_cli import benchmark

    data = write_tiny_dataset(tmp_path / "d1", per_class=2, size=32)
    fake = tmp_path / "fake.tflite"
    fake.write_text("not a model\n")
    out = tmp_path / "bo"
    res = CliRunner().invoke(benchmark, [str(fake), str(tiny), "--data", str(data), "--runs",
                                         "1", "--warmup", "0", "--threads", "1",
                                         "--bootstrap", "5", "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert f"not measured: {fake}: not a TFLite model" in res.output
    rows = json.loads((out / "benchmark.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["unreadable", "not-validated"]
    assert rows[1]["accuracy"] and rows[1]["latency"]


@pytest.mark.parametrize("report", [
    {"results": [{"variant": "float32", "status": "x"}]},  # no family
    {"family": "x", "results": [7]},  # a row that is no object
    {"family": "x", "results": [{"file": "a.tflite"}]},  # a row without its variant
])
def test_a_malformed_export_report_is_an_unreadable_row(tmp_path, report):
    """Keys and rows a report lacks were read outside the check: KeyError or
    AttributeError tracebacks instead of a row saying why."""
    from edge_toolkit.benchmark import BenchmarkError, rows_from_run

    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "export" / "report.json").write_text(json.dumps(report))
    with pytest.raises(BenchmarkError, match="not a readable export report"):
        rows_from_run(run)


@pytest.mark.parametrize("runs", ["0", "-2"])
def test_benchmark_refuses_no_timed_runs(tiny, tmp_path, runs):
    from edge_toolkit.benchmark_cli import benchmark

    data = write_tiny_dataset(tmp_path / "d1", per_class=2, size=32)
    res = CliRunner().invoke(benchmark, [str(tiny), "--data", str(data), "--runs", runs,
                                         "--warmup", "0", "--threads", "1", "--bootstrap",
                                         "5", "--out", str(tmp_path / "bo")])
    assert res.exit_code == 2 and "'--runs'" in res.output, res.output
    assert not (tmp_path / "bo" / "benchmark.json").exists()  # refused before any work


def test_evaluate_refuses_a_negative_bootstrap(tiny, tmp_path):
    from edge_toolkit.evaluate import EvaluationError, evaluate_model

    data = write_tiny_dataset(tmp_path / "d1", per_class=2, size=32)
    with pytest.raises(EvaluationError, match="--bootstrap -5"):
        evaluate_model(tiny, [data], bootstrap=-5)


def test_every_message_shows_a_name_that_is_not_utf8_with_escapes():
    """`shown` is what every command prints a file name through: the bytes of a name that
    is not UTF-8 (lone surrogates in Python) used to reach the terminal raw and fail to
    encode there, outside a C locale."""
    from edge_toolkit.files import shown

    odd = b"scan\xff\n.png".decode("utf-8", "surrogateescape")
    assert shown(odd) == "scan\\xff\\n.png"
    assert shown(odd).encode("utf-8")  # printable in a UTF-8 terminal
    assert shown("fracture é.png") == "fracture é.png"


def test_a_missing_folder_is_named_as_what_the_user_gave(tmp_path):
    """`--data /nowhere` was answered "not found: pass --data", as if none had been given."""
    from edge_toolkit.data import DatasetError
    from edge_toolkit.multisource import dataset_for_card

    with pytest.raises(DatasetError, match=r"nowhere: no such dataset folder \(--data\)"):
        dataset_for_card({"roots": [str(tmp_path)]}, [tmp_path / "nowhere"])
    with pytest.raises(DatasetError, match="named in the model card.*pass --data"):
        dataset_for_card({"roots": [str(tmp_path / "moved")]})
