"""Shared fixtures: tiny generated images of every awkward kind. No real X-ray is needed."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fracture-xray"


def gradient(w: int = 40, h: int = 30) -> np.ndarray:
    """A left-to-right ramp: orientation and scaling mistakes show up in it."""
    return np.tile(np.linspace(0, 255, w, dtype=np.float64), (h, 1)).astype(np.uint8)


@pytest.fixture
def awkward_images(tmp_path: Path) -> dict[str, Path]:
    """One file of each kind the loader must handle, good and bad."""
    g = gradient()
    out: dict[str, Path] = {}

    def save(name: str, img: Image.Image, **kw: object) -> None:
        out[name] = tmp_path / name
        img.save(out[name], **kw)

    save("gray.png", Image.fromarray(g, "L"))
    save("rgb.jpg", Image.fromarray(np.stack([g] * 3, -1), "RGB"), quality=95)
    rgba = np.dstack([np.stack([g] * 3, -1), np.full(g.shape, 255, np.uint8)])
    rgba[:, :5, 3] = 0  # transparent strip
    save("rgba.png", Image.fromarray(rgba, "RGBA"))
    save("palette.png", Image.fromarray(g, "L").convert("P"))
    save("cmyk.jpg", Image.fromarray(np.stack([g] * 3, -1), "RGB").convert("CMYK"))
    save("gray16.png", Image.fromarray(g.astype(np.uint16) * 257))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    save("exif_rotated.jpg", Image.fromarray(np.stack([g] * 3, -1), "RGB"), exif=exif)
    # bad ones
    buf = io.BytesIO()
    Image.fromarray(np.stack([g] * 3, -1), "RGB").save(buf, "JPEG")
    out["truncated.jpg"] = tmp_path / "truncated.jpg"
    out["truncated.jpg"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    out["empty.png"] = tmp_path / "empty.png"
    out["empty.png"].write_bytes(b"")
    out["text.png"] = tmp_path / "text.png"
    out["text.png"].write_text("this is not an image\n")
    return out


def write_tiny_dataset(root: Path, per_class: int = 6, size: int = 24,
                       classes: tuple[str, ...] = ("fractured", "not fractured"),
                       splits: tuple[str, ...] = ("train", "val", "test")) -> Path:
    rng = np.random.default_rng(0)
    for split in splits:
        for ci, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 255, (size, size), dtype=np.uint8) // (ci + 1)
                Image.fromarray(arr, "L").save(d / f"{split}-{ci}-{i}.png")
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return write_tiny_dataset(tmp_path / "data")


def write_manifest(root: Path, column: str, value: Callable[[int], str]) -> list[Path]:
    """A manifest.csv for every .png under `root`, sorted: its path and `column` =
    value(index). Returns the files in that order."""
    files = sorted(root.rglob("*.png"))
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", column])
        writer.writeheader()
        writer.writerows({"path": str(q.relative_to(root)), column: value(i)}
                         for i, q in enumerate(files))
    return files
