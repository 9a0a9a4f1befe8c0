"""AUC per source when copies of one image count once: family-weighted, with a family
bootstrap interval.

Why: fracture-xray's val and test splits are mostly rotated copies of a few source images
(`group` in its manifest.csv): test's 284 images come from 8 source families (3 fractured,
5 not fractured), val's 567 from 49. A per-image AUC then weighs one family's score 67
times, and its per-image bootstrap interval treats 67 copies as 67 patients. This weighs
each image by 1 / its family's size (each family counts once) and resamples whole families
for the interval. FracAtlas's `block` is 25 consecutive image ids, a cautious patient
grouping: there the weights are nearly uniform and the interval wide (benchmarks/README.md,
"How many independent images"):

    python benchmarks/family_auc.py edge_toolkit/models/fracture-mobilenetv2-256-int8-mixed.tflite
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from edge_toolkit.data import load_samples
from edge_toolkit.evaluate import load_predictor
from edge_toolkit.metrics import roc_auc
from edge_toolkit.multisource import discover_sources, sample_groups
from edge_toolkit.preprocess import PreprocessConfig

DATA = ("../shared/data/fracture-xray", "../shared/data/fracatlas")


def weighted_auc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
    """P(score of a positive > score of a negative), each pair weighted w_pos * w_neg."""
    pos, neg = y == 1, y == 0
    if not pos.any() or not neg.any():
        return float("nan")
    a, b = p[pos][:, None], p[neg][None, :]
    pair = w[pos][:, None] * w[neg][None, :]
    return float((((a > b) + 0.5 * (a == b)) * pair).sum() / pair.sum())


def family_bootstrap(y: np.ndarray, p: np.ndarray, fam: np.ndarray, n: int = 1000,
                     seed: int = 0) -> tuple[float, float]:
    """95% interval of the per-image AUC when whole families are resampled, those with a
    fracture and those without separately (each resample keeps both classes)."""
    rng = np.random.default_rng(seed)
    members = {f: np.flatnonzero(fam == f) for f in np.unique(fam)}
    with_pos = [f for f, ix in members.items() if y[ix].any()]
    without = [f for f in members if f not in with_pos]
    if not with_pos or not without:
        return float("nan"), float("nan")
    aucs = []
    for _ in range(n):
        pick = [*rng.choice(with_pos, len(with_pos)), *rng.choice(without, len(without))]
        idx = np.concatenate([members[f] for f in pick])
        if len(set(y[idx].tolist())) == 2:
            aucs.append(roc_auc(y[idx], p[idx]))
    if not aucs:
        return float("nan"), float("nan")
    lo, hi = np.quantile(aucs, [0.025, 0.975])
    return float(lo), float(hi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", type=Path, nargs="+")
    ap.add_argument("--data", action="append", help=f"dataset folders (default: {DATA})")
    args = ap.parse_args()
    ds = discover_sources(args.data or list(DATA))
    groups = sample_groups(ds)
    print("| model | split | source | images | families: with a fracture / without "
          "| AUC | its family bootstrap 95% | family-weighted AUC |")
    print("|---|---|---|---:|---|---:|---|---:|")
    group_of = {s.path: g for s, g in zip(ds.samples, groups)}
    for model in args.models:
        card, predict = load_predictor(model)
        pre = PreprocessConfig.from_dict(card.preprocessing)
        for split in ("val", "test"):
            loaded = load_samples([s for s in ds.samples if s.split == split], pre)
            p = np.asarray(predict(loaded.x), dtype=np.float64)
            src = np.array(loaded.sources)
            fam = np.array([group_of[path] for path in loaded.paths])  # kept images only
            for name in sorted(set(src)):
                m = src == name
                y, q, f = loaded.y[m], p[m], fam[m]
                size = Counter(f.tolist())
                w = np.array([1.0 / size[g] for g in f])
                n_pos = len(set(f[y == 1].tolist()))
                lo, hi = family_bootstrap(y, q, f)
                print(f"| {model.name} | {split} | {name} | {m.sum()} | {n_pos} / "
                      f"{len(size) - n_pos} | {roc_auc(y, q):.3f} | [{lo:.2f}, {hi:.2f}] | "
                      f"{weighted_auc(y, q, w):.3f} |")


if __name__ == "__main__":
    main()
