"""Binary-classification metrics in numpy: AUC with bootstrap intervals, operating points,
temperature scaling and calibration error. Shared by training, export validation and
benchmarks, and free of TensorFlow so the device can report the same numbers.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

_EPS = 1e-7


class NonFiniteScoresError(ValueError):
    """Scores with NaN or infinity (a broken model's outputs): ranked or thresholded they
    would give an AUC or a sensitivity that means nothing, so they are refused. `bad` of
    `total` were not finite."""

    def __init__(self, bad: int, total: int) -> None:
        super().__init__(f"{bad} non-finite model outputs (NaN or infinite) among {total}")
        self.bad, self.total = bad, total

    def __reduce__(self) -> tuple:  # pickled across a fold's process boundary intact
        return type(self), (self.bad, self.total)


def finite_scores(p: np.ndarray) -> np.ndarray:
    """`p` as float64, or NonFiniteScoresError naming how many of its values are not finite
    (NaN ranked highest by argsort; NaN >= t is False, so counted negative)."""
    p = np.asarray(p, dtype=np.float64)
    bad = int(np.count_nonzero(~np.isfinite(p)))
    if bad:
        raise NonFiniteScoresError(bad, p.size)
    return p


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve by the rank statistic (ties count one half)."""
    y = np.asarray(y).astype(bool)
    p = finite_scores(p)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=np.float64)
    sorted_p = p[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def bootstrap_auc_ci(y: np.ndarray, p: np.ndarray, n: int = 1000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of AUC over stratified bootstrap resamples."""
    y = np.asarray(y).astype(int)
    p = finite_scores(p)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) == 0 or len(neg) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    aucs = np.empty(n)
    for i in range(n):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        aucs[i] = roc_auc(y[idx], p[idx])
    lo, hi = np.quantile(aucs, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def paired_auc_delta(y: np.ndarray, p: np.ndarray, p_ref: np.ndarray, n: int = 1000,
                     seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """AUC(p) - AUC(p_ref) on the same images, with a paired, class-stratified bootstrap
    interval: both models are scored on each resample, so the images' own difficulty cancels
    and a small, real cost can be told from noise (unpaired intervals overlap far more)."""
    y = np.asarray(y).astype(int)
    p, p_ref = finite_scores(p), finite_scores(p_ref)
    if not (len(y) == len(p) == len(p_ref)):
        raise ValueError("paired AUC needs both models' outputs on the same images")
    delta = roc_auc(y, p) - roc_auc(y, p_ref)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) == 0 or len(neg) == 0 or n <= 0:
        return {"delta": float(delta), "ci95": [float("nan"), float("nan")], "n": int(len(y))}
    rng = np.random.default_rng(seed)
    deltas = np.empty(n)
    for i in range(n):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        deltas[i] = roc_auc(y[idx], p[idx]) - roc_auc(y[idx], p_ref[idx])
    lo, hi = np.quantile(deltas, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"delta": float(delta), "ci95": [float(lo), float(hi)], "n": int(len(y))}


def _weighted_auc_binned(score_bin: np.ndarray, y: np.ndarray, w: np.ndarray,
                         bins: int) -> float:
    """`weighted_auc` from each image's rank among the distinct scores (`score_bin`), so a
    bootstrap can reuse one sort for every resample."""
    w_pos, w_neg = float(w[y].sum()), float(w[~y].sum())
    if w_pos <= 0 or w_neg <= 0:
        return float("nan")
    neg_at = np.bincount(score_bin, weights=np.where(y, 0.0, w), minlength=bins)
    neg_below = np.cumsum(neg_at) - neg_at  # normal weight strictly below each score
    won = neg_below[score_bin[y]] + 0.5 * neg_at[score_bin[y]]
    return float((w[y] * won).sum() / (w_pos * w_neg))


def weighted_auc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
    """AUC where each (fractured, normal) pair counts w_pos * w_neg (ties one half); equal
    weights give `roc_auc`. Sort-based, so it scales like `roc_auc`."""
    y = np.asarray(y).astype(bool)
    p, w = finite_scores(p), np.asarray(w, np.float64)
    uniq, score_bin = np.unique(p, return_inverse=True)
    return _weighted_auc_binned(score_bin.reshape(-1), y, w, len(uniq))


def family_weights(families: Sequence[str]) -> np.ndarray:
    """1 / the size of each image's family: a family (rotated copies of one radiograph) counts
    once, however many copies it has."""
    keys = list(families)
    size = Counter(keys)
    return np.array([1.0 / size[g] for g in keys], dtype=np.float64)


def has_repeats(groups: Sequence[str] | None) -> bool:
    """Whether some group holds more than one image (else per image = per group)."""
    return groups is not None and len(set(groups)) < len(list(groups))


def family_auc(y: np.ndarray, p: np.ndarray, families: Sequence[str]) -> float:
    """The family-weighted AUC: `weighted_auc` with `family_weights`."""
    return weighted_auc(y, p, family_weights(families))


MIN_CLUSTERS = 5  # fewer resampled groups give intervals that only look like intervals


def family_bootstrap_ci(y: np.ndarray, p: np.ndarray, families: Sequence[str],
                        clusters: Sequence[str] | None = None, n: int = 1000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of `family_auc` when whole clusters are resampled: `clusters` are
    the units that may share a patient (FracAtlas's blocks of consecutive ids; by default the
    families themselves), each family inside one cluster. Clusters with a fracture and those
    without are resampled separately (all together, one-class resamples dropped, where every
    cluster holds a fracture); a cluster drawn twice counts twice; NaN with fewer than
    MIN_CLUSTERS clusters or one alone in a stratum. Why: resampling images
    treats 67 rotations of one radiograph as 67 patients and gives intervals far narrower
    than the data supports."""
    y = np.asarray(y).astype(bool)
    p = finite_scores(p)
    fams = list(families)
    base = family_weights(fams)
    keys = list(clusters) if clusters is not None else fams
    if len(keys) != len(y) or len(fams) != len(y):
        raise ValueError("one family and one cluster per image are needed")
    first = {}  # a family split between clusters is drawn whole, with its first cluster
    for f, k in zip(fams, keys):
        first.setdefault(f, k)
    uniq, cluster_of = np.unique(np.asarray([first[f] for f in fams]), return_inverse=True)
    if n <= 0 or y.all() or not y.any() or len(uniq) < MIN_CLUSTERS:
        return float("nan"), float("nan")
    cluster_of = cluster_of.reshape(-1)
    with_pos = np.bincount(cluster_of, weights=y.astype(float), minlength=len(uniq)) > 0
    strata = [np.flatnonzero(with_pos), np.flatnonzero(~with_pos)]
    if not len(strata[1]):
        strata = [np.arange(len(uniq))]
    if min(len(s) for s in strata) < 2:  # a stratum of one is never resampled: no interval
        return float("nan"), float("nan")
    score_values, score_bin = np.unique(p, return_inverse=True)
    score_bin = score_bin.reshape(-1)
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(n):
        draw = np.concatenate([s[rng.integers(0, len(s), len(s))] for s in strata])
        times = np.bincount(draw, minlength=len(uniq)).astype(np.float64)
        a = _weighted_auc_binned(score_bin, y, base * times[cluster_of], len(score_values))
        if not math.isnan(a):
            aucs.append(a)
    if not aucs:
        return float("nan"), float("nan")
    lo, hi = np.quantile(aucs, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def roc_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with a decision `p >= threshold`, thresholds descending."""
    y = np.asarray(y).astype(bool)
    p = finite_scores(p)
    thr = np.unique(p)[::-1]
    tp = np.array([(p[y] >= t).sum() for t in thr], dtype=np.float64)
    fp = np.array([(p[~y] >= t).sum() for t in thr], dtype=np.float64)
    tpr = np.concatenate([[0.0], tp / max(y.sum(), 1)])
    fpr = np.concatenate([[0.0], fp / max((~y).sum(), 1)])
    return fpr, tpr, np.concatenate([[np.inf], thr])


def confusion(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, int]:
    y = np.asarray(y).astype(bool)
    pred = finite_scores(p) >= threshold
    return {"tp": int((pred & y).sum()), "fp": int((pred & ~y).sum()),
            "tn": int((~pred & ~y).sum()), "fn": int((~pred & y).sum())}


def proportion_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (sensible at 0, n and small n, unlike the
    normal approximation): for sensitivity and specificity on a clinic's few images."""
    if n <= 0:
        return (float("nan"), float("nan"))
    z = {0.9: 1.6449, 0.95: 1.96, 0.99: 2.5758}.get(level, 1.96)
    phat = k / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def at_threshold(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    c = confusion(y, p, threshold)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    prec, rec = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * prec * rec, prec + rec) if not math.isnan(prec + rec) else float("nan")
    return {"threshold": float(threshold), "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
            "precision": prec, "sensitivity": rec, "specificity": _ratio(tn, tn + fp),
            "f1": f1, "confusion": c}


def threshold_for_sensitivity(y: np.ndarray, p: np.ndarray, target: float = 0.95) -> float:
    """Highest threshold whose sensitivity on (y, p) reaches `target`: fewest false alarms."""
    y = np.asarray(y).astype(bool)
    pos = np.sort(finite_scores(p)[y])
    if len(pos) == 0:
        return 0.5
    # keep at least ceil(target * n) positives at or above the threshold
    k = len(pos) - math.ceil(target * len(pos) - 1e-9)
    return float(pos[max(k, 0)])


def check_floors(min_sensitivity: float, min_specificity: float) -> None:
    """Both floors must lie strictly between 0 and 1: a floor of 0 or 1 has no standard
    error to measure a margin in."""
    for name, v in (("target sensitivity", min_sensitivity),
                    ("minimum specificity", min_specificity)):
        if not (isinstance(v, int | float) and 0 < v < 1):
            raise ValueError(f"{name} must be between 0 and 1 (exclusive) for the "
                             f"two-floor threshold, not {v!r}")


def floor_margins(y: np.ndarray, p: np.ndarray, threshold: float, min_sensitivity: float,
                  min_specificity: float) -> list[float]:
    """How far (y, p) at `threshold` clears each floor, in standard errors of a proportion
    at the floor: (sens - s0) / sqrt(s0 (1 - s0) / n_pos), the same for specificity. A
    class with no images sets no floor (no entry)."""
    check_floors(min_sensitivity, min_specificity)
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    out = []
    for mask, floor, hit in ((y, min_sensitivity, lambda q: q >= threshold),
                             (~y, min_specificity, lambda q: q < threshold)):
        n = int(mask.sum())
        if n:
            rate = float(np.mean(hit(p[mask])))
            out.append((rate - floor) / math.sqrt(floor * (1 - floor) / n))
    return out


def floor_margin(y: np.ndarray, p: np.ndarray, threshold: float, min_sensitivity: float,
                 min_specificity: float) -> float:
    """The smaller of `floor_margins` (inf when neither class has images)."""
    return min(floor_margins(y, p, threshold, min_sensitivity, min_specificity),
               default=math.inf)


def threshold_for_floors(groups: list[tuple[np.ndarray, np.ndarray]], min_sensitivity: float,
                         min_specificity: float, highest: float) -> tuple[float, float]:
    """The threshold at or below `highest` (the plain target-sensitivity threshold) that
    clears both floors by the widest margin on every group (source) at once: the largest
    smallest margin; on a tie the larger next-smallest and so on (a source whose margin has
    stopped moving, all its fractures already flagged, must not let the others' specificity
    go for nothing); the more sensitive threshold when all margins tie. A threshold set at
    exactly the target sensitivity meets it on new images only about half the time; this
    one spends the specificity to spare on a margin for sensitivity. Returns (threshold,
    smallest margin)."""
    check_floors(min_sensitivity, min_specificity)
    candidates = np.unique(np.concatenate([np.asarray(p, dtype=np.float64)[np.asarray(y) == 1]
                                           for y, p in groups] + [np.array([highest])]))
    candidates = candidates[candidates <= highest]
    best_t, best_key = highest, None
    for t in candidates:  # ascending: on a full tie the lower (more sensitive) one stays
        key = sorted(m for y, p in groups
                     for m in floor_margins(y, p, float(t), min_sensitivity, min_specificity))
        if best_key is None or key > best_key:
            best_t, best_key = float(t), key
    return best_t, (best_key[0] if best_key else math.inf)


def stored_threshold(y: np.ndarray, q: np.ndarray, target: float,
                     groups: list[np.ndarray] | None = None,
                     min_specificity: float | None = None) -> tuple[float, float | None]:
    """The high-sensitivity threshold every command stores (training, export, the device's
    recalibration): the highest reaching `target` sensitivity on the pooled images and on
    each of `groups` (boolean masks, one per source: a site with harder fractures must not
    pay for another's easy ones); with `min_specificity`, `threshold_for_floors` below it
    over the groups. Returns (threshold, smallest floor margin or None)."""
    y, q = np.asarray(y), np.asarray(q, dtype=np.float64)
    masks = groups if groups and len(groups) > 1 else [np.ones(len(y), bool)]
    thr = threshold_for_sensitivity(y, q, target)
    for m in masks:
        if y[m].sum() > 0:
            thr = min(thr, threshold_for_sensitivity(y[m], q[m], target))
    if min_specificity is None:
        return thr, None
    return threshold_for_floors([(y[m], q[m]) for m in masks], target, min_specificity, thr)


def threshold_balanced(y: np.ndarray, p: np.ndarray) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1."""
    fpr, tpr, thr = roc_curve(y, p)
    j = tpr - fpr
    i = int(np.argmax(j[1:])) + 1
    return float(thr[i])


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities `p` for labels `y`."""
    y = np.asarray(y, dtype=np.float64)
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q))) if len(y) else float("nan")


def apply_temperature(p: np.ndarray, temperature: float) -> np.ndarray:
    return sigmoid(logit(p) / temperature)


def fit_temperature(y: np.ndarray, p: np.ndarray) -> float:
    """Temperature T minimising the log loss of sigmoid(logit(p) / T): golden-section on log T."""
    y = np.asarray(y, dtype=np.float64)
    z = logit(p)

    def nll(log_t: float) -> float:
        q = np.clip(sigmoid(z / math.exp(log_t)), _EPS, 1 - _EPS)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))

    a, b = math.log(0.05), math.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(80):
        if nll(c) < nll(d):
            b = d
        else:
            a = c
        c, d = b - g * (b - a), a + g * (b - a)
    return float(math.exp((a + b) / 2))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE over equal-width probability bins of the positive-class probability."""
    y = np.asarray(y, dtype=np.float64)
    p = finite_scores(p)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(p[m].mean() - y[m].mean())
    return float(ece)


def family_summary(y: np.ndarray, p: np.ndarray, groups: Sequence[str] | None,
                   bootstrap: int = 1000, seed: int = 0,
                   clusters: Sequence[str] | None = None) -> dict[str, Any]:
    """`auc_family` (each family of copies counts once) with its cluster-bootstrap interval,
    the family and cluster counts, where some family or cluster repeats; else {} (the
    per-image numbers already say it all)."""
    if groups is None or not (has_repeats(groups) or has_repeats(clusters)):
        return {}
    keys = np.asarray(list(groups))
    y = np.asarray(y).astype(int)
    lo, hi = (family_bootstrap_ci(y, p, keys, clusters, n=bootstrap, seed=seed) if bootstrap
              else (float("nan"), float("nan")))
    out = {"auc_family": family_auc(y, p, keys), "auc_family_ci95": [lo, hi],
           "families": len(set(keys.tolist())),
           "families_with_fracture": len(set(keys[y == 1].tolist()))}
    if clusters is not None and len(set(clusters)) != out["families"]:
        out["clusters"] = len(set(clusters))  # the interval resampled other units
    return out


def summarize(y: np.ndarray, p: np.ndarray, thresholds: dict[str, float],
              bootstrap: int = 1000, seed: int = 0, groups: Sequence[str] | None = None,
              clusters: Sequence[str] | None = None) -> dict[str, Any]:
    """Every reported number for one split: AUC with interval, ECE, each operating point;
    with `groups` (each image's family of copies) or `clusters` (its resampling unit) that
    repeat, the family-weighted AUC and its cluster-bootstrap interval too."""
    auc = roc_auc(y, p)
    lo, hi = bootstrap_auc_ci(y, p, n=bootstrap, seed=seed) if bootstrap else (np.nan, np.nan)
    out: dict[str, Any] = {
        "n": int(len(y)), "positives": int(np.sum(y)), "auc": auc,
        "auc_ci95": [lo, hi], "ece": expected_calibration_error(y, p),
        "operating_points": {k: at_threshold(y, p, t) for k, t in thresholds.items()},
    }
    return out | family_summary(y, p, groups, bootstrap, seed, clusters)
