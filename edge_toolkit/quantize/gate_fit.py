"""Fit the input gate's out-of-distribution score at export, on the exported variant itself.

Each variant's pooled features differ (quantization moves them), so each file gets its own
fit: PCA of the train split's pooled features, threshold at the value that rejects at most 2%
of the val split (`edge_toolkit.runtime.gate.fit_ood`). The card's `gate` section gets the
small numbers; the arrays go in the model file's card archive as `OOD_MEMBER`. TF-free.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_toolkit.quantize.validate import (
    feature_io,
    io_details,
    make_interpreter,
    quantize_input,
)
from edge_toolkit.runtime.gate import DEFAULT_LIMITS, OOD_MEMBER, fit_ood

GATE_COMPONENTS = 32
MAX_VAL_REJECT = 0.02
MAX_TRAIN_IMAGES = 4000  # plenty for a 32-component PCA; keeps export time bounded


def pooled_features(model: bytes | Any, x: np.ndarray, num_threads: int | None = None
                    ) -> np.ndarray:
    """Mean over (h, w) of the feature-map output for preprocessed images x (n, H, W, C),
    dequantized as the runtime does; float64 (n, C)."""
    interp = make_interpreter(model, num_threads) if isinstance(model, bytes) else model
    inp, _ = io_details(interp)
    if inp.shape[0] != 1:
        interp.resize_tensor_input(inp.index, [1, *inp.shape[1:]])
        interp.allocate_tensors()
        inp, _ = io_details(interp)
    feat = feature_io(interp)
    if feat is None:
        raise ValueError("the model has no feature-map output")
    out = np.zeros((len(x), feat.shape[-1]), np.float64)
    for i in range(len(x)):
        interp.set_tensor(inp.index, quantize_input(x[i:i + 1], inp))
        interp.invoke()
        f = interp.get_tensor(feat.index)[0].astype(np.float64)
        if feat.quantized:
            f = (f - feat.zero_point) * feat.scale
        out[i] = f.mean(axis=(0, 1))
    return out


def fit_gate(model: bytes, train_x: np.ndarray, val_x: np.ndarray, *,
             num_threads: int | None = None, components: int = GATE_COMPONENTS,
             max_val_reject: float = MAX_VAL_REJECT, seed: int = 0
             ) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(card `gate` section, extra archive members) for a bare flatbuffer with features."""
    if len(train_x) > MAX_TRAIN_IMAGES:
        pick = np.random.default_rng(seed).choice(len(train_x), MAX_TRAIN_IMAGES, replace=False)
        train_x = train_x[np.sort(pick)]
    train = pooled_features(model, train_x, num_threads)
    val = pooled_features(model, val_x, num_threads)
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
