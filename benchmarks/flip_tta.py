"""Score a run (or every fold of a cross-validation) with horizontal-flip test-time averaging.

Why: a radiograph and its mirror image show the same fracture, and training already flips
at random; the mean of the two predictions averages out part of the model's variance for
the cost of a second pass. Whether that is worth twice the latency must be measured on
held-out images, not assumed. This reloads each fold's (or the run's) Keras model, predicts
its held-out `val` images plain and mirrored, and writes a folder of the same shape whose
predictions.csv hold the mean of the two, so `compare_recipes.py` can set it against the
plain predictions with a paired bootstrap over the same images:

    python benchmarks/flip_tta.py runs/real/cv2/base --out runs/real/cv2/base-flip
    python benchmarks/compare_recipes.py runs/real/cv2/base runs/real/cv2/base-flip
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from edge_toolkit.card import ModelCard
from edge_toolkit.data import load_samples
from edge_toolkit.evaluate import run_split_samples
from edge_toolkit.preprocess import PreprocessConfig


def flip_averaged(run: Path, out: Path, split: str = "val") -> int:
    """Write out/predictions.csv: `split` rows of run/predictions.csv with the mean of the
    plain and the mirrored prediction. Returns the number of images."""
    from edge_toolkit.train.tfsetup import keras

    card = ModelCard.load(run / "card.json")
    pre = PreprocessConfig.from_dict(card.preprocessing)
    loaded = load_samples(run_split_samples(run, split), pre)
    if loaded.skipped:
        raise SystemExit(f"{run}: {len(loaded.skipped)} images could not be read")
    net = keras.models.load_model(run / "model.keras", compile=False)
    plain = net.predict(loaded.x, batch_size=64, verbose=0).reshape(-1)
    mirrored = net.predict(loaded.x[:, :, ::-1], batch_size=64, verbose=0).reshape(-1)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "source", "path", "label", "probability_raw"])
        for path, label, source, p in zip(loaded.paths, loaded.y, loaded.sources,
                                          (plain + mirrored) / 2, strict=True):
            w.writerow([split, source, str(path), int(label), f"{p:.6f}"])
    return len(loaded.y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path, help="a run folder or a cross-validation folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--split", default="val")
    args = ap.parse_args()
    folds = sorted(p.parent for p in args.folder.glob("fold*/model.keras"))
    for run in folds or [args.folder]:
        dest = args.out / run.name if folds else args.out
        n = flip_averaged(run, dest, args.split)
        print(f"{run}: {n} {args.split} images -> {dest / 'predictions.csv'}")


if __name__ == "__main__":
    main()
