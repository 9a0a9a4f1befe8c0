"""Linear probe: fit the classifier head in closed form on frozen-backbone features.

On small, shifting data, training a fresh head by SGD on top of a frozen backbone needs many
passes and, when fine-tuning starts from a half-trained head, the large early gradients distort
the pretrained features: out-of-distribution accuracy suffers (Kumar et al., "Fine-Tuning can
Distort Pretrained Features and Underperform Out-of-Distribution", ICLR 2022). Fitting the
head first as an L2-regularised logistic regression (exactly, by Newton's method) and only
then fine-tuning gently ("LP-FT") keeps what transfers. The solver is numpy; only the feature
extraction touches TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_toolkit.metrics import family_auc, has_repeats, roc_auc

POOL_LAYER = "head_pool"
HEAD_LAYER = "head_logistic"
L2_GRID = (1.0, 10.0, 100.0, 1000.0)  # penalty on standardized features, chosen on val


@dataclass
class LinearHead:
    """Logistic regression on raw features (standardization folded in)."""

    coef: np.ndarray
    intercept: float

    def logits(self, f: np.ndarray) -> np.ndarray:
        return f @ self.coef + self.intercept


def fit_logistic(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None,
                 l2: float = 100.0, iters: int = 50, tol: float = 1e-7) -> LinearHead:
    """Minimise sum_i w_i log-loss_i + l2/2 |coef|^2 on standardized features by Newton's
    method (the problem is convex and small: a few thousand images, ~1k features), then
    express the result on the raw features."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64)
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    beta = np.zeros(z.shape[1])
    reg = np.full(z.shape[1], l2)
    reg[-1] = 0.0  # no penalty on the intercept
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ beta, -30, 30)))
        grad = z.T @ (w * (p - y)) + reg * beta
        hess = (z * (w * p * (1 - p))[:, None]).T @ z + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.max(np.abs(step)) < tol:
            break
    coef = beta[:-1] / sd
    return LinearHead(coef=coef, intercept=float(beta[-1] - coef @ mu))


def _mean_source_auc(y: np.ndarray, s: np.ndarray, sources: Sequence[str],
                     groups: Sequence[str] | None = None) -> float:
    """The trainer's criterion: the mean of the sources' AUCs, family-weighted where
    `groups` (each image's family of copies) repeat."""
    src = np.asarray(sources)
    fam = np.asarray(list(groups)) if has_repeats(groups) else None
    aucs = [roc_auc(y[m], s[m]) if fam is None else family_auc(y[m], s[m], fam[m])
            for m in (src == n for n in sorted(set(src.tolist())))]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def choose_l2(f_train: np.ndarray, y_train: np.ndarray, w_train: np.ndarray,
              f_val: np.ndarray, y_val: np.ndarray, val_sources: Sequence[str],
              grid: Sequence[float] = L2_GRID, val_groups: Sequence[str] | None = None
              ) -> tuple[float, dict[float, float]]:
    """The penalty whose head scores best on val (the trainer's criterion)."""
    scores = {}
    for l2 in grid:
        head = fit_logistic(f_train, y_train, w_train, l2)
        scores[l2] = _mean_source_auc(y_val, head.logits(f_val), val_sources, val_groups)
    best = max(scores, key=lambda k: (scores[k], k))  # ties: the stronger penalty
    return best, scores


def pooled_features(model: Any, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The frozen network's pooled features (the head's input) for preprocessed images."""
    from edge_toolkit.train.tfsetup import keras, predict_in_batches

    feat = keras.Model(model.input, model.get_layer(POOL_LAYER).output)
    return predict_in_batches(feat, x, batch_size).astype(np.float64)


def set_head(model: Any, head: LinearHead) -> None:
    """Write the fitted head into the model's final Dense layer."""
    layer = model.get_layer(HEAD_LAYER)
    kernel, bias = layer.get_weights()
    layer.set_weights([head.coef.reshape(kernel.shape).astype(kernel.dtype),
                       np.array([head.intercept], dtype=bias.dtype)])


def probe(model: Any, x_train: np.ndarray, y_train: np.ndarray, w_train: np.ndarray,
          x_val: np.ndarray, y_val: np.ndarray, val_sources: Sequence[str], l2: float = 0.0,
          log: Callable[[str], None] = print,
          val_groups: Sequence[str] | None = None) -> dict[str, Any]:
    """Fit the head of `model` as a linear probe with penalty `l2` (0: the best of L2_GRID on
    val); returns a record for the card."""
    f_train = pooled_features(model, x_train)
    record: dict[str, Any] = {"features": int(f_train.shape[1])}
    if not l2:
        f_val = pooled_features(model, x_val)
        l2, scores = choose_l2(f_train, y_train, w_train, f_val, y_val, val_sources,
                               val_groups=val_groups)
        record["val_auc_by_l2"] = {str(k): v for k, v in scores.items()}
        log("linear probe: val AUC by L2 penalty " + ", ".join(
            f"{k:g}: {v:.4f}" for k, v in scores.items()) + f" -> {l2:g}")
    set_head(model, fit_logistic(f_train, y_train, w_train, l2))
    record["l2"] = float(l2)
    return record
