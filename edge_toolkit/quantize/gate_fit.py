"""Fit the input gate's out-of-distribution score at export, on the exported variant itself.

Each variant's pooled features differ (quantization moves them), so each file gets its own
fit: PCA of the train split's pooled features; and, from the train pictures themselves, the
appearance distance (`runtime.gate.appearance`). Each threshold rejects at most 1% of the val
split, so the two together at most 2% (`edge_toolkit.runtime.gate.fit_ood`). The card's `gate`
section gets the small numbers; the arrays go in the model file's card archive. TF-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_toolkit.images import ImageLoadError, open_image
from edge_toolkit.runtime.classifier import Classifier
from edge_toolkit.runtime.gate import (
    APPEARANCE_MEMBER,
    DEFAULT_LIMITS,
    OOD_MEMBER,
    appearance,
    fit_ood,
    pool_features,
)

# Chosen with `benchmarks/gate_rejection.py --sweep` (benchmarks/README.md).
GATE_COMPONENTS = 128
APPEARANCE_COMPONENTS = 16
MAX_VAL_REJECT = 0.02  # for both checks together; each gets half
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


def appearances(files: Sequence[str | Path]) -> np.ndarray:
    """`runtime.gate.appearance` of each readable picture, (n, 27)."""
    out = []
    for f in files:
        try:
            out.append(appearance(open_image(f)))
        except ImageLoadError:
            continue
    return np.array(out)


def fit_gate(clf: Classifier, train_x: np.ndarray, val_x: np.ndarray, *,
             train_files: Sequence[str | Path] = (), val_files: Sequence[str | Path] = (),
             components: int = GATE_COMPONENTS,
             max_val_reject: float = MAX_VAL_REJECT, seed: int = 0
             ) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(card `gate` section, extra archive members) for a model with the feature output;
    with `train_files`/`val_files` (the pictures behind train_x/val_x) also the appearance
    distance."""
    rng = np.random.default_rng(seed)
    if len(train_x) > MAX_TRAIN_IMAGES:
        pick = np.sort(rng.choice(len(train_x), MAX_TRAIN_IMAGES, replace=False))
        train_x = train_x[pick]
        train_files = [train_files[i] for i in pick] if len(train_files) else train_files
    both = len(train_files) > 0 and len(val_files) > 0
    share = max_val_reject / 2 if both else max_val_reject
    train = pooled_features(clf, train_x)
    val = pooled_features(clf, val_x)
    ood = fit_ood(train, val, components=components, max_val_reject=share)
    rejected = np.atleast_1d(ood.score(val)) > ood.threshold
    section: dict[str, Any] = {
        "quality": DEFAULT_LIMITS.to_dict(),
        "ood": {"member": OOD_MEMBER, "method": "pca-mahalanobis+residual",
                "components": int(len(ood.variances)), "threshold": ood.threshold,
                "feature_dim": int(train.shape[1]), "train_images": int(len(train)),
                "val_images": int(len(val)), "val_rejected": round(float(rejected.mean()), 4),
                "max_val_reject": share},
    }
    members = {OOD_MEMBER: ood.to_bytes()}
    if both:
        a_train, a_val = appearances(train_files), appearances(val_files)
        look = fit_ood(a_train, a_val, components=APPEARANCE_COMPONENTS, max_val_reject=share)
        a_rej = np.atleast_1d(look.score(a_val)) > look.threshold
        section["appearance"] = {
            "member": APPEARANCE_MEMBER, "method": "pca-mahalanobis+residual of gray-level "
            "and gradient histograms", "components": int(len(look.variances)),
            "threshold": look.threshold, "train_images": int(len(a_train)),
            "val_images": int(len(a_val)), "val_rejected": round(float(a_rej.mean()), 4),
            "max_val_reject": share}
        members[APPEARANCE_MEMBER] = look.to_bytes()
        if len(a_val) == len(val):
            section["val_rejected"] = round(float((rejected | a_rej).mean()), 4)
    return section, members
