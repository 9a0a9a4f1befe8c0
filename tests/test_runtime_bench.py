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


def fake_measure(times: dict[str, list[list[float]]], calls: list, fail: dict[str, int]):
    """A stand-in for one round of one model: records (model, runs), returns that round's
    made-up invoke times; raises for `fail[model]`'s round (0-based)."""
    done: dict[str, int] = {}

    def measure(model, threads, warmup, runs, keep_times=False):
        k = done.get(model, 0)
        done[model] = k + 1
        calls.append((model, runs))
        if fail.get(model) == k:
            raise ValueError("cannot read model")
        t = times[model][k]
        assert keep_times and len(t) == runs
        return {"model": model, "size_bytes": 1, "peak_rss_kb": 10 + k, "baseline_rss_kb": 5,
                "runs": [{"threads": n, "init_ms": 1.0 + k, "warmup": warmup, "runs": runs,
                          "times_ms": t} for n in threads]}

    return measure


def test_bench_models_alternate_rounds_and_compare_medians():
    """Round k of every model before round k+1 of any, so load that comes and goes hits all
    alike; one slow invoke (a burst of load) moves a mean ratio, not the median one."""
    from edge_toolkit.runtime.bench import bench_models

    times = {"a": [[1.0, 1.0]] * 4 + [[1.0, 500.0]], "b": [[2.0, 2.0]] * 5,
             "c": [[3.0, 3.0]] * 5}
    calls: list = []
    errors: list = []
    res = bench_models(["a", "b", "c"], [1], warmup=3, runs=10, rounds=5,
                       measure=fake_measure(times, calls, {"c": 1}),
                       on_error=lambda m, exc: errors.append((m, str(exc))))
    assert calls == [("a", 2), ("b", 2), ("c", 2), ("a", 2), ("b", 2), ("c", 2)] + [
        ("a", 2), ("b", 2)] * 3
    assert errors == [("c", "cannot read model")]  # named once, then left out
    assert [r["model"] for r in res] == ["a", "b"]
    a, b = res[0]["runs"][0], res[1]["runs"][0]
    assert a["runs"] == b["runs"] == 10 and a["warmup"] == 3 and res[0]["rounds"] == 5
    assert a["p50_ms"] == 1.0 and a["max_ms"] == 500.0 and a["mean_ms"] == pytest.approx(50.9)
    assert b["ratio"] == pytest.approx(2.0) and a["ratio"] == pytest.approx(1.0)
    assert res[0]["peak_rss_kb"] == 14 and a["init_ms"] == 3.0  # highest peak, median init
    assert all(set(r) == RUN_FIELDS for m in res for r in m["runs"])  # no raw times left


def test_ratios_are_to_the_first_model_measured_and_say_which():
    from edge_toolkit.runtime.bench import bench_models

    times = {"a": [[1.0]], "b": [[2.0]], "c": [[4.0]]}
    res = bench_models(["a", "b", "c"], [1, 2], 0, 1,
                       measure=fake_measure(times, [], {"a": 0}))
    assert [m["ratio_to"] for m in res] == ["b", "b"]
    assert [m["runs"][1]["ratio"] for m in res] == [1.0, 2.0]


def test_bench_models_runs_real_models_in_rounds(models):
    from edge_toolkit.runtime.bench import bench_models

    res = bench_models([models["float"], models["uint8"]], [1], warmup=1, runs=4, rounds=2,
                       in_process=True)
    assert [m["variant"] for m in res] == ["float32", "int8-ptq"]
    for m in res:
        [r] = m["runs"]
        assert m["rounds"] == 2 and r["runs"] == 4 and set(r) == RUN_FIELDS
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["max_ms"]
    assert res[0]["runs"][0]["ratio"] == pytest.approx(1.0)


def test_a_cold_start_image_is_checked_before_any_timing(tmp_path):
    from edge_toolkit.runtime.bench import check_image

    with pytest.raises(FileNotFoundError):
        check_image(tmp_path / "nope.jpg")
    with pytest.raises(OSError, match="is a folder"):
        check_image(tmp_path)
    image = make_images(tmp_path, 1)[0]
    check_image(image)


def test_one_model_is_timed_in_one_round():
    """Nothing to alternate with: no extra process starts (each costs seconds on a Pi)."""
    from edge_toolkit.runtime.bench import bench_models

    calls: list = []
    bench_models(["a"], [1], 0, 10, measure=fake_measure({"a": [[1.0] * 10]}, calls, {}))
    assert calls == [("a", 10)]
