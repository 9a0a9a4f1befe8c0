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

Where a source's manifest.csv (in the `--data` folders) has a `group` column, that source's
AUC is family-weighted (each radiograph's rotated copies count once), as the trainer now
selects. `--within region` adds, for sources whose manifest has that column, the AUC inside
each of its values (at least 5 images of each class) and their mean: whether a recipe tells
fractures apart within a body region, not only which regions are often fractured:

    python benchmarks/compare_recipes.py runs/real/cv2/s256 runs/real/cv2/s256-region \
        --within region
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from edge_toolkit.metrics import family_auc, roc_auc
from edge_toolkit.multisource import manifest_values

DATA = ("../shared/data/fracture-xray", "../shared/data/fracatlas")


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


def manifest_lookup(roots: list[str], column: str) -> dict[str, str]:
    """resolved image path (as text) -> its value of `column` in its dataset's manifest.csv."""
    return {str(path): value for root in roots
            for path, value in manifest_values(Path(root), (column,)).items()}


def source_auc(y: np.ndarray, p: np.ndarray, fam: np.ndarray) -> float:
    """Family-weighted where images have families ("" = its own family), else per image."""
    if (fam == "").all():
        return roc_auc(y, p)
    own = np.array([f or f"img{i}" for i, f in enumerate(fam)])
    return family_auc(y, p, own)


def mean_of_sources(y: np.ndarray, p: np.ndarray, src: np.ndarray,
                    fam: np.ndarray | None = None) -> float:
    fam = fam if fam is not None else np.full(len(y), "")
    return float(np.mean([source_auc(y[src == s], p[src == s], fam[src == s])
                          for s in np.unique(src)]))


def within_mean(y: np.ndarray, p: np.ndarray, stratum: np.ndarray,
                values: list[str]) -> float:
    """Mean AUC inside each of the strata `values` (fixed, so every resample averages the
    same strata)."""
    aucs = [roc_auc(y[stratum == v], p[stratum == v]) for v in values]
    return float(np.nanmean(aucs)) if aucs else float("nan")


ENSEMBLE = "ensemble (mean probability of the recipes)"


def cluster_boots(paths: list[str], src: np.ndarray, y: np.ndarray, fam: np.ndarray,
                  roots: list[str], n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`n` paired resamples of whole clusters (a `group` of copies or a patient `block`,
    else the image), within each source those with a fracture and those without apart;
    each as (image indices, family keys), a family drawn twice keyed apart so it counts
    twice."""
    cluster_of = manifest_lookup(roots, "block") | manifest_lookup(roots, "group")
    keys = np.array([f"{s}:{cluster_of.get(str(Path(k).resolve()), k)}"
                     for k, s in zip(paths, src)])
    uniq, inv = np.unique(keys, return_inverse=True)
    members = [[] for _ in uniq]
    for i, c in enumerate(inv.reshape(-1)):
        members[c].append(i)
    members_a = [np.array(m) for m in members]
    has_pos = np.array([y[m].any() for m in members_a])
    src_of = np.array([src[m[0]] for m in members_a])
    strata = []
    for s in np.unique(src):
        pos, neg = np.flatnonzero((src_of == s) & has_pos), np.flatnonzero((src_of == s) & ~has_pos)
        strata += [pos, neg] if len(neg) else [np.concatenate([pos, neg])]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        draw = np.concatenate([st[rng.integers(0, len(st), len(st))] for st in strata if len(st)])
        idx = np.concatenate([members_a[c] for c in draw])
        copy = np.concatenate([np.full(len(members_a[c]), j) for j, c in enumerate(draw)])
        fk = np.array([f"{f}#{j}" if f else "" for f, j in zip(fam[idx], copy)], dtype=object)
        out.append((idx, fk))
    return out


def compare(folders: list[Path], split: str = "val", n: int = 1000, seed: int = 0,
            ensemble: bool = False, data: list[str] | None = None,
            within: str | None = None) -> dict:
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
    roots = list(data or DATA)
    family_of = manifest_lookup(roots, "group")
    fam = np.array([family_of.get(str(Path(k).resolve()), "") for k in paths], dtype=object)
    if not any(str(Path(k).resolve()) in family_of for k in paths):
        print("WARNING: no image matched a manifest's `group` rows (run from the folder the "
              "predictions were made in, or give --data): every image is its own family")
    boots = cluster_boots(paths, src, y, fam, roots, n, seed)
    groups: dict = {s: src == s for s in np.unique(src)} | {"mean_of_sources": None}
    if within:
        value_of = manifest_lookup(roots, within)
        stratum = np.array([value_of.get(str(Path(k).resolve()), "") for k in paths])
        values = [v for v in np.unique(stratum).tolist() if v and min(
            int((y[stratum == v] == c).sum()) for c in (0, 1)) >= 5]
        for v in values:
            groups[f"{within} {v}"] = stratum == v
        groups[f"within-{within} mean"] = ("within", stratum, values)
    result: dict = {"images": len(paths), "split": split, "recipes": {}}
    for folder, p in zip(names, ps):
        rows = {}
        for name, mask in groups.items():
            def score(draw: tuple[np.ndarray, np.ndarray], q: np.ndarray,
                      mask=mask) -> float:
                idx, fk = draw
                if mask is None:
                    return mean_of_sources(y[idx], q[idx], src[idx], fk)
                if isinstance(mask, tuple):
                    return within_mean(y[idx], q[idx], mask[1][idx], mask[2])
                keep = mask[idx]
                return source_auc(y[idx][keep], q[idx][keep], fk[keep])

            everything = (np.arange(len(y)), fam)
            auc, ref = score(everything, p), score(everything, ps[0])
            deltas = np.array([score(b, p) - score(b, ps[0]) for b in boots])
            lo, hi = (np.nanquantile(deltas, [0.025, 0.975]) if np.isfinite(deltas).any()
                      else (float("nan"), float("nan")))  # draws without both classes: out
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
    ap.add_argument("--data", action="append",
                    help=f"dataset folders whose manifests name families (default {DATA})")
    ap.add_argument("--within", help="a manifest column: also score inside each value")
    args = ap.parse_args()
    res = compare(args.folders, args.split, args.bootstrap, ensemble=args.ensemble,
                  data=args.data, within=args.within)
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
