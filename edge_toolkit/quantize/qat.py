"""Quantization-aware training with tfmot (imports TensorFlow).

`int8-qat`: `quantize_model`'s Default8BitQuantizeScheme (Conv-BN-ReLU(6), DepthwiseConv and
Add patterns) on a copy of the trained model, its activation ranges calibrated on train
images, fine-tuned a few epochs at a low learning rate, then converted full-integer.
`int8-pqat`: the stripped pruned model from the `pruned` variant under
`Default8BitPrunePreserveQuantizeScheme`, so QAT keeps pruned weights at zero and int8 stores
them as exact zeros.

One fix over the stock schemes: tfmot 0.8.1 quantizes a DepthwiseConv2D kernel
(kh, kw, C, 1) "per axis" along its last axis, of size 1, i.e. per tensor, while TFLite
quantizes depthwise weights per channel. On MobileNetV2 that mismatch alone took the QAT
model's val AUC from 0.90 to 0.83 before any training. `DepthwisePerChannelQuantizer`
quantizes each of the C channels on its own, as the int8 file will.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_toolkit.train.tfsetup import keras, tf  # first: sets TF_USE_LEGACY_KERAS for tfmot

# isort: split
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras import quant_ops, quantizers
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (  # noqa: E501
    prune_preserve_quantize_registry as pp_registry,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_registry as d8_registry,
)

from edge_toolkit.metrics import roc_auc
from edge_toolkit.quantize.finetune import fine_tune
from edge_toolkit.quantize.prune import copy_model, keras_sparsity

qk = tfmot.quantization.keras


class DepthwisePerChannelQuantizer(quantizers.LastValueQuantizer):
    """Symmetric int8 per-channel fake quantization of a depthwise kernel (kh, kw, C, M):
    one range per output channel (C * M), the layout TFLite uses."""

    def __init__(self, **_: Any) -> None:
        super().__init__(num_bits=8, per_axis=True, symmetric=True, narrow_range=True)

    def build(self, tensor_shape: Any, name: str, layer: Any) -> dict[str, Any]:
        n = int(tensor_shape[-1]) * int(tensor_shape[-2])
        return {k: layer.add_weight(f"{name}_{k[:3]}", shape=(n,), trainable=False,
                                    initializer=keras.initializers.Constant(v))
                for k, v in (("min_var", -6.0), ("max_var", 6.0))}

    def __call__(self, inputs: Any, training: Any, weights: dict[str, Any], **_: Any) -> Any:
        kh, kw, c, m = inputs.shape
        x = tf.reshape(inputs, (kh, kw, 1, c * m))
        x = quant_ops.LastValueQuantize(x, weights["min_var"], weights["max_var"],
                                        is_training=training, num_bits=8, per_channel=True,
                                        symmetric=True, narrow_range=True)
        return tf.reshape(x, (kh, kw, c, m))

    def get_config(self) -> dict[str, Any]:
        return {}


class DepthwisePerChannelConfig(d8_registry.Default8BitConvQuantizeConfig):
    def __init__(self, weight_attrs: Any = ("depthwise_kernel",),
                 activation_attrs: Any = ("activation",), quantize_output: bool = False
                 ) -> None:
        super().__init__(list(weight_attrs), list(activation_attrs), quantize_output)
        self.weight_quantizer = DepthwisePerChannelQuantizer()


class _Registry(d8_registry.Default8BitQuantizeRegistry):
    def get_quantize_config(self, layer: Any) -> Any:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            return DepthwisePerChannelConfig()
        return super().get_quantize_config(layer)


class _PrunePreserveRegistry(pp_registry.Default8bitPrunePreserveQuantizeRegistry):
    # tfmot does not preserve depthwise sparsity either (depthwise is not pruned by default)
    def get_quantize_config(self, layer: Any) -> Any:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            return DepthwisePerChannelConfig()
        return super().get_quantize_config(layer)


class Default8BitPerChannelDepthwiseScheme(qk.default_8bit.Default8BitQuantizeScheme):
    def get_quantize_registry(self) -> Any:
        return _Registry()


class PrunePreservePerChannelDepthwiseScheme(
        tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme):
    def get_quantize_registry(self) -> Any:
        return _PrunePreserveRegistry()


_SCOPE = {"DepthwisePerChannelQuantizer": DepthwisePerChannelQuantizer,
          "DepthwisePerChannelConfig": DepthwisePerChannelConfig}


def quantize_for_training(model: Any, preserve_sparsity: bool = False,
                          depthwise_per_channel: bool = True) -> Any:
    """A QAT (fake-quant) copy of a flat tf_keras model; the original is untouched."""
    base = copy_model(model)
    if preserve_sparsity:
        scheme = (PrunePreservePerChannelDepthwiseScheme() if depthwise_per_channel else
                  tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
    else:
        scheme = (Default8BitPerChannelDepthwiseScheme() if depthwise_per_channel else
                  qk.default_8bit.Default8BitQuantizeScheme())
    with qk.quantize_scope(_SCOPE):
        return qk.quantize_apply(qk.quantize_annotate_model(base), scheme)


def calibrate_ranges(model: Any, images: np.ndarray, batch_size: int = 32) -> int:
    """Set every activation quantizer's range from `images` before QAT fine-tuning.

    tfmot starts activation ranges at [-6, 6] and moves them by an EMA with decay 0.999 per
    training step: after a few hundred fine-tuning steps they are still mostly [-6, 6], far
    too coarse for MobileNetV2's small activations (val AUC fell 0.15 on the fracture set).
    Here forward passes in training mode with the EMA decay set to i/(i+1) on batch i make
    each range the mean of the per-batch min/max over the calibration images (what int8-ptq
    calibration sees). BatchNorm runs in inference mode and no weights change. Returns the
    number of batches."""
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    from edge_toolkit.train.tfsetup import keras

    original = quant_ops.MovingAvgQuantize
    state = {"decay": 0.0}

    def running_mean(*args: Any, **kwargs: Any) -> Any:
        kwargs["ema_decay"] = state["decay"]
        return original(*args, **kwargs)

    bn = [layer for layer in model.layers if layer.trainable and isinstance(
        getattr(layer, "layer", layer), keras.layers.BatchNormalization)]
    for layer in bn:
        layer.trainable = False
    quant_ops.MovingAvgQuantize = running_mean
    n = 0
    try:
        for start in range(0, len(images), batch_size):
            state["decay"] = n / (n + 1)
            model(images[start:start + batch_size], training=True)
            n += 1
    finally:
        quant_ops.MovingAvgQuantize = original
        for layer in bn:
            layer.trainable = True
    return n


def _prepare(ctx: Any, qat: Any, label: str) -> dict[str, Any]:
    """Calibrate the fake-quant ranges, and measure where QAT starts from."""
    batches = calibrate_ranges(qat, ctx.representative, ctx.batch_size)
    p = qat.predict(ctx.val.x, batch_size=64, verbose=0).reshape(-1)
    auc = roc_auc(ctx.val.y, p)
    ctx.log(f"{label}: activation ranges calibrated on {len(ctx.representative)} train images; "
            f"val AUC before fine-tuning {auc:.4f}")
    return {"range_calibration_images": int(len(ctx.representative)),
            "range_calibration_batches": batches, "keras_val_auc_before": float(auc)}


def build_qat(ctx: Any) -> tuple[Any, dict[str, Any]]:
    """The int8-qat variant's model (cached on ctx: int8-qat-flip converts the same one)."""
    if "int8-qat" not in ctx.cache:
        cfg = ctx.cfg
        qat = quantize_for_training(ctx.model,
                                    depthwise_per_channel=cfg.qat_depthwise_per_channel)
        start = _prepare(ctx, qat, "int8-qat")
        info = fine_tune(qat, ctx, cfg.qat_epochs, cfg.qat_lr, "int8-qat")
        scheme = "Default8BitQuantizeScheme" + (
            " (depthwise per channel)" if cfg.qat_depthwise_per_channel else "")
        ctx.cache["int8-qat"] = (qat, {"qat": info | start | {"scheme": scheme}})
    return ctx.cache["int8-qat"]


def build_pqat(ctx: Any) -> tuple[Any, dict[str, Any]]:
    from edge_toolkit.quantize.prune import build_pruned

    cfg = ctx.cfg
    pruned, prune_info = build_pruned(ctx)
    pqat = quantize_for_training(pruned, preserve_sparsity=True,
                                 depthwise_per_channel=cfg.qat_depthwise_per_channel)
    start = _prepare(ctx, pqat, "int8-pqat")
    info = fine_tune(pqat, ctx, cfg.qat_epochs, cfg.qat_lr, "int8-pqat") | start
    info |= {"scheme": "Default8BitPrunePreserveQuantizeScheme" + (
                 " (depthwise per channel)" if cfg.qat_depthwise_per_channel else ""),
             "keras_sparsity_before_qat": keras_sparsity(pruned)}
    return pqat, prune_info | {"qat": info}
