"""Grouped, stratified k-fold cross-validation folds over pooled train+val.

One small validation split chooses badly on data like this (a few hundred source families:
val and test AUCs of one model differed by 0.2). Settings are compared by their mean and
spread over k folds instead; images of one group (a source family, a patient block) always
share a fold so no fold is scored on near-copies of its training images, and each fold gets a
similar share of every (source, class) stratum. No TensorFlow.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_toolkit.data import Dataset, Sample
from edge_toolkit.multisource import sample_groups

POOLED_SPLITS = ("train", "val")


def assign_folds(labels: Sequence[int], groups: Sequence[str], strata: Sequence[str],
                 k: int = 5, seed: int = 0) -> list[int]:
    """A fold index per item: every group in one fold; groups dealt largest first, within
    each stratum (a group's majority label and its stratum), to the fold holding the fewest
    items of that stratum, so folds stay balanced in size and class mix."""
    if k < 2:
        raise ValueError("cross-validation needs at least 2 folds")
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    if len(members) < k:
        raise ValueError(f"only {len(members)} groups: too few for {k} folds")
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for g, idx in members.items():
        majority = Counter(labels[i] for i in idx).most_common(1)[0][0]
        by_stratum[f"{strata[idx[0]]}|{majority}"].append(g)
    rng = random.Random(seed)
    fold_of = [0] * len(labels)
    for stratum in sorted(by_stratum):
        gs = sorted(by_stratum[stratum])
        rng.shuffle(gs)
        gs.sort(key=lambda g: -len(members[g]))  # stable: shuffled order breaks size ties
        load = [0] * k
        for g in gs:
            f = min(range(k), key=lambda j: (load[j], rng.random()))
            load[f] += len(members[g])
            for i in members[g]:
                fold_of[i] = f
    return fold_of


@dataclass
class Folds:
    """The pooled samples and the fold of each."""

    samples: list[Sample]
    fold: list[int]
    k: int

    def split(self, f: int) -> tuple[list[Sample], list[Sample]]:
        """(train, held-out) samples of fold `f`, held-out ones relabelled `val`."""
        from dataclasses import replace

        train = [replace(s, split="train") for s, j in zip(self.samples, self.fold) if j != f]
        held = [replace(s, split="val") for s, j in zip(self.samples, self.fold) if j == f]
        return train, held


def make_folds(ds: Dataset, k: int = 5, seed: int = 0) -> Folds:
    """Folds over the dataset's pooled train and val images, grouped and stratified by
    source and class; the test split stays out of it."""
    groups = sample_groups(ds)
    pooled = [(s, g) for s, g in zip(ds.samples, groups) if s.split in POOLED_SPLITS]
    samples = [s for s, _ in pooled]
    fold = assign_folds([s.label for s in samples], [g for _, g in pooled],
                        [s.source for s in samples], k, seed)
    return Folds(samples, fold, k)


def summarize_folds(scores: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """{metric: {mean, sd, n}} over the folds' score dicts (NaNs ignored)."""
    keys = sorted({k for s in scores for k in s})
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        vals = np.array([s[key] for s in scores if key in s], dtype=np.float64)
        vals = vals[~np.isnan(vals)]
        out[key] = {"mean": float(vals.mean()) if len(vals) else float("nan"),
                    "sd": float(vals.std(ddof=1)) if len(vals) > 1 else float("nan"),
                    "n": int(len(vals))}
    return out
