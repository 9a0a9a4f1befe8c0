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
    summarize,
    threshold_balanced,
    threshold_for_floors,
    threshold_for_sensitivity,
)
from edge_toolkit.multisource import by_source


def sensitivity_threshold(y: np.ndarray, q: np.ndarray, target: float,
                          sources: Sequence[str] | None = None) -> float:
    """Threshold reaching `target` sensitivity on the pooled images and, with several
    sources, on each source's own (a site with harder fractures must not be the one that
    pays for the others' easy ones): the lowest of those thresholds."""
    thr = threshold_for_sensitivity(y, q, target)
    if sources is not None and len(set(sources)) > 1:
        for m in by_source(sources).values():
            if y[m].sum() > 0:
                thr = min(thr, threshold_for_sensitivity(y[m], q[m], target))
    return thr


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
    stored = sensitivity_threshold(y_val, q, target_sensitivity, sources)
    out: dict[str, Any] = {}
    if min_specificity is not None:
        masks = (by_source(sources).values() if sources is not None and len(set(sources)) > 1
                 else [np.ones(len(y_val), bool)])
        stored, margin = threshold_for_floors([(y_val[m], q[m]) for m in masks],
                                              target_sensitivity, min_specificity, stored)
        out = {"min_specificity": min_specificity, "floor_margin": margin}
    thresholds = {"high_sensitivity": stored, "balanced": threshold_balanced(y_val, q)}
    return {"temperature": temperature, "thresholds": thresholds,
            "threshold": thresholds["high_sensitivity"],
            "target_sensitivity": target_sensitivity} | out


def report_splits(probs: dict[str, tuple[np.ndarray, np.ndarray]], temperature: float,
                  thresholds: dict[str, float], bootstrap: int = 1000,
                  sources: dict[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """Metrics of each split from raw probabilities: {split: summarize(...)}; with images
    from several sources, each split also has `sources`: {name: summarize(...)}."""
    out = {}
    for split, (y, p) in probs.items():
        if len(y) == 0:
            continue
        q = apply_temperature(p, temperature)
        out[split] = summarize(y, q, thresholds, bootstrap=bootstrap)
        out[split]["ece_uncalibrated"] = summarize(y, p, {}, bootstrap=0)["ece"]
        names = (sources or {}).get(split)
        if names is not None and len(set(names)) > 1:
            out[split]["sources"] = {
                name: summarize(np.asarray(y)[m], q[m], thresholds, bootstrap=bootstrap)
                for name, m in by_source(names).items()}
    return out


def format_metrics(metrics: dict[str, Any]) -> str:
    """A short human table: one line per split and operating point."""
    lines = []
    for split, m in metrics.items():
        parts = [(split, m)] + [(f"  {split}/{name}", sm)
                                for name, sm in (m.get("sources") or {}).items()]
        for label, sm in parts:
            lo, hi = sm["auc_ci95"]
            lines.append(f"{label:>5}: n={sm['n']} AUC {sm['auc']:.3f} [{lo:.3f}, {hi:.3f}] "
                         f"ECE {sm['ece']:.3f}")
            for name, op in sm["operating_points"].items():
                lines.append(f"       {name:<16} thr {op['threshold']:.3f}  sens "
                             f"{op['sensitivity']:.3f}  spec {op['specificity']:.3f}  acc "
                             f"{op['accuracy']:.3f}  F1 {op['f1']:.3f}")
    return "\n".join(lines)
