"""Magnitude pruning with tfmot (imports TensorFlow).

`prune_low_magnitude` on each Conv2D and Dense kernel (DepthwiseConv2D kept dense by default:
its few weights carry much of MobileNetV2's accuracy), polynomial decay from 0 to the target
sparsity over the first two thirds of the fine-tuning steps, then fine-tuning at the target;
the best val-AUC epoch that reached the target is kept, pruning wrappers are stripped, and the
plain Keras model goes to full-integer post-training quantization. Folding BatchNorm into the
conv at conversion multiplies each output channel by a constant, so zeros stay zeros.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edge_toolkit.quantize.finetune import fine_tune
from edge_toolkit.train.tfsetup import keras

PRUNABLE = ("Conv2D", "Dense")


def copy_model(model: Any) -> Any:
    """An independent copy (tfmot wraps the layers it is given in place)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def schedule_steps(steps_per_epoch: int, epochs: int, ramp: float = 2 / 3
                   ) -> tuple[int, int, int]:
    """(begin_step, end_step, frequency) so the target is reached after about `ramp` of the
    steps, on a step where the mask is updated (tfmot counts steps from 1)."""
    total = max(1, steps_per_epoch * epochs)
    end = max(1, min(total, round(total * ramp)))
    freq = max(1, min(100, end // 8))
    end = max(freq, (end // freq) * freq)
    return 0, end, freq


def prunable_layer(layer: Any, depthwise: bool = False) -> bool:
    name = type(layer).__name__
    return name in PRUNABLE or (depthwise and name == "DepthwiseConv2D")


def wrap_for_pruning(model: Any, sparsity: float, begin: int, end: int, frequency: int,
                     depthwise: bool = False) -> Any:
    """A pruning-wrapped copy of `model` (the original is untouched)."""
    import tensorflow_model_optimization as tfmot

    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be between 0 and 1, not {sparsity}")
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=float(sparsity), begin_step=begin,
        end_step=end, frequency=frequency)
    base = copy_model(model)

    def wrap(layer: Any) -> Any:
        if prunable_layer(layer, depthwise):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    # `base` is a throwaway copy: the wrappers may take its layers (and their weights) over
    return keras.models.clone_model(base, clone_function=wrap)


def keras_sparsity(model: Any) -> float:
    """Fraction of exact zeros among the kernels of Conv2D/DepthwiseConv2D/Dense layers."""
    zeros = total = 0
    for layer in model.layers:
        if type(layer).__name__ in (*PRUNABLE, "DepthwiseConv2D"):
            k = layer.get_weights()[0]
            zeros += int(np.count_nonzero(k == 0))
            total += k.size
    return zeros / total if total else 0.0


def prune(ctx: Any) -> tuple[Any, dict[str, Any]]:
    """Prune and fine-tune ctx.model; return (stripped Keras model, what happened)."""
    import tensorflow_model_optimization as tfmot

    cfg = ctx.cfg
    steps = math.ceil(len(ctx.train.y) / ctx.batch_size)
    begin, end, freq = schedule_steps(steps, cfg.prune_epochs)
    wrapped = wrap_for_pruning(ctx.model, cfg.sparsity, begin, end, freq, cfg.prune_depthwise)
    n_wrapped = sum(1 for layer in wrapped.layers if hasattr(layer, "pruning_step"))
    ctx.log(f"pruned: {n_wrapped} layers to {cfg.sparsity:.0%} sparsity, steps {begin}..{end} "
            f"every {freq} ({steps} steps/epoch, {cfg.prune_epochs} epochs)")
    first_epoch = max(0, math.ceil(end / steps) - 1)  # first epoch that ends at the target
    info = fine_tune(wrapped, ctx, cfg.prune_epochs, ctx.prune_lr, "pruned",
                     callbacks=(tfmot.sparsity.keras.UpdatePruningStep(),),
                     first_epoch=first_epoch)
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    info |= {"target_sparsity": cfg.sparsity, "schedule": "PolynomialDecay",
             "begin_step": begin, "end_step": end, "frequency": freq,
             "steps_per_epoch": steps, "pruned_layers": n_wrapped,
             "prune_depthwise": cfg.prune_depthwise, "keras_sparsity": keras_sparsity(stripped)}
    return stripped, info


def build_pruned(ctx: Any) -> tuple[Any, dict[str, Any]]:
    """The `pruned` variant's model (cached on ctx for int8-pqat)."""
    if "pruned" not in ctx.cache:
        ctx.cache["pruned"] = prune(ctx)
    model, info = ctx.cache["pruned"]
    return model, {"prune": info}
