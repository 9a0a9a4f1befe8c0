"""Class activation maps on the device, from the model's own feature-map output (numpy + Pillow).

The head is global average pooling then one logistic unit, so the model's logit is
mean_hw(sum_c w_c F[h, w, c]) + bias exactly: CAM[h, w] = sum_c w_c F[h, w, c] is how much
each location pushes towards the positive label. The map lives on the preprocessed square;
it is upsampled and mapped back through the letterbox (or the stretch) onto the original
picture, so the overlay lines up with what the reader sees, for float and int8 models alike.

    clf = Classifier.load("model.tflite")
    ex = explain_file(clf, "xray.png")      # Result + picture + heat (H, W) in [0, 1]
    overlay(ex.image, ex.heat, 0.5).save("xray.heatmap.png")
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edge_toolkit.files import printable
from edge_toolkit.images import open_image
from edge_toolkit.preprocess import PreprocessConfig
from edge_toolkit.runtime.classifier import Classifier
from edge_toolkit.runtime.results import Result
from edge_toolkit.runtime.sources import resolve_key

# Anchor colours of the overlay's colour map (low -> high), interpolated to 256 entries.
COLORMAPS: dict[str, list[tuple[int, int, int]]] = {
    "jet": [(0, 0, 128), (0, 0, 255), (0, 255, 255), (255, 255, 0), (255, 0, 0),
            (128, 0, 0)],
    "inferno": [(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)],
    "hot": [(0, 0, 0), (230, 0, 0), (255, 210, 0), (255, 255, 255)],
}
DEFAULT_COLORMAP = "jet"
DEFAULT_OPACITY = 0.5


class HeatmapError(ValueError):
    """The model cannot give a heatmap (no feature output or no head weights in its card)."""


def class_activation_map(features: np.ndarray, weights: np.ndarray | list[float]
                         ) -> np.ndarray:
    """(h, w, C) feature map and the head's C weights -> (h, w) per-location logit terms."""
    f = np.asarray(features, np.float32)
    w = np.asarray(weights, np.float32).reshape(-1)
    if f.ndim != 3 or f.shape[-1] != w.size:
        raise HeatmapError(f"features {f.shape} do not match {w.size} head weights")
    return f @ w


def content_box(width: int, height: int, cfg: PreprocessConfig
                ) -> tuple[float, float, float, float]:
    """Where the original picture sits on the preprocessed square, in its pixels:
    (left, top, right, bottom), exactly as `preprocess.resize_gray` places it."""
    size = cfg.size
    if cfg.fit == "stretch" or width == height:
        return 0.0, 0.0, float(size), float(size)
    scale = size / max(width, height)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    left, top = (size - w) // 2, (size - h) // 2
    return float(left), float(top), float(left + w), float(top + h)


def to_original(cam: np.ndarray, width: int, height: int, cfg: PreprocessConfig,
                out_size: tuple[int, int] | None = None) -> np.ndarray:
    """Upsample an (h, w) map (covering the preprocessed square) bilinearly onto the
    original picture's (height, width), cropping the letterbox bands away; `out_size`
    (width, height) gives it at another scale of the same picture (a display copy)."""
    cam = np.asarray(cam, np.float32)
    fh, fw = cam.shape
    left, top, right, bottom = content_box(width, height, cfg)
    sx, sy = fw / cfg.size, fh / cfg.size
    box = (left * sx, top * sy, right * sx, bottom * sy)
    img = Image.fromarray(cam, mode="F").resize(out_size or (width, height),
                                                 Image.Resampling.BILINEAR, box=box)
    return np.asarray(img, np.float32)


def normalize_heat(cam: np.ndarray) -> np.ndarray:
    """Positive evidence only, scaled to [0, 1] by this image's strongest location (a map
    with no positive evidence is all zeros): the overlay shows where, not how much."""
    pos = np.maximum(np.asarray(cam, np.float32), 0.0)
    top = float(pos.max()) if pos.size else 0.0
    return pos / top if top > 0 else np.zeros_like(pos)


def colormap_lut(name: str = DEFAULT_COLORMAP) -> np.ndarray:
    """(256, 3) uint8 lookup table for a colour map name."""
    try:
        anchors = np.asarray(COLORMAPS[name], np.float64)
    except KeyError:
        raise HeatmapError(f"unknown colour map {name!r}; known: {', '.join(COLORMAPS)}"
                           ) from None
    pos = np.linspace(0.0, 1.0, len(anchors))
    t = np.linspace(0.0, 1.0, 256)
    lut = np.stack([np.interp(t, pos, anchors[:, i]) for i in range(3)], axis=1)
    return np.rint(lut).astype(np.uint8)


def heat_rgba(heat: np.ndarray, colormap: str = DEFAULT_COLORMAP) -> Image.Image:
    """A transparent colour layer: colour from the map, alpha = heat (for the web page,
    which lays it over the picture with a user-set opacity)."""
    h = np.clip(np.asarray(heat, np.float32), 0.0, 1.0)
    idx = np.rint(h * 255).astype(np.uint8)
    rgba = np.empty((*h.shape, 4), np.uint8)
    rgba[..., :3] = colormap_lut(colormap)[idx]
    rgba[..., 3] = idx
    return Image.fromarray(rgba, mode="RGBA")


def overlay(image: Image.Image, heat: np.ndarray, opacity: float = DEFAULT_OPACITY,
            colormap: str = DEFAULT_COLORMAP) -> Image.Image:
    """The picture in gray with the heat blended over it, each pixel by opacity x heat, so
    cold areas stay plain; RGB, the picture's size."""
    if not 0.0 <= opacity <= 1.0:
        raise HeatmapError(f"opacity must be between 0 and 1, not {opacity}")
    gray = np.asarray(image.convert("L"), np.float32)[..., None]
    h = np.clip(np.asarray(heat, np.float32), 0.0, 1.0)
    if h.shape != gray.shape[:2]:
        raise HeatmapError(f"heat {h.shape} does not match the picture {gray.shape[:2]}")
    color = colormap_lut(colormap)[np.rint(h * 255).astype(np.uint8)].astype(np.float32)
    a = (opacity * h)[..., None]
    out = gray * (1.0 - a) + color * a
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="RGB")


@dataclass
class Explanation:
    """One classified picture: its Result, the picture as the model saw it before resizing
    (8-bit gray, EXIF-oriented; scaled down when `max_side` asked for it) and the heat on it
    ((H, W) in [0, 1], the picture's size; None without one)."""

    result: Result
    image: Image.Image
    heat: np.ndarray | None
    cam: np.ndarray | None = None  # the raw (h, w) logit terms
    original_size: tuple[int, int] | None = None  # (width, height) before scaling down


def fit_within(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled down, proportions kept, so neither side exceeds `max_side`."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def explain_image(clf: Classifier, img: Image.Image, *, file: str = "<image>", key: str = "",
                  heatmap: bool = True, max_side: int | None = None) -> Explanation:
    """Classify a picture (input gate included) and, when the model can, compute its heatmap
    from the same single inference (the heat is skipped, and features not read, when
    `heatmap` is False; a picture the gate refuses gets neither label nor heat).
    `max_side` scales the returned picture and heat down for display (a 12 MP film scan
    does not need a 12 MP heatmap); classification always sees the full picture."""
    t0 = time.perf_counter()
    img = open_image(img, max_pixels=clf.config.max_pixels)
    want = heatmap and clf.has_heatmap
    # the classifier's own path: input gate (a refused picture gets no label and no heat)
    result, inf = clf.classify_image(img, t0=t0, file=file, key=key, features=want)
    original_size = img.size
    size = fit_within(img.width, img.height, max_side)
    if size != img.size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    if not want or inf is None or inf.features is None:
        return Explanation(result, img, None, None, original_size)
    cam = class_activation_map(inf.features, clf.card.heatmap["weights"])
    w0, h0 = original_size
    heat = normalize_heat(to_original(cam, w0, h0, clf.config, out_size=size))
    return Explanation(result, img, heat, cam, original_size)


def explain_file(clf: Classifier, path: str | Path, *, file: str | None = None,
                 heatmap: bool = True, max_side: int | None = None) -> Explanation:
    """`explain_image` for a file; raises ImageLoadError for a bad one."""
    img = open_image(path, max_pixels=clf.config.max_pixels)
    return explain_image(clf, img, file=file if file is not None else str(path),
                         key=resolve_key(path), heatmap=heatmap, max_side=max_side)


def overlay_name(file: str | Path, key: str | None = None) -> str:
    """`xray.jpg` -> `xray.heatmap.png`: the overlay written beside the results. With the
    source's key, `xray~1a2b3c4d.heatmap.png`: the name for a second `xray.jpg` from another
    folder, the same for that file in every run (a hash of its path, not a counter)."""
    if key is None:
        return f"{Path(file).stem}.heatmap.png"
    import hashlib

    tag = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{Path(file).stem}~{tag}.heatmap.png"


SOURCE_TEXT = "Source"  # PNG text chunk naming the image an overlay belongs to


def source_text(key: str) -> str:
    """`key` as an overlay stores it (a path that is not valid UTF-8 keeps its odd bytes as
    escapes): compare with `overlay_source`'s answer through this."""
    return printable(key)


def save_overlay(picture: Image.Image, path: Path, key: str) -> None:
    """Write an overlay PNG that names its source image, so a later run into the same folder
    can tell its own overlay from another image's of the same name."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt(SOURCE_TEXT, source_text(key))
    picture.save(path, format="PNG", pnginfo=info)


def overlay_source(path: Path) -> str | None:
    """The source image an overlay file names (`source_text` of its key); None for a file
    with no name in it (written before overlays carried one, or not an overlay) or that
    cannot be read. Reads the PNG's header chunks only, not its pixels."""
    try:
        with Image.open(path) as im:
            value = im.info.get(SOURCE_TEXT)
    except (OSError, ValueError, SyntaxError):
        return None
    return str(value) if value is not None else None
