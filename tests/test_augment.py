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


def test_acquisition_augmentation_changes_exposure_sharpness_and_noise_in_range():
    """Gamma moves mid-greys and leaves black and white; blur lowers local contrast; noise
    raises it on a flat image; everything stays in the value range."""
    from edge_toolkit.train.augment import acquisition, gaussian_blur

    flat = np.full((64, 16, 16, 1), 0.0, np.float32)  # mid-grey in [-1, 1]
    gamma = acquisition(flat, AugmentConfig(gamma=0.5), -1.0, 1.0).numpy()
    assert gamma.std(axis=(1, 2, 3)).max() < 1e-5  # one gamma per image
    assert gamma.min() < -0.1 and gamma.max() > 0.1  # darker and brighter images
    ends = acquisition(np.array([-1.0, 1.0], np.float32).reshape(1, 1, 2, 1),
                       AugmentConfig(gamma=0.5), -1.0, 1.0).numpy()
    np.testing.assert_allclose(ends.ravel(), [-1.0, 1.0], atol=1e-3)
    noisy = acquisition(flat, AugmentConfig(noise=0.1), -1.0, 1.0).numpy()
    assert noisy.std() > 0.01 and noisy.min() >= -1 and noisy.max() <= 1
    stripes = np.tile(np.array([0.0, 1.0], np.float32), 8).reshape(1, 1, 16, 1)
    stripes = np.repeat(stripes, 16, axis=1)
    blurred = gaussian_blur(stripes, 1.5, 1.5).numpy()
    assert blurred[0, 8, 4:12, 0].std() < 0.2 * stripes[0, 8, 4:12, 0].std()
    assert np.allclose(gaussian_blur(stripes, 0.0, 1.5).numpy(), stripes, atol=1e-4)


def test_acquisition_settings_come_from_the_cli():
    from edge_toolkit.train.cli import parse_augment

    cfg = parse_augment(AugmentConfig(), ("gamma=0.3", "blur=1", "noise=0.02"))
    assert (cfg.gamma, cfg.blur, cfg.noise) == (0.3, 1.0, 0.02)


def test_mixup_mixes_the_weighted_losses_of_two_images():
    """Each mixed image must carry the loss of the same blend, weighted as its two images
    were (class and source balance), or mixup teaches noise and undoes the balancing:
    constant images equal to their index make each image's blend readable."""
    from edge_toolkit.train.augment import make_dataset
    from edge_toolkit.train.tfsetup import set_seed

    set_seed(0)
    n = 16
    x = np.stack([np.full((4, 4, 1), i, np.float32) for i in range(n)])
    y = (np.arange(n) % 2).astype(np.float32)  # odd images fractured
    w = np.where(y == 1, 4.0, 1.0).astype(np.float32)  # the rarer class weighs more
    mixed_x, mixed_y, mixed_w = (t.numpy() for t in next(iter(
        make_dataset(x, y, n, weights=w, mixup=0.2))))
    value = mixed_x[:, 0, 0, 0]
    assert np.allclose(mixed_x, value[:, None, None, None])  # one blend per image
    assert not np.allclose(value, np.arange(n)), "some images must be blended"
    # recover lam and the partner from the blend, then check the weighted loss mix
    rows = []
    for i, v in enumerate(value):
        for j in range(n):
            lam = 1.0 if j == i else (v - j) / (i - j)
            if 0 <= lam <= 1:
                mw = lam * w[i] + (1 - lam) * w[j]
                my = (lam * w[i] * y[i] + (1 - lam) * w[j] * y[j]) / mw
                if abs(mw - mixed_w[i]) < 1e-4 and abs(my - mixed_y[i]) < 1e-4:
                    rows.append(i)
                    break
    assert rows == list(range(n)), "every label and weight must match its image's blend"
    plain = next(iter(make_dataset(x, y, n, weights=w)))  # mixup 0: the batch as it is
    np.testing.assert_array_equal(plain[1].numpy(), y)


def test_mixup_comes_from_the_cli_and_is_off_by_default():
    from edge_toolkit.train.cli import parse_augment

    assert AugmentConfig().mixup == 0.0
    assert parse_augment(AugmentConfig(), ("mixup=0.2",)).mixup == 0.2
    for bad in ("mixup=-0.2", "mixup=nan", "noise=inf", "gamma=much"):
        with pytest.raises(ValueError, match="mixup|noise|gamma"):
            parse_augment(AugmentConfig(), (bad,))


def _two_epochs(redraw: bool, seed: int = 0) -> list[np.ndarray]:
    """The batches Keras' fit would see in two epochs: one iterator over `epoch_steps`
    batches per epoch when redrawing, a new iterator per epoch otherwise."""
    from edge_toolkit.train.augment import epoch_steps, make_dataset
    from edge_toolkit.train.tfsetup import set_seed

    set_seed(seed)
    x = np.zeros((6, 4, 4, 1), np.float32)  # flat images: only the brightness draws show
    y = (np.arange(6) % 2).astype(np.float32)
    aug = build_augmenter(AugmentConfig(0, "none", 0, 0, brightness=0.3, contrast=0),
                          "-1,1", seed)
    ds = make_dataset(x, y, 4, aug, redraw=redraw)
    steps = epoch_steps(len(y), 4, redraw)
    if redraw:
        it = iter(ds)
        return [next(it)[0].numpy() for _ in range(2 * steps)]
    return [b[0].numpy() for _ in range(2) for b in ds]


def test_every_epoch_draws_afresh_and_reproducibly():
    """One iterator per fit: epoch 2's brightness draws differ from epoch 1's (a new
    iterator per epoch restarts them), and the same seed gives the same stream."""
    from edge_toolkit.train.augment import epoch_steps

    assert epoch_steps(6, 4, True) == 2 and epoch_steps(6, 4, False) is None
    fresh = _two_epochs(redraw=True)
    assert [b.shape[0] for b in fresh] == [4, 2, 4, 2], "one pass of the data per epoch"
    assert not np.allclose(fresh[0], fresh[2]) and not np.allclose(fresh[1], fresh[3])
    again = _two_epochs(redraw=True)
    assert all(np.array_equal(a, b) for a, b in zip(fresh, again))
    repeated = _two_epochs(redraw=False)  # the runs before redraw: kept reproducible
    assert np.allclose(repeated[0], repeated[2]) and np.allclose(repeated[1], repeated[3])


def test_redraw_is_the_default_and_a_card_without_it_repeated_its_draws():
    from edge_toolkit.train.cli import parse_augment

    assert AugmentConfig().redraw is True
    old = AugmentConfig.from_record({"rotation": 0.05, "brightness": 0.1, "unknown": 1})
    assert old.redraw is False and old.mixup == 0.0 and old.brightness == 0.1
    assert AugmentConfig.from_record(AugmentConfig().to_dict()) == AugmentConfig()
    off = AugmentConfig(0, "none", 0, 0, 0, 0).to_dict()
    off.pop("redraw")  # nothing drawn per epoch: the old and new pipelines are the same
    assert AugmentConfig.from_record(off).redraw is True
    geometric = AugmentConfig(brightness=0, contrast=0).to_dict()
    geometric.pop("redraw")
    assert AugmentConfig.from_record(geometric).redraw is True
    assert parse_augment(AugmentConfig(), ("redraw=0",)).redraw is False
    with pytest.raises(ValueError, match="redraw"):
        parse_augment(AugmentConfig(), ("redraw=yes",))
