"""The one preprocessing function: training, evaluation, export and the device all call it.

Its settings live in the model card (`card.preprocessing`), so a model file carries the exact
recipe it was trained with and there is no train/serve skew. Normalisation happens here, in
numpy, not inside the Keras model: tfmot cannot quantize `Rescaling` layers. No TensorFlow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from edge_toolkit.images import DEFAULT_MAX_PIXELS, open_image

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}
VALUE_RANGES = {"-1,1": (-1.0, 1.0), "0,1": (0.0, 1.0), "0,255": (0.0, 255.0)}
# Per-image grey-level normalisation, applied to the resized radiograph (never to the
# letterbox border): hospitals window and post-process their X-rays differently.
INTENSITY = ("none", "autocontrast", "equalize")
AUTOCONTRAST_CUTOFF = 1  # percent of the darkest and of the brightest pixels clipped


@dataclass(frozen=True)
class PreprocessConfig:
    """How a file becomes a model input. `fit='pad'` letterboxes to keep bone proportions."""

    size: int = 160
    channels: int = 3
    resize: str = "bilinear"
    fit: str = "pad"
    value_range: str = "-1,1"
    max_pixels: int = DEFAULT_MAX_PIXELS
    intensity: str = "none"  # one of INTENSITY; cards without it were trained with "none"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")
        if self.resize not in _RESAMPLE:
            raise ValueError(f"resize must be one of {sorted(_RESAMPLE)}, not {self.resize!r}")
        if self.fit not in ("pad", "stretch"):
            raise ValueError(f"fit must be 'pad' or 'stretch', not {self.fit!r}")
        if self.value_range not in VALUE_RANGES:
            raise ValueError(f"value_range must be one of {sorted(VALUE_RANGES)}")
        if self.intensity not in INTENSITY:
            raise ValueError(f"intensity must be one of {list(INTENSITY)}, "
                             f"not {self.intensity!r}")
        if self.size < 8:
            raise ValueError(f"size must be at least 8, not {self.size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.channels)


def adjust_intensity(img: Image.Image, mode: str) -> Image.Image:
    """Grey levels of a grayscale image spread the same way whatever the hospital's
    windowing: 'autocontrast' stretches the 1st to 99th percentile to 0-255, 'equalize'
    flattens the histogram."""
    if mode == "autocontrast":
        return ImageOps.autocontrast(img, cutoff=AUTOCONTRAST_CUTOFF)
    if mode == "equalize":
        return ImageOps.equalize(img)
    return img


def resize_gray(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """Grayscale PIL image -> uint8 array (size, size), stretched or letterboxed in black,
    its grey levels normalised by `cfg.intensity` before the border is added."""
    method = _RESAMPLE[cfg.resize]
    if cfg.fit == "stretch" or img.width == img.height:
        out = adjust_intensity(img.resize((cfg.size, cfg.size), method), cfg.intensity)
        return np.asarray(out, dtype=np.uint8)
    scale = cfg.size / max(img.width, img.height)
    w = max(1, round(img.width * scale))
    h = max(1, round(img.height * scale))
    canvas = Image.new("L", (cfg.size, cfg.size), 0)
    canvas.paste(adjust_intensity(img.resize((w, h), method), cfg.intensity),
                 ((cfg.size - w) // 2, (cfg.size - h) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def normalize(pixels: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 (H, W) pixels -> float32 (H, W, C) in the configured value range."""
    lo, hi = VALUE_RANGES[cfg.value_range]
    x = pixels.astype(np.float32) * np.float32((hi - lo) / 255.0) + np.float32(lo)
    x = x[..., None]
    if cfg.channels == 3:
        x = np.repeat(x, 3, axis=-1)
    return x


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype,
             work: np.ndarray | None = None) -> np.ndarray:
    """Preprocessed floats -> an integer input tensor: rint(x / scale + zero_point), clipped.

    The one rounding rule for the device, export validation and benchmarks. With 8-bit
    inputs every pixel lands near a .5 boundary (x / scale = pixel - 127.5), so two formulas
    that differ only in float rounding disagree on many pixels and shift int8 outputs.
    `work` (float32, x's shape) avoids allocating on the device's per-image path.
    """
    info = np.iinfo(dtype)
    w = np.divide(x, np.float32(scale), out=work, dtype=np.float32)
    w += np.float32(zero_point)
    np.rint(w, out=w)
    np.clip(w, info.min, info.max, out=w)
    return w.astype(dtype, copy=False)


def preprocess(source: str | Path | Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """File or PIL image -> float32 (size, size, channels). Raises ImageLoadError."""
    img = open_image(source, max_pixels=cfg.max_pixels)
    return normalize(resize_gray(img, cfg), cfg)
