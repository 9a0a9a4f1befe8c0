"""Re-estimate a pretrained network's BatchNorm statistics on radiographs (AdaBN).

MobileNetV2's BatchNorm layers normalise with ImageNet photo statistics, and fine-tuning
keeps them frozen. Radiographs are grey, low in texture and windowed differently by each
hospital; statistics averaged over training radiographs instead (no labels, no gradient)
change what the frozen backbone hands the head. Measured on the bundled recipe in
benchmarks/README.md ("BatchNorm statistics"). The export folds them into the convolutions
like any others: nothing changes on the device.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def reestimate_batchnorm(model: Any, x: np.ndarray, batch_size: int = 32,
                         indices: np.ndarray | None = None) -> int:
    """Set every BatchNorm layer's moving mean and variance to the average of its batch
    statistics over the images `x[indices]` (all of `x` without `indices`), taken in
    batches of `batch_size` in the given order (a ragged last batch is left out; fewer
    images than a batch make one batch). Each layer sees its input as the pass computes it,
    normalised by each batch's own statistics below it. Weights and BatchNorm's scale and
    offset stay as they are; so do the layers' trainable flags and momentum. Returns the
    number of images averaged over."""
    from edge_toolkit.train.tfsetup import keras

    order = np.arange(len(x)) if indices is None else np.asarray(indices)
    if len(order) == 0:
        raise ValueError("no images to estimate BatchNorm statistics on")
    bns = [layer for layer in model.layers
           if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [(layer.trainable, layer.momentum) for layer in bns]
    starts = range(0, len(order) - batch_size + 1, batch_size) or range(1)  # few: one
    try:
        for layer in bns:  # Keras 2 runs a frozen BatchNorm in inference mode
            layer.trainable = True
        for i, start in enumerate(starts, 1):
            for layer in bns:  # momentum 1 - 1/i: the running mean of the batch statistics
                layer.momentum = 1.0 - 1.0 / i
            model(x[np.sort(order[start:start + batch_size])], training=True)
    finally:
        for layer, (trainable, momentum) in zip(bns, saved):
            layer.trainable, layer.momentum = trainable, momentum
    return min(len(order), len(starts) * batch_size)
