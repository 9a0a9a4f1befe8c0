"""AUC per source when copies of one image count once: family-weighted, with a family
bootstrap interval.

Why: fracture-xray's val and test splits are mostly rotated copies of a few source images
(`group` in its manifest.csv): test's 284 images come from 8 source families (3 fractured,
5 not fractured), val's 567 from 49. A per-image AUC then weighs one family's score 67
times, and its per-image bootstrap interval treats 67 copies as 67 patients. This weighs
each image by 1 / its family's size (each family counts once) and resamples whole families
for the interval. FracAtlas has no copies (each image is its own family, so its weighted AUC
is the per-image one), but its `block` (25 consecutive image ids) is a cautious patient
grouping: its interval resamples whole blocks (benchmarks/README.md, "How many independent
images"):

    python benchmarks/family_auc.py edge_toolkit/models/fracture-mobilenetv2-256-int8-mixed.tflite
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edge_toolkit.data import load_samples
from edge_toolkit.evaluate import load_predictor
from edge_toolkit.metrics import family_summary, roc_auc
from edge_toolkit.multisource import discover_sources, groups_of, sample_groups
from edge_toolkit.preprocess import PreprocessConfig

DATA = ("../shared/data/fracture-xray", "../shared/data/fracatlas")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", type=Path, nargs="+")
    ap.add_argument("--data", action="append", help=f"dataset folders (default: {DATA})")
    args = ap.parse_args()
    ds = discover_sources(args.data or list(DATA))
    groups = sample_groups(ds)
    print("| model | split | source | images | families: with a fracture / without "
          "| AUC per image | family-weighted AUC | its cluster bootstrap 95% |")
    print("|---|---|---|---:|---|---:|---:|---|")
    cluster_of = {s.path: g for s, g in zip(ds.samples, groups)}
    for model in args.models:
        card, predict = load_predictor(model)
        pre = PreprocessConfig.from_dict(card.preprocessing)
        for split in ("val", "test"):
            loaded = load_samples([s for s in ds.samples if s.split == split], pre)
            p = np.asarray(predict(loaded.x), dtype=np.float64)
            src = np.array(loaded.sources)
            fam = np.array(groups_of(ds, loaded.paths))  # copies of one radiograph
            clu = np.array([cluster_of[path] for path in loaded.paths])  # kept images only
            for name in sorted(set(src)):
                m = src == name
                y, q, f = loaded.y[m], p[m], fam[m]
                fs = family_summary(y, q, f.tolist(), clusters=clu[m].tolist()) or {
                    "auc_family": roc_auc(y, q), "auc_family_ci95": [float("nan")] * 2,
                    "families": len(f), "families_with_fracture": int(y.sum())}
                lo, hi = fs["auc_family_ci95"]
                print(f"| {model.name} | {split} | {name} | {m.sum()} | "
                      f"{fs['families_with_fracture']} / "
                      f"{fs['families'] - fs['families_with_fracture']} | "
                      f"{roc_auc(y, q):.3f} | {fs['auc_family']:.3f} | [{lo:.2f}, {hi:.2f}] |")


if __name__ == "__main__":
    main()
