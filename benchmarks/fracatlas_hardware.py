"""FracAtlas scores with and without implant images (the dataset's known shortcut), or by
body region.

    python benchmarks/fracatlas_hardware.py MODEL [--data ../shared/data/fracatlas] [--by region]

In FracAtlas, plates and screws appear in about 1 in 7 fractured images and almost never in
normal ones, so a model can score by spotting hardware. MODEL is a run folder or a carded
.tflite; its stored temperature and threshold are used, nothing is re-chosen. Prints AUC
[95% CI] and sensitivity/specificity on each split, all images and `hardware == 0` only;
with `--by region`, each region (hand, leg, hip, shoulder, mixed; an AUC only where both
classes have at least 5 images).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from edge_toolkit.data import Sample, load_samples
from edge_toolkit.evaluate import load_predictor
from edge_toolkit.metrics import apply_temperature, at_threshold, bootstrap_auc_ci, roc_auc
from edge_toolkit.preprocess import PreprocessConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/fracatlas"))
    ap.add_argument("--splits", default="val,test")
    ap.add_argument("--by", choices=("hardware", "region"), default="hardware")
    args = ap.parse_args()
    card, predict = load_predictor(args.model)
    with open(args.data / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    print("| split | images | AUC [95% CI] | sensitivity | specificity |")
    print("|---|---|---|---|---|")
    for split in args.splits.split(","):
        chosen = [r for r in rows if r["split"] == split]
        samples = [Sample(args.data / r["path"], int(r["label"] == "fractured"), split)
                   for r in chosen]
        loaded = load_samples(samples, PreprocessConfig.from_dict(card.preprocessing))
        row_of = {s.path: r for s, r in zip(samples, chosen)}
        kept = [row_of[p] for p in loaded.paths]  # unreadable files are not in `loaded`
        q = apply_temperature(np.asarray(predict(loaded.x), np.float64), card.temperature)
        y = loaded.y
        if args.by == "hardware":
            hardware = np.array([r.get("hardware") == "1" for r in kept])
            groups = [("all", np.ones(len(y), bool)), ("no hardware", ~hardware)]
        else:
            region = np.array([r.get("region", "") for r in kept])
            groups = [(name, region == name) for name in sorted(set(region.tolist()))]
        for label, mask in groups:
            n_pos, n_neg = int(y[mask].sum()), int((y[mask] == 0).sum())
            if min(n_pos, n_neg) >= 5:
                lo, hi = bootstrap_auc_ci(y[mask], q[mask])
                auc = f"{roc_auc(y[mask], q[mask]):.3f} [{lo:.2f}, {hi:.2f}]"
            else:
                auc = "– (fewer than 5 of a class)"
            op = at_threshold(y[mask], q[mask], card.threshold)
            print(f"| {split}, {label} | {int(mask.sum())} ({n_pos} fractured) | {auc} | "
                  f"{op['sensitivity']:.3f} | {op['specificity']:.3f} |")


if __name__ == "__main__":
    main()
