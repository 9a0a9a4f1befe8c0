"""Write a leak-free split of a dataset: duplicate groups never cross splits.

Groups are connected components of exact copies, verified near copies and file-name families
(`data.group_key`, so `12-rotated1.jpg` stays with `12.jpg`; see `duplicates.name_families`).
Each group goes whole to one split, class-stratified, largest groups first to the split
furthest below its target, ties in a seeded shuffle order, so a run is reproducible. Output
keeps the source layout, plus `resplit_manifest.csv` (new path, split, label, group, sha256,
source path); files are hard links where the filesystem allows (no extra space, same bytes) and
copies otherwise. The source is only read. The manifest is UTF-8; a file name that is not
valid UTF-8 keeps its own bytes there (as in `predictions.csv`: read it back with
`errors="surrogateescape"` and the paths are the files' own names).

Choices: one file per distinct content is written (the first by split train, val, test, then
path): extra exact copies only weight an image twice. Contents found under two labels are left
out (which label is right is for a person to decide); unreadable files are left out.
"""

from __future__ import annotations

import csv
import math
import os
import random
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_toolkit.audit.duplicates import content_families
from edge_toolkit.audit.groups import DisjointSet
from edge_toolkit.audit.hashing import NEAR_THRESHOLD
from edge_toolkit.audit.scan import Record, Scan
from edge_toolkit.data import LABELS, SPLITS, split_name
from edge_toolkit.files import OutputPathError, prepare_output, shown

MANIFEST = "resplit_manifest.csv"


class ResplitError(ValueError):
    """The output folder cannot be used; nothing was written."""


@dataclass
class ResplitResult:
    out: Path
    fractions: dict[str, float]
    seed: int
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    groups: int = 0
    linked: int = 0
    copied: int = 0
    dropped_copies: int = 0
    dropped_conflicts: int = 0
    skipped_unreadable: int = 0
    unread_folders: list[str] = field(default_factory=list)  # their files are not in it

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "fractions": self.fractions, "seed": self.seed,
                "counts": self.counts, "groups": self.groups, "hard_linked": self.linked,
                "copied": self.copied, "dropped_exact_copies": self.dropped_copies,
                "dropped_label_conflicts": self.dropped_conflicts,
                "skipped_unreadable": self.skipped_unreadable, "warnings": self.warnings()}

    def warnings(self) -> list[str]:
        """A folder the scan could not read (its files are missing from the re-split), and a
        split left empty (one family larger than its share took the files it needed)."""
        unread = [f"{len(self.unread_folders)} folder(s) could not be read and their files "
                  f"are not in the re-split: {', '.join(self.unread_folders)}"
                  ] if self.unread_folders else []
        return unread + [f"the new {split}/ is empty (target {100 * self.fractions[split]:.1f}%): "
                f"a few large families hold most files and no small one was left for it; "
                "give other --fractions or check the near-duplicate families"
                for split, c in self.counts.items() if not sum(c.values())]

    def lines(self) -> list[str]:
        total = sum(sum(c.values()) for c in self.counts.values())
        out = [f"Re-split written to {self.out}: {total} files in {self.groups} groups "
               f"(seed {self.seed}; {self.linked} hard links, {self.copied} copies)"]
        for split, c in self.counts.items():
            n = sum(c.values())
            share = f"{100.0 * n / total:.1f}%" if total else "-"
            out.append(f"  {split:<5} {n:>6} ({share}; target "
                       f"{100 * self.fractions[split]:.1f}%)  "
                       + ", ".join(f"{k} {v}" for k, v in c.items()))
        out.append(f"  left out: {self.dropped_copies} extra exact copies (one file per content "
                   f"is kept), {self.dropped_conflicts} files whose content has two labels, "
                   f"{self.skipped_unreadable} unreadable files")
        return out


FRACTIONS_HELP = "use e.g. 70,15,15 (train,val,test) or train=0.8,test=0.2"


def parse_fractions(text: str) -> dict[str, float]:
    """'70,15,15' (train,val,test) or 'train=0.8,test=0.2' -> normalised shares.

    Refused before any work, naming the option: a share that is not a finite number >= 0,
    a split named twice or unknown, no train share, or shares that add up to nothing.
    """
    def bad(why: str) -> ValueError:
        return ValueError(f"--fractions {text!r}: {why}; {FRACTIONS_HELP}")

    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise bad("an empty share")
    if all("=" in p for p in parts):
        pairs = [(k.strip(), v) for k, v in (p.split("=", 1) for p in parts)]
    elif not any("=" in p for p in parts) and len(parts) <= len(SPLITS):
        pairs = list(zip(SPLITS, parts))
    else:
        raise bad("mixes name=share with bare shares, or has more than three")
    raw: dict[str, float] = {}
    for key, value in pairs:
        name = split_name(key)
        if name is None:
            raise bad(f"{key!r} is not train, val or test")
        if name in raw:
            raise bad(f"{name} is given twice")
        raw[name] = _share(value, bad)
    total = sum(raw.values())
    if raw.get("train", 0) <= 0 or not math.isfinite(total):
        raise bad("train needs a share > 0, and the shares a finite sum")
    shares = {k: raw[k] / total for k in SPLITS if k in raw}
    return {k: v for k, v in shares.items() if v > 0}


def _share(value: str, bad: Callable[[str], ValueError]) -> float:
    """One share: a finite number >= 0 ('nan', 'inf' and words are refused)."""
    try:
        v = float(value)
    except ValueError:
        raise bad(f"{value.strip()!r} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise bad(f"{value.strip()!r} is not a finite number >= 0")
    return v


def check_output(root: Path, out: Path) -> None:
    """Refuse an output folder that exists non-empty, or lies inside (or is) the source."""
    src, dst = root.resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise ResplitError(f"{out}: is inside the source dataset {root}; choose a folder outside")
    if out.exists() and not out.is_dir():
        raise ResplitError(f"{shown(out)}: exists and is not a folder; choose a new folder")
    if out.exists() and any(out.iterdir()):
        raise ResplitError(f"{shown(out)}: exists and is not empty; choose a new folder")
    try:  # the new split is built beside `out`, then renamed into place
        prepare_output(out, folder=out.is_dir())
    except OutputPathError as exc:
        raise ResplitError(f"--resplit: {exc}") from None


def plan(sc: Scan, fractions: dict[str, float], seed: int = 0, near: bool = True,
         threshold: float = NEAR_THRESHOLD) -> tuple[dict[int, tuple[str, int]], ResplitResult]:
    """Record index -> (new split, group number), for the records that will be written."""
    recs = sc.records
    result = ResplitResult(Path(), fractions, seed,
                           unread_folders=[shown(f["folder"]) for f in sc.unread_folders])
    labels_of: dict[str, set[int]] = defaultdict(set)
    for r in recs:
        if r.sha256:
            labels_of[r.sha256].add(r.label)
    order = sorted(range(len(recs)), key=lambda i: (SPLITS.index(recs[i].split), recs[i].rel))
    keep: list[int] = []
    seen: set[str] = set()
    for i in order:
        r = recs[i]
        if not r.readable or not r.sha256:
            result.skipped_unreadable += 1
        elif len(labels_of[r.sha256]) > 1:
            result.dropped_conflicts += 1
        elif r.sha256 in seen:
            result.dropped_copies += 1
        else:
            seen.add(r.sha256)
            keep.append(i)
    families = content_families(sc, near=near, threshold=threshold, indices=keep)
    dsu = DisjointSet(len(keep))
    dsu.union_by_key([families[i] for i in keep])
    units = [[keep[k] for k in comp] for comp in dsu.components()]
    result.groups = len(units)
    rng = random.Random(seed)
    assignment: dict[int, tuple[str, int]] = {}
    number = {id(u): k for k, u in enumerate(units)}
    everyone = sum(len(u) for u in units)
    overall = dict.fromkeys(fractions, 0)  # files placed so far, all labels
    for label in (1, 0):
        mine = [u for u in units
                if Counter(recs[i].label for i in u).most_common(1)[0][0] == label]
        rng.shuffle(mine)
        mine.sort(key=len, reverse=True)  # stable: equal sizes keep the shuffled order
        total = sum(len(u) for u in mine)
        filled = dict.fromkeys(fractions, 0)
        for u in mine:
            # furthest below its share within the class; ties go to the split furthest below
            # its share overall, so rounding in one class is evened out by the other
            split = max(fractions, key=lambda s: (round(fractions[s] * total - filled[s], 9),
                                                  fractions[s] * everyone - overall[s]))
            filled[split] += len(u)
            overall[split] += len(u)
            assignment.update(dict.fromkeys(u, (split, number[id(u)])))
    return assignment, result


def write(sc: Scan, out: Path, fractions: dict[str, float], seed: int = 0, near: bool = True,
          threshold: float = NEAR_THRESHOLD) -> ResplitResult:
    """Plan and write the new split under `out` (checked first; built aside, then renamed)."""
    root = sc.root
    check_output(root, out)
    assignment, result = plan(sc, fractions, seed, near, threshold)
    result.out = out
    out.parent.mkdir(parents=True, exist_ok=True)
    mode = out.stat().st_mode & 0o7777 if out.is_dir() else _new_folder_mode()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(tmp, mode)  # mkdtemp's is 0700; the folder is the user's, as mkdir makes it
        rows = _materialise(sc.records, assignment, sc.class_folders, tmp, result)
        with open(tmp / MANIFEST, "w", newline="", encoding="utf-8",
                  errors="surrogateescape") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "split", "label", "group", "sha256", "source"])
            w.writerows(rows)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _new_folder_mode() -> int:
    """The mode `mkdir` gives a new folder under the current umask (0o777 & ~umask)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o777 & ~mask


def _materialise(recs: list[Record], assignment: dict[int, tuple[str, int]],
                 class_folders: dict[int, str], dest: Path, result: ResplitResult
                 ) -> list[list[str]]:
    rows = []
    used: set[str] = set()
    counts: dict[str, Counter[str]] = {s: Counter() for s in SPLITS if s in result.fractions}
    for i in sorted(assignment, key=lambda i: recs[i].rel):
        r, (split, unit) = recs[i], assignment[i]
        folder = class_folders.get(r.label, LABELS[r.label])
        rel = _free_name(f"{split}/{folder}", r.path, used)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(r.path, target)
            result.linked += 1
        except OSError:
            shutil.copy2(r.path, target)
            result.copied += 1
        counts[split][LABELS[r.label]] += 1
        rows.append([rel, split, LABELS[r.label], str(unit), r.sha256 or "", r.rel])
    result.counts = {s: {lab: c[lab] for lab in (LABELS[1], LABELS[0])} for s, c in counts.items()}
    return rows


def _free_name(folder: str, src: Path, used: set[str]) -> str:
    """`folder/name`, or `folder/stem~2.ext` etc. when two sources share a name."""
    rel = f"{folder}/{src.name}"
    n = 2
    while rel.lower() in used:
        rel = f"{folder}/{src.stem}~{n}{src.suffix}"
        n += 1
    used.add(rel.lower())
    return rel


def source_fractions(sc: Scan) -> dict[str, float]:
    """The source's split shares by file count (the default target)."""
    c = Counter(r.split for r in sc.records)
    total = sum(c.values()) or 1
    return {s: c[s] / total for s in SPLITS if c[s]}
