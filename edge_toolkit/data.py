"""Dataset folders in the Kaggle layout: `DATA/{train,val,test}/<class>/<image>`.

Discovery, class-name mapping, a seeded validation carve-out when `val/` is absent, a content
fingerprint, and bulk loading through the shared preprocessing with a report of every file
that could not be read. No TensorFlow.

The one home of the dataset facts: labels, split names and their folder aliases, class
folder names, and the file-name family rule (`12-rotated1.jpg` is `12.jpg`); the audit
imports them. The carve-out keeps the audit's content families whole (exact and near copies
and file-name families, `audit.duplicates.content_families`): on the Kaggle data a carve by
file name alone put exact or near copies of 79 of 190 val images in train.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edge_toolkit.images import ImageLoadError, is_image_file
from edge_toolkit.preprocess import PreprocessConfig, preprocess

LABELS = ["not fractured", "fractured"]  # index = class id; 1 (fractured) is positive
SPLITS = ("train", "val", "test")
_CLASS_ALIASES = {
    "fractured": 1, "fracture": 1, "fractures": 1, "positive": 1, "abnormal": 1, "yes": 1,
    "notfractured": 0, "nonfractured": 0, "unfractured": 0, "nofracture": 0, "normal": 0,
    "negative": 0, "no": 0, "healthy": 0,
}
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}
FAMILY_MARK = "-rotated"  # `12-rotated1.jpg` is a copy of `12.jpg` (the Kaggle naming)
# How a carved val split is grouped: "content" (the audit's content families; the default)
# or "name" (file-name families only: how runs carved before content grouping existed).
VAL_GROUPINGS = ("content", "name")


class DatasetError(ValueError):
    """The folder is not a usable dataset; the message says what was found."""


def class_id(folder_name: str) -> int | None:
    """Map a class folder name to 0/1: 'not fractured', 'not_fractured', 'normal' -> 0."""
    key = re.sub(r"[^a-z]", "", folder_name.lower())
    return _CLASS_ALIASES.get(key)


def split_name(folder_name: str) -> str | None:
    """Map a split folder name to train/val/test ('Training', 'valid' ...); None if none."""
    return SPLIT_ALIASES.get(folder_name.lower())


def split_folders(root: Path) -> dict[str, Path]:
    """Split name -> its folder, under any spelling `split_name` knows (`valid/`,
    `Training/`), so every command reads the same layouts. Two folders for one split
    (`val/` and `valid/`) are refused: reading one would silently drop the other."""
    out: dict[str, Path] = {}
    for d in sorted(root.iterdir()):
        split = split_name(d.name) if d.is_dir() else None
        if split is None:
            continue
        if split in out:
            raise DatasetError(f"{root}: both {out[split].name}/ and {d.name}/ are the {split} "
                               "split; keep one")
        out[split] = d
    return out


def group_key(path: Path) -> str:
    """Family of an image: `12-rotated1-rotated2.jpg` and `12.jpg` are one source image."""
    stem = re.split(re.escape(FAMILY_MARK), path.stem, maxsplit=1)[0]
    return f"{path.parent.name}/{stem}"


def has_family_mark(path: Path) -> bool:
    """Whether a file name says it derives from another (`12-rotated1.jpg`)."""
    return FAMILY_MARK in path.stem


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    split: str
    source: str = ""  # which dataset folder (site) it came from: reports are per source


@dataclass
class Dataset:
    root: Path
    samples: list[Sample]
    carved_val: bool = False
    class_folders: dict[str, str] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)  # source name -> its folder
    val_grouping: str | None = None  # how val was carved (None: val/ was given)

    @property
    def source_names(self) -> list[str]:
        return list(self.sources) or sorted({s.source for s in self.samples})

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if any(x.split == s for x in self.samples)]

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for name in self.splits:
            c = Counter(s.label for s in self.split(name))
            out[name] = {LABELS[k]: c.get(k, 0) for k in (1, 0)}
        return out

    def fingerprint(self) -> str:
        """sha256 over (split, label, content hash) of every file: names do not matter."""
        rows = sorted(f"{s.split}\t{s.label}\t{_file_sha256(s.path)}" for s in self.samples)
        return "sha256:" + hashlib.sha256("\n".join(rows).encode()).hexdigest()[:32]


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def _read_split(split_dir: Path, split: str, class_folders: dict[str, str]) -> list[Sample]:
    samples: list[Sample] = []
    subdirs = sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [d.name for d in subdirs if class_id(d.name) is None]
    if unknown:
        raise DatasetError(
            f"{split_dir}: unknown class folder(s) {unknown}; found {[d.name for d in subdirs]}. "
            "Expected one for fractured ('fractured') and one for not fractured "
            "('not fractured', 'not_fractured' or 'normal').")
    for d in subdirs:
        label = class_id(d.name)
        assert label is not None
        class_folders.setdefault(LABELS[label], d.name)
        samples += [Sample(p, label, split) for p in _list_images(d)]
    return samples


def family_keys(train: list[Sample], grouping: str = "content") -> list[str]:
    """A family key per train sample: files with one key go to one side of the carve-out."""
    if grouping == "name":
        return [group_key(s.path) for s in train]
    if grouping != "content":
        raise ValueError(f"val grouping must be one of {VAL_GROUPINGS}, not {grouping!r}")
    # The audit's grouping (numpy and PIL only, no TensorFlow), imported here because the
    # audit itself builds on this module's facts.
    from edge_toolkit.audit.duplicates import sample_families

    ids = sample_families(train)
    first: dict[int, str] = {}
    for s, g in sorted(zip(train, ids), key=lambda t: str(t[0].path)):
        first.setdefault(g, str(s.path))  # its first file: the order does not hang on ids
    return [first[g] for g in ids]


def carve_validation(samples: list[Sample], fraction: float = 0.15, seed: int = 0,
                     grouping: str = "content") -> list[Sample]:
    """Move a class-stratified `fraction` of train to val, reproducibly, never splitting a
    family (`family_keys`: content families by default, or file-name families only)."""
    rng = random.Random(seed)
    out = [s for s in samples if s.split != "train"]
    train = [s for s in samples if s.split == "train"]
    members: dict[str, list[Sample]] = defaultdict(list)
    for s, key in zip(train, family_keys(train, grouping)):
        members[key].append(s)
    majority = {k: int(2 * sum(s.label for s in v) >= len(v)) for k, v in members.items()}
    for label in (0, 1):  # a family goes with its majority label (ties: positive)
        groups = {k: v for k, v in members.items() if majority[k] == label}
        keys = sorted(groups)
        rng.shuffle(keys)
        want = round(fraction * sum(s.label == label for s in train))
        taken = 0
        for k in keys:
            to_val = taken < want
            taken += len(groups[k]) if to_val else 0
            out += [replace(s, split="val" if to_val else "train") for s in groups[k]]
    return out


def discover(root: str | Path, val_fraction: float = 0.15, seed: int = 0,
             val_grouping: str = "content") -> Dataset:
    """Read a dataset folder; raise DatasetError with what was found when it is unusable.

    Without `val/`, `val_fraction` of train is carved as val (`carve_validation`, grouped by
    `val_grouping`); a card records all three so later commands rebuild the same split."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder")
    split_dirs = split_folders(root)
    if "train" not in split_dirs:
        found = sorted(d.name for d in root.iterdir() if d.is_dir())
        raise DatasetError(f"{root}: no train/ folder; found {found or 'no folders'}. "
                           "Expected DATA/{train,val,test}/<class>/<image files>.")
    class_folders: dict[str, str] = {}
    samples: list[Sample] = []
    for split, d in split_dirs.items():
        samples += _read_split(d, split, class_folders)
    samples = [replace(s, source=root.name) for s in samples]
    sources = {root.name: root}
    ds = Dataset(root, samples, class_folders=class_folders, sources=sources)
    train = ds.split("train")
    present = {s.label for s in train}
    if not train:
        raise DatasetError(f"{split_dirs['train']}: no image files found")
    if present != {0, 1}:
        have = [LABELS[k] for k in sorted(present)]
        raise DatasetError(f"{split_dirs['train']}: needs images of both classes; only {have} "
                           "has images")
    if "val" not in split_dirs:
        ds = Dataset(root, carve_validation(samples, val_fraction, seed, val_grouping),
                     carved_val=True, class_folders=class_folders, sources=sources,
                     val_grouping=val_grouping)
    return ds


@dataclass
class LoadedSplit:
    """Preprocessed images of one split, and the files that could not be read."""

    x: np.ndarray
    y: np.ndarray
    paths: list[Path]
    skipped: list[tuple[str, str]]
    sources: list[str] = field(default_factory=list)  # per kept image, as `paths`
    groups: list[str] = field(default_factory=list)  # each kept image's family of copies
    clusters: list[str] = field(default_factory=list)  # and its resampling unit, where set


def load_samples(samples: list[Sample], cfg: PreprocessConfig, workers: int = 4
                 ) -> LoadedSplit:
    """Preprocess every sample (threads: PIL decodes without the GIL); skip and report bad ones."""

    def one(s: Sample) -> np.ndarray | ImageLoadError:
        try:
            return preprocess(s.path, cfg)
        except ImageLoadError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, samples))
    xs, ys, paths, skipped, sources = [], [], [], [], []
    for s, r in zip(samples, results):
        if isinstance(r, ImageLoadError):
            skipped.append((str(s.path), r.reason))
        else:
            xs.append(r)
            ys.append(s.label)
            paths.append(s.path)
            sources.append(s.source)
    x = np.stack(xs) if xs else np.zeros((0, *cfg.shape), np.float32)
    return LoadedSplit(x, np.asarray(ys, np.int64), paths, skipped, sources)
