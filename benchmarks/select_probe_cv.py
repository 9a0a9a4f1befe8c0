"""Cross-validate the MobileNetV2 linear-probe recipe on frozen features, in minutes.

Grouped 5-fold cross-validation over the pooled train+val images of several sources: input
size x L2 penalty (x source balance x grey-level normalisation x letterbox or stretch x
family weight, each image of a family of copies weighing 1/size^p in the fit, as `train
--family-weight`). AUCs are family-weighted (each radiograph counts once), as training's.

    python benchmarks/select_probe_cv.py --data ../shared/data/fracture-xray \
        --data ../shared/data/fracatlas --weights ../shared/weights/mobilenet_v2_1.0_224_no_top.h5

Frozen-backbone features are computed once per input size (the expensive part: about a
minute per size on 2 CPU cores), then every setting is fitted and scored on the same folds
with the toolkit's own code (`edge_toolkit.crossval`, `edge_toolkit.train.probe`). The test
split is never touched. Prints a Markdown table of each source's AUC, mean ± sd over folds.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge_toolkit.crossval import make_folds, summarize_folds
from edge_toolkit.data import load_samples
from edge_toolkit.metrics import family_auc
from edge_toolkit.multisource import discover_sources, groups_of, source_balanced_weights
from edge_toolkit.preprocess import PreprocessConfig
from edge_toolkit.train.models import build_model, preprocess_config
from edge_toolkit.train.probe import fit_logistic, pooled_features

CHUNK = 400  # images preprocessed at once


def screen_arguments(doc: str | None) -> argparse.ArgumentParser:
    """The options every frozen-feature screen shares: its sources, the backbone's weights,
    the number of grouped folds, and where to write the JSON."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", type=Path, help="Also write the results as JSON here.")
    return ap


def main() -> None:
    ap = screen_arguments(__doc__)
    ap.add_argument("--sizes", default="160,224,256")
    ap.add_argument("--l2", default="100,300,1000,3000")
    ap.add_argument("--balance", default="1.0")
    ap.add_argument("--intensity", default="none",
                    help="Comma-separated grey-level normalisations (preprocess.INTENSITY).")
    ap.add_argument("--fit", default="pad",
                    help="Comma-separated ways to fit the picture into the square input: "
                         "pad (letterbox) and/or stretch.")
    ap.add_argument("--family-weight", default="0",
                    help="Comma-separated exponents p: each image weighs 1/(its family of "
                         "copies' size)^p in the probe's fit, as `train --family-weight`.")
    ap.add_argument("--unseen", action="store_true",
                    help="Also fit on all but one source and score the one left out (all its "
                         "train+val images): a hospital the probe never saw.")
    args = ap.parse_args()
    settings = [(float(b), float(p), float(v)) for b in args.balance.split(",")
                for p in args.family_weight.split(",") for v in args.l2.split(",")]
    if not all(0 <= p <= 1 for _, p, _ in settings):
        ap.error("--family-weight: exponents between 0 (per image) and 1 (per radiograph)")
    ds, plan, y, src, fold, fam = fold_arrays(args.data, args.folds)
    results = []
    for size, intensity, fit in [(int(s), i, f) for s in args.sizes.split(",")
                                 for i in args.intensity.split(",")
                                 for f in args.fit.split(",")]:
        t = time.perf_counter()
        model, cfg = build_model("mobilenetv2", input_size=size, weights=args.weights)
        pre = PreprocessConfig.from_dict(preprocess_config("mobilenetv2", cfg,
                                                           intensity=intensity) | {"fit": fit})
        feats = np.concatenate([pooled_features(model, x)
                                for x in loaded_chunks(plan.samples, pre)])
        print(f"size {size}, intensity {intensity}, fit {fit}: features {feats.shape} in "
              f"{time.perf_counter() - t:.0f}s", flush=True)
        for balance, famw, l2 in settings:
            scores = probe_fold_scores([feats] * args.folds, y, src, fam, fold, l2,
                                       ds.source_names, balance, famw)
            results.append({"size": size, "intensity": intensity, "fit": fit, "l2": l2,
                            "balance": balance, "family_weight": famw,
                            "summary": summarize_folds(scores), "folds": scores})
        if args.unseen:
            for balance, famw, l2 in settings:
                print(f"unseen site, size {size}, intensity {intensity}, fit {fit}, L2 {l2:g}, "
                      f"balance {balance:g}, family weight {famw:g}: "
                      + unseen_site_aucs(feats, y, src, fam, l2, balance, famw), flush=True)
    names = [*ds.source_names, "mean_of_sources"]
    print("\n| size | intensity | fit | L2 | source balance | family weight | "
          + " | ".join(names) + " |")
    print("|" + "---|" * (6 + len(names)))
    for r in results:
        cells = [f"{r['summary'][n]['mean']:.3f} ± {r['summary'][n]['sd']:.3f}" for n in names]
        print(f"| {r['size']} | {r['intensity']} | {r['fit']} | {r['l2']:g} | {r['balance']:g} | "
              f"{r['family_weight']:g} | " + " | ".join(cells) + " |")
    best = max(results, key=lambda r: r["summary"]["mean_of_sources"]["mean"])
    se = best["summary"]["mean_of_sources"]["sd"] / np.sqrt(args.folds)
    rest = ("intensity", "fit", "balance", "family_weight")  # held at the best's values
    within = [r for r in results
              if all(r[k] == best[k] for k in rest)
              and r["summary"]["mean_of_sources"]["mean"] >= best["summary"]["mean_of_sources"]
              ["mean"] - se]
    pick = min(within, key=lambda r: (r["size"], -r["l2"]))
    held = ", ".join(f"{k} {best[k]}" for k in rest)
    print(f"\nbest: size {best['size']}, L2 {best['l2']:g} ({held}); one-standard-error rule "
          f"over size and L2 at those settings (smallest input, then strongest penalty "
          f"within {se:.3f} of the best): size {pick['size']}, L2 {pick['l2']:g}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def loaded_chunks(samples: list, pre: PreprocessConfig) -> Iterator[np.ndarray]:
    """The samples' preprocessed images, CHUNK at a time (bounded memory). A file that does
    not load stops the screen: skipping it would shift every label after it."""
    for start in range(0, len(samples), CHUNK):
        loaded = load_samples(samples[start:start + CHUNK], pre)
        if loaded.skipped:
            raise SystemExit(f"{len(loaded.skipped)} images could not be read, e.g. "
                             f"{loaded.skipped[0]}")
        yield loaded.x


def fold_arrays(data: list[str], folds: int) -> tuple[Any, Any, np.ndarray, np.ndarray,
                                                      np.ndarray, np.ndarray]:
    """The sources, the grouped fold plan over their pooled train+val images, and each
    image's label, source, fold and family, as arrays."""
    ds = discover_sources(data)
    plan = make_folds(ds, folds, seed=0)
    y = np.array([s.label for s in plan.samples])
    src = np.array([s.source for s in plan.samples])
    fam = np.array(groups_of(ds, [s.path for s in plan.samples]))
    return ds, plan, y, src, np.array(plan.fold), fam


def probe_fold_scores(feats: list[np.ndarray], y: np.ndarray, src: np.ndarray,
                      fam: np.ndarray, fold: np.ndarray, l2: float, names: list[str],
                      balance: float = 1.0, family_weight: float = 0.0
                      ) -> list[dict[str, float]]:
    """Each fold's family-weighted AUC per source (and their mean) of a probe fitted on the
    other folds (copies weighted 1/family size^`family_weight`, sizes counted in those
    folds, as training counts them in its train split); `feats[k]` are the features fold k
    is fitted and scored with."""
    scores = []
    for k in range(len(feats)):
        tr, te = fold != k, fold == k
        w = source_balanced_weights(y[tr], src[tr], balance, families=fam[tr],
                                    family_weight=family_weight)
        s = fit_logistic(feats[k][tr], y[tr], w, l2).logits(feats[k][te])
        per = {n: family_auc(y[te][src[te] == n], s[src[te] == n], fam[te][src[te] == n])
               for n in names}
        scores.append(per | {"mean_of_sources": float(np.mean(list(per.values())))})
    return scores


def unseen_site_aucs(feats: np.ndarray, y: np.ndarray, src: np.ndarray, fam: np.ndarray,
                     l2: float, balance: float = 1.0, family_weight: float = 0.0) -> str:
    """Family-weighted AUC on each source of a probe fitted on the other sources only."""
    cells = []
    for name in sorted(set(src)):
        tr, te = src != name, src == name
        w = source_balanced_weights(y[tr], src[tr], balance, families=fam[tr],
                                    family_weight=family_weight)
        s = fit_logistic(feats[tr], y[tr], w, l2).logits(feats[te])
        cells.append(f"{name} {family_auc(y[te], s, fam[te]):.3f}")
    return ", ".join(cells)


if __name__ == "__main__":
    main()
