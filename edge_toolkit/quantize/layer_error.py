"""Which layers lose most to int8, and an int8 file that keeps those in float (imports TF).

Why: full-integer quantization of the cross-validated MobileNetV2 recipe cost 0.020 to 0.041
val AUC, and nearly all of it comes from a few layers whose activation range does not suit
eight bits (benchmarks/README.md, "One float op in an int8 file"). TFLite's quantization
debugger runs each quantized op next to its float twin on the same input and reports the
error per tensor; dividing the RMS error by the tensor's quantization step gives a
scale-free number, about 0.29 for plain rounding (1/sqrt(12)) and well above 1 where int8
clips or is too coarse. Keeping the worst few ops in float costs little latency (the rest
stays int8) and wins back most of the loss: `int8-mixed` keeps every op whose error is at
least twice plain rounding's, at most three (`fragile_ops`), as long as their float weights
add little to the file (`MAX_FLOAT_GROWTH`; the worst op always stays float).

Public API only: `tf.lite.experimental.QuantizationDebugger` (its calibrated model, its
statistics and its non-debug model with denylisted nodes).
"""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np

from edge_toolkit.quantize.representative import generator
from edge_toolkit.quantize.variants import MIXED_MAX_GROWTH
from edge_toolkit.train.tfsetup import tf

ROUNDING_ONLY = 1 / np.sqrt(12)  # rmse/scale of an op whose only error is rounding


def int8_debugger(model: Any, representative: np.ndarray, debug_images: np.ndarray,
                  keep_float: tuple[str, ...] = ()) -> Any:
    """TFLite's quantization debugger on `model` converted as int8 post-training
    quantization is (the representative images calibrate), with the ops whose output
    tensors are named in `keep_float` left in float."""
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = generator(np.asarray(representative, np.float32))
    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_nodes=list(keep_float) or None)
    return tf.lite.experimental.QuantizationDebugger(
        converter=conv, debug_dataset=generator(np.asarray(debug_images, np.float32)),
        debug_options=options)


def layer_errors(debugger: Any) -> list[dict[str, Any]]:
    """Run the debugger; one row per quantized op (tensor_name, op_name, rmse/scale and the
    debugger's own columns), worst rmse/scale first. Ops whose error is not a finite number
    (an op that never ran, a zero-width range) are left out: they cannot be ranked."""
    debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    buf.seek(0)
    rows = list(csv.DictReader(buf))
    ranked = []
    for row in rows:
        scale, mse = float(row["scale"]), float(row["mean_squared_error"])
        if scale > 0 and np.isfinite(scale) and np.isfinite(mse):
            row["rmse/scale"] = float(np.sqrt(mse) / scale)
            ranked.append(row)
    return sorted(ranked, key=lambda r: -r["rmse/scale"])


# An op is worth keeping in float when its int8 error is clearly more than rounding: twice
# plain rounding's. On the three real runs measured (benchmarks/README.md, "How many float
# ops") the fragile ops sit at 0.58 to 1.41 steps and the median op at 0.31.
FRAGILE_ERROR = 2 * ROUNDING_ONLY


def fragile_ops(rows: list[dict[str, Any]], max_float: int,
                min_error: float = FRAGILE_ERROR) -> list[dict[str, Any]]:
    """Of `layer_errors` rows (worst first), the ops to keep in float: those at or above
    `min_error` steps, at most `max_float` of them, and always the worst one (an int8-mixed
    file keeps at least the op that loses most)."""
    if max_float < 1:
        raise ValueError("max_float must be at least 1")
    chosen = [r for r in rows[:max_float] if r["rmse/scale"] >= min_error]
    return chosen or rows[:1]


# Float weights take four times the bytes of int8 ones: an op beyond the worst stays float
# only while all of them add at most this share to the int8 file. A large conv can be
# fragile too (the demo run's last 1x1 conv, 1280 x 320: +35% as float).
MAX_FLOAT_GROWTH = MIXED_MAX_GROWTH


def int8_with_float_layers(model: Any, representative: np.ndarray, debug_images: np.ndarray,
                           max_float: int, min_error: float = FRAGILE_ERROR,
                           max_growth: float = MAX_FLOAT_GROWTH
                           ) -> tuple[bytes, list[dict[str, Any]]]:
    """`model` as int8 (weights and activations, float input and output) with the ops that
    lose most to int8 on `debug_images` left in float: the worst always, then the other
    `fragile_ops` (at most `max_float` in all, each `min_error` steps or more), each only if
    the file stays within `max_growth` of the plain int8 file's size. Returns the
    flatbuffer and the float ops (tensor, op, rmse/scale, bytes added), worst first."""
    if max_float < 1:
        raise ValueError("max_float must be at least 1")
    if len(debug_images) == 0:
        raise ValueError("no images to measure the layers' int8 error on")
    debugger = int8_debugger(model, representative, debug_images)
    rows = layer_errors(debugger)
    chosen = fragile_ops(rows, max_float, min_error)
    if len(rows) <= len(chosen):  # keeping every quantized op in float is not an int8 file
        raise ValueError(f"the int8 model has {len(rows)} measurable quantized op(s); "
                         f"keeping {len(chosen)} in float needs more")

    def convert(ops: list[dict[str, Any]]) -> bytes:
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=[r["tensor_name"] for r in ops] or None)
        return bytes(debugger.get_nondebug_quantized_model())

    plain = len(convert([]))
    kept: list[dict[str, Any]] = []
    flat = b""
    for row in chosen:
        trial = convert([*[k["row"] for k in kept], row])
        if kept and len(trial) - plain > max_growth * plain:
            continue  # its float weights cost too much: it stays int8
        added = len(trial) - (len(flat) if kept else plain)
        kept.append({"row": row, "bytes_added": added})
        flat = trial
    return flat, [{"tensor": k["row"]["tensor_name"], "op": k["row"]["op_name"],
                   "rmse_per_step": round(k["row"]["rmse/scale"], 3),
                   "bytes_added": int(k["bytes_added"])} for k in kept]
