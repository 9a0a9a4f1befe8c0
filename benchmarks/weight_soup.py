"""Val AUC per source of a weight soup: the element-wise mean of several runs' kept weights.

Why: runs of one recipe with different seeds start from the same probe-initialised
backbone, so their weights can be averaged into one model ("model soups", Wortsman et al.
2022) that costs nothing more at inference than one of them. Prints each run's val AUC per
source and the soup's (benchmarks/README.md, "Input size for LP-FT"):

    python benchmarks/weight_soup.py runs/real/mnv2-mix-256 runs/real/mnv2-mix-256-s1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edge_toolkit.card import ModelCard
from edge_toolkit.data import load_samples
from edge_toolkit.evaluate import run_split_samples
from edge_toolkit.metrics import roc_auc
from edge_toolkit.preprocess import PreprocessConfig


def main() -> None:
    from edge_toolkit.train.averaging import average_weights
    from edge_toolkit.train.tfsetup import keras
    from edge_toolkit.train.trainer import predict

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--split", default="val")
    args = ap.parse_args()
    if len(args.runs) < 2:
        raise SystemExit("a soup needs two runs or more")
    pres = [PreprocessConfig.from_dict(ModelCard.load(r / "card.json").preprocessing)
            for r in args.runs]
    if any(p != pres[0] for p in pres):
        raise SystemExit("the runs were trained on differently preprocessed images: "
                         + "; ".join(f"{r}: {p}" for r, p in zip(args.runs, pres)))
    pre = pres[0]
    data = load_samples(run_split_samples(args.runs[0], args.split), pre)
    src = np.array(data.sources)
    models = [keras.models.load_model(r / "model.keras", compile=False) for r in args.runs]

    def line(name: str, p: np.ndarray) -> str:
        aucs = {s: roc_auc(data.y[src == s], p[src == s]) for s in sorted(set(src))}
        return (f"{name}: " + " / ".join(f"{s} {a:.4f}" for s, a in aucs.items())
                + f", mean {np.mean(list(aucs.values())):.4f}")

    for run, model in zip(args.runs, models):
        print(line(str(run), predict(model, data.x)))
    soup = models[0]
    soup.set_weights(average_weights([m.get_weights() for m in models]))
    print(line("soup (mean of the weights)", predict(soup, data.x)))


if __name__ == "__main__":
    main()
