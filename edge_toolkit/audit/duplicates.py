"""Exact and near-duplicate groups of a scanned dataset, as per-file group ids.

Exact: same sha256 of the bytes, among files that could be read (two empty or identically
damaged files are not one image, and must not count as a copy across splits). Near: connected
components of verified signature matches between distinct contents (see `hashing`), so a
family of rotated copies is one group even where two members are too different to match
directly. Both are computed once and shared by the leakage summary, the report and re-splitting.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from edge_toolkit.audit.groups import DisjointSet
from edge_toolkit.audit.hashing import (
    NEAR_THRESHOLD,
    best_correlation,
    matches,
    near_duplicate_pairs,
)
from edge_toolkit.audit.scan import Record, Scan
from edge_toolkit.data import LABELS, group_key, has_family_mark


@dataclass
class Duplicates:
    """Per-record group ids: `exact[i]` (None when unhashed) and `group[i]` (exact + near)."""

    exact: list[int | None]
    group: list[int]
    near_checked: bool
    threshold: float
    near_pairs: int  # verified matching pairs between distinct contents (not all: see hashing)
    seconds: float

    def members(self, which: str = "group") -> dict[int, list[int]]:
        """Group id -> record indices, for groups of two or more files."""
        out: dict[int, list[int]] = defaultdict(list)
        for i, g in enumerate(self.exact if which == "exact" else self.group):
            if g is not None:
                out[g].append(i)
        return {g: m for g, m in out.items() if len(m) > 1}


def distinct_decoded(records: list[Record]) -> list[int]:
    """Index of the first record of every distinct, decodable content."""
    seen: set[str] = set()
    out = []
    for i, r in enumerate(records):
        if r.readable and r.sha256 is not None and r.sha256 not in seen:
            seen.add(r.sha256)
            out.append(i)
    return out


def find_duplicates(sc: Scan, near: bool = True, threshold: float = NEAR_THRESHOLD,
                    indices: list[int] | None = None) -> Duplicates:
    """Group the records (or only `indices` of them; others get their own singleton group)."""
    t0 = time.perf_counter()
    records = sc.records
    subset = list(range(len(records))) if indices is None else list(indices)
    chosen = set(subset)
    dsu = DisjointSet(len(records))
    keys = [r.sha256 if i in chosen and r.readable else None for i, r in enumerate(records)]
    dsu.union_by_key(keys)
    exact_roots = dsu.roots()
    exact: list[int | None] = [int(exact_roots[i]) if k else None for i, k in enumerate(keys)]
    n_pairs = 0
    near = near and sc.signatures is not None
    if near:
        assert sc.signatures is not None
        reps = [subset[k] for k in distinct_decoded([records[i] for i in subset])]
        local = DisjointSet(len(reps))
        ii, _, _ = near_duplicate_pairs(sc.signatures[reps], threshold, dsu=local)
        n_pairs = len(ii)
        if sc.crop_signatures is not None and sc.nonsquare is not None:
            odd = sc.nonsquare[reps]
            if odd.any():  # central squares: catches in-place rotations of non-square images
                ii, _, _ = near_duplicate_pairs(sc.crop_signatures[reps], threshold, dsu=local,
                                                involve=odd)
                n_pairs += len(ii)
        for k, r in enumerate(local.roots()):
            if r != k:
                dsu.union(reps[k], reps[int(r)])
    groups = dsu.roots()
    return Duplicates(exact, [int(g) for g in groups], near, threshold, n_pairs,
                      time.perf_counter() - t0)


def cross_split_groups(records: list[Record], members: dict[int, list[int]]
                       ) -> dict[int, list[int]]:
    return {g: m for g, m in members.items() if len({records[i].split for i in m}) > 1}


def label_conflicts(records: list[Record], members: dict[int, list[int]]
                    ) -> dict[int, list[int]]:
    return {g: m for g, m in members.items() if len({records[i].label for i in m}) > 1}


_PAIR_BATCH = 4096  # signature pairs compared at once: about 40 MB, whatever the group size


def cross_label_pairs(sc: Scan, dups: Duplicates) -> list[tuple[int, int, float]]:
    """(i, j, correlation) for distinct contents under different labels that match each
    other directly, within one near group; i, j are each content's first record.

    A group is a chain (A~B, B~C) and its ends may be different radiographs, so only a
    direct match says "one image under two labels". Contents already under both labels
    are exact conflicts and are left out here.
    """
    if not dups.near_checked or sc.signatures is None:
        return []
    recs = sc.records
    ii: list[int] = []
    jj: list[int] = []
    for members in dups.members().values():
        labels: dict[str, set[int]] = defaultdict(set)
        first: dict[str, int] = {}
        for i in members:
            if recs[i].readable and recs[i].sha256:
                labels[recs[i].sha256].add(recs[i].label)
                first.setdefault(recs[i].sha256, i)
        single = sorted((first[s], next(iter(lab))) for s, lab in labels.items()
                        if len(lab) == 1)
        for a, (i, la) in enumerate(single):
            for j, lb in single[a + 1:]:
                if la != lb:
                    ii.append(i)
                    jj.append(j)
    out: list[tuple[int, int, float]] = []
    for s in range(0, len(ii), _PAIR_BATCH):  # a large mixed group has ~n^2/4 pairs
        ci, cj = ii[s:s + _PAIR_BATCH], jj[s:s + _PAIR_BATCH]
        corr = best_correlation(sc.signatures[ci], sc.signatures[cj])
        if sc.crop_signatures is not None and sc.nonsquare is not None:
            odd = sc.nonsquare[ci] | sc.nonsquare[cj]
            crop = best_correlation(sc.crop_signatures[ci], sc.crop_signatures[cj])
            corr = np.where(odd, np.maximum(corr, crop), corr)
        hit = matches(corr, dups.threshold)
        out += [(i, j, float(c)) for i, j, c, h in zip(ci, cj, corr, hit) if h]
    return out



def name_families(records: list[Record]) -> list[str | None]:
    """Per record, its file-name family (`data.group_key`, per label) where the family has a
    `-rotated` member, else None: a bare `12.png` in two splits is two unrelated numbers as
    often as one image (its content hash decides that), while `12-rotated1.jpg` names its
    source outright."""
    keys = [f"{LABELS[r.label]}/{group_key(r.path).split('/', 1)[1]}" for r in records]
    rotated = {k for k, r in zip(keys, records) if has_family_mark(r.path)}
    return [k if k in rotated else None for k in keys]


def content_families(sc: Scan, near: bool = True, threshold: float = NEAR_THRESHOLD,
                     indices: list[int] | None = None) -> list[int]:
    """Family id per record: connected components of exact copies, verified near copies and
    file-name families. What `--resplit` keeps whole and the val carve-out
    (`data.carve_validation`) never splits. Records outside `indices` stay alone."""
    dups = find_duplicates(sc, near=near, threshold=threshold, indices=indices)
    chosen = set(range(len(sc.records)) if indices is None else indices)
    dsu = DisjointSet(len(sc.records))
    dsu.union_by_key([g if i in chosen else None for i, g in enumerate(dups.group)])
    dsu.union_by_key([f if i in chosen else None
                      for i, f in enumerate(name_families(sc.records))])
    return [int(g) for g in dsu.roots()]


def sample_families(samples: list, near: bool = True, threshold: float = NEAR_THRESHOLD,
                    workers: int | None = None) -> list[int]:
    """`content_families` of a caller's own samples (objects with .path, .label, .split):
    each file is read (and, with `near`, decoded) once."""
    from pathlib import Path

    from edge_toolkit.audit.scan import scan

    sc = scan(Path("/"), decode=near, workers=workers, samples=samples)
    return content_families(sc, near=near, threshold=threshold)
