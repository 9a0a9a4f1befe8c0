"""Write the small real demo sample in `demo/` from the two shared sources.

Why: README's first command should show the real job (real X-rays, every variant validating),
not synthetic phantoms, yet stay a few MB in the repository and a few minutes on 2 CPU cores.

For each source (fracture-xray: Kaggle "Fracture Multi-Region X-ray Data", ODC-By 1.0;
fracatlas: FracAtlas, CC BY 4.0) it keeps the source's own train/val/test split and takes
images round-robin over its groups (fracture-xray `group` = rotation family, fracatlas `block`
= 25 consecutive ids, often one patient), so each split gets many independent families and no
family crosses splits (groups that cross splits in the source are left out). FracAtlas images
showing implants (`hardware == 1`) are left out: implants almost only occur in fractured
images, a shortcut the demo should not teach. Images are re-encoded grayscale, long side
`--long-side`, JPEG quality 85. Val/test images that `edge-toolkit audit` finds copied in
train are dropped. Deterministic for a given seed.

    python scripts/make_demo_sample.py --shared ../shared/data --out demo
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from collections import defaultdict
from pathlib import Path

from PIL import Image

SOURCES = {"fracture-xray": "group", "fracatlas": "block"}
LABELS = ("fractured", "not fractured")
# images per split and class (val larger than test: export validation compares AUCs on it)
COUNTS = {"train": 55, "val": 30, "test": 15}


def pick(rows: list[dict[str, str]], key: str, n: int, rng: random.Random) -> list[dict]:
    """Up to n rows, one per group in turn (groups shuffled), for many independent families."""
    groups: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["path"]):
        groups[r[key]].append(r)
    order = sorted(groups)
    rng.shuffle(order)
    for g in order:
        rng.shuffle(groups[g])
    chosen: list[dict[str, str]] = []
    while len(chosen) < n and any(groups[g] for g in order):
        for g in order:
            if groups[g] and len(chosen) < n:
                chosen.append(groups[g].pop())
    return chosen


def shrink(src: Path, dst: Path, long_side: int, quality: int) -> None:
    with Image.open(src) as im:
        im = im.convert("L")
        scale = long_side / max(im.size)
        if scale < 1:
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                           Image.Resampling.LANCZOS)
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.save(dst, "JPEG", quality=quality, optimize=True)


def drop_leaks(target: Path, written: list[dict[str, str]]) -> list[dict[str, str]]:
    """Remove val/test images that the toolkit's own audit finds copied in train (a near
    copy across groups, e.g. one patient imaged twice), so the sample audits clean."""
    import hashlib

    from edge_toolkit.audit import quick_leak_check

    seen: dict[str, str] = {}  # byte-identical images under two ids (FracAtlas has some)
    order = {"train": 0, "val": 1, "test": 2}
    for r in sorted(written, key=lambda r: order[r["split"]]):
        digest = hashlib.sha256((target / r["path"]).read_bytes()).hexdigest()
        if digest in seen and seen[digest] != r["split"]:
            (target / r["path"]).unlink()
            print(f"{target / r['path']}: dropped, the same image is in {seen[digest]}")
            r["path"] = ""
        seen.setdefault(digest, r["split"])
    written = [r for r in written if r["path"]]
    for _ in range(5):
        leaks = quick_leak_check(target)
        files = {e["file"] for s in leaks.splits.values() for e in s.examples}
        if not files:
            break
        for rel in files:
            (target / rel).unlink()
            print(f"{target / rel}: dropped, a copy is in train")
        written = [r for r in written if r["path"] not in files]
    return written


def make_source(shared: Path, out: Path, name: str, key: str, long_side: int, quality: int,
                seed: int) -> int:
    rows = list(csv.DictReader(open(shared / name / "manifest.csv", newline="")))
    splits_of: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        splits_of[r[key]].add(r["split"])
    rows = [r for r in rows if len(splits_of[r[key]]) == 1 and r.get("hardware", "0") != "1"]
    rng = random.Random(seed)
    target = out / name
    for split in COUNTS:  # LICENSE files beside the splits stay
        if (target / split).exists():
            shutil.rmtree(target / split)
    written = []
    for split, n in COUNTS.items():
        for label in LABELS:
            subset = [r for r in rows if r["split"] == split and r["label"] == label]
            for r in pick(subset, key, n, rng):
                shrink(shared / name / r["path"], target / r["path"], long_side, quality)
                written.append({"path": r["path"], "split": split, "label": label,
                                "group": r[key], "source_path": r["path"]})
    written = drop_leaks(target, written)
    with open(target / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(written[0]))
        w.writeheader()
        w.writerows(written)
    return len(written)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("demo"))
    ap.add_argument("--long-side", type=int, default=192)
    ap.add_argument("--quality", type=int, default=85)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for name, key in SOURCES.items():
        n = make_source(args.shared, args.out, name, key, args.long_side, args.quality,
                        args.seed)
        print(f"{args.out / name}: {n} images")


if __name__ == "__main__":
    main()
