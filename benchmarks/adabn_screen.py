"""Screen BatchNorm re-estimation on radiographs (AdaBN) with the frozen linear probe.

MobileNetV2's BatchNorm layers normalise with ImageNet photo statistics; radiographs are
grey, low in texture and windowed differently by every hospital. Re-estimating those
statistics on training radiographs (no labels, no gradient) changes what the frozen
backbone hands the probe. This screen measures whether it helps, the same way
`select_probe_cv.py` screens sizes and penalties:

    python benchmarks/adabn_screen.py --data ../shared/data/fracture-xray \
        --data ../shared/data/fracatlas --weights ../shared/weights/mobilenet_v2_1.0_224_no_top.h5

- in-distribution: grouped k-fold CV over the pooled train+val images; in each fold the
  statistics come from that fold's training images only;
- unseen site: statistics and probe from one source's images, scored on the other's.

Prints the family-weighted AUC of ImageNet statistics against re-estimated ones. Test is
never touched.
"""

from __future__ import annotations

import json
import time

import numpy as np
from select_probe_cv import fold_arrays, loaded_chunks, probe_fold_scores, screen_arguments

from edge_toolkit.crossval import summarize_folds
from edge_toolkit.metrics import family_auc
from edge_toolkit.multisource import source_balanced_weights
from edge_toolkit.preprocess import PreprocessConfig
from edge_toolkit.train.batchnorm import reestimate_batchnorm
from edge_toolkit.train.models import build_model, preprocess_config
from edge_toolkit.train.probe import fit_logistic, pooled_features


def main() -> None:
    ap = screen_arguments(__doc__)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--l2", type=float, default=1000.0)
    ap.add_argument("--stat-images", type=int, default=1024,
                    help="Training images the statistics are averaged over.")
    args = ap.parse_args()
    ds, plan, y, src, fold, fam = fold_arrays(args.data, args.folds)
    model, cfg = build_model("mobilenetv2", input_size=args.size, weights=args.weights)
    pre = PreprocessConfig.from_dict(preprocess_config("mobilenetv2", cfg))
    t = time.perf_counter()
    x = np.concatenate(list(loaded_chunks(plan.samples, pre)))
    print(f"{len(x)} images loaded in {time.perf_counter() - t:.0f}s", flush=True)
    imagenet = model.get_weights()
    rng = np.random.default_rng(0)

    def features_after_stats(pool: np.ndarray) -> np.ndarray:
        """Features of every image with statistics re-estimated on images `pool`."""
        t0 = time.perf_counter()
        model.set_weights(imagenet)
        pick = rng.choice(pool, min(args.stat_images, len(pool)), replace=False)
        # batches shuffled once more: the draw the documented screen made
        reestimate_batchnorm(model, x, indices=pick[np.random.default_rng(0).permutation(
            len(pick))])
        out = pooled_features(model, x)
        print(f"  statistics from {len(pick)} images, features in "
              f"{time.perf_counter() - t0:.0f}s", flush=True)
        return out

    base = pooled_features(model, x)
    adapted = [features_after_stats(np.flatnonzero(fold != k)) for k in range(args.folds)]
    names = ds.source_names
    rows = {"ImageNet statistics": probe_fold_scores([base] * args.folds, y, src, fam, fold,
                                                     args.l2, names),
            "re-estimated on the training folds": probe_fold_scores(adapted, y, src, fam, fold,
                                                                    args.l2, names)}
    cols = [*names, "mean_of_sources"]
    print(f"\nsize {args.size}, L2 {args.l2:g}, {args.folds}-fold grouped CV (family-weighted "
          "AUC, mean ± sd over folds)\n")
    print("| BatchNorm statistics | " + " | ".join(cols) + " | mean, paired difference |")
    print("|" + "---|" * (len(cols) + 2))
    ref = np.array([s["mean_of_sources"] for s in rows["ImageNet statistics"]])
    for label, scores in rows.items():
        summary = summarize_folds(scores)
        diff = np.array([s["mean_of_sources"] for s in scores]) - ref
        print(f"| {label} | " + " | ".join(f"{summary[c]['mean']:.3f} ± {summary[c]['sd']:.3f}"
                                           for c in cols)
              + f" | {diff.mean():+.3f} (folds {', '.join(f'{d:+.3f}' for d in diff)}) |")
    results = {label: summarize_folds(scores) for label, scores in rows.items()}
    results["unseen site"] = {}
    print("\nunseen site (statistics and probe from the other source only):")
    for name in names:
        tr, te = src != name, src == name
        w = source_balanced_weights(y[tr], src[tr], 1.0)
        feats = features_after_stats(np.flatnonzero(tr))
        for label, f in (("ImageNet", base), ("re-estimated", feats)):
            s = fit_logistic(f[tr], y[tr], w, args.l2).logits(f[te])
            score = family_auc(y[te], s, fam[te])
            results["unseen site"][f"{name}, {label} statistics"] = score
            print(f"  -> {name}, {label} statistics: {score:.3f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
