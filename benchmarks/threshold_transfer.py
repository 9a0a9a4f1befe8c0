"""Does an operating point chosen on out-of-fold predictions carry over to another model?

A refit of a cross-validated recipe on every train+val image has no held-out image left to
choose its temperature and threshold on; the cross-validation's out-of-fold predictions
(each image scored by the fold model that did not train on it) could stand in for val, but
those fold models saw fewer images than the refit would. This chooses the operating point
on them by the trainer's own rule and scores it on a model that did not train on the images
it is scored on (e.g. the bundled file, trained on `train`, on `val`), beside that model's
own stored operating point, per source (benchmarks/README.md, "A refit on train+val"):

    python benchmarks/threshold_transfer.py runs/real/cv2/s256-famw-f1 \
        edge_toolkit/models/fracture-mobilenetv2-256-int8-mixed.tflite --split val
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_toolkit.card import ModelCard
from edge_toolkit.data import load_samples
from edge_toolkit.evaluate import load_predictor, scoring_dataset
from edge_toolkit.metrics import apply_temperature, at_threshold, logit, sigmoid
from edge_toolkit.preprocess import PreprocessConfig
from edge_toolkit.train.calibrate import choose_operating_points


class CrossFitError(ValueError):
    """The folder holds no usable out-of-fold predictions; the message says why."""


@dataclass
class OutOfFold:
    """Each pooled train+val image once, with the probability of the fold model that did
    not train on it."""

    folder: Path
    folds: int
    y: np.ndarray
    p: np.ndarray
    sources: list[str]
    paths: list[str]


def fold_runs(folder: str | Path) -> list[Path]:
    """The fold run folders of a cross-validation (`crossval.json` says how many)."""
    folder = Path(folder)
    summary = folder / "crossval.json"
    if not summary.exists():
        raise CrossFitError(f"{folder}: no crossval.json (not a finished cross-validation)")
    k = int(json.loads(summary.read_text())["folds"])
    runs = [folder / f"fold{i + 1}" for i in range(k)]
    missing = [r.name for r in runs if not (r / "predictions.csv").exists()]
    if missing:
        raise CrossFitError(f"{folder}: no predictions.csv in {', '.join(missing)}")
    return runs


def out_of_fold(folder: str | Path) -> OutOfFold:
    """The held-out (`val`) predictions of every fold of the cross-validation in `folder`."""
    runs = fold_runs(folder)
    y: list[int] = []
    p: list[float] = []
    sources: list[str] = []
    paths: list[str] = []
    for run in runs:
        with open(run / "predictions.csv", newline="") as f:
            for row in csv.DictReader(f):
                if row["split"] == "val":
                    y.append(int(row["label"]))
                    p.append(float(row["probability_raw"]))
                    sources.append(row["source"])
                    paths.append(row["path"])
    if len(set(paths)) != len(paths):
        raise CrossFitError(f"{folder}: an image is held out by more than one fold")
    if len(set(y)) < 2:
        raise CrossFitError(f"{folder}: the held-out images are all of one class")
    return OutOfFold(Path(folder), len(runs), np.asarray(y), np.asarray(p, dtype=np.float64),
                     sources, paths)


def cross_fitted_operating_points(oof: OutOfFold, target_sensitivity: float,
                                  min_specificity: float | None = None) -> dict[str, Any]:
    """Temperature and thresholds chosen on the out-of-fold predictions by the rule training
    applies to val, with a `cross_fitted` record of where they came from."""
    ops = choose_operating_points(oof.y, oof.p, target_sensitivity, oof.sources,
                                  min_specificity)
    ops["cross_fitted"] = {"folder": str(oof.folder), "folds": oof.folds,
                           "images": int(len(oof.y)), "fractured": int(oof.y.sum())}
    return ops


def raw_threshold(threshold: float, temperature: float) -> float:
    """The model's own output at which its calibrated probability reaches `threshold`:
    thresholds of differently calibrated models compare on this scale."""
    return float(sigmoid(logit(np.array([threshold])) * temperature)[0])


def fold_thresholds(folder: str | Path) -> list[float]:
    """Each fold model's own stored threshold (chosen on its held-out fold), raw scale."""
    cards = [ModelCard.load(run / "card.json") for run in fold_runs(folder)]
    return [raw_threshold(c.threshold, c.temperature) for c in cards]


def decisions_by_source(y: np.ndarray, q: np.ndarray, threshold: float,
                        sources: list[str]) -> dict[str, dict[str, float]]:
    """Sensitivity and specificity at `threshold` of each source's images."""
    src = np.asarray(sources)
    out = {}
    for name in sorted(set(sources)):
        m = src == name
        op = at_threshold(y[m], q[m], threshold)
        out[name] = {"sensitivity": op["sensitivity"], "specificity": op["specificity"],
                     "images": int(m.sum()), "fractured": int(y[m].sum())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cv_folder", type=Path)
    ap.add_argument("model", type=Path, help="a .tflite file with a card, or a run folder")
    ap.add_argument("--split", default="val")
    ap.add_argument("--data", action="append", help="default: the model's own folders")
    ap.add_argument("--target-sensitivity", type=float, default=0.9)
    ap.add_argument("--min-specificity", type=float, default=0.5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    oof = out_of_fold(args.cv_folder)
    ops = cross_fitted_operating_points(oof, args.target_sensitivity, args.min_specificity)
    card, predict = load_predictor(args.model)
    ds = scoring_dataset(card, args.data)
    loaded = load_samples(ds.split(args.split), PreprocessConfig.from_dict(card.preprocessing))
    p = np.asarray(predict(loaded.x), dtype=np.float64)
    result = {
        "cv_folder": str(args.cv_folder), "model": str(args.model), "split": args.split,
        "fold_raw_thresholds": fold_thresholds(args.cv_folder),
        "cross_fitted": {"temperature": ops["temperature"], "threshold": ops["threshold"],
                         "raw_threshold": raw_threshold(ops["threshold"], ops["temperature"]),
                         "floor_margin": ops.get("floor_margin"),
                         "out_of_fold": decisions_by_source(
                             oof.y, apply_temperature(oof.p, ops["temperature"]),
                             ops["threshold"], oof.sources),
                         "by_source": decisions_by_source(
                             loaded.y, apply_temperature(p, ops["temperature"]),
                             ops["threshold"], loaded.sources)},
        "own": {"temperature": card.temperature, "threshold": card.threshold,
                "raw_threshold": raw_threshold(card.threshold, card.temperature),
                "by_source": decisions_by_source(
                    loaded.y, apply_temperature(p, card.temperature), card.threshold,
                    loaded.sources)},
    }
    print(f"{len(oof.y)} out-of-fold images from {oof.folds} folds; {len(loaded.y)} "
          f"{args.split} images scored by {args.model.name}")
    print("each fold model's own threshold, raw: "
          + ", ".join(f"{t:.4f}" for t in result["fold_raw_thresholds"]))
    for which in ("cross_fitted", "own"):
        r = result[which]
        print(f"{which}: temperature {r['temperature']:.3f}, threshold {r['threshold']:.4f} "
              f"(raw {r['raw_threshold']:.4f})")
        if which == "cross_fitted":
            print(f"  margin over the floors on the out-of-fold predictions: "
                  f"{r['floor_margin']:.2f} standard errors; there:")
            for name, m in r["out_of_fold"].items():
                print(f"    {name}: sensitivity {m['sensitivity']:.3f} specificity "
                      f"{m['specificity']:.3f} ({m['images']} images)")
            print(f"  on {args.split}:")
        for name, m in r["by_source"].items():
            print(f"  {name}: sensitivity {m['sensitivity']:.3f} specificity "
                  f"{m['specificity']:.3f} ({m['images']} images, {m['fractured']} fractured)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
