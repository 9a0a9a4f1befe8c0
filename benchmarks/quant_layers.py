"""Which layers lose most to full-integer quantization (TFLite QuantizationDebugger).

Why: the cross-validated MobileNetV2 recipe loses 0.020 to 0.041 val AUC when converted to
int8, where an earlier model lost 0.009. The debugger runs the float and the quantized graph
side by side and reports, per quantized tensor, the RMS error in units of its quantization
step (rmse/scale): about 0.29 is plain rounding (1/sqrt(12)); much more means the layer's
range does not suit int8. This converts a run's Keras model as `int8-ptq` would (random train
images as the representative set) and prints the worst layers on random val images:

    python benchmarks/quant_layers.py runs/real/mnv2-mix --calibration 150 --debug 60
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edge_toolkit.card import ModelCard
from edge_toolkit.data import load_samples
from edge_toolkit.evaluate import run_split_samples
from edge_toolkit.preprocess import PreprocessConfig


def run_images(run: Path, split: str, n: int, pre: PreprocessConfig, seed: int = 0
               ) -> np.ndarray:
    """n random preprocessed images of a run's split (all of them when n is None)."""
    samples = run_split_samples(run, split)
    if n is not None:
        pick = np.random.default_rng(seed).choice(len(samples), min(n, len(samples)),
                                                  replace=False)
        samples = [samples[i] for i in pick]
    return load_samples(samples, pre).x


def layer_errors(run: Path, calibration: int, debug: int, seed: int = 0) -> list[dict]:
    """Per-tensor statistics of the debugger, worst rmse/scale first."""
    from edge_toolkit.quantize import layer_error
    from edge_toolkit.train.tfsetup import keras

    pre = PreprocessConfig.from_dict(ModelCard.load(run / "card.json").preprocessing)
    model = keras.models.load_model(run / "model.keras", compile=False)
    debugger = layer_error.int8_debugger(model, run_images(run, "train", calibration, pre, seed),
                                         run_images(run, "val", debug, pre, seed))
    return layer_error.layer_errors(debugger)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--calibration", type=int, default=150)
    ap.add_argument("--debug", type=int, default=60)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="which random images")
    args = ap.parse_args()
    from edge_toolkit.quantize.layer_error import ROUNDING_ONLY

    stats = layer_errors(args.run, args.calibration, args.debug, args.seed)
    print("| layer (end of the tensor name) | op | rmse/scale |\n|---|---|---|")
    for s in stats[:args.top]:
        print(f"| {s['tensor_name'][-48:]} | {s['op_name']} | {s['rmse/scale']:.2f} |")
    print(f"\nmedian rmse/scale over {len(stats)} tensors: "
          f"{np.median([s['rmse/scale'] for s in stats]):.2f} (plain rounding: "
          f"{ROUNDING_ONLY:.2f})")


if __name__ == "__main__":
    main()
