"""Several dataset folders (sites) read as one, and any folder scored as a site.

A clinic's images always come from "another hospital": training takes one or more sources,
every report is split per source, and a model can be scored on a folder it never saw,
including a flat `fractured/` + `not fractured/` folder with no splits. No TensorFlow.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_toolkit.data import (
    Dataset,
    DatasetError,
    Sample,
    _read_split,
    class_id,
    discover,
    group_key,
    split_folders,
)
from edge_toolkit.files import shown

FLAT_SPLIT = "all"  # the one split of a folder that has class folders but no split folders
MANIFEST = "manifest.csv"
GROUP_COLUMNS = ("group", "block")  # fracture-xray: source family; FracAtlas: patient block
FAMILY_COLUMNS = ("group",)  # copies of one radiograph (a `block` is many radiographs)


def source_names(roots: Sequence[str | Path]) -> list[str]:
    """Each folder's name, made unique (`data`, `data-2`) when two folders share one. One
    folder given twice (`d1` and `./d1/`) is refused: it would count as two sites."""
    first: dict[Path, str | Path] = {}
    for root in roots:
        key = Path(root).resolve()
        if key in first:
            also = "" if str(first[key]) == str(root) else f" (also as {shown(first[key])})"
            raise DatasetError(f"{shown(root)}: the same folder given twice to --data{also}")
        first[key] = root
    seen: Counter[str] = Counter()
    names = []
    for root in roots:
        name = Path(root).resolve().name or str(root)
        seen[name] += 1
        names.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return names


def discover_sources(roots: Sequence[str | Path], val_fraction: float = 0.15,
                     seed: int = 0, val_grouping: str = "content") -> Dataset:
    """Read one or more training dataset folders as one Dataset whose samples know their
    source. Each folder keeps its own splits (or gets its own carved validation split)."""
    if not roots:
        raise DatasetError("no dataset folder given")
    names = source_names(roots)
    parts = [discover(r, val_fraction=val_fraction, seed=seed, val_grouping=val_grouping)
             for r in roots]
    if len(parts) == 1:
        return parts[0]
    samples = [replace(s, source=name) for ds, name in zip(parts, names) for s in ds.samples]
    carved = any(ds.carved_val for ds in parts)
    return Dataset(Path(roots[0]), samples, carved_val=carved,
                   class_folders=parts[0].class_folders,
                   sources={name: Path(r) for name, r in zip(names, roots)},
                   val_grouping=val_grouping if carved else None)


def discover_scoring(root: str | Path, name: str | None = None) -> Dataset:
    """A folder to score a model on: the Kaggle layout (any of train/val/test, no carve-out,
    one class is enough), or class folders with no split folders (one split, `all`)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder")
    name = name or source_names([root])[0]
    dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    split_dirs = split_folders(root)  # the spellings `train` reads (`valid/`, `Testing/`)
    class_folders: dict[str, str] = {}
    samples: list[Sample] = []
    if split_dirs:
        for split, d in split_dirs.items():
            samples += _read_split(d, split, class_folders)
    elif dirs and all(class_id(d.name) is not None for d in dirs):
        samples = _read_split(root, FLAT_SPLIT, class_folders)
    else:
        found = [d.name for d in dirs] or "no folders"
        raise DatasetError(f"{root}: neither split folders (train/val/test) nor class folders "
                           f"('fractured', 'not fractured'); found {found}")
    samples = [replace(s, source=name) for s in samples]
    if not samples:
        raise DatasetError(f"{root}: no image files found")
    return Dataset(root, samples, class_folders=class_folders, sources={name: root})


def merge(datasets: Sequence[Dataset]) -> Dataset:
    """Several scoring datasets as one (their source names must differ)."""
    if len(datasets) == 1:
        return datasets[0]
    sources: dict[str, Path] = {}
    for ds in datasets:
        for name, root in ds.sources.items():
            if name in sources:
                raise DatasetError(f"two dataset folders are both called {name!r}")
            sources[name] = root
    return Dataset(datasets[0].root, [s for ds in datasets for s in ds.samples],
                   sources=sources)


def manifest_values(root: Path, columns: Sequence[str] = GROUP_COLUMNS) -> dict[Path, str]:
    """resolved path -> value from a dataset's manifest.csv (the first of `columns` it has;
    blank values left out), if any."""
    path = root / MANIFEST
    if not path.is_file():
        return {}
    reader = csv.DictReader(io.StringIO(read_manifest(path), newline=""))
    try:
        column = next((c for c in columns if c in (reader.fieldnames or [])), None)
        if column is None or "path" not in (reader.fieldnames or []):
            return {}
        # a blank value is no group: that image falls back to its file-name family
        return {(root / row["path"]).resolve(): row[column] for row in reader
                if row.get("path") and (row.get(column) or "").strip()}
    except csv.Error as exc:
        raise DatasetError(f"{shown(path)}: line {reader.line_num}: not a readable CSV "
                           f"({exc})") from None


def read_manifest(path: Path) -> str:
    """A manifest's text: UTF-8, with or without the byte-order mark Excel writes (read
    as part of the first column name, it hid every column). Anything else is refused
    with the line and byte where decoding failed, rather than guessed."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{shown(path)}: cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        at = exc.start + (len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0)
        line = data[:at].count(b"\n") + 1
        raise DatasetError(f"{shown(path)}: not UTF-8 text (line {line}, byte {at}); save it "
                           "as CSV UTF-8") from None


def check_manifests(ds: Dataset) -> None:
    """Read every source's manifest.csv now, so a bad one stops a command before its slow
    work rather than after it."""
    for root in ds.sources.values():
        manifest_values(root)


def sample_groups(ds: Dataset, columns: Sequence[str] = GROUP_COLUMNS) -> list[str]:
    """A group id per sample: images of one group (a source family, a patient) must stay
    in one fold. From each source's manifest.csv where it has one of `columns`, else the
    file-name family; prefixed by the source, so groups never join across sites."""
    manifests = {name: manifest_values(root, columns) for name, root in ds.sources.items()}
    out = []
    for s in ds.samples:
        found = manifests.get(s.source, {}).get(s.path.resolve())
        out.append(f"{s.source}:{found if found is not None else group_key(s.path)}")
    return out


def groups_of(ds: Dataset, paths: Sequence[Path], clusters: bool = False) -> list[str]:
    """For each of `paths` (images of `ds`, in their order; a loaded split's, whose skipped
    files are gone): its family of copies of one radiograph (the manifest's `group`, else
    the file-name family), the unit that family-weighted scores count once; or with
    `clusters` its resampling unit (`sample_groups`: `group` or a patient `block`), what a
    family bootstrap draws and folds keep together."""
    ids = sample_groups(ds) if clusters else sample_groups(ds, FAMILY_COLUMNS)
    by_path = dict(zip((s.path for s in ds.samples), ids))
    return [by_path.get(p, f"?:{group_key(p)}") for p in paths]


def manifest_column(ds: Dataset, paths: Sequence[Path], column: str) -> list[str]:
    """Each of `paths`' value in its source's manifest.csv `column` (e.g. FracAtlas's
    `region`), "" where the source has no such column or row."""
    tables = {name: manifest_values(root, (column,)) for name, root in ds.sources.items()}
    source_of = {s.path: s.source for s in ds.samples}
    return [tables.get(source_of.get(p, ""), {}).get(p.resolve(), "") for p in paths]


def family_shares(families: Sequence[str], power: float) -> np.ndarray:
    """Each image's relative share, 1 / (its family's size among `families`)^power."""
    _, inverse, counts = np.unique(np.asarray(families, dtype=object).astype(str),
                                     return_inverse=True, return_counts=True)
    return counts[inverse].astype(np.float64) ** -float(power)


def source_balanced_weights(y: np.ndarray, sources: Sequence[str], balance: float = 1.0,
                            strata: Sequence[str] | None = None,
                            families: Sequence[str] | None = None,
                            family_weight: float = 0.0) -> np.ndarray:
    """Per-image training weights, mean 1: classes balanced within each source, and each
    source's total weight moved from its size (balance 0) to an equal share (balance 1), so
    a small site is not drowned by a large one. With `strata` (e.g. each image's body
    region) classes are balanced within each stratum of a source instead (small strata
    keep the source's weights, `_balanced_strata`), each keeping its share of the weight: a
    region's share of fractures (FracAtlas: hands far more often than legs) then says
    nothing about the label, and the model must look at the bone, not guess the region.
    With strata the classes of a source are balanced only within its balanced strata.
    With `families` (each image's family of copies of one radiograph) and `family_weight`
    p > 0, images share their class cell's weight as 1 / family size^p instead of equally:
    rotated copies of one radiograph then stop outweighing single ones (p = 1: each
    radiograph counts once), and every class, source and balanced stratum keeps its total
    (a stratum too small to balance takes its images' shares of the source-wide class cell,
    so its total moves with copies elsewhere in the source; no source here has both strata
    and copies: FracAtlas has regions and single images, fracture-xray copies and no regions)."""
    y = np.asarray(y).astype(int)
    src = np.asarray(sources)
    cell = np.asarray(list(strata), dtype=object) if strata is not None else None
    w = np.zeros(len(y), np.float64)
    each = np.ones(len(y))
    if family_weight:
        if families is None or len(families) != len(y):
            raise ValueError("family_weight needs each training image's family")
        each = family_shares(families, family_weight)
    names = sorted(set(src.tolist()))
    for name in names:
        m = src == name
        n_s = int(m.sum())
        share = (len(y) / (len(names) * n_s)) ** balance
        # the source first, then each balanced stratum over its images: each class gets
        # half of the weight share x size (a class a source lacks leaves its half unused)
        for ms in [m, *_balanced_strata(y, m, cell)]:
            for c in (0, 1):
                mc = ms & (y == c)
                if mc.any():
                    w[mc] = share * int(ms.sum()) / 2 * each[mc] / each[mc].sum()
        if cell is not None and w[m].sum() > 0:  # strata: the source keeps its exact share
            w[m] *= share * n_s / w[m].sum()
    return (w / w.mean()).astype(np.float32) if len(w) else w.astype(np.float32)


MIN_STRATUM_CLASS = 5  # fewer fractured or normal images: the stratum is not balanced


def _balanced_strata(y: np.ndarray, in_source: np.ndarray, cell: np.ndarray | None
                     ) -> list[np.ndarray]:
    """The source's strata that get their own class balance. One with fewer than
    MIN_STRATUM_CLASS images of either class (FracAtlas train: hips with 1 fracture in 49,
    shoulders with none) keeps the source's weights instead: balancing it would give one
    image dozens of times the weight of the others."""
    if cell is None:
        return []
    out = []
    for value in sorted(set(cell[in_source].tolist()), key=str):
        ms = in_source & (cell == value)
        if min(int((ms & (y == c)).sum()) for c in (0, 1)) >= MIN_STRATUM_CLASS:
            out.append(ms)
    return out


def by_source(sources: Sequence[str]) -> dict[str, np.ndarray]:
    """Boolean masks per source name, in name order."""
    src = np.asarray(sources)
    return {name: src == name for name in sorted(set(src.tolist()))}


def describe_sources(ds: Dataset) -> list[dict[str, Any]]:
    """What a card records of each source: its name and counts, never a machine's folders."""
    out = []
    for name in ds.source_names:
        part = Dataset(ds.root, [s for s in ds.samples if s.source == name])
        out.append({"name": name, "counts": part.counts(), "fingerprint": part.fingerprint()})
    return out



def card_roots(dataset_info: dict[str, Any]) -> list[str]:
    """The training folders a run's card names (`roots`, or the older single `root`)."""
    roots = dataset_info.get("roots") or ([dataset_info["root"]] if dataset_info.get("root")
                                          else [])
    return [str(r) for r in roots]


def dataset_for_card(dataset_info: dict[str, Any],
                     data: Sequence[str | Path] | None = None) -> Dataset:
    """The dataset a run was trained on, split exactly as training split it (same carve-out
    seed and fraction), from the card's folders or from `data` standing in for them."""
    roots = [str(d) for d in data] if data else card_roots(dataset_info)
    if not roots:
        raise DatasetError("the model card names no dataset folder: pass --data")
    missing = [r for r in roots if not Path(r).is_dir()]
    if missing and data:
        raise DatasetError(f"{shown(missing[0])}: no such dataset folder (--data)")
    if missing:  # the card's folder has moved: say where it is with --data
        raise DatasetError(f"dataset folder {shown(missing[0])} (named in the model card) not "
                           "found: pass --data with where it is now")
    # cards from before content grouping carved val by file name
    return discover_sources(roots, val_fraction=float(dataset_info.get("val_fraction", 0.15)),
                            seed=int(dataset_info.get("seed", 0)),
                            val_grouping=str(dataset_info.get("val_grouping") or "name"))
