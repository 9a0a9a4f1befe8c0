"""Union-find over image indices: duplicate groups are connected components, not pairs.

Rotated copies of one source image are related through chains (A~B, B~C) even where A and C
are too different to match directly, so leakage and re-splitting work on components.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence

import numpy as np


class DisjointSet:
    """Union-find on 0..n-1 with a vectorised `roots()` for batch membership tests."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.intp)

    def find(self, i: int) -> int:
        p = self.parent
        root = int(i)
        while p[root] != root:
            root = int(p[root])
        while p[i] != root:  # path compression
            p[i], i = root, int(p[i])
        return root

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)

    def union_pairs(self, ii: Iterable[int], jj: Iterable[int]) -> None:
        for i, j in zip(ii, jj):
            self.union(int(i), int(j))

    def union_by_key(self, keys: Sequence[Hashable | None]) -> None:
        """Join all indices that share a key (None joins nothing)."""
        first: dict[Hashable, int] = {}
        for i, k in enumerate(keys):
            if k is None:
                continue
            if k in first:
                self.union(first[k], i)
            else:
                first[k] = i

    def roots(self) -> np.ndarray:
        p = self.parent
        while True:
            q = p[p]
            if np.array_equal(q, p):
                break
            p = q
        self.parent = p
        return p.copy()

    def components(self, min_size: int = 1) -> list[list[int]]:
        """Components (sorted member lists, ordered by first member) of at least `min_size`."""
        groups: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(self.roots()):
            groups[int(r)].append(i)
        return sorted((g for g in groups.values() if len(g) >= min_size), key=lambda g: g[0])
