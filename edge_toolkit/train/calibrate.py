"""Choose the operating points and temperature on validation, then report every split.

Kept apart from training so `evaluate` and export validation apply the very same rules:
temperature and thresholds come from `val` alone; `test` is only reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_toolkit.metrics import (
    apply_temperature,
    fit_temperature,
    stored_threshold,
    summarize,
    threshold_balanced,
)
from edge_toolkit.multisource import by_source


def choose_operating_points(y_val: np.ndarray, p_val: np.ndarray,
                            target_sensitivity: float = 0.95,
                            sources: Sequence[str] | None = None,
                            min_specificity: float | None = None) -> dict[str, Any]:
    """Temperature, then thresholds on the calibrated validation probabilities (pooled over
    sources; the high-sensitivity one reaches its target on every source). With
    `min_specificity` the stored threshold is the one that clears both floors (the target
    sensitivity and this specificity) by the widest margin on every source
    (`metrics.threshold_for_floors`), never less sensitive than the plain one; the margin,
    in standard errors, is returned as `floor_margin`."""
    y_val = np.asarray(y_val)
    temperature = fit_temperature(y_val, p_val)
    q = apply_temperature(p_val, temperature)
    groups = list(by_source(sources).values()) if sources is not None else None
    stored, margin = stored_threshold(y_val, q, target_sensitivity, groups, min_specificity)
    out: dict[str, Any] = ({"min_specificity": min_specificity, "floor_margin": margin}
                           if min_specificity is not None else {})
    thresholds = {"high_sensitivity": stored, "balanced": threshold_balanced(y_val, q)}
    return {"temperature": temperature, "thresholds": thresholds,
            "threshold": thresholds["high_sensitivity"],
            "target_sensitivity": target_sensitivity} | out


def report_splits(probs: dict[str, tuple[np.ndarray, np.ndarray]], temperature: float,
                  thresholds: dict[str, float], bootstrap: int = 1000,
                  sources: dict[str, Sequence[str]] | None = None,
                  groups: dict[str, Sequence[str]] | None = None,
                  clusters: dict[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """Metrics of each split from raw probabilities: {split: summarize(...)}; with images
    from several sources, each split also has `sources`: {name: summarize(...)}. With
    `groups` (each image's family of copies, per split) and `clusters` (its resampling unit)
    the family-weighted AUC and its cluster-bootstrap interval join the per-image ones
    wherever a family or cluster repeats (lists of another length are ignored)."""

    def per_image(d: dict[str, Sequence[str]] | None, split: str, n: int) -> np.ndarray | None:
        ids = (d or {}).get(split)
        return np.asarray(list(ids)) if ids is not None and len(ids) == n and n else None

    out = {}
    for split, (y, p) in probs.items():
        if len(y) == 0:
            continue
        q = apply_temperature(p, temperature)
        fam, clu = per_image(groups, split, len(y)), per_image(clusters, split, len(y))
        out[split] = summarize(y, q, thresholds, bootstrap=bootstrap, groups=fam,
                               clusters=clu)
        out[split]["ece_uncalibrated"] = summarize(y, p, {}, bootstrap=0)["ece"]
        names = (sources or {}).get(split)
        if names is not None and len(set(names)) > 1:
            out[split]["sources"] = {
                name: summarize(np.asarray(y)[m], q[m], thresholds, bootstrap=bootstrap,
                                groups=None if fam is None else fam[m],
                                clusters=None if clu is None else clu[m])
                for name, m in by_source(names).items()}
    return out


def floor_line(ops: dict[str, Any]) -> str:
    """How the stored threshold of `choose_operating_points(..., min_specificity=S)` clears
    both floors, in standard errors, or a warning that no threshold meets them."""
    floors = (f"sensitivity {ops['target_sensitivity']:g} and specificity "
              f"{ops['min_specificity']:g}")
    margin = ops["floor_margin"]
    return (f"threshold {ops['threshold']:.4f}: clears {floors} on every val source by "
            f"{margin:.2f} standard errors" if margin >= 0 else
            f"WARNING: no threshold meets both {floors} on every val source; kept the one "
            f"for the target sensitivity ({margin:.2f} standard errors short)")


def family_line(m: dict[str, Any], intervals: bool = True) -> str:
    """'family-weighted AUC 0.937 [0.813, 0.999] over 8 families (3 with a fracture)', and
    which units the interval resampled when they are not the families. `intervals` False:
    none was computed (no bootstrap), so none is shown."""
    lo, hi = m["auc_family_ci95"]
    interval = ("" if not intervals else "[too few groups for an interval] " if np.isnan(lo)
                else f"[{lo:.3f}, {hi:.3f}] ")
    line = (f"family-weighted AUC {m['auc_family']:.3f} {interval}over "
            f"{m['families']} families ({m['families_with_fracture']} with a fracture)")
    if "clusters" in m and intervals:
        line += f"; the interval resamples {m['clusters']} groups (e.g. patient blocks)"
    return line


def format_metrics(metrics: dict[str, Any], intervals: bool = True) -> str:
    """A short human table: one line per split and operating point (`intervals` False: the
    metrics were computed without a bootstrap, e.g. a cross-validation fold's)."""
    lines = []
    for split, m in metrics.items():
        parts = [(split, m)] + [(f"  {split}/{name}", sm)
                                for name, sm in (m.get("sources") or {}).items()]
        for label, sm in parts:
            lo, hi = sm["auc_ci95"]
            ci = f"[{lo:.3f}, {hi:.3f}] " if intervals else ""
            lines.append(f"{label:>5}: n={sm['n']} AUC {sm['auc']:.3f} {ci}ECE {sm['ece']:.3f}")
            if "auc_family" in sm:
                lines.append(f"       {family_line(sm, intervals)}")
            for name, op in sm["operating_points"].items():
                lines.append(f"       {name:<16} thr {op['threshold']:.3f}  sens "
                             f"{op['sensitivity']:.3f}  spec {op['specificity']:.3f}  acc "
                             f"{op['accuracy']:.3f}  F1 {op['f1']:.3f}")
    return "\n".join(lines)
