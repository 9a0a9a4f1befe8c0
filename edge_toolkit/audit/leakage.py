"""How many val/test images have an exact or near copy in train, and the verdict line.

Also the entry point the trainer calls before training (`quick_leak_check`): a score on a
test split whose images sit in train measures memory, not generalisation, so training warns
loudly before spending an hour on it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edge_toolkit.audit.duplicates import Duplicates, find_duplicates
from edge_toolkit.audit.hashing import NEAR_THRESHOLD
from edge_toolkit.audit.scan import Record, scan

EVAL_SPLITS = ("val", "test")
MAX_EXAMPLES = 5


class SampleLike(Protocol):
    """What `data.Sample` provides: the trainer's own split assignment of each file."""

    path: Path
    label: int
    split: str


@dataclass
class SplitLeak:
    """Leakage of one evaluation split into train."""

    split: str
    files: int
    readable: int | None = None  # files that could be read (None: not counted)
    exact: int = 0  # files whose bytes are also in train
    near_only: int = 0  # files without an exact copy but in a near-duplicate group with train
    examples: list[dict[str, str]] = field(default_factory=list)

    @property
    def leaked(self) -> int:
        return self.exact + self.near_only

    def pct(self, n: int) -> float:
        return 100.0 * n / self.files if self.files else 0.0

    def line(self) -> str:
        near = f"; {self.leaked}/{self.files} ({self.pct(self.leaked):.1f}%) exact or near"
        return (f"{self.split}: {self.exact}/{self.files} ({self.pct(self.exact):.1f}%) have an "
                f"exact copy in train, {self.near_only} more a near copy{near}")

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "readable": self.readable, "exact_in_train": self.exact,
                "exact_in_train_pct": round(self.pct(self.exact), 2),
                "near_only_in_train": self.near_only,
                "exact_or_near_in_train": self.leaked,
                "exact_or_near_in_train_pct": round(self.pct(self.leaked), 2),
                "examples": self.examples}


@dataclass
class LeakSummary:
    """Cross-split copies; `leaked` is True when any val/test file has a copy in train."""

    root: str
    has_train: bool
    splits: dict[str, SplitLeak]
    test_in_val: int  # test files with an exact or near copy in val
    near_checked: bool
    threshold: float
    seconds: float = 0.0
    train_readable: int | None = None  # None: not counted (every train file assumed read)
    partial: list[str] = field(default_factory=list)  # splits with a folder that was not read

    @property
    def leaked(self) -> bool:
        return any(s.leaked for s in self.splits.values())

    def verdict(self) -> str:
        kind = "exact or near" if self.near_checked else "exact"
        unchecked = "" if self.near_checked else " (near copies not checked)"
        if not self.has_train:
            return "VERDICT: NOT CHECKED - no train/ split to compare val/test against."
        if not self.splits:
            return "VERDICT: NOT CHECKED - no val/ or test/ split."
        if self.train_readable == 0:
            return ("VERDICT: NOT CHECKED - no train/ image could be read, so nothing can be "
                    "compared against train.")
        blind = [s for s in self.splits.values() if s.readable == 0]
        if not self.leaked and blind:
            return ("VERDICT: NOT CHECKED - no image could be read in "
                    + ", ".join(f"{s.split}/ ({s.files} files)" for s in blind) + ".")
        if not self.leaked and self.partial:
            return ("VERDICT: NOT CHECKED - a folder of "
                    + ", ".join(f"{s}/" for s in self.partial)
                    + f" could not be read; no {kind} copy in train among the files that were"
                    f"{unchecked}.")
        if not self.leaked:
            extra = (f" (but {self.test_in_val} test images have a copy in val)"
                     if self.test_in_val else "")
            return (f"VERDICT: CLEAN - no val/test image has an {kind} copy in train"
                    f"{extra}{unchecked}.")
        worst = max(self.splits.values(), key=lambda s: s.pct(s.leaked))
        return (f"VERDICT: LEAK - {worst.leaked} of {worst.files} {worst.split} images "
                f"({worst.pct(worst.leaked):.1f}%) have an {kind} copy in train; "
                f"scores on this split are inflated{unchecked}.")

    def warning_lines(self) -> list[str]:
        """Lines for a loud warning (empty when clean): the verdict, each split, what to do."""
        if not self.leaked and not self.test_in_val:
            return []
        lines = ["WARNING: dataset split leakage found in " + self.root, self.verdict()]
        lines += ["  " + s.line() for s in self.splits.values() if s.leaked]
        if self.test_in_val:
            lines.append(f"  test: {self.test_in_val} images have an exact or near copy in val")
        lines.append(f"  Run `edge-toolkit audit {self.root}` for the groups, and "
                     f"`edge-toolkit audit {self.root} --resplit OUT` for a leak-free split.")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"leaked": self.leaked, "verdict": self.verdict(), "near_checked": self.near_checked,
                "near_threshold": self.threshold if self.near_checked else None,
                "has_train": self.has_train, "train_readable": self.train_readable,
                "partly_read_splits": self.partial,
                "test_with_copy_in_val": self.test_in_val,
                "splits": {k: v.to_dict() for k, v in self.splits.items()}}


def compute_leakage(root: str, records: list[Record], dups: Duplicates,
                    partial: Iterable[str] = ()) -> LeakSummary:
    """Count, per val/test split, files whose exact or near group also holds a train file.

    Unreadable files take no part: two empty or identically damaged files are no image
    copied across splits. `partial` names splits not wholly read (no CLEAN verdict then).
    """
    first_in: dict[tuple[str, int], int] = {}  # (split, group) -> first readable record
    sha_in_train: dict[str, int] = {}
    for i, r in enumerate(records):
        if not r.readable:
            continue
        first_in.setdefault((r.split, dups.group[i]), i)
        if r.split == "train" and r.sha256:
            sha_in_train.setdefault(r.sha256, i)
    splits: dict[str, SplitLeak] = {}
    counts: dict[str, int] = defaultdict(int)
    readable: dict[str, int] = defaultdict(int)
    for r in records:
        counts[r.split] += 1
        readable[r.split] += r.readable
    for name in EVAL_SPLITS:
        if counts[name]:
            splits[name] = SplitLeak(name, counts[name], readable[name])
    test_in_val = 0
    for i, r in enumerate(records):
        if r.split not in splits or not r.readable:
            continue
        leak = splits[r.split]
        g = dups.group[i]
        if r.sha256 in sha_in_train:
            leak.exact += 1
            kind, match = "exact", sha_in_train[r.sha256]
        elif ("train", g) in first_in:
            leak.near_only += 1
            kind, match = "near", first_in[("train", g)]
        else:
            kind, match = "", -1
        if kind and len(leak.examples) < MAX_EXAMPLES:
            leak.examples.append({"file": r.rel, "train_copy": records[match].rel, "kind": kind})
        if r.split == "test" and ("val", g) in first_in:
            test_in_val += 1
    has_train = counts["train"] > 0
    return LeakSummary(root, has_train, splits, test_in_val, dups.near_checked, dups.threshold,
                       train_readable=readable["train"], partial=list(partial))


def quick_leak_check(root: str | Path, near: bool = True,
                     samples: Iterable[SampleLike] | None = None, workers: int | None = None,
                     threshold: float = NEAR_THRESHOLD) -> LeakSummary:
    """Leakage of val/test into train for a dataset folder, without the full report.

    `samples` (e.g. `data.discover(root).samples`) checks the trainer's own split, including
    a validation set carved from train; without it the folders decide the split. `near=False`
    compares file hashes only: as fast as reading the files, but blind to re-encoded,
    resized, flipped or rotated copies.
    """
    t0 = time.perf_counter()
    sc = scan(root, decode=near, workers=workers, samples=samples)
    dups = find_duplicates(sc, near=near, threshold=threshold)
    summary = compute_leakage(str(root), sc.records, dups, sc.partial_splits)
    summary.seconds = time.perf_counter() - t0
    return summary
