"""Cold start and peak memory: one-image classify via LiteRT vs via TensorFlow's interpreter.

Both sides do the same work in a new process: read the model and its card, preprocess one
image with `edge_toolkit.preprocess`, quantize it if the model wants integers, invoke once,
calibrate and threshold. The only difference is the interpreter: the runtime's LiteRT (what
`edge-toolkit classify` uses) or `tf.lite.Interpreter`, which drags in all of TensorFlow.
Each is timed from spawn to exit (median of --repeats, after one untimed run so both find
their files in the page cache), with the child's own peak RSS from `wait4`.

    python benchmarks/cold_start_tf_vs_litert.py MODEL.tflite IMAGE [--repeats 5] [--json]

Needs TensorFlow installed for the second column (the `train` extra); the runtime never does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from edge_toolkit.runtime.bench import run_child

TF_CLASSIFY = """
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf
from edge_toolkit.runtime.classifier import Classifier
clf = Classifier.load(sys.argv[1], interpreter_class=tf.lite.Interpreter)
print(json.dumps([clf.predict_file(sys.argv[2]).to_dict()]))
"""


def measure(name: str, argv: list[str], repeats: int) -> dict:
    run_child(argv)  # untimed: page cache
    walls, peaks, out = [], [], ""
    for _ in range(repeats):
        wall, code, peak, out = run_child(argv)
        if code != 0:
            raise SystemExit(f"{name} failed (exit {code}):\n{out}")
        walls.append(wall)
        peaks.append(peak)
    result = json.loads(out)[0]
    return {"interpreter": name, "median_s": statistics.median(walls), "min_s": min(walls),
            "max_s": max(walls), "peak_rss_kb": int(statistics.median(peaks)),
            "probability": result["probability"], "label": result["label"], "command": argv}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("image", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    py = sys.executable
    rows = [
        measure("LiteRT (edge-toolkit classify)",
                [py, "-m", "edge_toolkit.cli", "classify", str(args.model), str(args.image),
                 "--format", "json", "--quiet"], args.repeats),
        measure("tf.lite.Interpreter (TensorFlow)",
                [py, "-c", TF_CLASSIFY, str(args.model), str(args.image)], args.repeats),
    ]
    if abs(rows[0]["probability"] - rows[1]["probability"]) > 1e-4:
        print("warning: the two interpreters disagree on the probability", file=sys.stderr)
    if args.json:
        print(json.dumps({"model": str(args.model), "image": str(args.image),
                          "repeats": args.repeats, "results": rows}, indent=2))
        return
    base = rows[0]
    print(f"{args.model.name} on {args.image.name}: spawn to exit, median of {args.repeats}")
    print(f"{'INTERPRETER':<34} {'MEDIAN S':>8} {'MIN S':>7} {'PEAK RSS MB':>11} "
          f"{'x TIME':>6} {'x RSS':>6}  P")
    for r in rows:
        print(f"{r['interpreter']:<34} {r['median_s']:>8.3f} {r['min_s']:>7.3f} "
              f"{r['peak_rss_kb'] / 1024:>11.1f} {r['median_s'] / base['median_s']:>6.2f} "
              f"{r['peak_rss_kb'] / base['peak_rss_kb']:>6.2f}  {r['probability']:.4f}")


if __name__ == "__main__":
    main()
