"""The representative dataset for full-integer calibration: real train images through the
shared preprocessing, drawn with a fixed seed. No TensorFlow (the converter takes any
generator of `[batch]` lists)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

DEFAULT_IMAGES = 300
MIN_RECOMMENDED = 100


def pick(n_available: int, n: int, seed: int = 0) -> np.ndarray:
    """Indices of up to `n` distinct images out of `n_available`, sorted, reproducible."""
    if n_available <= n:
        return np.arange(n_available)
    return np.sort(np.random.default_rng(seed).choice(n_available, n, replace=False))


def representative_images(x: np.ndarray, n: int = DEFAULT_IMAGES, seed: int = 0,
                          warn: Callable[[str], None] | None = None) -> np.ndarray:
    """Up to `n` of the preprocessed images `x` (train split); warns when fewer than
    MIN_RECOMMENDED are available, since int8 ranges from a handful of images clip."""
    if len(x) == 0:
        raise ValueError("no train images for the representative dataset")
    chosen = np.asarray(x[pick(len(x), n, seed)], dtype=np.float32)
    if len(chosen) < MIN_RECOMMENDED and warn is not None:
        warn(f"only {len(chosen)} train images for int8 calibration (fewer than "
             f"{MIN_RECOMMENDED}): activation ranges may be poor; int8 accuracy may suffer")
    return chosen


def generator(images: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    """A `representative_dataset` callable for TFLiteConverter: one image per step."""

    def gen() -> Iterator[list[np.ndarray]]:
        for i in range(len(images)):
            yield [images[i:i + 1]]

    return gen
