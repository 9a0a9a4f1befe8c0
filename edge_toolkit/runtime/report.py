"""Rendering a `bench` report: one aligned table for people, JSON for programs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def bench_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2) + "\n"


def bench_table(report: dict[str, Any]) -> str:
    """Every model and thread count in one table, then the cold starts, then the host."""
    head = ["MODEL", "VARIANT", "SIZE KB", "INPUT", "THREADS", "INIT MS", "MEAN MS", "P50",
            "P90", "P99", "RATIO", "PEAK RSS MB"]
    rows = []
    for m in report["models"]:
        for r in m["runs"]:
            rows.append([
                Path(m["model"]).name, m.get("variant") or "-", f"{m['size_bytes'] / 1024:.1f}",
                m.get("input_dtype", "-"), str(r["threads"]), f"{r['init_ms']:.1f}",
                f"{r['mean_ms']:.3f}", f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}",
                f"{r['p99_ms']:.3f}", "-" if r.get("ratio") is None else f"{r['ratio']:.2f}",
                f"{m['peak_rss_kb'] / 1024:.1f}"])
    lines = [_render(head, rows)] if rows else ["no model could be measured"]
    cold = report.get("cold_start") or []
    if cold:
        n = cold[0]["repeats"]
        lines += ["", f"Cold start: `classify MODEL IMAGE` in a new process, spawn to exit "
                      f"(median of {n})"]
        lines.append(_render(["MODEL", "MEDIAN S", "MIN S", "PEAK RSS MB"], [
            [Path(c["model"]).name, f"{c['median_s']:.3f}", f"{c['min_s']:.3f}",
             f"{c['peak_rss_kb'] / 1024:.1f}"] for c in cold]))
    h = report.get("host", {})
    lines += ["", f"host: {h.get('system')} {h.get('machine')}, {h.get('cpu_count')} cores, "
                  f"Python {h.get('python')}, backend {h.get('backend')}; warm-up "
                  f"{report.get('warmup')}, runs {report.get('runs')}; models timed in "
                  "alternating rounds; RATIO = p50 / p50 of "
                  f"{_ratio_base(report)} at the same thread count"]
    if h.get("cpu_model"):
        from edge_toolkit.runtime.bench import int8_note

        lines.append(f"cpu: {h['cpu_model']}; {int8_note(h)}")
    return "\n".join(lines) + "\n"


def _render(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    left = {0, 1, 3}

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([fmt(head), *(fmt(r) for r in rows)])


def _ratio_base(report: dict[str, Any]) -> str:
    """The model RATIO divides by (the first one measured), by file name."""
    models = report.get("models") or []
    base = models[0].get("ratio_to") or models[0].get("model") if models else None
    return Path(base).name if base else "the first model"
