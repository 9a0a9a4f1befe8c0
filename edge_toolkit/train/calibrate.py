"""Choose the operating points and temperature on validation, then report every split.

Kept apart from training so `evaluate` and export validation apply the very same rules:
temperature and thresholds come from `val` alone; `test` is only reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_toolkit.metrics import (
    apply_temperature,
    fit_temperature,
    summarize,
    threshold_balanced,
    threshold_for_sensitivity,
)


def choose_operating_points(y_val: np.ndarray, p_val: np.ndarray,
                            target_sensitivity: float = 0.95) -> dict[str, Any]:
    """Temperature, then thresholds on the calibrated validation probabilities."""
    temperature = fit_temperature(y_val, p_val)
    q = apply_temperature(p_val, temperature)
    thresholds = {"high_sensitivity": threshold_for_sensitivity(y_val, q, target_sensitivity),
                  "balanced": threshold_balanced(y_val, q)}
    return {"temperature": temperature, "thresholds": thresholds,
            "threshold": thresholds["high_sensitivity"],
            "target_sensitivity": target_sensitivity}


def report_splits(probs: dict[str, tuple[np.ndarray, np.ndarray]], temperature: float,
                  thresholds: dict[str, float], bootstrap: int = 1000) -> dict[str, Any]:
    """Metrics of each split from raw probabilities: {split: summarize(...)}."""
    out = {}
    for split, (y, p) in probs.items():
        if len(y) == 0:
            continue
        out[split] = summarize(y, apply_temperature(p, temperature), thresholds,
                               bootstrap=bootstrap)
        out[split]["ece_uncalibrated"] = summarize(y, p, {}, bootstrap=0)["ece"]
    return out


def format_metrics(metrics: dict[str, Any]) -> str:
    """A short human table: one line per split and operating point."""
    lines = []
    for split, m in metrics.items():
        lo, hi = m["auc_ci95"]
        lines.append(f"{split:>5}: n={m['n']} AUC {m['auc']:.3f} [{lo:.3f}, {hi:.3f}] "
                     f"ECE {m['ece']:.3f}")
        for name, op in m["operating_points"].items():
            lines.append(f"       {name:<16} thr {op['threshold']:.3f}  sens "
                         f"{op['sensitivity']:.3f}  spec {op['specificity']:.3f}  acc "
                         f"{op['accuracy']:.3f}  F1 {op['f1']:.3f}")
    return "\n".join(lines)
