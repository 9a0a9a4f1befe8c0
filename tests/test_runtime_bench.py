"""`edge-toolkit bench`: the report has every field, one table compares models, and the
cold start of `classify` is measured in a new process."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tiny_models import RUNTIME_MODELS, cached_models, make_images

from edge_toolkit.runtime.bench import bench_model, percentile
from edge_toolkit.runtime.cli import bench

RUN_FIELDS = {"threads", "init_ms", "warmup", "runs", "mean_ms", "p50_ms", "p90_ms", "p99_ms",
              "min_ms", "max_ms", "ratio"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return cached_models(tmp_path_factory, RUNTIME_MODELS)


def test_bench_json_compares_models_in_child_processes(models, tmp_path):
    image = make_images(tmp_path, 1)[0]
    res = CliRunner().invoke(bench, [
        str(models["float"]), str(models["uint8"]), "-t", "1,2", "--warmup", "1", "--runs", "5",
        "--format", "json", "--cold-start", str(image), "--cold-runs", "1"],
        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["host"]["backend"] == "ai-edge-litert"
    assert [m["variant"] for m in report["models"]] == ["float32", "int8-ptq"]
    for m in report["models"]:
        assert {"model", "size_bytes", "peak_rss_kb", "baseline_rss_kb", "input_dtype",
                "backend"} <= set(m)
        assert m["peak_rss_kb"] >= m["baseline_rss_kb"] > 0
        assert [r["threads"] for r in m["runs"]] == [1, 2]
        for r in m["runs"]:
            assert set(r) == RUN_FIELDS and r["runs"] == 5
            assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert all(r["ratio"] == pytest.approx(1.0) for r in report["models"][0]["runs"])
    cold = report["cold_start"]
    assert [c["model"] for c in cold] == [m["model"] for m in report["models"]]
    assert all(c["median_s"] > 0 and c["peak_rss_kb"] > 0 for c in cold)


def test_bench_table_and_errors(models, tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"nope")
    out = tmp_path / "report.txt"
    res = CliRunner().invoke(bench, [str(models["float"]), str(bad), str(models["bare"]),
                                     "--in-process", "-t", "1", "--runs", "3", "-o", str(out)])
    assert res.exit_code == 2 and f"error: {bad}" in res.stderr
    assert res.stderr.count(str(bad)) == 1  # the file named once, not once per layer
    missing = tmp_path / "missing.tflite"
    for extra in ([], ["--in-process"]):  # a child process reports the reason, not a repr
        res = CliRunner().invoke(bench, [str(bad), str(missing), *extra, "-t", "1", "--runs",
                                         "2"])
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert errors == [f"error: {bad}: not a TFLite model (no TFL3 flatbuffer identifier "
                          "at bytes 4-8: wrong file, or its start is damaged)",
                          f"error: {missing}: No such file or directory"], errors
    table = out.read_text()
    assert "MEAN MS" in table and "RATIO" in table and "PEAK RSS MB" in table
    assert models["float"].name in table and models["bare"].name in table  # no card needed


def test_bench_model_and_percentile(models):
    res = bench_model(models["int8_3"], [1], warmup=0, runs=3)
    assert res["input_dtype"] == "int8" and res["input_shape"] == [1, 32, 32, 3]
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
