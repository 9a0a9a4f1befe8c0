"""How much each source's AUC gains from more training images: the linear probe's learning curve.

Before training on more images (a refit on train+val, a clinic adding its own), it is worth
knowing whether more images of a source still pay. This fits the closed-form probe on a
fraction of each training fold's groups (whole groups, the same fraction of every source, drawn
afresh per repeat) on the grouped folds of `select_probe_cv.py`, and scores the held-out fold
as always (family-weighted AUC, test never touched). The probe is only the first half of the
recipe, so this is the slope of the frozen features, a floor for what fine-tuning does with
the same images.

    python benchmarks/learning_curve.py --data ../shared/data/fracture-xray \
        --data ../shared/data/fracatlas --weights ../shared/weights/mobilenet_v2_1.0_224_no_top.h5
"""

from __future__ import annotations

import json
import time

import numpy as np
from select_probe_cv import fold_arrays, loaded_chunks, screen_arguments

from edge_toolkit.metrics import family_auc
from edge_toolkit.multisource import groups_of, source_balanced_weights
from edge_toolkit.preprocess import PreprocessConfig
from edge_toolkit.train.models import build_model, preprocess_config
from edge_toolkit.train.probe import fit_logistic, pooled_features


def group_subset(groups: np.ndarray, src: np.ndarray, fraction: float,
                 rng: np.random.Generator) -> np.ndarray:
    """A mask keeping `fraction` of each source's groups (whole groups, drawn by `rng`)."""
    keep = np.zeros(len(groups), bool)
    for name in np.unique(src):
        gs = np.unique(groups[src == name])
        chosen = rng.choice(gs, size=max(1, round(fraction * len(gs))), replace=False)
        keep |= (src == name) & np.isin(groups, chosen)
    return keep


def main() -> None:
    ap = screen_arguments(__doc__)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--l2", type=float, default=1000.0)
    ap.add_argument("--family-weight", type=float, default=0.5)
    ap.add_argument("--fractions", default="0.25,0.5,0.75,1")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    ds, plan, y, src, fold, fam = fold_arrays(args.data, args.folds)
    clusters = np.array(groups_of(ds, [s.path for s in plan.samples], clusters=True))
    t = time.perf_counter()
    model, cfg = build_model("mobilenetv2", input_size=args.size, weights=args.weights)
    pre = PreprocessConfig.from_dict(preprocess_config("mobilenetv2", cfg))
    feats = np.concatenate([pooled_features(model, x)
                            for x in loaded_chunks(plan.samples, pre)])
    print(f"features {feats.shape} in {time.perf_counter() - t:.0f}s", flush=True)
    names = list(ds.source_names)
    results = []
    print("\n| fraction of training groups | " + " | ".join(
        f"{n} train images | {n} AUC" for n in names) + " | mean of sources |")
    print("|" + "---|" * (2 + 2 * len(names)))
    for fraction in (float(f) for f in args.fractions.split(",")):
        repeats = 1 if fraction >= 1 else args.repeats
        per: dict[str, list[float]] = {n: [] for n in [*names, "mean_of_sources"]}
        sizes: dict[str, list[int]] = {n: [] for n in names}
        for r in range(repeats):
            rng = np.random.default_rng(1000 * r + 7)
            for k in range(args.folds):
                tr = (fold != k) & group_subset(clusters, src, fraction, rng)
                te = fold == k
                w = source_balanced_weights(y[tr], src[tr], 1.0, families=fam[tr],
                                            family_weight=args.family_weight)
                s = fit_logistic(feats[tr], y[tr], w, args.l2).logits(feats[te])
                aucs = {n: family_auc(y[te][src[te] == n], s[src[te] == n],
                                      fam[te][src[te] == n]) for n in names}
                for n in names:
                    per[n].append(aucs[n])
                    sizes[n].append(int((tr & (src == n)).sum()))
                per["mean_of_sources"].append(float(np.mean(list(aucs.values()))))
        row = {"fraction": fraction, "repeats": repeats,
               "auc": {n: float(np.mean(v)) for n, v in per.items()},
               "train_images": {n: float(np.mean(v)) for n, v in sizes.items()}}
        results.append(row)
        print(f"| {fraction:g} | " + " | ".join(
            f"{row['train_images'][n]:.0f} | {row['auc'][n]:.4f}" for n in names)
            + f" | {row['auc']['mean_of_sources']:.4f} |", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
