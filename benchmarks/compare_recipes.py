"""Compare training recipes on the same images with a paired bootstrap, per source.

Each argument is a run folder (its `val` predictions) or a cross-validation folder (every
`fold*/predictions.csv`: each image's out-of-fold prediction, so the whole pooled train+val
is scored once). Recipes are aligned by image path; the first one is the reference. Prints,
per source and for the mean of the sources' AUCs (the trainer's selection criterion), each
recipe's AUC and its difference from the reference with a 95% paired, class- and
source-stratified bootstrap interval: an interval that excludes 0 is a difference the data
can tell; one that straddles 0 is not.

    python benchmarks/compare_recipes.py runs/real/cv2/base runs/real/cv2/acq
    python benchmarks/compare_recipes.py runs/real/mnv2-swa runs/real/mnv2-acq --split val

`--ensemble` adds one more row: the mean of the recipes' probabilities per image (e.g. two
seeds of one recipe averaged), compared with the reference like the others.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from edge_toolkit.metrics import roc_auc


def held_out_predictions(folder: Path, split: str) -> dict[str, tuple[str, int, float]]:
    """path -> (source, label, probability) of `split` rows, from a run or its CV folds."""
    files = sorted(folder.glob("fold*/predictions.csv")) or [folder / "predictions.csv"]
    out: dict[str, tuple[str, int, float]] = {}
    for f in files:
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh):
                if row["split"] == split:
                    out[row["path"]] = (row["source"], int(row["label"]),
                                        float(row["probability_raw"]))
    return out


def mean_of_sources(y: np.ndarray, p: np.ndarray, src: np.ndarray) -> float:
    return float(np.mean([roc_auc(y[src == s], p[src == s]) for s in np.unique(src)]))


ENSEMBLE = "ensemble (mean probability of the recipes)"


def compare(folders: list[Path], split: str = "val", n: int = 1000, seed: int = 0,
            ensemble: bool = False) -> dict:
    preds = [held_out_predictions(f, split) for f in folders]
    paths = sorted(set.intersection(*(set(p) for p in preds)))
    if not paths:
        raise SystemExit("no images in common between the recipes")
    src = np.array([preds[0][k][0] for k in paths])
    y = np.array([preds[0][k][1] for k in paths])
    ps = [np.array([p[k][2] for k in paths]) for p in preds]
    names: list[str | Path] = list(folders)
    if ensemble:
        ps.append(np.mean(ps, axis=0))
        names.append(ENSEMBLE)
    strata = [np.flatnonzero((src == s) & (y == c)) for s in np.unique(src) for c in (0, 1)]
    rng = np.random.default_rng(seed)
    boots = [np.concatenate([rng.choice(ix, len(ix)) for ix in strata]) for _ in range(n)]
    groups = {s: src == s for s in np.unique(src)} | {"mean_of_sources": None}
    result: dict = {"images": len(paths), "split": split, "recipes": {}}
    for folder, p in zip(names, ps):
        rows = {}
        for name, mask in groups.items():
            def score(idx: np.ndarray, q: np.ndarray, mask=mask) -> float:
                if mask is None:
                    return mean_of_sources(y[idx], q[idx], src[idx])
                keep = idx[mask[idx]]
                return roc_auc(y[keep], q[keep])

            everything = np.arange(len(y))
            auc, ref = score(everything, p), score(everything, ps[0])
            deltas = np.array([score(b, p) - score(b, ps[0]) for b in boots])
            lo, hi = np.quantile(deltas, [0.025, 0.975])
            rows[str(name)] = {"auc": auc, "delta": auc - ref, "ci95": [float(lo), float(hi)]}
        result["recipes"][str(folder)] = rows
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--split", default="val", help="val (held-out folds for CV folders)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--json", type=Path, help="Also write the comparison here.")
    ap.add_argument("--ensemble", action="store_true",
                    help="Add the mean of the recipes' probabilities as one more row.")
    args = ap.parse_args()
    res = compare(args.folders, args.split, args.bootstrap, ensemble=args.ensemble)
    names = list(next(iter(res["recipes"].values())))
    print(f"{res['images']} images ({res['split']}), reference: {args.folders[0]}\n")
    print("| recipe | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for folder, rows in res["recipes"].items():
        cells = [f"{r['auc']:.3f}" + ("" if folder == str(args.folders[0]) else
                 f" ({r['delta']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}])")
                 for r in rows.values()]
        print(f"| {folder} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
