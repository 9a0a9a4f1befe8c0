"""Val AUC of a run's model quantized to int8 with some layers left in float.

Why: `quant_layers.py` shows MobileNetV2's first depthwise convolution losing most to int8.
This converts the run's Keras model with TFLite's quantization debugger, keeping the named
tensors' ops in float (`--keep-float`, full tensor names as `quant_layers.py` prints them;
none: plain int8 weights and activations, float input and output), and scores every val
image per source next to the Keras float model:

    python benchmarks/selective_quant.py runs/real/mnv2-mix
    python benchmarks/selective_quant.py runs/real/mnv2-mix --keep-float FIRST_DEPTHWISE
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from quant_layers import run_images  # a sibling script in benchmarks/

from edge_toolkit.card import ModelCard
from edge_toolkit.data import load_samples
from edge_toolkit.evaluate import run_split_samples
from edge_toolkit.metrics import roc_auc
from edge_toolkit.preprocess import PreprocessConfig

FIRST_DEPTHWISE = ("mobilenetv2/expanded_conv_depthwise_relu/Relu6;mobilenetv2/"
                   "expanded_conv_depthwise_BN/FusedBatchNormV3;mobilenetv2/"
                   "expanded_conv_depthwise/depthwise1")


def main() -> None:
    from ai_edge_litert.interpreter import Interpreter

    from edge_toolkit.quantize.layer_error import int8_debugger
    from edge_toolkit.train.tfsetup import keras

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--keep-float", default="",
                    help="comma-separated tensor names, or FIRST_DEPTHWISE")
    ap.add_argument("--calibration", type=int, default=300)
    args = ap.parse_args()
    keep = [FIRST_DEPTHWISE if k == "FIRST_DEPTHWISE" else k
            for k in args.keep_float.split(",") if k]
    pre = PreprocessConfig.from_dict(ModelCard.load(args.run / "card.json").preprocessing)
    val = load_samples(run_split_samples(args.run, "val"), pre)
    model = keras.models.load_model(args.run / "model.keras", compile=False)
    debugger = int8_debugger(model, run_images(args.run, "train", args.calibration, pre),
                             val.x[:5], tuple(keep))
    interp = Interpreter(model_content=debugger.get_nondebug_quantized_model())
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]

    def prob(x: np.ndarray) -> float:
        interp.set_tensor(inp["index"], x[None].astype(np.float32))
        interp.invoke()
        return float(interp.get_tensor(out["index"]).reshape(-1)[0])

    p = np.array([prob(x) for x in val.x])
    p_float = model.predict(val.x, verbose=0).reshape(-1)
    src = np.array(val.sources)
    kept = ", ".join(k.split("/")[1] for k in keep) or "none"
    print(f"float layers: {kept}; mean |p_int8 - p_float| {np.mean(np.abs(p - p_float)):.3f}")
    for name in sorted(set(src)):
        m = src == name
        print(f"  {name}: val AUC int8 {roc_auc(val.y[m], p[m]):.4f}, "
              f"float {roc_auc(val.y[m], p_float[m]):.4f}")


if __name__ == "__main__":
    main()
