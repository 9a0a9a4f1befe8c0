"""Training-time augmentation, applied in the input pipeline and never inside the model
(tfmot cannot quantize Random* layers, and the exported model must be deterministic)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

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
    # acquisition: what differs between hospitals' detectors, exposure and processing
    gamma: float = 0.0  # log-gamma range: 0.3 = gamma between exp(-0.3) and exp(0.3)
    blur: float = 0.0  # largest Gaussian blur sigma, in pixels (drawn per batch)
    noise: float = 0.0  # largest Gaussian noise sd, as a fraction of the range (per image)
    # mixup: each training image blended with another of its batch, lambda ~ Beta(mixup,
    # mixup), its loss the lambda-weighted mix of the two weighted losses (`mix_batch`);
    # applied in `make_dataset`, since it needs the labels and weights (0: off)
    mixup: float = 0.0
    # True: every epoch draws afresh (one endless iterator over the whole fit). False: each
    # epoch repeats the first epoch's brightness/contrast/acquisition/mixup draws batch slot
    # by batch slot, as runs before the fix of 2026-12-05 did (op-seeded random ops restart with
    # each epoch's new iterator); kept so those runs can be reproduced from their cards
    redraw: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> AugmentConfig:
        """The augmentation a card's training record describes. A transform the card
        predates was off; a card without `redraw` repeated its draws every epoch, which
        only mattered where it drew intensity or mixup values at all."""
        known = {f.name for f in fields(cls)}
        record = {k: v for k, v in (record or {}).items() if k in known}
        cfg = cls(**({"gamma": 0.0, "blur": 0.0, "noise": 0.0, "mixup": 0.0} | record))
        if "redraw" not in record:
            cfg = replace(cfg, redraw=not cfg.draws_per_epoch())
        return cfg

    def draws_per_epoch(self) -> bool:
        """Whether it draws op-seeded random values (intensity, mixup), the ones a new
        iterator restarts; the geometric layers and the shuffle vary every epoch anyway."""
        return any((self.brightness, self.contrast, self.gamma, self.blur, self.noise,
                    self.mixup))


def epoch_steps(n: int, batch_size: int, redraw: bool) -> int | None:
    """`steps_per_epoch` for Keras' fit on `make_dataset(..., redraw=redraw)`: one pass of
    the training set per epoch over the endless dataset; None (one iterator per epoch, so
    Keras counts the batches itself) otherwise."""
    return math.ceil(n / batch_size) if redraw else None


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
        if cfg.gamma or cfg.blur or cfg.noise:
            x = acquisition(x, cfg, lo, hi)
        if cfg.contrast:
            c = tf.random.uniform([n, 1, 1, 1], 1 - cfg.contrast, 1 + cfg.contrast)
            mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
            x = (x - mean) * c + mean
        if cfg.brightness:
            x = x + tf.random.uniform([n, 1, 1, 1], -cfg.brightness, cfg.brightness) * (hi - lo)
        return tf.clip_by_value(x, lo, hi)

    return augment


def acquisition(x: Any, cfg: AugmentConfig, lo: float, hi: float) -> Any:
    """Gamma (per image), Gaussian blur (one sigma per batch) and sensor noise (per image),
    applied on [0, 1] and mapped back to the images' value range: the differences between
    one hospital's detector and processing and another's."""
    n = tf.shape(x)[0]
    u = tf.clip_by_value((x - lo) / (hi - lo), 0.0, 1.0)
    if cfg.gamma:
        g = tf.exp(tf.random.uniform([n, 1, 1, 1], -cfg.gamma, cfg.gamma))
        u = tf.pow(u + 1e-6, g)
    if cfg.blur:
        u = gaussian_blur(u, tf.random.uniform([], 0.0, cfg.blur), cfg.blur)
    if cfg.noise:
        sd = tf.random.uniform([n, 1, 1, 1], 0.0, cfg.noise)
        u = u + tf.random.normal(tf.shape(u)) * sd
    return tf.clip_by_value(u, 0.0, 1.0) * (hi - lo) + lo


def gaussian_blur(u: Any, sigma: Any, max_sigma: float) -> Any:
    """Separable Gaussian blur of a (N, H, W, C) batch; `sigma` may be a tensor below
    `max_sigma`, which fixes the kernel size (sigma near 0 leaves the image as it is)."""
    radius = max(1, int(np.ceil(2 * max_sigma)))
    t = tf.range(-radius, radius + 1, dtype=F32)
    k = tf.exp(-0.5 * tf.square(t / tf.maximum(sigma, 1e-3)))
    k = k / tf.reduce_sum(k)
    channels = u.shape[-1]
    kx = tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, channels, 1])
    ky = tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, channels, 1])
    u = tf.nn.depthwise_conv2d(u, kx, [1, 1, 1, 1], "SAME")
    return tf.nn.depthwise_conv2d(u, ky, [1, 1, 1, 1], "SAME")


def mix_batch(x: Any, y: Any, w: Any | None, alpha: float, seed: int = 0) -> tuple[Any, ...]:
    """Mixup within one batch: image i becomes lam_i x_i + (1 - lam_i) x_j for a shuffled
    partner j, lam_i ~ Beta(alpha, alpha); a small alpha keeps most images close to one
    radiograph. Its loss is the lam-weighted mix of the two images' weighted losses: with
    sample weights (class and source balance), weight lam w_i + (1 - lam) w_j and label
    (lam w_i y_i + (1 - lam) w_j y_j) / that weight (cross-entropy is linear in the label),
    so mixing does not undo the balancing; without weights, label lam y_i + (1 - lam) y_j."""
    n = tf.shape(x)[0]
    partner = tf.random.shuffle(tf.range(n), seed=seed)
    g1 = tf.random.gamma([n], alpha, seed=seed + 1)
    g2 = tf.random.gamma([n], alpha, seed=seed + 2)
    lam = g1 / tf.maximum(g1 + g2, 1e-12)

    def blend(a: Any, t: Any) -> Any:
        t = tf.reshape(t, tf.concat([[n], tf.ones([tf.rank(a) - 1], tf.int32)], 0))
        return t * a + (1 - t) * tf.gather(a, partner)

    mixed = blend(x, lam)
    if w is None:
        return mixed, blend(y, lam)
    weight = blend(w, lam)
    share = lam * w / tf.maximum(weight, 1e-12)  # image i's share of the mixed loss
    return mixed, blend(y, share), weight


def make_dataset(x: Any, y: Any, batch_size: int, augmenter: Any | None = None,
                 shuffle: bool = False, seed: int = 0, weights: Any | None = None,
                 mixup: float = 0.0, redraw: bool = False) -> Any:
    """A batched tf.data pipeline over in-memory preprocessed arrays; with `weights`, each
    element carries its sample weight (class and source balance) as Keras expects; with
    `mixup` > 0, each batch is mixed after augmentation (`mix_batch`).

    With `redraw`, the dataset is endless (reshuffled every pass) and fit needs
    `epoch_steps`: one iterator then serves every epoch, so the random draws go on instead of
    restarting; a new iterator per epoch would restart every op-seeded draw, and each epoch
    would see the first epoch's brightness, contrast and mixup draws again.

    Only indices go through tf.data (shuffled, batched); each batch is gathered from the
    numpy arrays as it is needed. `from_tensor_slices` on the images plus a full shuffle
    buffer would hold two more copies of the training set: 4.6 GB at 224 px for 3,900 images,
    enough to run a small machine out of memory."""

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
    ds = ds.batch(batch_size)
    if redraw:
        ds = ds.repeat()
    ds = ds.map(load)
    if augmenter is not None:
        ds = ds.map(lambda a, *rest: (augmenter(a, training=True), *rest),
                    num_parallel_calls=tf.data.AUTOTUNE)
    if mixup:
        ds = ds.map(lambda a, b, *w: mix_batch(a, b, w[0] if w else None, mixup, seed + 7),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
