"""Fit the input gate's out-of-distribution score at export, on the exported variant itself.

Each variant's pooled features differ (quantization moves them), so each file gets its own
fit: PCA of the train split's pooled features, threshold at the value that rejects at most 2%
of the val split (`edge_toolkit.runtime.gate.fit_ood`). The card's `gate` section gets the
small numbers; the arrays go in the model file's card archive as `OOD_MEMBER`. TF-free.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_toolkit.runtime.classifier import Classifier
from edge_toolkit.runtime.gate import DEFAULT_LIMITS, OOD_MEMBER, fit_ood, pool_features

GATE_COMPONENTS = 32
MAX_VAL_REJECT = 0.02
MAX_TRAIN_IMAGES = 4000  # plenty for a 32-component PCA; keeps export time bounded


def pooled_features(clf: Classifier, x: np.ndarray) -> np.ndarray:
    """Mean over (h, w) of the feature-map output for preprocessed images x (n, H, W, C),
    through the runtime's own `Classifier.infer` (so dequantized exactly as on the device);
    float64 (n, C). Export builds `clf` with `Classifier.from_bytes(bare, card)`."""
    if not clf.has_features:
        raise ValueError(f"{clf.model_path}: the model has no feature-map output")
    x = np.asarray(x, dtype=np.float32)
    out = np.zeros((len(x), (clf.feature_shape or (0,))[-1]), np.float64)
    for i, xi in enumerate(x):
        out[i] = pool_features(clf.infer(xi).features)
    return out


def fit_gate(clf: Classifier, train_x: np.ndarray, val_x: np.ndarray, *,
             components: int = GATE_COMPONENTS,
             max_val_reject: float = MAX_VAL_REJECT, seed: int = 0
             ) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(card `gate` section, extra archive members) for a model with the feature output."""
    if len(train_x) > MAX_TRAIN_IMAGES:
        pick = np.random.default_rng(seed).choice(len(train_x), MAX_TRAIN_IMAGES, replace=False)
        train_x = train_x[np.sort(pick)]
    train = pooled_features(clf, train_x)
    val = pooled_features(clf, val_x)
    ood = fit_ood(train, val, components=components, max_val_reject=max_val_reject)
    val_rejected = float(np.mean(np.atleast_1d(ood.score(val)) > ood.threshold))
    section = {
        "quality": DEFAULT_LIMITS.to_dict(),
        "ood": {"member": OOD_MEMBER, "method": "pca-mahalanobis+residual",
                "components": int(len(ood.variances)), "threshold": ood.threshold,
                "feature_dim": int(train.shape[1]), "train_images": int(len(train)),
                "val_images": int(len(val)), "val_rejected": round(val_rejected, 4),
                "max_val_reject": max_val_reject},
    }
    return section, {OOD_MEMBER: ood.to_bytes()}
