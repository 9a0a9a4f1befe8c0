"""Training-time augmentation, applied in the input pipeline and never inside the model
(tfmot cannot quantize Random* layers, and the exported model must be deterministic)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edge_toolkit.preprocess import VALUE_RANGES
from edge_toolkit.train.tfsetup import keras, tf


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of each random transform; 0 (or 'none') switches one off."""

    rotation: float = 0.05  # fraction of a full turn: 0.05 = +-18 degrees
    flip: str = "horizontal"  # horizontal | vertical | horizontal_and_vertical | none
    zoom: float = 0.1
    shift: float = 0.1
    brightness: float = 0.1  # fraction of the value range
    contrast: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_augmenter(cfg: AugmentConfig, value_range: str, seed: int = 0) -> Any:
    """A Keras Sequential of Random* layers for images already in `value_range`."""
    lo, hi = VALUE_RANGES[value_range]
    steps = []
    if cfg.flip != "none":
        steps.append(keras.layers.RandomFlip(cfg.flip, seed=seed))
    if cfg.rotation:
        steps.append(keras.layers.RandomRotation(cfg.rotation, fill_mode="constant",
                                                 fill_value=lo, seed=seed + 1))
    if cfg.zoom:
        steps.append(keras.layers.RandomZoom(cfg.zoom, fill_mode="constant", fill_value=lo,
                                             seed=seed + 2))
    if cfg.shift:
        steps.append(keras.layers.RandomTranslation(cfg.shift, cfg.shift, fill_mode="constant",
                                                    fill_value=lo, seed=seed + 3))
    if cfg.brightness:
        steps.append(keras.layers.RandomBrightness(cfg.brightness, value_range=(lo, hi),
                                                   seed=seed + 4))
    if cfg.contrast:
        steps.append(keras.layers.RandomContrast(cfg.contrast, seed=seed + 5))
    return keras.Sequential(steps, name="augment")


def make_dataset(x: Any, y: Any, batch_size: int, augmenter: Any | None = None,
                 shuffle: bool = False, seed: int = 0, value_range: str = "0,1") -> Any:
    """A batched tf.data pipeline over in-memory preprocessed arrays."""
    lo, hi = VALUE_RANGES[value_range]
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype("float32")))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augmenter is not None:
        ds = ds.map(lambda a, b: (tf.clip_by_value(augmenter(a, training=True), lo, hi), b),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
