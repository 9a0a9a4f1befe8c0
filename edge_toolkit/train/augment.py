"""Training-time augmentation, applied in the input pipeline and never inside the model
(tfmot cannot quantize Random* layers, and the exported model must be deterministic)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edge_toolkit.preprocess import VALUE_RANGES
from edge_toolkit.train.tfsetup import keras, tf

F32 = "float32"  # inputs stay float32 under a mixed-precision policy; the model casts


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
    """A function (batch, training) -> augmented batch, for images already in `value_range`."""
    lo, hi = VALUE_RANGES[value_range]
    steps = []
    if cfg.flip != "none":
        steps.append(keras.layers.RandomFlip(cfg.flip, seed=seed, dtype=F32))
    if cfg.rotation:
        steps.append(keras.layers.RandomRotation(cfg.rotation, fill_mode="constant",
                                                 fill_value=lo, seed=seed + 1, dtype=F32))
    if cfg.zoom:
        steps.append(keras.layers.RandomZoom(cfg.zoom, fill_mode="constant", fill_value=lo,
                                             seed=seed + 2, dtype=F32))
    if cfg.shift:
        steps.append(keras.layers.RandomTranslation(cfg.shift, cfg.shift, fill_mode="constant",
                                                    fill_value=lo, seed=seed + 3,
                                                    dtype=F32))
    geometric = keras.Sequential(steps, name="augment") if steps else None

    def augment(x: Any, training: bool = True) -> Any:
        """Geometric layers, then brightness and contrast in the images' own value range.
        (Keras' RandomContrast clips to [0, 255], which wipes out the negative half of
        [-1, 1] images: a silent train/serve skew, so it is not used.)"""
        if geometric is not None:
            x = geometric(x, training=training)
        n = tf.shape(x)[0]
        if cfg.contrast:
            c = tf.random.uniform([n, 1, 1, 1], 1 - cfg.contrast, 1 + cfg.contrast)
            mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
            x = (x - mean) * c + mean
        if cfg.brightness:
            x = x + tf.random.uniform([n, 1, 1, 1], -cfg.brightness, cfg.brightness) * (hi - lo)
        return tf.clip_by_value(x, lo, hi)

    return augment


def make_dataset(x: Any, y: Any, batch_size: int, augmenter: Any | None = None,
                 shuffle: bool = False, seed: int = 0, weights: Any | None = None) -> Any:
    """A batched tf.data pipeline over in-memory preprocessed arrays; with `weights`, each
    element carries its sample weight (class and source balance) as Keras expects.

    Only indices go through tf.data (shuffled, batched); each batch is gathered from the
    numpy arrays as it is needed. `from_tensor_slices` on the images plus a full shuffle
    buffer would hold two more copies of the training set: 4.6 GB at 224 px for 3,900 images,
    enough to run a small machine out of memory."""
    import numpy as np

    y = np.asarray(y, np.float32)
    arrays = [np.asarray(x, np.float32), y] + ([] if weights is None
                                               else [np.asarray(weights, np.float32)])

    def gather(idx: Any) -> list[Any]:
        return [a[idx] for a in arrays]

    def load(idx: Any) -> tuple[Any, ...]:
        out = tf.numpy_function(gather, [idx], [tf.float32] * len(arrays), stateful=False)
        for t, a in zip(out, arrays):
            t.set_shape((None, *a.shape[1:]))
        return tuple(out)

    ds = tf.data.Dataset.range(len(y))
    if shuffle:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(load)
    if augmenter is not None:
        ds = ds.map(lambda a, *rest: (augmenter(a, training=True), *rest),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
