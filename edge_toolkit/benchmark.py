"""One table of accuracy vs size vs latency over every exported variant (`edge-toolkit benchmark`).

Rows come from the export table (`quantize/variants.py`) and each run's `export/report.json`,
so export and benchmark walk the same list; a variant that failed export or validation keeps
its row and says so. Accuracy is measured here, through the TF-free runtime, on the dataset's
val and test splits at each file's stored threshold; latency and peak memory come from fresh
child processes per model, the models interleaved round by round in one run, so ratios
between rows hold. No TensorFlow.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_toolkit.card import CardError, ModelCard, load_card, split_tflite, strict_dumps
from edge_toolkit.card_sections import is_finite_number
from edge_toolkit.data import DatasetError, load_samples
from edge_toolkit.files import atomic_write, read_regular, shown
from edge_toolkit.metrics import (
    NonFiniteScoresError,
    apply_temperature,
    at_threshold,
    bootstrap_auc_ci,
    family_summary,
    finite_scores,
    paired_auc_delta,
    roc_auc,
)
from edge_toolkit.multisource import (
    by_source,
    card_roots,
    dataset_for_card,
    groups_of,
    source_names,
)
from edge_toolkit.quantize.variants import EXPORT_FAILED, NOT_VALIDATED, VALIDATED, VARIANTS
from edge_toolkit.runtime.bench import cpu_info, int8_note, round_sizes

SPLITS = ("val", "test")
UNREADABLE = "unreadable"  # a source given to measure that is no model or run folder
# a run's file that is not what its export/report.json says (edited or replaced since):
# the report's status, size and validation do not describe it, so it is not measured
REPORT_MISMATCH = "report-mismatch"
NOT_MEASURED = (EXPORT_FAILED, UNREADABLE, REPORT_MISMATCH)


class BenchmarkError(ValueError):
    """A source cannot be benchmarked at all (no export report, no readable card)."""


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
    # split -> AUC difference from the float reference of the same run, paired bootstrap CI
    paired: dict[str, dict[str, Any]] = field(default_factory=dict)
    run: str | None = None  # the training run the file was exported from, as shown
    # which run, exactly: a run folder's resolved path, or for a loose file its card's
    # parent run, that run's card date and data fingerprint (two pipelines' `mobilenetv2`
    # runs share a name, never a key); ΔAUC pairs a file only with its own run's float32
    run_key: str | None = None
    # where the run's data is: from the run folder's own card.json (the card inside a
    # .tflite names its datasets, never the training machine's folders)
    data: list[str] | None = None
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # threads -> p50/p90
    peak_rss_mb: float | None = None
    backend: str | None = None


def rows_from_run(run: Path) -> list[Row]:
    """Rows of one run folder from its export report (every variant, failed ones too); each
    file's size is read from the file, which must still be what the report describes."""
    report_path = run / "export" / "report.json"
    if not report_path.exists():
        raise BenchmarkError(f"{run}: no export/report.json; run `edge-toolkit export {run}` "
                             "first")
    roots = _run_roots(run)
    rows = []
    try:
        report = json.loads(report_path.read_text())
        parent = report.get("parent") or {}
        for r in list(report["results"]):
            file = str(run / "export" / r["file"]) if r.get("file") else None
            row = Row(family=report["family"], variant=r["variant"], status=r["status"],
                      file=file, reason=r.get("reason"), sparsity=r.get("sparsity"),
                      run=run.name, run_key=str(run.resolve()), data=roots or None)
            rows.append(check_against_report(row, r, parent))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BenchmarkError(f"{report_path}: not a readable export report "
                             f"({getattr(exc, 'strerror', None) or exc})") from None
    order = list(VARIANTS)
    return sorted(rows, key=lambda r: order.index(r.variant) if r.variant in order else 99)


def check_against_report(row: Row, entry: dict[str, Any], parent: dict[str, Any]) -> Row:
    """Fill `row`'s sizes from its file on disk, and mark it REPORT_MISMATCH (not measured,
    with why) when the file's size, its card's variant or parent run, or its weights'
    checksum no longer agree with the report: a hand-edited or stale report must not lend a
    file its status. A file that cannot be read is left to the measurement to report."""
    from edge_toolkit.quantize.inspect import gzip_size

    if row.file is None or row.status == EXPORT_FAILED:
        return row
    try:
        data = read_regular(row.file)
    except OSError:
        return row
    row.size_bytes, row.gzip_bytes = len(data), gzip_size(data)
    problems = report_differences(entry, parent, data)
    if problems:
        row.status = REPORT_MISMATCH
        row.reason = (f"not what export/report.json describes: {'; '.join(problems)} "
                      "(export again, or benchmark the file on its own)")
    return row


def report_differences(entry: dict[str, Any], parent: dict[str, Any],
                       data: bytes) -> list[str]:
    """How a file's bytes differ from its export report row (empty: they agree)."""
    said = entry.get("size_bytes")
    out = [] if said is None or said == len(data) else [
        f"the report says {said:,} bytes, the file has {len(data):,}"]
    try:
        card = split_tflite(data)[1]  # checks the weights against the card's SHA-256
    except CardError as exc:
        return out + [str(exc)]
    if card is None:
        return out + ["the file has no model card"]
    if card.variant != entry.get("variant"):
        out.append(f"its card says variant {card.variant}, the report {entry.get('variant')}")
    made = card.export.get("parent") or {}
    for mine, theirs, what in (("created", "card_created", "run's card date"),
                               ("data_fingerprint", "data_fingerprint", "data fingerprint")):
        a, b = made.get(mine), parent.get(theirs)
        if a is not None and b is not None and a != b:
            out.append(f"its card's parent {what} is {a}, the report's {b} (another "
                       "version of the run)")
    return out


def row_from_file(path: Path) -> Row:
    """A row for a loose .tflite file: what its card says; its status is the card's own
    validation record, and "not-validated" when the card holds none."""
    from edge_toolkit.quantize.inspect import gzip_size

    try:
        card = load_card(path)
        data = read_regular(path)
    except CardError as exc:
        raise BenchmarkError("\n".join(exc.lines(path))) from None
    except OSError as exc:
        raise BenchmarkError(f"{path}: cannot read ({exc.strerror or exc})") from None
    validation = card.export_info.validation
    status = validation.status if validation is not None else NOT_VALIDATED
    made = card.export.get("parent") or {}
    key = f"card:{card.parent}|{made.get('created')}|{card.data_fingerprint}"
    return Row(family=card.family, variant=card.variant, status=status, file=str(path),
               size_bytes=len(data), gzip_bytes=gzip_size(data), sparsity=card.sparsity,
               run=card.parent, run_key=key)


def label_runs(rows: list[Row]) -> None:
    """Give rows of different runs different `run` labels: the shortest tail of the run
    folder's path that tells them apart (`pipeA/mobilenetv2`); a loose file's parent run
    with its date where two share a name."""
    keys = list(dict.fromkeys(r.run_key for r in rows if r.run_key))
    folders = {k: Path(k).parts for k in keys if not k.startswith("card:")}
    labels: dict[str, str] = {}
    for k, parts in folders.items():
        for n in range(1, len(parts) + 1):
            tail = parts[-n:]
            if all(other[-n:] != tail for o, other in folders.items() if o != k):
                labels[k] = "/".join(tail)
                break
    for r in rows:
        if r.run_key in labels:
            r.run = labels[r.run_key]
    keys_of: dict[str | None, set[str]] = {}
    for r in rows:
        if r.run_key:
            keys_of.setdefault(r.run, set()).add(r.run_key)
    for r in rows:
        if r.run_key and r.run_key.startswith("card:") and len(keys_of[r.run]) > 1:
            r.run = f"{r.run} ({r.run_key.split('|')[1]})"


def unreadable_row(src: Path, exc: BenchmarkError) -> Row:
    """A row for a source that cannot be read: the table keeps it, named and with why, so
    the other sources are still measured and written."""
    prefix = f"{src}: "
    reason = "; ".join(line.removeprefix(prefix) for line in str(exc).splitlines())
    return Row(family="–", variant=src.name, status=UNREADABLE, file=str(src), reason=reason)


# images, labels, and each image's source, family of copies and resampling unit
Split = tuple[np.ndarray, np.ndarray, list[str], list[str], list[str]]
Scored = tuple[np.ndarray, np.ndarray]  # labels, calibrated probabilities


class SplitCache:
    """Preprocessed val/test arrays with each image's source, built once per dataset and
    preprocessing recipe and shared by every variant that uses it."""

    def __init__(self, data: Path | list[Path] | None) -> None:
        self.data = [data] if isinstance(data, str | Path) else data
        self._cache: dict[tuple, dict[str, Split]] = {}

    def get(self, card: ModelCard, hint: list[str] | None = None) -> dict[str, Split]:
        """`hint`: the run folder's dataset folders, used when no --data was given."""
        roots = [str(d) for d in self.data] if self.data else (hint or card_roots(card.dataset))
        info = card.dataset_info
        key = (tuple(roots), card.preprocess_config, info.val_fraction, info.seed,
               info.val_grouping)
        if key not in self._cache:
            ds = dataset_for_card(card.dataset, roots)
            out = {}
            for split in SPLITS:
                if split in ds.splits:
                    loaded = load_samples(ds.split(split), card.preprocess_config)
                    out[split] = (loaded.x, loaded.y, loaded.sources,
                                  groups_of(ds, loaded.paths),
                                  groups_of(ds, loaded.paths, clusters=True))
            self._cache[key] = out
        return self._cache[key]


def _accuracy(y: np.ndarray, p: np.ndarray, threshold: float, bootstrap: int,
              groups: Sequence[str] | None = None,
              clusters: Sequence[str] | None = None) -> dict[str, Any]:
    op = at_threshold(y, p, threshold)
    lo, hi = bootstrap_auc_ci(y, p, n=bootstrap)
    return {"n": int(len(y)), "positives": int(np.sum(y)), "auc": roc_auc(y, p),
            "auc_ci95": [lo, hi], "sensitivity": op["sensitivity"],
            "specificity": op["specificity"], "threshold": threshold,
            } | family_summary(y, p, groups, bootstrap, clusters=clusters)


def measure_accuracy(path: Path, cache: SplitCache, bootstrap: int, threads: int,
                     data: list[str] | None = None
                     ) -> tuple[dict[str, dict[str, Any]], dict[str, Scored]]:
    """Per split: AUC with a 95% interval, sensitivity and specificity at the stored
    threshold, pooled and (with several sources) per source; and the calibrated
    probabilities, for paired comparisons between files."""
    from edge_toolkit.runtime.classifier import Classifier

    clf = Classifier.load(path, num_threads=threads)
    out, probs = {}, {}
    for split, (x, y, sources, groups, clusters) in cache.get(clf.card, data).items():
        try:  # ranked or thresholded, NaN or infinite outputs would make up an AUC
            raw = finite_scores(np.asarray(clf.predict_raw_batch(x)).reshape(-1))
        except NonFiniteScoresError as exc:
            raise ValueError(f"{exc.bad} non-finite model outputs (NaN or infinite) on the "
                             f"{exc.total} {split} images") from None
        p = apply_temperature(raw, clf.card.temperature)
        out[split] = _accuracy(y, p, clf.card.threshold, bootstrap, groups, clusters)
        masks = by_source(sources)
        fam, clu = np.asarray(groups), np.asarray(clusters)
        if len(masks) > 1:
            out[split]["sources"] = {name: _accuracy(y[m], p[m], clf.card.threshold,
                                                     bootstrap, fam[m], clu[m])
                                     for name, m in masks.items()}
        probs[split] = (y, p)
    return out, probs


def paired_deltas(rows: list[Row], probs: dict[int, dict[str, Scored]],
                  bootstrap: int) -> None:
    """Fill each row's `paired`: its AUC minus its run's float reference's, per split, with
    a paired bootstrap interval over the same images."""
    from edge_toolkit.quantize.variants import VARIANTS

    refs = {(r.family, r.run_key): i for i, r in enumerate(rows)
            if i in probs and VARIANTS.get(r.variant) and VARIANTS[r.variant].reference}
    for i, row in enumerate(rows):
        j = refs.get((row.family, row.run_key))
        if i not in probs or j is None or i == j:
            continue
        for split, (y, p) in probs[i].items():
            y_ref, p_ref = probs[j].get(split, (None, None))
            if p_ref is not None and np.array_equal(y, y_ref):
                row.paired[split] = {"reference": rows[j].variant} | paired_auc_delta(
                    y, p, p_ref, n=bootstrap)


def measure_latencies(rows: list[Row], threads: list[int], warmup: int, runs: int,
                      log: Any = print) -> None:
    """Latency and peak memory of every row's file, each in its own process, the files
    interleaved round by round (`runtime.bench.bench_models`) so that load on the machine
    while the table is made weighs on every row alike. A file that cannot be timed keeps
    its accuracy and says why."""
    from edge_toolkit.runtime.bench import bench_models

    failed: set[str] = set()

    def fail(model: str | Path, exc: Exception) -> None:
        row = next(r for r in rows if r.file == str(model))
        row.reason = f"latency not measured: {_reason(row, exc)}"
        log(f"{_name(row)}: {row.reason}")
        failed.add(str(model))

    files = [r.file for r in rows if r.file]
    results = bench_models(files, threads, warmup, runs, on_error=fail)
    for row, res in zip([r for r in rows if r.file not in failed], results, strict=True):
        row.latency = {str(r["threads"]): {"p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"],
                                           "mean_ms": r["mean_ms"]} for r in res["runs"]}
        row.peak_rss_mb = res["peak_rss_kb"] / 1024
        row.backend = res.get("backend")


def _name(row: Row) -> str:
    """How a row is named in progress lines: run, family and variant."""
    return f"{row.run + ': ' if row.run else ''}{row.family} {row.variant}"


def _reason(row: Row, exc: BaseException) -> str:
    """An error's message without the file name in front (the line names the file once)."""
    return " ".join(str(getattr(exc, "strerror", None) or exc).split()).removeprefix(
        f"{row.file}: ")


def run_benchmark(sources: list[Path], data: Path | list[Path] | None = None,
                  threads: list[int] = (1, 2),
                  warmup: int = 5, runs: int = 50, bootstrap: int = 1000,
                  log: Any = print, command: str | None = None) -> dict[str, Any]:
    """Measure every row; a row that cannot be measured keeps its reason and the rest go on.

    `command` is recorded as what was run (default: this process's own command line, so a
    benchmark run by `pipeline` says `pipeline`). A source that cannot be read at all keeps
    an `unreadable` row naming why (`unmeasured` lists it); BenchmarkError only for --data
    that names one folder twice."""
    t0 = time.perf_counter()
    if data and not isinstance(data, str | Path):
        try:
            source_names(data)
        except DatasetError as exc:
            raise BenchmarkError(str(exc)) from None
    rows: list[Row] = []
    for src in sources:
        try:
            rows += rows_from_run(src) if src.is_dir() else [row_from_file(src)]
        except BenchmarkError as exc:
            rows.append(unreadable_row(src, exc))
    label_runs(rows)
    cache = SplitCache(data)
    probs: dict[int, dict[str, Scored]] = {}
    for i, row in enumerate(rows):
        if not row.file or row.status in NOT_MEASURED:
            log(f"{_name(row)}: {row.status} ({row.reason}); not measured")
            continue
        try:
            row.accuracy, probs[i] = measure_accuracy(Path(row.file), cache, bootstrap,
                                                      max(threads), row.data)
        except Exception as exc:  # one broken file must not lose the table
            row.reason = f"benchmark failed: {_reason(row, exc)}"
            log(f"{_name(row)}: {row.reason}")
    measured = [rows[i] for i in probs]
    measure_latencies(measured, list(threads), warmup, runs, log)
    for row in measured:
        val = row.accuracy.get("val", {}).get("auc", float("nan"))
        p50 = row.latency.get(str(threads[0]), {}).get("p50_ms", float("nan"))
        log(f"{_name(row)}: val AUC {val:.3f}, p50 {p50:.2f} ms @{threads[0]} thread(s)")
    paired_deltas(rows, probs, bootstrap)
    baselines = [b for name, root in _all_roots(rows, data)
                 if (b := global_cue_baseline(root, log, name)) is not None]
    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command or invoked_command(),
            "host": {"machine": platform.machine(), "processor": platform.processor(),
                     "python": platform.python_version(), "system": platform.system(),
                     "cpu_count": os.cpu_count()} | cpu_info(),
            "threads": list(threads), "runs": runs, "warmup": warmup,
            "rounds": len(round_sizes(runs, models=len(measured))),
            "seconds": round(time.perf_counter() - t0, 1), "baselines": baselines,
            "rows": [asdict(r) for r in rows]}


def invoked_command() -> str:
    """This process's command line as a shell would take it back (`edge-toolkit ...`)."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return shlex.join([prog, *sys.argv[1:]])


def _run_roots(run: Path) -> list[str]:
    """The dataset folders named in a run's own card.json (empty when it names none)."""
    try:
        return card_roots(ModelCard.load(run / "card.json").dataset)
    except (OSError, CardError, ValueError):
        return []


def _all_roots(rows: list[Row], data: Path | list[Path] | None = None
               ) -> list[tuple[str, Path]]:
    """(source name, folder) of every dataset the table was scored on: --data, else the
    folders the runs' cards name; each gets its own global-cue baseline."""
    if data:
        roots = [Path(data)] if isinstance(data, str | Path) else [Path(d) for d in data]
    else:
        found: list[str] = []
        for r in rows:
            for root in r.data or []:
                if root not in found:
                    found.append(root)
        roots = [Path(f) for f in found]
    try:
        names = source_names(roots)
    except DatasetError:  # one folder named twice by two runs: the first name is enough
        names = [p.name for p in roots]
    return list(zip(names, roots))


def global_cue_baseline(root: Path | None, log: Any = print, source: str | None = None
                        ) -> dict[str, Any] | None:
    """The audit's shortcut model (size, aspect, format, intensity) on one source, fit on
    its train split: the AUC a model must beat on that source."""
    if root is None or not Path(root).is_dir():
        return None
    from edge_toolkit.audit.scan import scan
    from edge_toolkit.audit.shortcuts import shortcut_check

    try:
        res = shortcut_check(scan(root).records)
    except Exception as exc:  # the table is still worth having without it
        log(f"global-cue baseline skipped for {source or root}: {exc}")
        return None
    return {"source": source or Path(root).name, "root": str(root), "model": res["model"],
            "splits": res["splits"]}


# -- output ------------------------------------------------------------------------------

def _f(x: Any, spec: str = ".3f") -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def _auc_cell(acc: dict[str, Any]) -> str:
    if not acc:
        return "–"
    lo, hi = acc["auc_ci95"]
    cell = f"{_f(acc['auc'])} [{_f(lo, '.2f')}, {_f(hi, '.2f')}]"
    if "auc_family" in acc:  # copies of one radiograph: the per-family number is the honest one
        flo, fhi = acc["auc_family_ci95"]
        cell += (f"; per family {_f(acc['auc_family'])}" + (
            " [too few groups]" if not is_finite_number(flo) else f" [{flo:.2f}, {fhi:.2f}]"))
    return cell


def _delta_cell(paired: dict[str, Any] | None) -> str:
    if not paired:
        return "–"
    lo, hi = paired["ci95"]
    return f"{paired['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def shows_runs(result: dict[str, Any]) -> bool:
    """Whether the tables need a run column: some family's rows come from more than one
    run (two pipelines' `mobilenetv2`), so family and variant no longer name a row."""
    runs: dict[str, set[str]] = {}
    for r in result["rows"]:
        if r.get("run_key"):
            runs.setdefault(r["family"], set()).add(r["run_key"])
    return any(len(keys) > 1 for keys in runs.values())


def _who(r: dict[str, Any], with_run: bool) -> list[str]:
    """The cells naming a row: its run (when the table shows runs), family and variant."""
    return ([r.get("run") or "–"] if with_run else []) + [r["family"], r["variant"]]


def _sources(result: dict[str, Any], split: str = "test") -> list[str]:
    names: list[str] = []
    for r in result["rows"]:
        for name in (r["accuracy"].get(split) or {}).get("sources") or {}:
            if name not in names:
                names.append(name)
    return names


def per_source_markdown(result: dict[str, Any], split: str = "test") -> list[str]:
    """Each file's AUC and sensitivity/specificity at its stored threshold, per source."""
    names = _sources(result, split)
    if not names:
        return []
    with_run = shows_runs(result)
    head = ["run"] * with_run + ["family", "variant"]
    for n in names:
        head += [f"{n} {split} AUC [95% CI]", f"{n} sens / spec"]
    lines = ["", f"Per source ({split} split; sensitivity/specificity at the stored threshold):",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        src = (r["accuracy"].get(split) or {}).get("sources") or {}
        cells = _who(r, with_run)
        for n in names:
            a = src.get(n)
            cells += [_auc_cell(a or {}), f"{_f(a and a['sensitivity'])} / "
                      f"{_f(a and a['specificity'])}" if a else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _all_accuracies(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every accuracy record of the result: each row's splits and their sources."""
    out = []
    for r in result["rows"]:
        for acc in r["accuracy"].values():
            out += [acc, *(acc.get("sources") or {}).values()]
    return out


def baseline_lines(result: dict[str, Any]) -> list[str]:
    """The global-cue baseline of each source, named: it is fit and scored on that source
    alone, so it compares with the per-source rows (the pooled ones where there is one)."""
    bases = [b for b in result.get("baselines") or [] if b.get("splits")]
    lines = []
    for b in bases:
        parts = [f"{s} {_auc_cell(v)}" for s, v in b["splits"].items()]
        lines += ["", f"Global-cue baseline on {b['source']} ({b['model']} on image size, "
                  f"aspect, format and intensity, fit on its train split): AUC "
                  f"{', '.join(parts)}. A model must clearly beat it on {b['source']}."]
    return lines


def markdown(result: dict[str, Any]) -> str:
    threads = result["threads"]
    with_run = shows_runs(result)
    head = ["run"] * with_run + [
        "family", "variant", "status", "size KiB", "gzip KiB", "sparsity", "val AUC [95% CI]",
        "test AUC [95% CI]", "test ΔAUC vs float [95% CI]", "test sens", "test spec"]
    head += [f"p50/p90 ms @{t}t" for t in threads] + ["peak MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if result.get("note"):  # e.g. the demo sample: say plainly what the table can show
        lines[:0] = [f"**{result['note']}**", ""]
    for r in result["rows"]:
        acc, test = r["accuracy"], r["accuracy"].get("test", {})
        cells = [*_who(r, with_run), r["status"] + (" ⚠" if r["reason"] else ""),
                 _f(r["size_bytes"] and r["size_bytes"] / 1024, ".0f"),
                 _f(r["gzip_bytes"] and r["gzip_bytes"] / 1024, ".0f"),
                 _f(r["sparsity"], ".2f"), _auc_cell(acc.get("val", {})), _auc_cell(test),
                 _delta_cell((r.get("paired") or {}).get("test")),
                 _f(test.get("sensitivity")), _f(test.get("specificity"))]
        for t in threads:
            lat = r["latency"].get(str(t))
            cells.append(f"{lat['p50_ms']:.2f} / {lat['p90_ms']:.2f}" if lat else "–")
        cells.append(_f(r["peak_rss_mb"], ".0f"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += per_source_markdown(result)
    lines += baseline_lines(result)
    notes = [f"- {' '.join(_who(r, with_run))}: {r['reason']}" for r in result["rows"]
             if r["reason"]]
    if notes:
        lines += ["", "Notes:", *notes]
    h = result["host"]
    if any("auc_family" in c for c in _all_accuracies(result)):
        lines += ["", "per family: where a split holds several images of one radiograph "
                  "(fracture-xray's rotated copies) each such family counts once, and the "
                  "interval resamples whole families or patient groups (FracAtlas's blocks "
                  "of consecutive ids); the per-image interval counts every copy as a new "
                  "patient."]
    lines += ["", "ΔAUC: the file's AUC minus its run's float32 file's on the same images, "
              "with a paired bootstrap interval (an interval that excludes 0 is a real "
              "difference).",
              "", f"Sensitivity and specificity at each file's stored threshold (chosen on val). "
              f"Latency: {result['runs']} timed invokes{_rounds(result)} after "
              f"{result['warmup']} warm-up, "
              f"{h['machine']} with {h['cpu_count']} CPUs, Python {h['python']}, "
              f"{result['created']}, in one run ({result['seconds']} s)."]
    if h.get("cpu_model"):
        lines.append(f"CPU: {h['cpu_model']}; {int8_note(h)}.")
    return "\n".join(lines)


def _rounds(result: dict[str, Any]) -> str:
    """How the timed invokes were interleaved between files, for the footnote."""
    k = result.get("rounds") or 1
    return f" in {k} rounds alternating between the files, each round" if k > 1 else ""


def write_csv(result: dict[str, Any], path: Path) -> None:
    """The table as CSV, written atomically (a reader never sees half of it)."""
    buf = io.StringIO()
    _csv_rows(result, buf)
    atomic_write(path, buf.getvalue().encode())


def _csv_rows(result: dict[str, Any], f: Any) -> None:
    threads = result["threads"]
    first = ["family", "variant", "run", "status", "reason", "size_bytes", "gzip_bytes",
             "sparsity"]
    cols = list(first)
    for s in SPLITS:
        cols += [f"{s}_auc", f"{s}_auc_lo", f"{s}_auc_hi", f"{s}_sensitivity",
                 f"{s}_specificity", f"{s}_auc_family", f"{s}_auc_family_lo",
                 f"{s}_auc_family_hi", f"{s}_delta_auc", f"{s}_delta_lo", f"{s}_delta_hi"]
        for n in _sources(result, s):
            cols += [f"{s}_{n}_auc", f"{s}_{n}_auc_lo", f"{s}_{n}_auc_hi",
                     f"{s}_{n}_sensitivity", f"{s}_{n}_specificity", f"{s}_{n}_auc_family",
                     f"{s}_{n}_auc_family_lo", f"{s}_{n}_auc_family_hi"]
    for t in threads:
        cols += [f"p50_ms_{t}t", f"p90_ms_{t}t"]
    cols += ["peak_rss_mb"]
    w = csv.DictWriter(f, fieldnames=cols)
    w.writeheader()
    for r in result["rows"]:
        out = {k: r.get(k) for k in first}
        for s in SPLITS:
            a = r["accuracy"].get(s)
            parts = [(f"{s}_", a)] + [(f"{s}_{n}_", v) for n, v in
                                      ((a or {}).get("sources") or {}).items()]
            for prefix, m in parts:
                if m:
                    out.update({f"{prefix}auc": m["auc"], f"{prefix}auc_lo": m["auc_ci95"][0],
                                f"{prefix}auc_hi": m["auc_ci95"][1],
                                f"{prefix}sensitivity": m["sensitivity"],
                                f"{prefix}specificity": m["specificity"]})
                    if "auc_family" in m:
                        lo, hi = m["auc_family_ci95"]
                        out.update({f"{prefix}auc_family": m["auc_family"],
                                    f"{prefix}auc_family_lo": lo,
                                    f"{prefix}auc_family_hi": hi})
            d = (r.get("paired") or {}).get(s)
            if d:
                out.update({f"{s}_delta_auc": d["delta"], f"{s}_delta_lo": d["ci95"][0],
                            f"{s}_delta_hi": d["ci95"][1]})
        for t in threads:
            lat = r["latency"].get(str(t))
            if lat:
                out[f"p50_ms_{t}t"], out[f"p90_ms_{t}t"] = lat["p50_ms"], lat["p90_ms"]
        out["peak_rss_mb"] = r["peak_rss_mb"]
        w.writerow(out)


OUTPUTS = ("benchmark.md", "benchmark.csv", "benchmark.json", "benchmark.png")


def write_outputs(result: dict[str, Any], out: Path, log: Any = None) -> list[Path]:
    """Write the table (Markdown, CSV, strict JSON: null for an undefined number) and the
    chart into `out`, each file atomically. A chart that cannot be drawn (no row with a
    defined AUC, no matplotlib) is not left behind from an earlier run: it is removed, and
    `log` says why.
    OSError when a file cannot be written."""
    say = log or (lambda m: print(m, file=sys.stderr))
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in OUTPUTS[:3]]
    atomic_write(paths[0], (markdown(result) + "\n").encode())
    write_csv(result, paths[1])
    atomic_write(paths[2], (strict_dumps(result, indent=2) + "\n").encode())
    png = out / OUTPUTS[3]
    from edge_toolkit.benchmark_chart import chart  # matplotlib only where it draws

    try:
        why = chart(result, png)
    except OSError:
        raise
    except Exception as exc:  # a plotting failure must not cost the table
        why = f"the chart failed ({exc})"
    if why is None:
        return [*paths, png]
    if png.is_file() or png.is_symlink():
        png.unlink()
        say(f"removed the earlier {shown(png)}: {why}")
    else:
        say(f"no chart drawn: {why}")
    return paths


def unmeasured(result: dict[str, Any]) -> list[str]:
    """Files that were there to measure but could not be (e.g. no dataset to score on): one
    line each, naming the file and why."""
    return [f"{r['file']}: {r['reason']}" for r in result["rows"]
            if r["file"] and r["status"] != EXPORT_FAILED and not r["accuracy"]]


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
