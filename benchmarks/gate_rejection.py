"""How often the input gate rejects real radiographs, and how often what is not one.

    python benchmarks/gate_rejection.py MODEL.tflite [--data DIR ...] [--json OUT]
    python benchmarks/gate_rejection.py MODEL.tflite --sweep   # compare OOD settings

Real radiographs: the val and test splits of each --data folder (default: the two shared
sources, ../shared/data/fracture-xray and ../shared/data/fracatlas). Non-radiographs: natural
photos and other pictures that installed packages ship (scikit-image, scikit-learn,
matplotlib; whichever are installed, never downloaded), each whole and as crops, plus pictures
rendered here with Pillow: blanks, noise, gradients, documents, screenshots. Everything is
seeded, so a rerun on the same model gives the same table.

`--sweep` refits the out-of-distribution score from the model's own pooled features on each
source's train split with other component counts, with and without the residual term, and
prints the rejection rates each would give (the quality checks are the same for all).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_toolkit.images import IMAGE_SUFFIXES, ImageLoadError, open_image  # noqa: E402
from edge_toolkit.runtime.classifier import Classifier  # noqa: E402
from edge_toolkit.runtime.gate import (  # noqa: E402
    appearance,
    fit_ood,
    measure,
    pool_features,
    quality_reason,
)

DEFAULT_DATA = [ROOT.parent / "shared" / "data" / "fracture-xray",
                ROOT.parent / "shared" / "data" / "fracatlas"]
Picture = tuple[str, Image.Image]


# -- non-radiographs ---------------------------------------------------------------------


def shipped_pictures() -> dict[str, list[Path]]:
    """Pictures that installed packages carry, by kind (only what is installed)."""
    found: dict[str, list[Path]] = {"photo": [], "microscopy/retina": [], "document": []}
    kinds = {
        "photo": ["astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
                  "hubble_deep_field.jpg", "moon.png", "motorcycle_left.png",
                  "motorcycle_right.png", "rocket.jpg", "clock_motion.png", "brick.png",
                  "grass.png", "gravel.png", "horse.png", "color.png"],
        "microscopy/retina": ["cell.png", "ihc.png", "retina.jpg", "microaneurysms.png"],
        "document": ["page.png", "text.png"],
    }
    try:
        import skimage.data

        base = Path(skimage.data.__file__).parent
        for kind, names in kinds.items():
            found[kind] += [base / n for n in names if (base / n).exists()]
    except ImportError:
        pass
    try:
        import sklearn.datasets

        found["photo"] += sorted((Path(sklearn.datasets.__file__).parent / "images")
                                 .glob("*.jpg"))
    except ImportError:
        pass
    try:
        import matplotlib

        sample = Path(matplotlib.get_data_path()) / "sample_data"
        found["photo"] += [p for p in (sample / "grace_hopper.jpg",
                                       sample / "Minduka_Present_Blue_Pack.png") if p.exists()]
    except ImportError:
        pass
    return found


def views(name: str, img: Image.Image, rng: np.random.Generator, crops: int = 8
          ) -> Iterator[Picture]:
    """The picture whole, in gray, and as random crops (a camera pointed at part of it)."""
    img = img.convert("RGB")
    yield name, img
    yield f"{name} (gray)", img.convert("L")
    w, h = img.size
    for i in range(crops):
        s = rng.uniform(0.35, 0.8)
        cw, ch = max(32, int(w * s)), max(32, int(h * s))
        x0, y0 = int(rng.integers(0, max(1, w - cw))), int(rng.integers(0, max(1, h - ch)))
        yield f"{name} crop {i}", img.crop((x0, y0, x0 + cw, y0 + ch))


def lfw_faces(limit: int = 40) -> Iterator[Picture]:
    """Faces (scikit-image's LFW subset, 25 px) scaled up to 200 px like a close camera."""
    try:
        import skimage.data

        arr = np.load(Path(skimage.data.__file__).parent / "lfw_subset.npy")
    except (ImportError, OSError):
        return
    for i, face in enumerate(arr[:limit]):
        img = Image.fromarray((np.clip(face, 0, 1) * 255).astype(np.uint8))
        yield f"face {i}", img.resize((200, 200), Image.Resampling.BICUBIC)


def blanks(rng: np.random.Generator) -> Iterator[Picture]:
    for i, level in enumerate(np.linspace(0, 255, 12)):
        size = (int(rng.integers(200, 900)), int(rng.integers(200, 900)))
        img = np.full(size[::-1], level) + rng.normal(0, 2 if i % 2 else 0, size[::-1])
        yield f"blank {level:.0f}", Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    for i in range(6):  # a lens cap / a light box: blank colour frames
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        yield f"blank colour {i}", Image.new("RGB", (640, 480), c)


def noises(rng: np.random.Generator) -> Iterator[Picture]:
    for i in range(8):
        yield f"uniform noise {i}", Image.fromarray(
            rng.integers(0, 256, (300, 400), dtype=np.uint8))
    for i in range(6):
        yield f"colour noise {i}", Image.fromarray(
            rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    for i in range(6):
        g = rng.normal(128, 10 + 10 * i, (300, 400))
        yield f"gaussian noise {i}", Image.fromarray(np.clip(g, 0, 255).astype(np.uint8))
    for radius in (1, 2, 4, 8, 16, 32):  # smooth blobs, cloud-like
        img = Image.fromarray(rng.integers(0, 256, (300, 400), dtype=np.uint8))
        blur = img.filter(ImageFilter.GaussianBlur(radius))
        a = np.asarray(blur, np.float32)
        a = (a - a.min()) / max(1e-6, float(np.ptp(a))) * 255
        yield f"smoothed noise r{radius}", Image.fromarray(a.astype(np.uint8))
    for i in range(4):
        sp = np.full((300, 400), 128, np.uint8)
        mask = rng.random((300, 400))
        sp[mask < 0.1 * (i + 1) / 2] = 0
        sp[mask > 1 - 0.1 * (i + 1) / 2] = 255
        yield f"salt and pepper {i}", Image.fromarray(sp)


def gradients(rng: np.random.Generator) -> Iterator[Picture]:
    h, w = 360, 480
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i, angle in enumerate(np.linspace(0, np.pi, 8, endpoint=False)):
        g = np.cos(angle) * xx / w + np.sin(angle) * yy / h
        g = (g - g.min()) / np.ptp(g) * 255
        yield f"linear gradient {i}", Image.fromarray(g.astype(np.uint8))
    for i in range(6):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = np.hypot(xx - cx, yy - cy)
        g = 255 * (1 - r / r.max()) if i % 2 else 255 * r / r.max()
        yield f"radial gradient {i}", Image.fromarray(g.astype(np.uint8))
    for i in range(6):
        rgb = np.stack([(xx / w) * 255, (yy / h) * 255, np.full_like(xx, 60 * i)], -1)
        yield f"colour gradient {i}", Image.fromarray(rgb.astype(np.uint8))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


WORDS = ("the patient was seen in clinic follow up report fracture distal radius plan "
         "results table summary page invoice total date name address signed approved "
         "lorem ipsum dolor sit amet consectetur adipiscing elit").split()


def _line(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, n))


def documents(rng: np.random.Generator) -> Iterator[Picture]:
    for i in range(20):
        w, h = 850, 1100
        paper = int(rng.integers(225, 256))
        img = Image.new("L", (w, h), paper)
        d = ImageDraw.Draw(img)
        y = 60
        d.text((60, y), _line(rng, 4).title(), fill=20, font=_font(34))
        y += 70
        while y < h - 80:
            if rng.random() < 0.12:  # a table
                rows, cols = int(rng.integers(3, 7)), int(rng.integers(2, 5))
                cw = (w - 120) // cols
                for r in range(rows):
                    for c in range(cols):
                        box = (60 + c * cw, y + r * 28, 60 + (c + 1) * cw, y + (r + 1) * 28)
                        d.rectangle(box, outline=60)
                        d.text((box[0] + 6, box[1] + 6), _line(rng, 1), fill=30,
                               font=_font(16))
                y += rows * 28 + 30
            else:
                d.text((60, y), _line(rng, int(rng.integers(6, 12))), fill=int(
                    rng.integers(0, 70)), font=_font(18))
                y += 28
        if i % 2:  # photographed: rotated on a desk, a little blur
            desk = Image.new("L", (1100, 1300), int(rng.integers(60, 160)))
            page = img.rotate(float(rng.uniform(-12, 12)), expand=True, fillcolor=0)
            desk.paste(page.resize((int(page.width * 0.9), int(page.height * 0.9))),
                       (60, 40))
            img = desk.filter(ImageFilter.GaussianBlur(1))
        yield f"document {i}", img


def screenshots(rng: np.random.Generator) -> Iterator[Picture]:
    for i in range(20):
        w, h = (1280, 800) if i % 3 else (1920, 1080)
        dark = i % 2 == 1
        bg, fg = ((30, 30, 36), (220, 220, 220)) if dark else ((246, 246, 246), (25, 25, 25))
        img = Image.new("RGB", (w, h), bg)
        d = ImageDraw.Draw(img)
        accent = tuple(int(v) for v in rng.integers(40, 220, 3))
        d.rectangle((0, 0, w, 36), fill=accent)  # title bar
        d.text((14, 8), _line(rng, 3), fill=(255, 255, 255), font=_font(18))
        side = int(rng.integers(180, 320))
        d.rectangle((0, 36, side, h), fill=tuple(max(0, c - 12) for c in bg))
        for k in range(int(rng.integers(8, 20))):  # sidebar entries
            d.text((16, 56 + k * 30), _line(rng, 2), fill=fg, font=_font(16))
        y = 60
        while y < h - 60:
            kind = rng.random()
            if kind < 0.15:  # a button row
                for b in range(int(rng.integers(1, 4))):
                    x0 = side + 30 + b * 150
                    d.rounded_rectangle((x0, y, x0 + 130, y + 36), 8, fill=accent)
                    d.text((x0 + 14, y + 9), _line(rng, 1), fill=(255, 255, 255),
                           font=_font(16))
                y += 56
            elif kind < 0.25:  # an image placeholder or chart
                x0 = side + 30
                d.rectangle((x0, y, x0 + 360, y + 200), outline=fg, width=2)
                pts = [(x0 + 10 + j * 34, y + 190 - int(rng.integers(10, 180)))
                       for j in range(11)]
                d.line(pts, fill=accent, width=3)
                y += 220
            else:
                d.text((side + 30, y), _line(rng, int(rng.integers(5, 14))), fill=fg,
                       font=_font(16))
                y += 26
        yield f"screenshot {i}", img


SYNTHETIC: dict[str, Callable[[np.random.Generator], Iterator[Picture]]] = {
    "blank": blanks, "noise": noises, "gradient": gradients, "document (rendered)": documents,
    "screenshot (rendered)": screenshots,
}


def non_radiographs(seed: int = 0) -> dict[str, list[Picture]]:
    rng = np.random.default_rng(seed)
    sets: dict[str, list[Picture]] = {}
    for kind, paths in shipped_pictures().items():
        pics: list[Picture] = []
        for p in paths:
            pics += list(views(p.name, Image.open(p), rng))
        if pics:
            sets[f"{kind} (shipped)"] = pics
    faces = list(lfw_faces())
    if faces:
        sets["face (LFW subset)"] = faces
    for kind, make in SYNTHETIC.items():
        sets[kind] = list(make(rng))
    return sets


# -- measuring ---------------------------------------------------------------------------


def real_files(data: list[Path], splits: tuple[str, ...] = ("val", "test")
               ) -> dict[str, list[Path]]:
    out = {}
    for root in data:
        for split in splits:
            files = sorted(p for p in (root / split).rglob("*")
                           if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
            if files:
                out[f"{root.name} {split}"] = files
    return out


def category(reason: str | None) -> str:
    if reason is None:
        return "accepted"
    if reason.startswith("not like"):
        return "features"
    return "appearance" if reason.startswith("does not look") else "quality"


def run_set(clf: Classifier, items: list[Path] | list[Picture]) -> dict[str, object]:
    counts = {"accepted": 0, "quality": 0, "appearance": 0, "features": 0, "error": 0}
    examples: list[str] = []
    for item in items:
        if isinstance(item, Path):
            r = clf.predict_file(item)
            name = item.name
        else:
            name, img = item
            r = clf.predict_pil(img, file=name)
        if r.status == "rejected":
            counts[category(r.error)] += 1
        elif r.status == "ok":
            counts["accepted"] += 1
            if len(examples) < 5:
                examples.append(name)
        else:
            counts["error"] += 1
    n = sum(counts.values()) - counts["error"]
    rejected = counts["quality"] + counts["appearance"] + counts["features"]
    return {"n": n, **counts, "rejected": rejected,
            "rate": rejected / n if n else float("nan"), "accepted_examples": examples}


def table(rows: dict[str, dict[str, object]], title: str) -> str:
    lines = [f"| {title} | n | rejected | rate | by quality | by appearance | by features |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['n']} | {r['rejected']} | {100 * r['rate']:.1f}% | "
                     f"{r['quality']} | {r['appearance']} | {r['features']} |")
    tot = {k: sum(int(r[k]) for r in rows.values())
           for k in ("n", "rejected", "quality", "appearance", "features")}
    rate = tot["rejected"] / tot["n"] if tot["n"] else float("nan")
    lines.append(f"| **all** | {tot['n']} | {tot['rejected']} | **{100 * rate:.1f}%** | "
                 f"{tot['quality']} | {tot['appearance']} | {tot['features']} |")
    return "\n".join(lines)


# -- sweep -------------------------------------------------------------------------------


def pooled(clf: Classifier, items: list[Path] | list[Picture], gate_quality: bool = True
           ) -> tuple[np.ndarray, np.ndarray]:
    """(pooled features, appearance) of the items that pass the quality checks."""
    feats, looks = [], []
    for item in items:
        try:
            img = open_image(item) if isinstance(item, Path) else open_image(item[1])
        except ImageLoadError:
            continue
        if gate_quality and quality_reason(measure(img), input_size=clf.card.input_size):
            continue
        feats.append(pool_features(clf.infer(clf.preprocess(img)).features))
        looks.append(appearance(img))
    return np.array(feats), np.array(looks)


def _stack(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return (np.concatenate([p[0] for p in parts if len(p[0])]),
            np.concatenate([p[1] for p in parts if len(p[1])]))


def sweep(clf: Classifier, data: list[Path], others: dict[str, list[Picture]]) -> str:
    train = _stack([pooled(clf, f, False) for f in real_files(data, ("train",)).values()])
    val = _stack([pooled(clf, f, False) for f in real_files(data, ("val",)).values()])
    test = _stack([pooled(clf, f, False) for f in real_files(data, ("test",)).values()])
    n_other = sum(len(v) for v in others.values())
    other = _stack([pooled(clf, v) for v in others.values()])
    lines = [f"train {len(train[0])}, val {len(val[0])}, test {len(test[0])}; "
             f"non-radiographs: {len(other[0])} of {n_other} pass the quality checks",
             "", "| feature components | appearance components | val rejected | "
             "test rejected | non-radiographs rejected (quality + OOD) |",
             "|---:|---:|---:|---:|---:|"]
    for k in (8, 32, 128):
        for ka in (0, 8, 16):
            q = 0.01 if ka else 0.02  # each check's share of the 2% val budget
            m = fit_ood(train[0], val[0], components=k, max_val_reject=q)
            a = fit_ood(train[1], val[1], components=ka, max_val_reject=q) if ka else None

            def rejects(s: tuple[np.ndarray, np.ndarray], m=m, a=a) -> np.ndarray:
                out = m.score(s[0]) > m.threshold
                return out | (a.score(s[1]) > a.threshold) if a is not None else out

            v, t = float(np.mean(rejects(val))), float(np.mean(rejects(test)))
            caught = (n_other - len(other[0])) + int(np.sum(rejects(other)))
            lines.append(f"| {k} | {ka or 'off'} | {100 * v:.1f}% | {100 * t:.1f}% | "
                         f"{100 * caught / n_other:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", type=Path, action="append",
                    help="Dataset folder with val/ and test/ (repeat); default: both shared.")
    ap.add_argument("--json", type=Path, help="Also write the numbers as JSON.")
    ap.add_argument("--sweep", action="store_true",
                    help="Compare out-of-distribution settings refitted on train features.")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    data = args.data or [d for d in DEFAULT_DATA if d.exists()]
    clf = Classifier.load(args.model, num_threads=args.threads)
    others = non_radiographs()
    if args.sweep:
        if not clf.has_features:
            ap.error("--sweep needs a model with the feature-map output")
        print(sweep(clf, data, others))
        return 0
    ood = (clf.card.gate or {}).get("ood") or {}
    gate = (f"{ood.get('components')} components, threshold {ood.get('threshold', 0):.3f}"
            if clf.gate is not None and clf.gate.ood is not None
            else "none (quality checks only)")
    print(f"model: {args.model} ({clf.card.family} {clf.card.variant}, id {clf.model_id}); "
          f"out-of-distribution gate: {gate}\n")
    real = {name: run_set(clf, files) for name, files in real_files(data).items()}
    print(table(real, "real radiographs") + "\n")
    fake = {name: run_set(clf, pics) for name, pics in others.items()}
    print(table(fake, "not radiographs") + "\n")
    for name, r in fake.items():
        if r["accepted_examples"]:
            print(f"accepted {name}: {', '.join(r['accepted_examples'])}")
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "model_id": clf.model_id,
                                         "real": real, "not_radiographs": fake}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
