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

`EXPERIMENTAL_SPARSITY` is not used: it made files larger and slower here.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from edge_toolkit.quantize.representative import generator
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


def build_float(ctx: Any) -> tuple[Any, dict[str, Any]]:
    """float32, float16, dynamic and int8-ptq convert the trained Keras model as it is."""
    return ctx.model, {}

