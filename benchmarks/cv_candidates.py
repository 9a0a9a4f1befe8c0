"""Each kind of candidate a training run can keep, scored over cross-validation folds.

A run keeps whichever candidate scores best on its val split: the probe, an epoch, the
weight average or a probe mix. With a few hundred patient families per source that maximum
is biased upwards (the best of ten noisy scores), most for recipes whose epochs swing. This
reads each fold's history.csv (every candidate's AUC on that fold's held-out images, per
source) and reports each candidate kind's mean over folds, next to the kept maximum, so
recipes can be compared on a kind fixed in advance instead.

    python benchmarks/cv_candidates.py runs/real/cv2/base runs/real/cv2/acq
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def candidate_kinds(rows: list[dict[str, str]], mixes: list[str]) -> dict[str, dict[str, str]]:
    """Name each history row: probe, last epoch, best epoch, average, mix-A (the trainer
    names rows itself since it learnt `keep`; older runs are named from their phases and
    the --probe-mix values given here), and the kept maximum."""
    named: dict[str, dict[str, str]] = {}
    epochs = [r for r in rows if r["phase"] == "2"]
    mix_rows = [r for r in rows if r["phase"] == "4"]
    for r in rows:
        if r["phase"] == "1" and r.get("candidate", "probe") == "probe":
            named["probe"] = r
        elif r["phase"] == "3":
            named["average"] = r
    for i, r in enumerate(mix_rows):
        named[r.get("candidate") or (f"mix-{mixes[i]}" if i < len(mixes) else f"mix #{i + 1}")] = r
    if epochs:
        named["last"] = epochs[-1]
        named["best epoch"] = max(epochs, key=lambda r: float(r["val_auc"]))
    named["kept (best of all)"] = max(rows, key=lambda r: float(r["val_auc"]))
    return named


def summarize(folder: Path, mixes: list[str]) -> dict[str, dict[str, tuple[float, float]]]:
    per_kind: dict[str, dict[str, list[float]]] = {}
    for hist in sorted(folder.glob("fold*/history.csv")):
        with open(hist, newline="") as f:
            rows = list(csv.DictReader(f))
        for kind, r in candidate_kinds(rows, mixes).items():
            for key, v in r.items():
                if key.startswith("val_auc") and v:
                    name = key[8:] or "mean_of_sources"
                    per_kind.setdefault(kind, {}).setdefault(name, []).append(float(v))
    return {k: {s: (float(np.mean(v)), float(np.std(v))) for s, v in d.items()}
            for k, d in per_kind.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--probe-mix", default="0.5,0.75",
                    help="The runs' --probe-mix values (names older runs' mix rows).")
    args = ap.parse_args()
    for folder in args.folders:
        table = summarize(folder, args.probe_mix.split(","))
        sources = sorted({s for d in table.values() for s in d} - {"mean_of_sources"})
        cols = [*sources, "mean_of_sources"]
        print(f"\n{folder} (held-out AUC, mean ± sd over folds)\n")
        print("| candidate | " + " | ".join(cols) + " |")
        print("|---|" + "---|" * len(cols))
        for kind, d in table.items():
            print(f"| {kind} | " + " | ".join(
                f"{d[c][0]:.3f} ± {d[c][1]:.3f}" if c in d else "–" for c in cols) + " |")


if __name__ == "__main__":
    main()
