"""`edge-toolkit benchmark` on awkward inputs: two runs that share a folder name, an export
report that no longer describes its files, splits whose AUC is undefined, outputs that
cannot be written, models that answer NaN. Each gets honest numbers or one clear line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_tiny_dataset
from tiny_models import cached_models

from edge_toolkit.benchmark_cli import benchmark, parse_threads

FAMILY = "tiny-test"  # the family tiny models' cards name


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """float32 and int8-ptq files of one tiny model, and the float32 of another (seed 1)."""
    return cached_models(tmp_path_factory, {"float": {}, "uint8": {"int8": True},
                                            "other_float": {"seed": 1}})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("bench") / "d1", per_class=8, size=32)


def make_run(run: Path, variants: dict[str, Path], **edits: dict) -> Path:
    """A run folder with `export/` holding each variant's file and the report export writes
    (its rows' `size_bytes` the files' own); `edits[variant]` overrides fields of a row."""
    (run / "export").mkdir(parents=True)
    results = []
    for variant, src in variants.items():
        name = f"{FAMILY}-{variant}.tflite"
        shutil.copy(src, run / "export" / name)
        row = {"variant": variant, "status": "validated", "reason": None, "file": name,
               "size_bytes": src.stat().st_size, "gzip_bytes": 1, "sparsity": 0.0}
        results.append(row | edits.get(variant.replace("-", "_"), {}))
    report = {"run": str(run), "family": FAMILY, "parent": {"run": run.name},
              "results": results}
    (run / "export" / "report.json").write_text(json.dumps(report))
    return run


def invoke(*args: str | Path):
    return CliRunner().invoke(benchmark, [*map(str, args), "--runs", "1", "--warmup", "0",
                                          "--threads", "1", "--bootstrap", "5"])


def strict_json(path: Path):
    """The file as JSON, refusing the bare NaN / Infinity that strict readers refuse."""
    def refuse(name: str):
        raise AssertionError(f"{path.name} holds a bare {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_runs_that_share_a_folder_name_pair_with_their_own_float32(files, data, tmp_path):
    """pipeA/mobilenetv2 and pipeB/mobilenetv2: each int8 file's ΔAUC is against its own
    run's float32, never the other pipeline's, and the table says which run a row is."""
    a = make_run(tmp_path / "pipeA" / "mob", {"float32": files["float"],
                                              "int8-ptq": files["uint8"]})
    b = make_run(tmp_path / "pipeB" / "mob", {"float32": files["other_float"],
                                              "int8-ptq": files["uint8"]})
    res = invoke(a, b, "--data", data, "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    rows = strict_json(tmp_path / "out" / "benchmark.json")["rows"]
    assert [r["variant"] for r in rows] == ["float32", "int8-ptq"] * 2  # A's, then B's
    auc = [r["accuracy"]["test"]["auc"] for r in rows]
    assert auc[0] != auc[2]  # the two float32 files differ, so a wrong pairing shows
    for ref, r in ((0, rows[1]), (2, rows[3])):
        want = auc[ref + 1] - auc[ref]
        assert r["paired"]["test"]["delta"] == pytest.approx(want, abs=1e-12), ref
    assert [r["run"] for r in rows] == ["pipeA/mob"] * 2 + ["pipeB/mob"] * 2
    md = (tmp_path / "out" / "benchmark.md").read_text()
    assert "| run | family | variant |" in md
    assert f"| pipeA/mob | {FAMILY} | int8-ptq |" in md
    assert f"| pipeB/mob | {FAMILY} | int8-ptq |" in md


def test_one_run_keeps_the_table_without_a_run_column(files, data, tmp_path):
    run = make_run(tmp_path / "r", {"float32": files["float"]})
    res = invoke(run, "--data", data, "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert f"| {FAMILY} | float32 | validated |" in res.stdout and "| run |" not in res.stdout


@pytest.mark.parametrize("edit, why", [
    ({"size_bytes": 12345}, "the report says 12,345 bytes, the file has"),
    ({"variant": "float16"}, "its card says variant float32, the report float16"),
])
def test_a_report_that_no_longer_describes_its_file_is_refused(files, data, tmp_path, edit,
                                                                why):
    """A hand-edited or stale export/report.json: the row shows the file's real size, is
    marked report-mismatch (not validated), is not measured, and one line says why."""
    run = make_run(tmp_path / "r", {"float32": files["float"]}, float32=edit)
    res = invoke(run, "--data", data, "--out", tmp_path / "out")
    assert res.exit_code == 2, res.output
    [row] = strict_json(tmp_path / "out" / "benchmark.json")["rows"]
    assert row["status"] == "report-mismatch" and why in row["reason"]
    assert row["size_bytes"] == files["float"].stat().st_size and not row["latency"]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and why in errors[0] and "Traceback" not in res.output


def test_weights_that_fail_their_checksum_are_a_report_mismatch(files, data, tmp_path):
    run = make_run(tmp_path / "r", {"float32": files["float"]})
    path = run / "export" / f"{FAMILY}-float32.tflite"
    blob = bytearray(path.read_bytes())
    blob[200] ^= 0xFF  # inside the flatbuffer: the card's SHA-256 no longer matches
    path.write_bytes(bytes(blob))
    res = invoke(run, "--data", data, "--out", tmp_path / "out")
    assert res.exit_code == 2, res.output
    [row] = strict_json(tmp_path / "out" / "benchmark.json")["rows"]
    assert row["status"] == "report-mismatch" and "weights are damaged" in row["reason"]


def undefined_result(status: str = "validated") -> dict:
    """A benchmark result whose every AUC is undefined (each split of one class)."""
    nan = float("nan")
    acc = {"n": 4, "positives": 4, "auc": nan, "auc_ci95": [nan, nan], "sensitivity": 1.0,
           "specificity": nan, "threshold": 0.5}
    row = {"family": "f", "variant": "float32", "status": status, "reason": None,
           "file": "f.tflite", "size_bytes": 2048, "gzip_bytes": 1024, "sparsity": 0.0,
           "accuracy": {"val": acc, "test": acc}, "paired": {}, "run": "r", "run_key": "/r",
           "latency": {"1": {"p50_ms": 1.0, "p90_ms": 2.0, "mean_ms": 1.2}},
           "peak_rss_mb": 30.0}
    return {"threads": [1], "runs": 3, "warmup": 1, "created": "now", "seconds": 1,
            "host": {"machine": "x", "cpu_count": 2, "python": "3"}, "baselines": [],
            "rows": [row]}


def test_undefined_aucs_write_the_table_and_drop_the_stale_chart(tmp_path):
    """Every plotted AUC NaN: the chart used to crash (log scale in tight_layout) after the
    table was rewritten, leaving last run's benchmark.png beside it; the JSON held NaN."""
    from edge_toolkit.benchmark import write_outputs

    out = tmp_path / "out"
    out.mkdir()
    (out / "benchmark.png").write_bytes(b"an earlier run's chart")
    said: list[str] = []
    paths = write_outputs(undefined_result(), out, log=said.append)
    assert [p.name for p in paths] == ["benchmark.md", "benchmark.csv", "benchmark.json"]
    assert not (out / "benchmark.png").exists()
    assert len(said) == 1 and "removed the earlier" in said[0] and "benchmark.png" in said[0]
    row = strict_json(out / "benchmark.json")["rows"][0]
    assert row["accuracy"]["test"]["auc"] is None and row["accuracy"]["val"]["auc_ci95"] == [
        None, None]
    assert sorted(q.name for q in out.iterdir()) == sorted(p.name for p in paths)  # no temps


def test_rows_with_an_undefined_auc_are_left_off_the_chart(tmp_path):
    from edge_toolkit.benchmark import write_outputs

    result = undefined_result()
    good = json.loads(json.dumps(result["rows"][0]))  # a copy, with a defined test AUC
    good["variant"], good["accuracy"]["test"] = "int8-ptq", {
        "n": 8, "positives": 4, "auc": 0.8, "auc_ci95": [0.6, 0.9], "sensitivity": 1.0,
        "specificity": 0.5, "threshold": 0.5}
    result["rows"].append(good)
    paths = write_outputs(result, tmp_path, log=lambda m: None)
    assert (tmp_path / "benchmark.png") in paths
    assert (tmp_path / "benchmark.png").read_bytes().startswith(b"\x89PNG")


def test_the_chart_tells_not_validated_files_from_failed_ones():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edge_toolkit.benchmark_chart import _plot_families

    rows = []
    for variant, status in (("float32", "validated"), ("int8-ptq", "not-validated"),
                            ("float16", "failed-validation")):
        r = undefined_result(status)["rows"][0]
        r["variant"], r["accuracy"]["test"]["auc"] = variant, 0.7
        rows.append(r)
    fig, ax = plt.subplots()
    try:
        _plot_families(ax, rows, "test", "1", with_run=False)
        labels = ax.get_legend_handles_labels()[1]
    finally:
        plt.close(fig)
    assert labels == ["f", "f, not validated", "f, failed validation"]


def test_an_output_that_cannot_be_written_is_refused_before_any_work(files, data, tmp_path):
    """benchmark.csv a folder: an IsADirectoryError traceback after all the measuring; now
    one line and exit 2 before any work."""
    out = tmp_path / "out"
    (out / "benchmark.csv").mkdir(parents=True)
    res = invoke(files["float"], "--data", data, "--out", out)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "benchmark.csv" in errors[0], res.output
    assert not (out / "benchmark.json").exists()


def test_a_write_that_fails_late_is_one_line(files, data, tmp_path, monkeypatch):
    import edge_toolkit.benchmark as bm

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "out" / "benchmark.md"))

    monkeypatch.setattr(bm, "atomic_write", full)
    res = invoke(files["float"], "--data", data, "--out", tmp_path / "out")
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "Error: cannot write" in res.output and "No space left on device" in res.output


def test_nan_outputs_are_one_line_naming_the_file(files, data, tmp_path, monkeypatch):
    """A model answering NaN used to be scored (NaN ranked highest, counted negative)."""
    import numpy as np

    from edge_toolkit.runtime.classifier import Classifier

    monkeypatch.setattr(Classifier, "predict_raw_batch",
                        lambda self, x: np.full(len(x), np.nan, np.float32))
    res = invoke(files["float"], "--data", data, "--out", tmp_path / "out")
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
    assert errors == [f"Error: not measured: {files['float']}: benchmark failed: 16 "
                      "non-finite model outputs (NaN or infinite) on the 16 val images"]


def test_a_file_that_is_gone_is_named_once(files, data, tmp_path):
    run = make_run(tmp_path / "r", {"float32": files["float"]})
    (run / "export" / f"{FAMILY}-float32.tflite").unlink()
    res = invoke(run, "--data", data, "--out", tmp_path / "out")
    assert res.exit_code == 2, res.output
    [line] = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
    assert line.count(f"{FAMILY}-float32.tflite") == 1, line


def test_each_source_gets_its_own_named_global_cue_baseline(files, data, tmp_path):
    other = write_tiny_dataset(tmp_path / "d2", per_class=8, size=32)
    res = invoke(files["float"], "--data", data, "--data", other, "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert "Global-cue baseline on d1 (" in res.stdout
    assert "Global-cue baseline on d2 (" in res.stdout
    bases = strict_json(tmp_path / "out" / "benchmark.json")["baselines"]
    assert [(b["source"], b["root"]) for b in bases] == [("d1", str(data)), ("d2", str(other))]


def test_a_loose_file_without_out_never_writes_beside_the_model(files, data, tmp_path,
                                                                monkeypatch):
    """The bundled model's folder is the installed package's own: a benchmark of a loose
    file writes to ./benchmark-out unless --out says otherwise."""
    model = tmp_path / "models" / "m.tflite"
    model.parent.mkdir()
    shutil.copy(files["float"], model)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    res = invoke(model, "--data", data)
    assert res.exit_code == 0, res.output
    assert (work / "benchmark-out" / "benchmark.json").is_file()
    assert sorted(q.name for q in model.parent.iterdir()) == ["m.tflite"]


def test_a_thread_count_given_twice_is_timed_once():
    assert parse_threads("1,1,2,1") == [1, 2]


def test_the_chart_split_skips_an_undefined_test_auc():
    from edge_toolkit.benchmark_chart import chart_points

    result = undefined_result()
    result["rows"][0]["accuracy"]["val"] = dict(result["rows"][0]["accuracy"]["val"], auc=0.7)
    split, pts = chart_points(result)
    assert split == "val" and len(pts) == 1 and not math.isnan(pts[0]["accuracy"]["val"]["auc"])


def test_without_matplotlib_the_chart_is_skipped_for_that_reason(tmp_path, monkeypatch):
    """A device install has no matplotlib: the message blamed undefined AUCs instead."""
    import sys

    from edge_toolkit.benchmark import write_outputs

    result = undefined_result()
    good = json.loads(json.dumps(result["rows"][0]))
    good["accuracy"]["test"] = {"n": 8, "positives": 4, "auc": 0.8, "auc_ci95": [0.6, 0.9],
                                "sensitivity": 1.0, "specificity": 0.5, "threshold": 0.5}
    result["rows"] = [good]
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    said: list[str] = []
    paths = write_outputs(result, tmp_path, log=said.append)
    assert (tmp_path / "benchmark.png") not in paths
    assert len(said) == 1 and "matplotlib is not installed" in said[0], said
