"""Augmentation must keep images in their value range and their overall look: a shift in
distribution between training and serving silently wrecks a model."""

from __future__ import annotations

import numpy as np
import pytest
from extras import require

require("tensorflow")

from edge_toolkit.train.augment import AugmentConfig, build_augmenter  # noqa: E402


@pytest.mark.parametrize("value_range,lo,hi", [("-1,1", -1.0, 1.0), ("0,1", 0.0, 1.0)])
def test_augmentation_keeps_value_range_and_distribution(value_range, lo, hi):
    rng = np.random.default_rng(0)
    x = rng.uniform(lo, hi, (16, 24, 24, 3)).astype(np.float32)
    out = build_augmenter(AugmentConfig(), value_range, seed=0)(x, training=True).numpy()
    assert out.shape == x.shape
    assert out.min() >= lo and out.max() <= hi
    assert out.min() < lo + 0.2 * (hi - lo), "the dark half of the range must survive"
    assert abs(out.mean() - x.mean()) < 0.15 * (hi - lo)


def test_no_augmentation_is_identity():
    x = np.random.default_rng(1).uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32)
    aug = build_augmenter(AugmentConfig(0, "none", 0, 0, 0, 0), "-1,1")
    np.testing.assert_allclose(aug(x, training=True).numpy(), x)
