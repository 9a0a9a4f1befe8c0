"""The full audit of a dataset folder, as a JSON-ready dict and as a terminal report.

Order of the text report follows what a user must act on: what is in the folder, what is
unreadable, duplicates, leakage with its verdict, then the shortcut baseline.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_toolkit.audit.duplicates import (
    Duplicates,
    cross_label_pairs,
    cross_split_groups,
    find_duplicates,
    label_conflicts,
    name_families,
)
from edge_toolkit.audit.hashing import NEAR_THRESHOLD
from edge_toolkit.audit.leakage import LeakSummary, compute_leakage
from edge_toolkit.audit.scan import Record, Scan, scan
from edge_toolkit.audit.shortcuts import shortcut_check
from edge_toolkit.data import LABELS, SPLITS
from edge_toolkit.files import printable, shown


@dataclass
class AuditReport:
    """Everything the audit found; `data` is the JSON document, `leak` drives exit codes."""

    data: dict[str, Any]
    leak: LeakSummary
    scan: Scan
    dups: Duplicates


def run_audit(root: str | Path, near: bool = True, threshold: float = NEAR_THRESHOLD,
              shortcuts: bool = True, bootstrap: int = 1000, workers: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> AuditReport:
    """Scan, group, summarise leakage and (optionally) the shortcut baseline of a folder."""
    t0 = time.perf_counter()
    sc = scan(root, decode=True, workers=workers, progress=progress)
    check_readable(sc)
    dups = find_duplicates(sc, near=near, threshold=threshold)
    leak = compute_leakage(str(root), sc.records, dups, sc.partial_splits)
    t1 = time.perf_counter()
    short = shortcut_check(sc.records, bootstrap=bootstrap) if shortcuts else None
    t2 = time.perf_counter()
    recs = sc.records
    data: dict[str, Any] = {
        "root": str(root),
        "files": len(recs),
        "distinct_contents": len({r.sha256 for r in recs if r.sha256}),
        "splits_present": sc.splits,
        "verdict": leak.verdict(),
        "leaked": leak.leaked,
        "splits": split_stats(recs),
        "unreadable": [{"file": r.rel, "reason": r.error} for r in recs if r.error],
        "unreadable_folders": sc.unread_folders,
        "warnings": [{"file": r.rel, "warning": r.warning} for r in recs if r.warning],
        "ignored_files": sc.ignored,
        "outside_class_folders": sc.outside,
        "unknown_class_folders": sc.unknown_folders,
        "exact_duplicates": exact_section(recs, dups),
        "near_duplicates": near_section(recs, dups),
        "label_conflicts": conflict_section(sc, dups),
        "filename_families": family_section(recs),
        "leakage": leak.to_dict(),
        "shortcuts": short,
        "seconds": {"scan": sc.seconds, "duplicates": dups.seconds, "shortcuts": t2 - t1,
                    "total": t2 - t0},
    }
    return AuditReport(json_safe(data), leak, sc, dups)


def check_readable(sc: Scan) -> None:
    """Refuse a dataset with no image to audit: say it is empty, or that nothing in it
    could be read (with the first reason), instead of reporting on nothing."""
    from edge_toolkit.audit.scan import AuditError

    if not sc.records:
        raise AuditError(f"{shown(sc.root)}: no image files in its train/, val/ or test/ "
                         f"folders{_why_empty(sc)}")
    if not any(r.readable for r in sc.records):
        first = sc.records[0]
        raise AuditError(f"{shown(sc.root)}: none of its {len(sc.records)} image files could be "
                         f"read (e.g. {shown(first.rel)}: {shown(str(first.error))})")


def _why_empty(sc: Scan) -> str:
    """What an empty listing held instead: unreadable folders, folders with names that are
    not a class (and the names that are), files with other names."""
    if sc.unread_folders:
        f = sc.unread_folders[0]
        return (f": {len(sc.unread_folders)} folders could not be read (e.g. "
                f"{shown(f['folder'])}: {f['reason']})")
    if sc.unknown_folders:
        return ("; ignored folders that are not a class name: "
                + ", ".join(shown(f) for f in sc.unknown_folders[:5])
                + f". {CLASS_NAMES}")
    return f" ({len(sc.ignored) + len(sc.outside)} files with other names): an empty dataset"


CLASS_NAMES = ("Class folders are named 'fractured' (or 'fracture', 'positive', 'abnormal') and "
               "'not fractured' (or 'not_fractured', 'normal', 'negative', 'healthy').")


def json_safe(obj: Any) -> Any:
    """NaN/inf become None, numpy scalars become Python numbers, floats get 4 decimals, and
    the bytes of a file name that is not UTF-8 become `\\xff` escapes (`files.printable`,
    as on the terminal): a lone surrogate is not valid UTF-8 JSON."""
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {printable(str(k)): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return round(f, 4) if math.isfinite(f) else None
    return obj


def split_stats(recs: list[Record]) -> dict[str, dict[str, Any]]:
    """Per split and class: files, unreadable, distinct contents, sizes, formats, modes."""
    out: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        for label in (1, 0):
            part = [r for r in recs if r.split == split and r.label == label]
            if not part:
                continue
            ok = [r for r in part if r.readable and r.width]
            sizes = Counter(f"{r.width}x{r.height}" for r in ok)
            w = np.asarray([r.width for r in ok], dtype=float)
            h = np.asarray([r.height for r in ok], dtype=float)
            out.setdefault(split, {})[LABELS[label]] = {
                "folder": part[0].class_folder,
                "files": len(part),
                "unreadable": len(part) - len(ok),
                "distinct": len({r.sha256 for r in part if r.sha256}),
                "sizes": {"distinct": len(sizes), "most_common": dict(sizes.most_common(3)),
                          "width_min_median_max": _mmm(w), "height_min_median_max": _mmm(h)},
                "formats": dict(Counter(str(r.format) for r in ok).most_common()),
                "modes": dict(Counter(str(r.mode) for r in ok).most_common()),
            }
    return out


def _mmm(v: np.ndarray) -> list[float] | None:
    return [float(v.min()), float(np.median(v)), float(v.max())] if len(v) else None


def _group_entry(recs: list[Record], members: list[int]) -> dict[str, Any]:
    members = sorted(members, key=lambda i: (SPLITS.index(recs[i].split), recs[i].rel))
    splits = Counter(recs[i].split for i in members)
    return {"files": [recs[i].rel for i in members],
            "splits": {s: splits[s] for s in SPLITS if splits[s]},
            "labels": sorted({LABELS[recs[i].label] for i in members}),
            "distinct": len({recs[i].sha256 for i in members})}


def _ordered(recs: list[Record], groups: dict[int, list[int]]) -> list[list[int]]:
    """Cross-split groups first, then larger groups first."""
    def key(m: list[int]) -> tuple[int, int, str]:
        return (-len({recs[i].split for i in m}), -len(m), recs[m[0]].rel)
    return sorted(groups.values(), key=key)


def exact_section(recs: list[Record], dups: Duplicates) -> dict[str, Any]:
    groups = dups.members("exact")
    cross = cross_split_groups(recs, groups)
    return {"groups": len(groups), "redundant_files": sum(len(m) - 1 for m in groups.values()),
            "cross_split_groups": len(cross), "within_split_groups": len(groups) - len(cross),
            "list": [dict(_group_entry(recs, m), sha256=recs[m[0]].sha256)
                     for m in _ordered(recs, groups)]}


def near_section(recs: list[Record], dups: Duplicates) -> dict[str, Any]:
    """Families: groups holding at least two distinct contents (exact copies included)."""
    if not dups.near_checked:
        return {"checked": False}
    fams = {g: m for g, m in dups.members().items()
            if len({recs[i].sha256 for i in m}) > 1}
    cross = cross_split_groups(recs, fams)
    return {"checked": True, "threshold": dups.threshold, "families": len(fams),
            "cross_split_families": len(cross),
            "files_in_families": sum(len(m) for m in fams.values()),
            "list": [_group_entry(recs, m) for m in _ordered(recs, fams)]}


def conflict_section(sc: Scan, dups: Duplicates) -> dict[str, Any]:
    """Exact: one content under two labels. Near: two contents under different labels that
    match each other directly (not merely through a chain of others), with their copies."""
    recs = sc.records
    exact = label_conflicts(recs, dups.members("exact"))
    copies: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(recs):
        if r.readable and r.sha256:
            copies[r.sha256].append(i)
    near = []
    for i, j, corr in cross_label_pairs(sc, dups):
        members = copies[str(recs[i].sha256)] + copies[str(recs[j].sha256)]
        near.append((members, corr))
    near.sort(key=lambda t: (-len({recs[i].split for i in t[0]}), -t[1]))
    return {"exact": [_group_entry(recs, m) for m in _ordered(recs, exact)],
            "near": [dict(_group_entry(recs, m), correlation=c) for m, c in near]}


def family_section(recs: list[Record]) -> dict[str, Any]:
    """File-name families (`12.jpg`, `12-rotated1.jpg`, ...: `duplicates.name_families`)
    spanning splits: a hint from names alone, whatever the pixels say."""
    fams: dict[str, set[str]] = defaultdict(set)
    for r, key in zip(recs, name_families(recs)):
        if key is not None:
            fams[key].add(r.split)
    cross = sorted(k for k, v in fams.items() if len(v) > 1)
    return {"families": len(fams), "cross_split": len(cross), "cross_split_names": cross}


# ---------------------------------------------------------------- text


def _pct(a: int, b: int) -> str:
    return f"{100.0 * a / b:.1f}%" if b else "-"


def _files_line(entry: dict[str, Any], limit: int = 3) -> str:
    files = entry["files"]
    more = f" (+{len(files) - limit} more)" if len(files) > limit else ""
    return ", ".join(shown(f) for f in files[:limit]) + more


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"


def format_text(report: AuditReport, max_groups: int = 8) -> str:
    """The terminal report; `max_groups` caps each list (the JSON holds all)."""
    d = report.data
    secs = d["seconds"]
    lines = [f"Dataset audit: {d['root']}",
             f"{d['files']} image files, {d['distinct_contents']} distinct contents, splits: "
             f"{', '.join(d['splits_present']) or 'none'}  ({secs['total']:.1f} s: read "
             f"{secs['scan']:.1f}, duplicates {secs['duplicates']:.1f}, shortcuts "
             f"{secs['shortcuts']:.1f})", ""]
    lines.append("Files per split and class")
    lines.append(f"  {'split':<6} {'class':<14} {'files':>6} {'unread':>6} {'distinct':>8}  "
                 "sizes (WxH)  | formats | modes")
    for split, classes in d["splits"].items():
        for cls, s in classes.items():
            sz = s["sizes"]
            common = ", ".join(f"{k} x{v}" for k, v in sz["most_common"].items())
            lines.append(f"  {split:<6} {cls:<14} {s['files']:>6} {s['unreadable']:>6} "
                         f"{s['distinct']:>8}  {common}; {sz['distinct']} sizes | "
                         f"{_counts(s['formats'])} | {_counts(s['modes'])}")
    if d["unreadable"]:
        lines += ["", f"Unreadable files ({len(d['unreadable'])})"]
        lines += [f"  {shown(u['file'])}: {shown(u['reason'])}"
                  for u in d["unreadable"][:max_groups]]
        if len(d["unreadable"]) > max_groups:
            lines.append(f"  ... {len(d['unreadable']) - max_groups} more (see --json)")
    if d["unreadable_folders"]:
        lines += ["", f"Unreadable folders ({len(d['unreadable_folders'])}; their files are "
                  "not in this audit)"]
        lines += [f"  {shown(f['folder'])}/: {f['reason']}" for f in d["unreadable_folders"]]
    if d["ignored_files"]:
        lines.append(f"Ignored (not image files by name): {len(d['ignored_files'])}, e.g. "
                     + ", ".join(shown(f) for f in d["ignored_files"][:3]))
    if d["outside_class_folders"]:
        lines.append(f"Ignored (outside a class folder, so no label): "
                     f"{len(d['outside_class_folders'])}, e.g. "
                     + ", ".join(shown(f) for f in d["outside_class_folders"][:3]))
    if d["unknown_class_folders"]:
        lines.append("Ignored folders (not a known class name): "
                     + ", ".join(shown(f) for f in d["unknown_class_folders"]) + ". "
                     + CLASS_NAMES)

    ex = d["exact_duplicates"]
    lines += ["", f"Exact duplicates (same bytes): {ex['groups']} groups, "
              f"{ex['redundant_files']} redundant files; {ex['cross_split_groups']} groups span "
              f"splits, {ex['within_split_groups']} within one split"]
    lines += _group_lines(ex["list"], max_groups)
    nd = d["near_duplicates"]
    if nd["checked"]:
        lines += ["", f"Near duplicates (re-encoded/resized/flipped/rotated copies, correlation "
                  f">= {nd['threshold']}): {nd['families']} families of {nd['files_in_families']}"
                  f" files; {nd['cross_split_families']} span splits"]
        lines += _group_lines(nd["list"], max_groups)
    else:
        lines += ["", "Near duplicates: not checked (--no-near)"]
    lc = d["label_conflicts"]
    n_conf = len(lc["exact"]) + len(lc["near"])
    lines += ["", f"Label conflicts (one image under two labels): {len(lc['exact'])} exact, "
              f"{len(lc['near'])} near (pairs that match each other directly)" if n_conf
              else "Label conflicts: none"]
    lines += _group_lines(lc["exact"] + lc["near"], max_groups)
    ff = d["filename_families"]
    if ff["cross_split"]:
        lines.append(f"File-name families (N.jpg, N-rotated...) spanning splits: "
                     f"{ff['cross_split']} of {ff['families']} (by name only; the pixels decide "
                     "leakage), e.g. " + ", ".join(shown(f) for f in ff["cross_split_names"][:5]))

    lines += ["", "Leakage into evaluation splits"]
    lk = d["leakage"]
    for name, s in lk["splits"].items() if lk["has_train"] else ():
        lines.append(f"  {name}: {s['exact_in_train']}/{s['files']} "
                     f"({s['exact_in_train_pct']:.1f}%) have an exact copy in train; "
                     f"{s['near_only_in_train']} more a near copy; "
                     f"{s['exact_or_near_in_train']}/{s['files']} "
                     f"({s['exact_or_near_in_train_pct']:.1f}%) exact or near")
        for e in s["examples"][:2]:
            lines.append(f"      e.g. {shown(e['file'])} = {shown(e['train_copy'])} ({e['kind']})")
    if lk["test_with_copy_in_val"]:
        lines.append(f"  test: {lk['test_with_copy_in_val']} images have a copy in val")
    lines.append(d["verdict"])
    lines += [""] + _shortcut_lines(d["shortcuts"])
    return printable("\n".join(lines))


def _group_lines(entries: list[dict[str, Any]], limit: int) -> list[str]:
    out = []
    for e in entries[:limit]:
        where = ", ".join(f"{k} {v}" for k, v in e["splits"].items())
        lab = "/".join(e["labels"])
        corr = f", correlation {e['correlation']:.3f}" if "correlation" in e else ""
        out.append(f"  [{where}; {lab}; {len(e['files'])} files, {e['distinct']} distinct{corr}]"
                   " " + _files_line(e))
    if len(entries) > limit:
        out.append(f"  ... {len(entries) - limit} more (see --json)")
    return out


def _fmt_auc(e: dict[str, Any]) -> str:
    lo, hi = e["auc_ci95"]
    ci = f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else ""
    auc = f"{e['auc']:.3f}" if e["auc"] is not None else "n/a"
    return f"AUC {auc}{ci}"


def _shortcut_lines(sh: dict[str, Any] | None) -> list[str]:
    if sh is None:
        return ["Shortcut check: skipped (--no-shortcuts)"]
    head = "Shortcut check (size, aspect ratio, format, mode, mean and spread of intensity only)"
    if sh.get("skipped"):
        return [f"{head}: skipped - {sh['skipped']}"]
    lines = [head, f"  {sh['model']}, fit on {sh['train_images']} train images; "
                   "95% bootstrap intervals"]
    for name, e in sh["splits"].items():
        lin = sh["logistic"][name]
        lines.append(f"  {name:<4} {_fmt_auc(e)}   (logistic regression {_fmt_auc(lin)}, "
                     f"n={e['n']})")
    best = {name: max(((f, v[name]) for f, v in sh["single_features"].items()
                       if v.get(name) is not None), key=lambda t: t[1], default=None)
            for name in sh["splits"]}
    parts = [f"{name} {b[0]} {b[1]:.2f}" for name, b in best.items() if b]
    if parts:
        lines.append("  strongest single feature: " + "; ".join(parts))
    lines.append("  A model trained on these images means something only if it clearly "
                 "beats these AUCs.")
    return lines
