"""Latency and memory of `.tflite` models on this machine, comparable side by side.

For each model and thread count: interpreter creation time (including tensor allocation),
warm-up invokes, then N timed invokes (mean, p50, p90, p99, in ms), plus the model's size
and the peak memory (max RSS) of the process that ran it. Each model runs in a fresh child
process by default, so one model's peak memory is not another's. Absolute numbers on a busy
machine drift, so `bench_models` interleaves the models: the timed invokes are split into
rounds, and round k of every model runs before round k+1 of any (a burst of load then hits
every model alike, not the one that happened to be running); `ratio` is the median (p50)
over the first measured model's median at the same thread count, which one slow invoke
does not move as it moves a mean.

`cold_start` times what a user sees: a new `python -m edge_toolkit.cli classify MODEL IMAGE`
process from spawn to exit (interpreter start-up, imports, model load, one image), with that
child's own peak RSS from `wait4`.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_toolkit.card import CardError, split_tflite
from edge_toolkit.files import check_regular, read_regular
from edge_toolkit.runtime.interpreter import create_interpreter, interpreter_class


def peak_rss_kb() -> int:
    """This process's peak resident memory so far, in KiB.

    On Linux, VmHWM from /proc: `ru_maxrss` survives exec, so a child spawned by a large
    parent (a training pipeline) would report the parent's size instead of its own.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak // 1024) if sys.platform == "darwin" else int(peak)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


ROUNDS = 5  # the timed invokes are split into up to this many interleaved rounds


def bench_model(model: str | Path, threads: list[int], warmup: int = 5, runs: int = 50,
                seed: int = 0, keep_times: bool = False) -> dict[str, Any]:
    """Benchmark one model in this process; see the module docstring for what is measured.
    `keep_times`: each run also lists its timed invokes (`times_ms`), for `merge_rounds`."""
    path = Path(model)
    data = read_regular(path)
    try:
        bare, card = split_tflite(data)
    except CardError as exc:  # the reason only: the caller names the file once
        raise ValueError(str(exc)) from None
    baseline = peak_rss_kb()
    out: dict[str, Any] = {
        "model": str(path), "size_bytes": len(data), "flatbuffer_bytes": len(bare),
        "variant": card.variant if card else None, "has_card": card is not None,
        "baseline_rss_kb": baseline, "runs": [],
    }
    rng = np.random.default_rng(seed)
    for n in threads:
        t0 = time.perf_counter()
        interp, backend = create_interpreter(bare, n)
        init_ms = (time.perf_counter() - t0) * 1e3
        detail = interp.get_input_details()[0]
        dtype = np.dtype(detail["dtype"])
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            x = rng.integers(info.min, info.max, detail["shape"], endpoint=True).astype(dtype)
        else:
            x = rng.uniform(-1.0, 1.0, detail["shape"]).astype(dtype)
        times = []
        for i in range(warmup + runs):
            interp.set_tensor(detail["index"], x)
            t = time.perf_counter()
            interp.invoke()
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1e3)
        out["backend"] = backend
        out["input_dtype"] = dtype.name
        out["input_shape"] = [int(d) for d in detail["shape"]]
        out["runs"].append({
            "threads": n, "init_ms": init_ms, "warmup": warmup, "runs": runs,
            "mean_ms": statistics.fmean(times), "p50_ms": percentile(times, 50),
            "p90_ms": percentile(times, 90), "p99_ms": percentile(times, 99),
            "min_ms": min(times), "max_ms": max(times),
        } | ({"times_ms": times} if keep_times else {}))
        del interp
    out["peak_rss_kb"] = peak_rss_kb()
    return out


def bench_in_child(model: str | Path, threads: list[int], warmup: int, runs: int,
                   keep_times: bool = False) -> dict[str, Any]:
    """`bench_model` in a fresh process, so its peak memory is this model's alone."""
    job = json.dumps({"model": str(model), "threads": threads, "warmup": warmup, "runs": runs,
                      "keep_times": keep_times})
    proc = subprocess.run([sys.executable, "-m", "edge_toolkit.runtime.bench", job],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise ValueError(lines[-1] if lines else "benchmark failed")
    return json.loads(proc.stdout)


def add_ratios(results: list[dict[str, Any]]) -> str | None:
    """Each run's median (p50) over the first result's median at the same thread count, and
    each result's `ratio_to`: that first result's model, which is the first model given
    unless it could not be measured. Returns it (None for no results)."""
    if not results:
        return None
    base = {r["threads"]: r["p50_ms"] for r in results[0]["runs"]}
    for res in results:
        res["ratio_to"] = results[0]["model"]
        for r in res["runs"]:
            ref = base.get(r["threads"])
            r["ratio"] = r["p50_ms"] / ref if ref else None
    return results[0]["model"]


def round_sizes(runs: int, rounds: int = ROUNDS, models: int = 2) -> list[int]:
    """`runs` timed invokes as min(rounds, runs) near-equal rounds (summing to `runs`); one
    round for a single model (nothing to alternate with, so no extra process starts)."""
    k = max(1, min(rounds, runs)) if models > 1 else 1
    return [runs // k + (i < runs % k) for i in range(k)]


Measure = Callable[..., dict[str, Any]]  # (model, threads, warmup, runs, keep_times=True)


def bench_models(models: Sequence[str | Path], threads: list[int], warmup: int = 5,
                 runs: int = 50, *, in_process: bool = False, rounds: int = ROUNDS,
                 on_error: Callable[[str | Path, Exception], None] | None = None,
                 measure: Measure | None = None) -> list[dict[str, Any]]:
    """Every model measured side by side, interleaved: round k of each model (its own warm-up
    first, excluded, then its share of `runs`; a fresh process unless `in_process`) before
    round k+1 of any. A model that fails is reported once to `on_error` and dropped; the
    others' rounds are pooled (`merge_rounds`) and given ratios (`add_ratios`)."""
    measure = measure or (bench_model if in_process else bench_in_child)
    parts: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(models))}
    for n in round_sizes(runs, rounds, len(models)):
        for i in list(parts):
            try:
                parts[i].append(measure(models[i], threads, warmup, n, keep_times=True))
            except (OSError, ValueError, RuntimeError) as exc:
                del parts[i]
                if on_error is not None:
                    on_error(models[i], exc)
    results = [merge_rounds(rounds_of) for rounds_of in parts.values()]
    add_ratios(results)
    return results


def merge_rounds(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One model's rounds as one result: statistics over all its timed invokes, the median
    interpreter creation time, the highest peak memory."""
    out = {k: v for k, v in parts[0].items() if k != "runs"}
    out["peak_rss_kb"] = max(p["peak_rss_kb"] for p in parts)
    out["rounds"] = len(parts)
    out["runs"] = []
    for j, first in enumerate(parts[0]["runs"]):
        times = [t for p in parts for t in p["runs"][j]["times_ms"]]
        out["runs"].append({
            "threads": first["threads"],
            "init_ms": statistics.median(p["runs"][j]["init_ms"] for p in parts),
            "warmup": first["warmup"], "runs": len(times),
            "mean_ms": statistics.fmean(times), "p50_ms": percentile(times, 50),
            "p90_ms": percentile(times, 90), "p99_ms": percentile(times, 99),
            "min_ms": min(times), "max_ms": max(times)})
    return out


def check_image(image: str | Path) -> None:
    """OSError (its reason) unless `image` is a regular file that can be opened: checked
    before any model is timed (`--cold-start`), not after minutes of timing."""
    check_regular(image)
    with open(image, "rb"):
        pass


def run_child(argv: list[str], timeout: float = 300.0) -> tuple[float, int, int, str]:
    """Run a command; return (wall seconds, exit code, child's peak RSS KiB, stdout)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.002)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read().decode(errors="replace")
        if proc.returncode != 0:
            text += err.read().decode(errors="replace")
    rss = usage.ru_maxrss // 1024 if sys.platform == "darwin" else usage.ru_maxrss
    return wall, proc.returncode, int(rss), text


def cold_start(model: str | Path, image: str | Path, repeats: int = 3,
               argv: list[str] | None = None) -> dict[str, Any]:
    """Median spawn-to-exit time and peak RSS of `classify MODEL IMAGE` in new processes.

    One untimed run first, so every timed run finds the files in the page cache (a fair
    "second boot" number; the very first run after power-on is slower on an SD card).
    """
    cmd = argv or [sys.executable, "-m", "edge_toolkit.cli", "classify", str(model),
                   str(image), "--format", "json", "--quiet"]
    run_child(cmd)
    walls, rss = [], []
    for _ in range(repeats):
        wall, code, peak, text = run_child(cmd)
        if code != 0:
            tail = text.strip().splitlines()[-1:] or ["no output"]
            raise ValueError(f"cold start of {model} failed (exit {code}): {tail[0]}")
        walls.append(wall)
        rss.append(peak)
    return {"model": str(model), "image": str(image), "repeats": repeats,
            "median_s": statistics.median(walls), "min_s": min(walls),
            "peak_rss_kb": int(statistics.median(rss)), "command": cmd}


# CPU flags (as /proc/cpuinfo names them) that make int8 inference fast: 8-bit dot products.
# Without them (e.g. an AVX2-only x86), XNNPACK's int8 kernels can be slower than float32.
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """CPU model and its int8 dot-product features, read from /proc/cpuinfo (Linux): with
    every timing, since whether int8 beats float32 depends on them."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    model = fields.get("model name") or fields.get("Model") or ""
    if not model:  # ARM boards without a Model line: the core's part number at least
        model = fields.get("Hardware") or platform.processor() or platform.machine()
        if "CPU part" in fields:
            model += f" (CPU part {fields['CPU part']})"
    return {"cpu_model": model, "int8_features": [f for f in INT8_FLAGS if f in flags]}


def int8_note(info: dict[str, Any]) -> str:
    feats = info.get("int8_features") or []
    return ("int8 dot product: " + ", ".join(feats) if feats else
            "no int8 dot-product instructions (int8 may be no faster than float32 here)")


def host_info() -> dict[str, Any]:
    try:
        backend = interpreter_class()[1]
    except Exception:  # reported where it matters, when a model is loaded
        backend = None
    return {"machine": platform.machine(), "system": platform.system(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "backend": backend} | cpu_info()


def _child_main(argv: list[str]) -> int:
    job = json.loads(argv[0])
    try:
        res = bench_model(job["model"], job["threads"], job["warmup"], job["runs"],
                          keep_times=bool(job.get("keep_times")))
    except (OSError, ValueError, RuntimeError) as exc:  # the reason; the parent names the file
        print(getattr(exc, "strerror", None) or exc, file=sys.stderr)
        return 2
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
