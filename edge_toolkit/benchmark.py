"""One table of accuracy vs size vs latency over every exported variant (`edge-toolkit benchmark`).

Rows come from the export table (`quantize/variants.py`) and each run's `export/report.json`,
so export and benchmark walk the same list; a variant that failed export or validation keeps
its row and says so. Accuracy is measured here, through the TF-free runtime, on the dataset's
val and test splits at each file's stored threshold; latency and peak memory come from a fresh
child process per model, all in one run, so ratios between rows hold. No TensorFlow.
"""

from __future__ import annotations

import csv
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import numpy as np

from edge_toolkit.card import ModelCard, read_card
from edge_toolkit.data import discover, load_samples
from edge_toolkit.metrics import apply_temperature, at_threshold, bootstrap_auc_ci, roc_auc
from edge_toolkit.preprocess import PreprocessConfig
from edge_toolkit.quantize.variants import EXPORT_FAILED, VALIDATED, VARIANTS
from edge_toolkit.runtime.bench import cpu_info, int8_note

SPLITS = ("val", "test")


@dataclass
class Row:
    """One model variant: where it is, what export said of it, what this run measured."""

    family: str
    variant: str
    status: str
    file: str | None = None
    reason: str | None = None
    size_bytes: int | None = None
    gzip_bytes: int | None = None
    sparsity: float | None = None
    accuracy: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> metrics
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # threads -> p50/p90
    peak_rss_mb: float | None = None
    backend: str | None = None


def rows_from_run(run: Path) -> list[Row]:
    """Rows of one run folder from its export report (every variant, failed ones too)."""
    report_path = run / "export" / "report.json"
    if not report_path.exists():
        raise click.ClickException(f"{run}: no export/report.json; run `edge-toolkit export "
                                   f"{run}` first")
    report = json.loads(report_path.read_text())
    rows = []
    for r in report["results"]:
        file = str(run / "export" / r["file"]) if r.get("file") else None
        rows.append(Row(family=report["family"], variant=r["variant"], status=r["status"],
                        file=file, reason=r.get("reason"), size_bytes=r.get("size_bytes"),
                        gzip_bytes=r.get("gzip_bytes"), sparsity=r.get("sparsity")))
    order = list(VARIANTS)
    return sorted(rows, key=lambda r: order.index(r.variant) if r.variant in order else 99)


def row_from_file(path: Path) -> Row:
    """A row for a loose .tflite file: what its card says, status from the card's export."""
    from edge_toolkit.card_cli import require_card
    from edge_toolkit.quantize.inspect import gzip_size

    card = require_card(path)
    data = path.read_bytes()
    status = ((card.export or {}).get("validation") or {}).get("status", VALIDATED)
    return Row(family=card.family, variant=card.variant, status=status, file=str(path),
               size_bytes=len(data), gzip_bytes=gzip_size(data), sparsity=card.sparsity)


class SplitCache:
    """Preprocessed val/test arrays, built once per preprocessing recipe and shared by every
    variant that uses it (all variants of one family)."""

    def __init__(self, data: Path | None) -> None:
        self.data = data
        self._cache: dict[tuple, dict[str, tuple[np.ndarray, np.ndarray]]] = {}

    def get(self, card: ModelCard) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        root = self.data or Path(card.dataset.get("root", ""))
        cfg = PreprocessConfig.from_dict(card.preprocessing)
        key = (str(root), cfg, card.dataset.get("val_fraction"), card.dataset.get("seed"))
        if key not in self._cache:
            ds = discover(root, val_fraction=card.dataset.get("val_fraction", 0.15),
                          seed=card.dataset.get("seed", 0))
            out = {}
            for split in SPLITS:
                if split in ds.splits:
                    loaded = load_samples(ds.split(split), cfg)
                    out[split] = (loaded.x, loaded.y)
            self._cache[key] = out
        return self._cache[key]


def measure_accuracy(path: Path, cache: SplitCache, bootstrap: int, threads: int
                     ) -> dict[str, dict[str, Any]]:
    """AUC with a 95% interval, sensitivity and specificity at the stored threshold, per split."""
    from edge_toolkit.runtime.classifier import Classifier

    clf = Classifier.load(path, num_threads=threads)
    out = {}
    for split, (x, y) in cache.get(clf.card).items():
        p = apply_temperature(clf.predict_raw_batch(x), clf.card.temperature)
        op = at_threshold(y, p, clf.card.threshold)
        lo, hi = bootstrap_auc_ci(y, p, n=bootstrap)
        out[split] = {"n": int(len(y)), "auc": roc_auc(y, p), "auc_ci95": [lo, hi],
                      "sensitivity": op["sensitivity"], "specificity": op["specificity"],
                      "threshold": clf.card.threshold}
    return out


def measure_latency(row: Row, threads: list[int], warmup: int, runs: int) -> None:
    from edge_toolkit.runtime.bench import bench_in_child

    res = bench_in_child(row.file, threads, warmup, runs)
    row.latency = {str(r["threads"]): {"p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"],
                                       "mean_ms": r["mean_ms"]} for r in res["runs"]}
    row.peak_rss_mb = res["peak_rss_kb"] / 1024
    row.backend = res.get("backend")


def run_benchmark(sources: list[Path], data: Path | None = None, threads: list[int] = (1, 2),
                  warmup: int = 5, runs: int = 50, bootstrap: int = 1000,
                  log: Any = print) -> dict[str, Any]:
    """Measure every row; a row that cannot be measured keeps its reason and the rest go on."""
    t0 = time.perf_counter()
    rows: list[Row] = []
    for src in sources:
        if src.is_dir():
            rows += rows_from_run(src)
        else:
            rows.append(row_from_file(src))
    cache = SplitCache(data)
    for row in rows:
        if not row.file or row.status == EXPORT_FAILED:
            log(f"{row.family} {row.variant}: {row.status} ({row.reason}); not measured")
            continue
        try:
            row.accuracy = measure_accuracy(Path(row.file), cache, bootstrap, max(threads))
            measure_latency(row, list(threads), warmup, runs)
        except Exception as exc:  # one broken file must not lose the table
            row.reason = f"benchmark failed: {exc}"
            log(f"{row.family} {row.variant}: {row.reason}")
            continue
        val = row.accuracy.get("val", {}).get("auc", float("nan"))
        p50 = row.latency.get(str(threads[0]), {}).get("p50_ms", float("nan"))
        log(f"{row.family} {row.variant}: val AUC {val:.3f}, p50 {p50:.2f} ms "
            f"@{threads[0]} thread(s)")
    baseline = global_cue_baseline(data or _first_root(rows), log)
    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["edge-toolkit", "benchmark", *sys.argv[2:]]),
            "host": {"machine": platform.machine(), "processor": platform.processor(),
                     "python": platform.python_version(), "system": platform.system(),
                     "cpu_count": __import__("os").cpu_count()} | cpu_info(),
            "threads": list(threads), "runs": runs, "warmup": warmup,
            "seconds": round(time.perf_counter() - t0, 1), "baseline": baseline,
            "rows": [asdict(r) for r in rows]}


def _first_root(rows: list[Row]) -> Path | None:
    for r in rows:
        if r.file:
            card = read_card(r.file)
            if card and card.dataset.get("root"):
                return Path(card.dataset["root"])
    return None


def global_cue_baseline(root: Path | None, log: Any = print) -> dict[str, Any] | None:
    """The audit's shortcut model (size, aspect, format, intensity): the AUC to beat."""
    if root is None or not Path(root).is_dir():
        return None
    from edge_toolkit.audit.scan import scan
    from edge_toolkit.audit.shortcuts import shortcut_check

    try:
        res = shortcut_check(scan(root).records)
    except Exception as exc:  # the table is still worth having without it
        log(f"global-cue baseline skipped: {exc}")
        return None
    return {"model": res["model"], "splits": res["splits"]}


# -- output ------------------------------------------------------------------------------

def _f(x: Any, spec: str = ".3f") -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def _auc_cell(acc: dict[str, Any]) -> str:
    if not acc:
        return "–"
    lo, hi = acc["auc_ci95"]
    return f"{acc['auc']:.3f} [{lo:.2f}, {hi:.2f}]"


def markdown(result: dict[str, Any]) -> str:
    threads = result["threads"]
    head = ["family", "variant", "status", "size KiB", "gzip KiB", "sparsity", "val AUC [95% CI]",
            "test AUC [95% CI]", "test sens", "test spec"]
    head += [f"p50/p90 ms @{t}t" for t in threads] + ["peak MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if result.get("note"):  # e.g. the demo sample: say plainly what the table can show
        lines[:0] = [f"**{result['note']}**", ""]
    for r in result["rows"]:
        acc, test = r["accuracy"], r["accuracy"].get("test", {})
        cells = [r["family"], r["variant"], r["status"] + (" ⚠" if r["reason"] else ""),
                 _f(r["size_bytes"] and r["size_bytes"] / 1024, ".0f"),
                 _f(r["gzip_bytes"] and r["gzip_bytes"] / 1024, ".0f"),
                 _f(r["sparsity"], ".2f"), _auc_cell(acc.get("val", {})), _auc_cell(test),
                 _f(test.get("sensitivity")), _f(test.get("specificity"))]
        for t in threads:
            lat = r["latency"].get(str(t))
            cells.append(f"{lat['p50_ms']:.2f} / {lat['p90_ms']:.2f}" if lat else "–")
        cells.append(_f(r["peak_rss_mb"], ".0f"))
        lines.append("| " + " | ".join(cells) + " |")
    base = result.get("baseline")
    if base and base.get("splits"):
        parts = [f"{s} {_auc_cell(v)}" for s, v in base["splits"].items()]
        lines += ["", f"Global-cue baseline ({base['model']} on image size, aspect, format "
                  f"and intensity, fit on train): AUC {', '.join(parts)}. A model must "
                  "clearly beat it."]
    notes = [f"- {r['family']} {r['variant']}: {r['reason']}" for r in result["rows"]
             if r["reason"]]
    if notes:
        lines += ["", "Notes:", *notes]
    h = result["host"]
    lines += ["", f"Sensitivity and specificity at each file's stored threshold (chosen on val). "
              f"Latency: {result['runs']} timed invokes after {result['warmup']} warm-up, "
              f"{h['machine']} with {h['cpu_count']} CPUs, Python {h['python']}, "
              f"{result['created']}, in one run ({result['seconds']} s)."]
    if h.get("cpu_model"):
        lines.append(f"CPU: {h['cpu_model']}; {int8_note(h)}.")
    return "\n".join(lines)


def write_csv(result: dict[str, Any], path: Path) -> None:
    threads = result["threads"]
    cols = ["family", "variant", "status", "reason", "size_bytes", "gzip_bytes", "sparsity"]
    for s in SPLITS:
        cols += [f"{s}_auc", f"{s}_auc_lo", f"{s}_auc_hi", f"{s}_sensitivity",
                 f"{s}_specificity"]
    for t in threads:
        cols += [f"p50_ms_{t}t", f"p90_ms_{t}t"]
    cols += ["peak_rss_mb"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in result["rows"]:
            out = {k: r[k] for k in cols[:7]}
            for s in SPLITS:
                a = r["accuracy"].get(s)
                if a:
                    out.update({f"{s}_auc": a["auc"], f"{s}_auc_lo": a["auc_ci95"][0],
                                f"{s}_auc_hi": a["auc_ci95"][1],
                                f"{s}_sensitivity": a["sensitivity"],
                                f"{s}_specificity": a["specificity"]})
            for t in threads:
                lat = r["latency"].get(str(t))
                if lat:
                    out[f"p50_ms_{t}t"], out[f"p90_ms_{t}t"] = lat["p50_ms"], lat["p90_ms"]
            out["peak_rss_mb"] = r["peak_rss_mb"]
            w.writerow(out)


def chart(result: dict[str, Any], path: Path) -> bool:
    """AUC (val) against file size, marker area by p50 latency: the Pareto front at a glance."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    t = str(result["threads"][0])
    fig, ax = plt.subplots(figsize=(8, 5.5))
    families = sorted({r["family"] for r in result["rows"]})
    for fam, marker in zip(families, "os^Dv"):
        pts = [r for r in result["rows"] if r["family"] == fam and r["accuracy"].get("val")
               and r["latency"].get(t)]
        if not pts:
            continue
        xs = [r["size_bytes"] / 1024 for r in pts]
        ys = [r["accuracy"]["val"]["auc"] for r in pts]
        lat = np.array([r["latency"][t]["p50_ms"] for r in pts])
        sizes = 40 + 400 * lat / max(lat.max(), 1e-9)
        ax.scatter(xs, ys, s=sizes, marker=marker, alpha=0.6, label=fam)
        for r, x, y, ms in zip(pts, xs, ys, lat):
            ax.annotate(f"{r['variant']}\n{ms:.1f} ms", (x, y), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    base = (result.get("baseline") or {}).get("splits", {}).get("val")
    if base:
        ax.axhline(base["auc"], color="grey", ls=":", label="global-cue baseline (val)")
    ax.set_xscale("log")
    ax.set_xlabel("file size (KiB, log scale)")
    ax.set_ylabel("val AUC")
    ax.set_title(f"accuracy vs size; marker area = p50 latency @{t} thread(s)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(result: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "benchmark.md", out / "benchmark.csv", out / "benchmark.json"]
    paths[0].write_text(markdown(result) + "\n")
    write_csv(result, paths[1])
    paths[2].write_text(json.dumps(result, indent=2, default=float) + "\n")
    if chart(result, out / "benchmark.png"):
        paths.append(out / "benchmark.png")
    return paths


def below_floor(result: dict[str, Any], min_auc: float) -> list[str]:
    """Validated rows whose val AUC is under the floor (or unmeasured)."""
    bad = []
    for r in result["rows"]:
        if r["status"] != VALIDATED:
            continue
        auc = r["accuracy"].get("val", {}).get("auc")
        if auc is None or not auc >= min_auc:
            bad.append(f"{r['family']} {r['variant']}: val AUC {_f(auc)} < {min_auc}")
    return bad


def parse_threads(text: str) -> list[int]:
    """'1,2' -> [1, 2], or a click usage error naming the option."""
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise click.BadParameter(f"{text!r}: expected thread counts like 1,2",
                                 param_hint="--threads")
    return out


@click.command()
@click.argument("sources", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--data", type=click.Path(file_okay=False, path_type=Path),
              help="Dataset folder (default: the one named in each model card).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for benchmark.{md,csv,json,png} (default: the first run folder).")
@click.option("--threads", default="1,2", show_default=True, help="Thread counts to time.")
@click.option("--runs", default=50, show_default=True, help="Timed invokes per thread count.")
@click.option("--warmup", default=5, show_default=True)
@click.option("--bootstrap", default=1000, show_default=True, help="AUC interval resamples.")
@click.option("--min-auc", type=float, help="Exit 1 if a validated variant's val AUC is lower.")
def benchmark(sources: tuple[Path, ...], data: Path | None, out: Path | None, threads: str,
              runs: int, warmup: int, bootstrap: int, min_auc: float | None) -> None:
    """Accuracy vs size vs latency for every variant of the given run folders (after
    `edge-toolkit export`) or .tflite files, in one table (Markdown, CSV, JSON, PNG)."""
    thread_list = parse_threads(threads)
    result = run_benchmark(list(sources), data, thread_list, warmup, runs, bootstrap,
                           log=lambda m: click.echo(m, err=True))
    dest = out or (sources[0] if sources[0].is_dir() else sources[0].parent)
    for p in write_outputs(result, dest):
        click.echo(f"wrote {p}", err=True)
    click.echo(markdown(result))
    if min_auc is not None:
        bad = below_floor(result, min_auc)
        if bad:
            for line in bad:
                click.echo(f"below --min-auc: {line}", err=True)
            sys.exit(1)
