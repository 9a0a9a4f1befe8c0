"""Keras model -> TFLite flatbuffer for one variant (imports TensorFlow).

Converter settings per variant (TFLiteConverter.from_keras_model, batch dimension left
dynamic so the validator can feed batches):

    float32   no optimizations
    float16   Optimize.DEFAULT + supported_types [float16]
    dynamic   Optimize.DEFAULT (int8 weights of tensors with >= 1024 elements, float compute)
    int8-*    Optimize.DEFAULT + representative dataset + supported_ops [TFLITE_BUILTINS_INT8]
              + inference_input_type (uint8 default, or int8) + inference_output_type
              (float32 default: the sigmoid runs in int8 and one DEQUANTIZE gives a float;
              uint8/int8 on request). QAT models convert the same way: their fake-quant
              ranges are used; the representative set only fills ranges QAT left open.
    int8-mixed*  the same int8 calibration through TFLite's quantization debugger, which
              measures each op's int8 error on some of the representative images; the worst
              ops, up to `Variant.float_layers` of those with an error of twice plain
              rounding's or more, stay float (layer_error.int8_with_float_layers).
              Float input and output: the input/output type options do not apply.

`EXPERIMENTAL_SPARSITY` is not used: it made files larger and slower here.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from edge_toolkit.quantize.representative import generator, pick
from edge_toolkit.quantize.variants import Variant
from edge_toolkit.train.tfsetup import tf

INPUT_TYPES = ("uint8", "int8")
OUTPUT_TYPES = ("float32", "uint8", "int8")


def _tf_dtype(name: str) -> Any:
    return {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}[name]


def to_tflite(model: Any, variant: Variant, representative: np.ndarray | None = None,
              input_type: str = "uint8", output_type: str = "float32"
              ) -> tuple[bytes, dict[str, Any]]:
    """Convert `model` as `variant`; returns (bare flatbuffer, the settings used, for the card).

    `representative` (preprocessed train images) is required for full-integer variants."""
    if input_type not in INPUT_TYPES:
        raise ValueError(f"input type must be one of {INPUT_TYPES}, not {input_type!r}")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output type must be one of {OUTPUT_TYPES}, not {output_type!r}")
    if variant.float_layers:
        return _int8_mixed(model, variant, representative)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    settings: dict[str, Any] = {"converter": "tf.lite.TFLiteConverter.from_keras_model",
                                "tensorflow": tf.__version__, "optimizations": []}
    if variant.weights == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
        settings |= {"optimizations": ["DEFAULT"], "supported_types": ["float16"]}
    elif variant.weights == "int8-weights":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        settings |= {"optimizations": ["DEFAULT"], "quantization": "dynamic-range"}
    elif variant.full_integer:
        if representative is None or len(representative) == 0:
            raise ValueError(f"{variant.name}: full-integer conversion needs representative "
                             "images")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = generator(representative)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = _tf_dtype(input_type)
        conv.inference_output_type = _tf_dtype(output_type)
        settings |= {"optimizations": ["DEFAULT"], "supported_ops": ["TFLITE_BUILTINS_INT8"],
                     "quantization": "full-integer", "inference_input_type": input_type,
                     "inference_output_type": output_type,
                     "representative_images": int(len(representative))}
    with warnings.catch_warnings():
        # "Statistics for quantized inputs were expected": harmless, the representative set
        # gives the input range.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        flat = conv.convert()
    return bytes(flat), settings


MIXED_DEBUG_IMAGES = 32  # representative images the layers' int8 error is measured on


def layer_error_images(representative: np.ndarray, n: int = MIXED_DEBUG_IMAGES,
                       seed: int = 0) -> np.ndarray:
    """`n` representative images drawn across the whole set: it is ordered as the train
    split is (source by source, class by class), so its first `n` would all be one
    source's fractured images."""
    return representative[pick(len(representative), n, seed)]


def _int8_mixed(model: Any, variant: Variant, representative: np.ndarray | None
                ) -> tuple[bytes, dict[str, Any]]:
    from edge_toolkit.quantize.layer_error import int8_with_float_layers

    if representative is None or len(representative) == 0:
        raise ValueError(f"{variant.name}: int8 conversion needs representative images")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        # the debugger runs its float and debug graphs in tf.lite.Interpreter
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        debug = layer_error_images(representative)
        flat, kept = int8_with_float_layers(model, representative, debug,
                                            variant.float_layers)
    settings = {"converter": "tf.lite.experimental.QuantizationDebugger (from_keras_model)",
                "tensorflow": tf.__version__, "optimizations": ["DEFAULT"],
                "quantization": "int8 with float ops", "float_ops": kept,
                "layer_error_images": int(len(debug)),
                "inference_input_type": "float32", "inference_output_type": "float32",
                "representative_images": int(len(representative))}
    return flat, settings


def build_float(ctx: Any) -> tuple[Any, dict[str, Any]]:
    """float32, float16, dynamic and int8-ptq convert the trained Keras model as it is."""
    return ctx.model, {}



FEATURE_LAYER = "head_pool"  # GlobalAveragePooling2D: its input is the last feature map
HEAD_LAYER = "head_logistic"  # Dense(1) after it: the class activation map's weights


def find_layer(model: Any, name: str) -> Any | None:
    """The layer called `name`, bare or inside a tfmot wrapper (QAT names it quant_<name>,
    pruning prune_low_magnitude_<name>; the wrapped layer keeps the name)."""
    for layer in model.layers:
        if layer.name == name or getattr(getattr(layer, "layer", None), "name", None) == name:
            return layer
    return None


def with_feature_output(model: Any) -> Any:
    """`model` with a second output, the last feature map (input of `head_pool`), for the
    device's heatmaps and input gate; `model` itself if it has no `head_pool` (seed_cnn).
    Built from the trained or fine-tuned model, so the layers and weights are shared."""
    from edge_toolkit.train.tfsetup import keras

    pool = find_layer(model, FEATURE_LAYER)
    if pool is None:
        return model
    return keras.Model(model.input, [model.output, _input_in(model, pool)],
                       name=f"{model.name}_features")


def mirror_averaged(model: Any) -> Any:
    """`model` (one output, or the probability and the feature map) run on each image and on
    its left-right mirror in one batch; the probability is the mean of the two, the feature
    map the plain image's (heatmaps and the input gate describe the image as it was taken).
    Why: a radiograph and its mirror show the same fracture, and the mean of two views
    removes part of the model's variance; measured in benchmarks/README.md."""
    from edge_toolkit.train.tfsetup import keras

    # calling `model` here adds an inbound node to its layers: build this wrapper only after
    # anything that reads a layer's single input (with_feature_output, heatmap_section)
    image = keras.Input(model.input.shape[1:], name="image")
    both = tf.concat([image, tf.reverse(image, axis=[2])], axis=0)
    outputs = model(both)
    outputs = list(outputs) if isinstance(outputs, list | tuple) else [outputs]
    plain, mirrored = tf.split(outputs[0], 2, axis=0)
    prob = (plain + mirrored) * 0.5
    rest = [tf.split(o, 2, axis=0)[0] for o in outputs[1:]]
    return keras.Model(image, [prob, *rest] if rest else prob, name=f"{model.name}_flip")


def _input_in(model: Any, layer: Any) -> Any:
    """`layer`'s input tensor in `model`'s own graph: a layer reused by cloning (pruning's
    strip) has several inbound nodes, and `layer.input` is then ambiguous."""
    nodes = getattr(layer, "_inbound_nodes", [])
    if len(nodes) <= 1:
        return layer.input
    own = getattr(model, "_network_nodes", set())
    for i in range(len(nodes)):
        if f"{layer.name}_ib-{i}" in own:
            return layer.get_input_at(i)
    raise ValueError(f"layer {layer.name} is not connected in model {model.name}")


def _variable(layer: Any, name: str) -> np.ndarray:
    """A Dense layer's float `kernel` or `bias`, also through a tfmot wrapper (whose own
    quantizer variables are named kernel_min and so on, hence the exact match)."""
    for v in layer.weights:
        if v.name.split("/")[-1].split(":")[0] == name:
            return np.asarray(v.numpy(), np.float64)
    raise ValueError(f"layer {layer.name} has no {name} variable")


def heatmap_section(model: Any) -> dict[str, Any] | None:
    """The card's `heatmap` section: the head's weights and the feature map's shape, or None
    for a model without the GAP -> Dense(1) head. logit = mean_hw(sum_c w_c F) + bias."""
    pool, head = find_layer(model, FEATURE_LAYER), find_layer(model, HEAD_LAYER)
    if pool is None or head is None:
        return None
    kernel = _variable(head, "kernel")
    shape = [int(d) for d in _input_in(model, pool).shape[1:]]
    if kernel.shape != (shape[-1], 1):
        raise ValueError(f"head kernel {kernel.shape} does not match {shape[-1]} features")
    bias = _variable(head, "bias").reshape(-1)
    return {"weights": [float(w) for w in kernel[:, 0]], "bias": float(bias[0]),
            "feature_shape": shape}
