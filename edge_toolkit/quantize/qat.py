"""Quantization-aware training with tfmot (imports TensorFlow).

`int8-qat`: `quantize_model` (Default8BitQuantizeScheme: handles Conv-BN-ReLU(6),
DepthwiseConv and Add patterns) on a copy of the trained model, fine-tuned a few epochs at a
low learning rate, then converted full-integer. `int8-pqat`: the stripped pruned model from
the `pruned` variant, annotated and quantized with `Default8BitPrunePreserveQuantizeScheme`,
so QAT keeps the pruned weights at zero and int8 stores them as exact zeros.
"""

from __future__ import annotations

from typing import Any

from edge_toolkit.quantize.finetune import fine_tune
from edge_toolkit.quantize.prune import copy_model, keras_sparsity


def quantize_for_training(model: Any, preserve_sparsity: bool = False) -> Any:
    """A QAT (fake-quant) copy of a flat tf_keras model."""
    import tensorflow_model_optimization as tfmot

    qk = tfmot.quantization.keras
    base = copy_model(model)
    if not preserve_sparsity:
        return qk.quantize_model(base)
    scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    return qk.quantize_apply(qk.quantize_annotate_model(base), scheme)


def build_qat(ctx: Any) -> tuple[Any, dict[str, Any]]:
    cfg = ctx.cfg
    qat = quantize_for_training(ctx.model)
    info = fine_tune(qat, ctx, cfg.qat_epochs, cfg.qat_lr, "int8-qat")
    return qat, {"qat": info | {"scheme": "Default8BitQuantizeScheme"}}


def build_pqat(ctx: Any) -> tuple[Any, dict[str, Any]]:
    from edge_toolkit.quantize.prune import build_pruned

    cfg = ctx.cfg
    pruned, prune_info = build_pruned(ctx)
    pqat = quantize_for_training(pruned, preserve_sparsity=True)
    info = fine_tune(pqat, ctx, cfg.qat_epochs, cfg.qat_lr, "int8-pqat")
    info |= {"scheme": "Default8BitPrunePreserveQuantizeScheme",
             "keras_sparsity_before_qat": keras_sparsity(pruned)}
    return pqat, prune_info | {"qat": info}
