"""Score runs on a hospital they never saw: every image (all splits) of a dataset folder.

A run trained on one source is a model deployed at another site; its AUC on all of that
other source's images, not only its test split, is the number a clinic there would see.
Each run's raw probabilities go to `OUT/<run name>/predictions.csv` with the split
`unseen`, in the trainer's format, so `compare_recipes.py` pairs them image by image:

    python benchmarks/unseen_site.py --on ../shared/data/fracatlas --out runs/real/unseen/fa \
        runs/real/mnv2-mix-256-fx runs/real/mnv2-mix-256-fx-ac
    python benchmarks/compare_recipes.py runs/real/unseen/fa/mnv2-mix-256-fx \
        runs/real/unseen/fa/mnv2-mix-256-fx-ac --split unseen

Each run is scored with its own card's preprocessing (its intensity step included).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from edge_toolkit.data import load_samples
from edge_toolkit.evaluate import load_predictor, scoring_dataset
from edge_toolkit.preprocess import PreprocessConfig

CHUNK = 400  # images preprocessed at once: bounded memory


def score_run(run: Path, on: Path, out: Path) -> Path:
    """Write `out/predictions.csv`: every readable image of `on`, scored by `run`."""
    card, predict = load_predictor(run)
    trained_on = {Path(r).resolve() for r in (card.dataset.get("roots") or [])}
    if on.resolve() in trained_on:
        raise SystemExit(f"{run} was trained on {on}: not an unseen site")
    ds = scoring_dataset(card, [on])
    pre = PreprocessConfig.from_dict(card.preprocessing)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "predictions.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["split", "source", "path", "label", "probability_raw"])
        for start in range(0, len(ds.samples), CHUNK):
            loaded = load_samples(ds.samples[start:start + CHUNK], pre)
            probs = np.asarray(predict(loaded.x), dtype=np.float64).reshape(-1)
            for p, src, y, q in zip(loaded.paths, loaded.sources, loaded.y, probs):
                w.writerow(["unseen", src, str(p), int(y), f"{q:.6f}"])
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--on", type=Path, required=True, help="the unseen dataset folder")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    for run in args.runs:
        print(score_run(run, args.on, args.out / run.name), flush=True)


if __name__ == "__main__":
    main()
