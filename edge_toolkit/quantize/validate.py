"""Judge an exported variant against its float parent. No TensorFlow, no interpreter here.

Predictions come from the device's own path (`edge_toolkit.runtime.Classifier`, which owns
file and card reading, input quantization and output dequantization); this module only
compares them, so validation measures exactly what the device will run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edge_toolkit.card import ModelCard, Validation
from edge_toolkit.metrics import (
    apply_temperature,
    at_threshold,
    roc_auc,
    threshold_balanced,
    threshold_for_sensitivity,
)
from edge_toolkit.multisource import by_source
from edge_toolkit.quantize.variants import FAILED_VALIDATION, VALIDATED


def compare_to_parent(y: np.ndarray, p: np.ndarray, p_parent: np.ndarray, card: ModelCard,
                      tolerance: float = 0.02,
                      sources: Sequence[str] | None = None) -> Validation:
    """Judge a variant's raw outputs `p` against its float parent's `p_parent` on one split.

    Both go through the card's temperature first (the runtime reports calibrated
    probabilities and compares those to the threshold). `agreement` is the fraction of images
    with the same decision at the card's threshold; `mean_abs_diff` is the mean absolute
    difference of the calibrated probabilities. The status is failed-validation when AUC falls
    more than `tolerance` below the parent's (or is undefined), pooled or, with several
    `sources`, on any one source: a pooled AUC can hold while one site's falls (a pruned file
    lost 0.08 on FracAtlas val while the pooled AUC moved 0.01).
    """
    y = np.asarray(y)
    q = apply_temperature(p, card.temperature)
    q_parent = apply_temperature(p_parent, card.temperature)
    auc, parent_auc = roc_auc(y, q), roc_auc(y, q_parent)
    op = at_threshold(y, q, card.threshold)
    same = (q >= card.threshold) == (q_parent >= card.threshold)
    delta = auc - parent_auc
    ok = not math.isnan(delta) and delta >= -tolerance
    reason = None
    if not ok:
        reason = ("val AUC undefined" if math.isnan(delta) else
                  f"val AUC {auc:.4f} is {-delta:.4f} below the float parent's "
                  f"{parent_auc:.4f} (tolerance {tolerance:g})")
    per_source = None
    if sources is not None and len(set(sources)) > 1:
        per_source = {}
        for name, m in by_source(sources).items():
            if len(set(y[m].tolist())) < 2:
                continue  # one class only: no AUC to hold
            a, b = roc_auc(y[m], q[m]), roc_auc(y[m], q_parent[m])
            per_source[name] = {"auc": a, "parent_auc": b, "delta_auc": a - b}
        worst = min(per_source.items(), key=lambda kv: kv[1]["delta_auc"], default=None)
        if ok and worst is not None and worst[1]["delta_auc"] < -tolerance:
            ok = False
            name, d = worst
            reason = (f"val AUC on {name} {d['auc']:.4f} is {-d['delta_auc']:.4f} below the "
                      f"float parent's {d['parent_auc']:.4f} (tolerance {tolerance:g})")
    nan = float("nan")
    return Validation(
        status=VALIDATED if ok else FAILED_VALIDATION, reason=reason,
        split="val", n=int(len(y)), tolerance=float(tolerance),
        auc=auc, parent_auc=parent_auc, delta_auc=delta,
        threshold=float(card.threshold), temperature=float(card.temperature),
        sensitivity=op["sensitivity"], specificity=op["specificity"],
        accuracy=op["accuracy"], confusion=op["confusion"],
        agreement=float(same.mean()) if len(y) else nan,
        mean_abs_diff=float(np.mean(np.abs(q - q_parent))) if len(y) else nan,
        max_abs_diff=float(np.max(np.abs(q - q_parent))) if len(y) else nan,
        # what val suggests at the parent's temperature, pooled, by the plain target rule; the
        # card's own operating point is re-chosen by the exporter (`operating_points`)
        suggested_thresholds=_suggest(y, q, card.target_sensitivity),
        sources=per_source,
    )


def _suggest(y: np.ndarray, q: np.ndarray, target: float) -> dict[str, float] | None:
    if len(set(np.asarray(y).tolist())) < 2:
        return None
    return {"high_sensitivity": threshold_for_sensitivity(y, q, target),
            "balanced": threshold_balanced(y, q)}
