"""Shortcut check: how well trivial global features predict the label, fit on train.

If image size, format or overall brightness separates the classes, a network can score well
without looking at a single bone; its AUC means something only above this baseline. Two
numpy models: small gradient-boosted trees (non-linear, the headline: the same kind of model
as the dataset README's baseline) and an L2 logistic regression (a linear reference), plus
each feature on its own. AUCs come with stratified bootstrap intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_toolkit.audit.scan import Record
from edge_toolkit.data import LABELS
from edge_toolkit.metrics import bootstrap_auc_ci, roc_auc

NUMERIC = ("log_width", "log_height", "log_aspect", "mean_intensity", "std_intensity")
MIN_TRAIN = 10


@dataclass(frozen=True)
class BoostConfig:
    rounds: int = 200
    learning_rate: float = 0.05
    depth: int = 3
    bins: int = 32
    l2: float = 1.0

    def describe(self) -> str:
        return (f"gradient-boosted trees (depth {self.depth}, {self.rounds} rounds, "
                f"learning rate {self.learning_rate})")


def feature_matrix(records: list[Record], categories: dict[str, list[str]]
                   ) -> tuple[np.ndarray, list[str]]:
    """Rows of numeric features plus one-hot format/mode columns for the given categories."""
    cols = []
    for r in records:
        w, h = float(r.width or 1), float(r.height or 1)
        row = [math.log(w), math.log(h), math.log(w / h), float(r.mean or 0.0),
               float(r.std or 0.0)]
        for attr, values in categories.items():
            v = getattr(r, attr)
            row += [float(v == c) for c in values]
            row.append(float(v not in values))
        cols.append(row)
    names = list(NUMERIC)
    for attr, values in categories.items():
        names += [f"{attr}={c}" for c in values] + [f"{attr}=other"]
    return np.asarray(cols, dtype=np.float64).reshape(len(records), len(names)), names


def _build_tree(bins: np.ndarray, g: np.ndarray, h: np.ndarray, idx: np.ndarray,
                n_bins: list[int], depth: int, min_leaf: int, l2: float) -> tuple:
    """One regression tree on histogram bins, maximising the second-order gain."""
    gs, hs = g[idx].sum(), h[idx].sum()
    leaf = ("leaf", -gs / (hs + l2))
    if depth == 0 or len(idx) < 2 * min_leaf:
        return leaf
    best = (0.0, -1, -1)
    parent = gs * gs / (hs + l2)
    for j, nb in enumerate(n_bins):
        if nb < 2:
            continue
        b = bins[idx, j]
        gl = np.cumsum(np.bincount(b, g[idx], nb))[:-1]
        hl = np.cumsum(np.bincount(b, h[idx], nb))[:-1]
        cl = np.cumsum(np.bincount(b, minlength=nb))[:-1]
        gain = gl**2 / (hl + l2) + (gs - gl) ** 2 / (hs - hl + l2) - parent
        gain[(cl < min_leaf) | (len(idx) - cl < min_leaf)] = -np.inf
        t = int(np.argmax(gain))
        if gain[t] > best[0]:
            best = (float(gain[t]), j, t)
    if best[1] < 0:
        return leaf
    _, j, t = best
    left = bins[idx, j] <= t
    return ("split", j, t,
            _build_tree(bins, g, h, idx[left], n_bins, depth - 1, min_leaf, l2),
            _build_tree(bins, g, h, idx[~left], n_bins, depth - 1, min_leaf, l2))


def _predict_tree(tree: tuple, bins: np.ndarray) -> np.ndarray:
    out = np.empty(len(bins))
    stack = [(tree, np.arange(len(bins)))]
    while stack:
        node, idx = stack.pop()
        if node[0] == "leaf":
            out[idx] = node[1]
            continue
        _, j, t, left, right = node
        go_left = bins[idx, j] <= t
        stack += [(left, idx[go_left]), (right, idx[~go_left])]
    return out


def boosted_scores(x_train: np.ndarray, y_train: np.ndarray, xs: list[np.ndarray],
                   cfg: BoostConfig = BoostConfig()) -> list[np.ndarray]:
    """Fit logistic-loss boosted trees on train; return the logit score of each matrix."""
    edges = [np.unique(np.quantile(x_train[:, j], np.linspace(0, 1, cfg.bins + 1)[1:-1]))
             for j in range(x_train.shape[1])]

    def to_bins(x: np.ndarray) -> np.ndarray:
        cols = [np.searchsorted(e, x[:, j], side="left") for j, e in enumerate(edges)]
        return np.stack(cols, axis=1) if cols else np.zeros((len(x), 0), np.intp)

    b_train, b_eval = to_bins(x_train), [to_bins(x) for x in xs]
    n_bins = [len(e) + 1 for e in edges]
    min_leaf = max(3, min(20, len(y_train) // 50))
    p0 = float(np.clip(y_train.mean(), 1e-3, 1 - 1e-3))
    f = np.full(len(y_train), math.log(p0 / (1 - p0)))
    fs = [np.full(len(x), f[0]) for x in xs]
    everyone = np.arange(len(y_train))
    for _ in range(cfg.rounds):
        p = 1.0 / (1.0 + np.exp(-f))
        tree = _build_tree(b_train, p - y_train, p * (1 - p), everyone, n_bins, cfg.depth,
                           min_leaf, cfg.l2)
        f += cfg.learning_rate * _predict_tree(tree, b_train)
        fs = [s + cfg.learning_rate * _predict_tree(tree, b) for s, b in zip(fs, b_eval)]
    return fs


def logistic_scores(x_train: np.ndarray, y_train: np.ndarray, xs: list[np.ndarray],
                    l2: float = 1.0, iters: int = 30) -> list[np.ndarray]:
    """L2-regularised logistic regression on train-standardised features (Newton steps)."""
    mu, sd = x_train.mean(0), x_train.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)

    def design(x: np.ndarray) -> np.ndarray:
        return np.hstack([np.ones((len(x), 1)), (x - mu) / sd])

    a = design(x_train)
    w = np.zeros(a.shape[1])
    reg = l2 * np.eye(a.shape[1])
    reg[0, 0] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ w, -30, 30)))
        grad = a.T @ (p - y_train) + reg @ w
        hess = (a * (p * (1 - p))[:, None]).T @ a + reg + 1e-9 * np.eye(a.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return [design(x) @ w for x in xs]


def _auc_entry(y: np.ndarray, s: np.ndarray, bootstrap: int, seed: int) -> dict[str, Any]:
    auc = roc_auc(y, s)
    lo, hi = bootstrap_auc_ci(y, s, n=bootstrap, seed=seed) if bootstrap else (math.nan,) * 2
    return {"n": int(len(y)), "positives": int(y.sum()), "auc": auc, "auc_ci95": [lo, hi]}


def shortcut_check(records: list[Record], bootstrap: int = 1000, seed: int = 0,
                   cfg: BoostConfig = BoostConfig()) -> dict[str, Any]:
    """AUC of global-feature models fit on train, on each of val and test that has both classes.

    Every readable file counts as it stands (copies included): the point is what a model of
    these features scores on the splits the user will report.
    """
    usable = [r for r in records if r.readable and r.width]
    train = [r for r in usable if r.split == "train"]
    y_train = np.asarray([r.label for r in train], dtype=np.float64)
    out: dict[str, Any] = {"model": cfg.describe(), "train_images": len(train), "splits": {},
                           "logistic": {}, "single_features": {}, "skipped": None}
    if len(train) < MIN_TRAIN or len(set(y_train.tolist())) < 2:
        per_class = ", ".join(f"{LABELS[k]} {int((y_train == k).sum())}" for k in (1, 0))
        out["skipped"] = (f"needs at least {MIN_TRAIN} readable train images of both classes; "
                          f"found {len(train)} ({per_class})")
        return out
    categories = {attr: sorted({str(getattr(r, attr)) for r in train}) for attr in
                  ("format", "mode")}
    categories = {k: v for k, v in categories.items() if len(v) > 1}
    x_train, names = feature_matrix(train, categories)
    out["features"] = names
    evals = {}
    for name in ("val", "test"):
        part = [r for r in usable if r.split == name]
        y = np.asarray([r.label for r in part], dtype=np.float64)
        if len(set(y.tolist())) == 2:
            evals[name] = (feature_matrix(part, categories)[0], y)
    if not evals:
        out["skipped"] = "no val/ or test/ split with readable images of both classes"
        return out
    xs = [x for x, _ in evals.values()]
    boosted = boosted_scores(x_train, y_train, xs, cfg)
    linear = logistic_scores(x_train, y_train, xs)
    for k, (name, (_, y)) in enumerate(evals.items()):
        out["splits"][name] = _auc_entry(y, boosted[k], bootstrap, seed)
        out["logistic"][name] = _auc_entry(y, linear[k], bootstrap, seed)
    for j, feat in enumerate(NUMERIC):
        sign = 1.0 if roc_auc(y_train, x_train[:, j]) >= 0.5 else -1.0
        out["single_features"][feat] = {name: roc_auc(y, sign * x[:, j])
                                        for name, (x, y) in evals.items()}
    return out
