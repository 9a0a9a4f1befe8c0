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
import csv
import io
from pathlib import Path

import numpy as np

from edge_toolkit.card import ModelCard
from edge_toolkit.data import Sample, load_samples
from edge_toolkit.preprocess import PreprocessConfig


def _images(run: Path, split: str, n: int, pre: PreprocessConfig, seed: int) -> np.ndarray:
    with open(run / "predictions.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    pick = np.random.default_rng(seed).choice(len(rows), min(n, len(rows)), replace=False)
    samples = [Sample(Path(rows[i]["path"]), int(rows[i]["label"]), split, rows[i]["source"])
               for i in pick]
    return load_samples(samples, pre).x


def layer_errors(run: Path, calibration: int, debug: int, seed: int = 0) -> list[dict]:
    """Per-tensor statistics of the debugger, worst rmse/scale first."""
    from edge_toolkit.train.tfsetup import keras, tf

    card = ModelCard.load(run / "card.json")
    pre = PreprocessConfig.from_dict(card.preprocessing)
    rep = _images(run, "train", calibration, pre, seed)
    val = _images(run, "val", debug, pre, seed)
    model = keras.models.load_model(run / "model.keras", compile=False)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x[None]] for x in rep)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=conv, debug_dataset=lambda: ([x[None]] for x in val))
    debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    buf.seek(0)
    stats = list(csv.DictReader(buf))
    for s in stats:
        s["rmse/scale"] = float(np.sqrt(float(s["mean_squared_error"])) / float(s["scale"]))
    return sorted(stats, key=lambda s: -s["rmse/scale"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--calibration", type=int, default=150)
    ap.add_argument("--debug", type=int, default=60)
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    stats = layer_errors(args.run, args.calibration, args.debug)
    print("| layer (end of the tensor name) | op | rmse/scale |\n|---|---|---|")
    for s in stats[:args.top]:
        print(f"| {s['tensor_name'][-48:]} | {s['op_name']} | {s['rmse/scale']:.2f} |")
    print(f"\nmedian rmse/scale over {len(stats)} tensors: "
          f"{np.median([s['rmse/scale'] for s in stats]):.2f} (plain rounding: 0.29)")


if __name__ == "__main__":
    main()
