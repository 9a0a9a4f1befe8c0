"""Stochastic weight averaging over the last fine-tuning epochs.

Why: with a few hundred patient families per source, one val split is a noisy judge; picking
the single best epoch on it partly fits that noise (the fracture-xray val AUC swung by 0.07
between neighbouring epochs). The mean of the weights along the end of the fine-tuning path
lies in a flatter region of the loss, which is known to transfer better under distribution
shift (Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima"; Wortsman et al. 2022,
"Model soups"). Mixing the linear probe's weights with the fine-tuned ones
(Wortsman et al. 2022, "Robust fine-tuning of zero-shot models", WiSE-FT) keeps part of the
pretrained features that fine-tuning on two hospitals would otherwise bend.
BatchNorm is frozen during fine-tuning, so its statistics need no refresh.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_toolkit.train.tfsetup import keras


class EpochWeights(keras.callbacks.Callback):
    """Keeps the weights after each of the last `keep` epochs (as numpy copies) and gives
    their mean. `keep` 0 keeps nothing."""

    def __init__(self, model: Any, keep: int) -> None:
        super().__init__()
        self.watched, self.keep = model, int(keep)
        self.snapshots: list[tuple[int, list[np.ndarray]]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.keep <= 0:
            return
        self.snapshots.append((epoch + 1, [w.copy() for w in self.watched.get_weights()]))
        del self.snapshots[:-self.keep]

    def epochs_averaged(self) -> str:
        ids = [e for e, _ in self.snapshots]
        return f"{ids[0]}-{ids[-1]}" if ids else "none"

    def average(self) -> list[np.ndarray] | None:
        """The element-wise mean of the kept weights; None with fewer than two snapshots
        (a single epoch is already a candidate of its own)."""
        if len(self.snapshots) < 2:
            return None
        return average_weights([w for _, w in self.snapshots])


def average_weights(snapshots: list[list[np.ndarray]]) -> list[np.ndarray]:
    """The element-wise mean of several weight lists of the same model (in float64, cast
    back to each tensor's dtype)."""
    out = []
    for tensors in zip(*snapshots, strict=True):
        mean = np.mean([t.astype(np.float64) for t in tensors], axis=0)
        out.append(mean.astype(tensors[0].dtype))
    return out


def interpolate_weights(start: list[np.ndarray], end: list[np.ndarray],
                        alpha: float) -> list[np.ndarray]:
    """(1 - alpha) * start + alpha * end, tensor by tensor (alpha 0: start, 1: end)."""
    return [((1 - alpha) * a.astype(np.float64) + alpha * b.astype(np.float64)).astype(a.dtype)
            for a, b in zip(start, end, strict=True)]
