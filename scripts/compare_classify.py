"""Compare two `edge-toolkit classify --format csv` outputs of one model on the same images.

Why: the arm64 check must show that the device (aarch64) gives the same answers as the
development machine (x86_64): the same label for every image, and raw probabilities within
one step of the model's int8 output quantization (the step is read from the model).

    python scripts/compare_classify.py x86_64.csv arm64.csv --model MODEL.tflite [--json OUT]

Exit 0 when they agree, 1 when they do not.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def output_step(model: Path) -> float:
    """Scale of the quantized tensor the model's float output is dequantized from (int8
    models), or 0.0 for a float model (then any difference counts)."""
    from edge_toolkit.card import split_tflite
    from edge_toolkit.runtime.interpreter import create_interpreter

    flat, _ = split_tflite(model.read_bytes())
    it, _ = create_interpreter(flat)
    out = it.get_output_details()[0]
    if out["quantization"][0]:
        return float(out["quantization"][0])
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    for op in it._get_ops_details():  # noqa: SLF001 - the only way to see the graph
        if op["op_name"] == "DEQUANTIZE" and out["index"] in list(op["outputs"]):
            return float(tensors[int(op["inputs"][0])]["quantization"][0])
    return 0.0


def read(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {Path(r["path"]).name: r for r in csv.DictReader(f) if r["status"] == "ok"}


def compare(a: Path, b: Path, step: float) -> dict:
    ra, rb = read(a), read(b)
    common = sorted(set(ra) & set(rb))
    diffs = {n: abs(float(ra[n]["raw_probability"]) - float(rb[n]["raw_probability"]))
             for n in common}
    labels_equal = all(ra[n]["label"] == rb[n]["label"] for n in common)
    worst = max(diffs.values(), default=0.0)
    return {"images": len(common), "only_in_first": len(set(ra) - set(rb)),
            "only_in_second": len(set(rb) - set(ra)), "labels_equal": labels_equal,
            "max_raw_probability_diff": worst, "output_step": step,
            "within_one_step": worst <= step + 1e-9,
            "differing_images": sorted(n for n, d in diffs.items() if d > 0)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first", type=Path)
    ap.add_argument("second", type=Path)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    res = compare(args.first, args.second, output_step(args.model))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(f"{res['images']} images; labels equal: {res['labels_equal']}; largest raw "
          f"probability difference {res['max_raw_probability_diff']:.6f} (one output step "
          f"{res['output_step']:.6f}); {len(res['differing_images'])} images differ at all")
    ok = (res["labels_equal"] and res["within_one_step"] and res["images"] > 0
          and not res["only_in_first"] and not res["only_in_second"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
