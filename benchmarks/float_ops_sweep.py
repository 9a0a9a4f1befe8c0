"""Val AUC per source of a run's int8 file with its n worst ops kept in float, for several n.

Why: `int8-mixed` keeps the ops that lose most to int8 in float; how many is worth it is a
setting to choose on val, across runs. This ranks the ops as the export does (the same 300
representative train images calibrate; the error is measured on 32 of them, drawn across the
set), then for each n keeps the n worst in float and scores every val image next to the
Keras float model (benchmarks/README.md, "How many float ops"):

    python benchmarks/float_ops_sweep.py runs/real/mnv2-mix-256 --n 0,1,2,3,4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edge_toolkit.card import ModelCard
from edge_toolkit.data import load_samples
from edge_toolkit.evaluate import run_split_samples
from edge_toolkit.metrics import roc_auc
from edge_toolkit.preprocess import PreprocessConfig


def tflite_probs(flat: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=flat)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    probs = []
    for xi in x:
        interp.set_tensor(inp["index"], xi[None].astype(np.float32))
        interp.invoke()
        probs.append(float(interp.get_tensor(out["index"]).reshape(-1)[0]))
    return np.array(probs)


def main() -> None:
    from edge_toolkit.quantize.convert import layer_error_images
    from edge_toolkit.quantize.layer_error import int8_debugger, layer_errors
    from edge_toolkit.quantize.representative import DEFAULT_IMAGES, representative_images
    from edge_toolkit.train.tfsetup import keras, tf

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--n", default="0,1,2,3,4", help="numbers of float ops, comma-separated")
    args = ap.parse_args()
    card = ModelCard.load(args.run / "card.json")
    pre = PreprocessConfig.from_dict(card.preprocessing)
    seed = int(card.export.get("training", {}).get("seed", 0))  # the export's calibration seed
    rep = representative_images(load_samples(run_split_samples(args.run, "train"), pre).x,
                                DEFAULT_IMAGES, seed)
    val = load_samples(run_split_samples(args.run, "val"), pre)
    src = np.array(val.sources)
    model = keras.models.load_model(args.run / "model.keras", compile=False)
    debugger = int8_debugger(model, rep, layer_error_images(rep))
    rows = layer_errors(debugger)

    def scores(p: np.ndarray) -> str:
        aucs = {s: roc_auc(val.y[src == s], p[src == s]) for s in sorted(set(src))}
        return (" / ".join(f"{s} {a:.4f}" for s, a in aucs.items())
                + f", mean {np.mean(list(aucs.values())):.4f}")

    p_float = model.predict(val.x, verbose=0).reshape(-1)
    print("worst ops (rmse/scale in quantization steps):")
    for r in rows[:6]:
        print(f"  {r['rmse/scale']:.3f} {r['op_name']} {r['tensor_name'].split(';')[0]}")
    print(f"float (Keras): {scores(p_float)}")
    for n in (int(v) for v in args.n.split(",")):
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=[r["tensor_name"] for r in rows[:n]] or None)
        flat = bytes(debugger.get_nondebug_quantized_model())
        p = tflite_probs(flat, val.x)
        print(f"{n} float op(s): {scores(p)}; mean |p - p_float| "
              f"{np.mean(np.abs(p - p_float)):.3f}; {len(flat):,} bytes")


if __name__ == "__main__":
    main()
