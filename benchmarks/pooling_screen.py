"""Screen the pooling in front of MobileNetV2's head: average, max or GeM, on frozen features.

The head reads the global average of the last feature map (8x8x1280 at 256 px). A fracture
line covers a few of those cells, so averaging dilutes it; max pooling and generalised-mean
pooling (GeM, the p-th root of the mean of p-th powers) weigh the strongest local responses
more. This fits the closed-form linear probe on each pooling of the same frozen feature maps,
on the grouped folds of `select_probe_cv.py` (same code, same folds, test never touched),
and prints each source's family-weighted AUC, mean ± sd over folds, then the unseen-site read
(fit on one source, score the other).

`--taps` adds feature sets that read inside the backbone too: the last map pooled as above,
concatenated with the global average of one middle block's output (e.g. block_12_add), named
`POOL+TAP` in the table.

    python benchmarks/pooling_screen.py --data ../shared/data/fracture-xray \
        --data ../shared/data/fracatlas --weights ../shared/weights/mobilenet_v2_1.0_224_no_top.h5
"""

from __future__ import annotations

import json
import time

import numpy as np
from select_probe_cv import (
    fold_arrays,
    loaded_chunks,
    probe_fold_scores,
    screen_arguments,
    unseen_site_aucs,
)

from edge_toolkit.crossval import summarize_folds
from edge_toolkit.preprocess import PreprocessConfig
from edge_toolkit.train.models import build_model, preprocess_config
from edge_toolkit.train.probe import POOL_LAYER


def pool_maps(maps: np.ndarray, how: str) -> np.ndarray:
    """(n, h, w, c) feature maps -> (n, c): 'avg', 'max' or 'gemP' (e.g. gem3; the maps are
    ReLU6 outputs, so non-negative)."""
    flat = maps.reshape(len(maps), -1, maps.shape[-1]).astype(np.float64)
    if how == "avg":
        return flat.mean(axis=1)
    if how == "max":
        return flat.max(axis=1)
    if how.startswith("gem") and how[3:].replace(".", "", 1).isdigit():
        p = float(how[3:])
        return np.power(np.power(np.clip(flat, 1e-6, None), p).mean(axis=1), 1.0 / p)
    raise ValueError(f"pooling {how!r}: avg, max or gemP with a power P, e.g. gem3")


def with_taps(pooled: dict[str, np.ndarray], taps: dict[str, np.ndarray]
              ) -> dict[str, np.ndarray]:
    """Each pooling's features alone, then with one tap's averaged features beside them
    (`POOL+TAP`), one tap at a time; rows stay the same images."""
    out = dict(pooled)
    for p, x in pooled.items():
        for name, extra in taps.items():
            if len(extra) != len(x):
                raise ValueError(f"tap {name}: {len(extra)} rows for {len(x)} images")
            out[f"{p}+{name}"] = np.concatenate([x, extra], axis=1)
    return out


def main() -> None:
    ap = screen_arguments(__doc__)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--pool", default="avg,max,gem3")
    ap.add_argument("--l2", default="300,1000,3000")
    ap.add_argument("--family-weight", type=float, default=0.5)
    ap.add_argument("--taps", default="",
                    help="Comma-separated backbone layers whose averaged output is concatenated "
                         "with each pooling's features, one tap at a time.")
    args = ap.parse_args()
    from edge_toolkit.train.tfsetup import keras

    pools = args.pool.split(",")
    ds, plan, y, src, fold, fam = fold_arrays(args.data, args.folds)
    t = time.perf_counter()
    model, cfg = build_model("mobilenetv2", input_size=args.size, weights=args.weights)
    pre = PreprocessConfig.from_dict(preprocess_config("mobilenetv2", cfg))
    taps = [name for name in args.taps.split(",") if name]
    maps_model = keras.Model(model.input, [model.get_layer(POOL_LAYER).input,
                                           *(model.get_layer(name).output for name in taps)])
    feats: dict[str, list[np.ndarray]] = {p: [] for p in pools}
    tap_feats: dict[str, list[np.ndarray]] = {t: [] for t in taps}
    for x in loaded_chunks(plan.samples, pre):
        batches = [maps_model.predict_on_batch(x[i:i + 64]) for i in range(0, len(x), 64)]
        if not taps:
            batches = [[b] for b in batches]
        maps, *tapped = (np.concatenate([np.asarray(b[k]) for b in batches])
                         for k in range(1 + len(taps)))
        for p in pools:
            feats[p].append(pool_maps(maps, p))
        for name, m in zip(taps, tapped):
            tap_feats[name].append(pool_maps(m, "avg"))
    pooled = with_taps({p: np.concatenate(v) for p, v in feats.items()},
                       {name: np.concatenate(v) for name, v in tap_feats.items()})
    pools = list(pooled)
    print(f"size {args.size}: feature maps {maps.shape[1:]}, pooled {len(y)} images in "
          f"{time.perf_counter() - t:.0f}s", flush=True)
    names = [*ds.source_names, "mean_of_sources"]
    results = []
    print("\n| pooling | L2 | " + " | ".join(names) + " |")
    print("|" + "---|" * (2 + len(names)))
    for p in pools:
        for l2 in (float(v) for v in args.l2.split(",")):
            scores = probe_fold_scores([pooled[p]] * args.folds, y, src, fam, fold, l2,
                                       ds.source_names, 1.0, args.family_weight)
            summary = summarize_folds(scores)
            results.append({"pool": p, "l2": l2, "summary": summary, "folds": scores,
                            "unseen": unseen_site_aucs(pooled[p], y, src, fam, l2, 1.0,
                                                       args.family_weight)})
            print(f"| {p} | {l2:g} | " + " | ".join(
                f"{summary[n]['mean']:.4f} ± {summary[n]['sd']:.3f}" for n in names) + " |",
                flush=True)
    print("\nunseen site (fit on the other source, scored on all of this one's train+val):")
    for r in results:
        print(f"  {r['pool']}, L2 {r['l2']:g}: {r['unseen']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
