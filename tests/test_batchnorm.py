"""BatchNorm statistics re-estimated on radiographs: the running mean of each layer's batch
statistics, the layers left as they were, and a training run that records and keeps them."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edge_toolkit.train.batchnorm import reestimate_batchnorm  # noqa: E402
from edge_toolkit.train.tfsetup import keras  # noqa: E402


def test_statistics_become_the_data_statistics_and_the_layer_is_left_as_found():
    inputs = keras.Input((8, 8, 2))
    bn = keras.layers.BatchNormalization(name="bn")
    model = keras.Model(inputs, bn(inputs))
    bn.trainable = False  # frozen, as in fine-tuning: Keras 2 would then not update it
    x = np.random.default_rng(0).normal(3.0, 2.0, (96, 8, 8, 2)).astype(np.float32)
    assert reestimate_batchnorm(model, x, batch_size=32, indices=np.arange(5)) == 5  # one
    assert reestimate_batchnorm(model, x, batch_size=32, indices=np.arange(90)) == 64
    assert reestimate_batchnorm(model, x, batch_size=32) == 96
    np.testing.assert_allclose(bn.moving_mean.numpy(), x.mean(axis=(0, 1, 2)), atol=1e-3)
    np.testing.assert_allclose(bn.moving_variance.numpy(), x.var(axis=(0, 1, 2)), rtol=0.01)
    assert bn.trainable is False and bn.momentum == 0.99
    np.testing.assert_allclose(bn.gamma.numpy(), 1.0)  # scale and offset untouched


def test_a_layer_sees_inputs_normalised_by_the_layers_below():
    """Stacked layers: the second one's statistics are those of its own input, the first
    one's output (normalised by each batch's statistics during the pass), not of the raw
    images."""
    inputs = keras.Input((4, 4, 1))
    first = keras.layers.BatchNormalization(name="first")
    second = keras.layers.BatchNormalization(name="second")
    model = keras.Model(inputs, second(first(inputs) * 3.0 + 5.0))
    x = np.random.default_rng(1).normal(-4.0, 0.5, (128, 4, 4, 1)).astype(np.float32)
    reestimate_batchnorm(model, x, batch_size=32)
    np.testing.assert_allclose(second.moving_mean.numpy(), [5.0], atol=0.05)
    np.testing.assert_allclose(second.moving_variance.numpy(), [9.0], rtol=0.05)


def test_a_run_records_the_statistics_it_trained_with(tmp_path):
    """`batchnorm_images` re-estimates the pretrained backbone's statistics before the probe;
    the saved model keeps them (fine-tuning leaves BatchNorm frozen) and the card says so;
    0 keeps the weights file's statistics."""
    from edge_toolkit.card import ModelCard
    from edge_toolkit.synthetic import write_synthetic
    from edge_toolkit.train.trainer import TrainConfig, train

    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False,
                                              weights=None)
    weights = tmp_path / "backbone.h5"
    backbone.save_weights(str(weights))
    imagenet = backbone.get_layer("bn_Conv1").moving_mean.numpy()
    data = write_synthetic(tmp_path / "data", {"train": 12, "val": 6, "test": 4}, size=24)
    lines: list[str] = []
    means = {}
    for n in (0, 16):
        cfg = TrainConfig(data=str(data), family="mobilenetv2", out=str(tmp_path / "runs"),
                          name=f"bn{n}", model={"input_size": 32, "weights": str(weights)},
                          fine_tune_epochs=1, batch_size=8, bootstrap=0, batchnorm_images=n)
        run = train(cfg, log=lines.append)
        assert ModelCard.load(run / "card.json").export["training"]["batchnorm_images"] == n
        model = keras.models.load_model(run / "model.keras", compile=False)
        means[n] = model.get_layer("bn_Conv1").moving_mean.numpy()
    np.testing.assert_array_equal(means[0], imagenet)
    assert not np.allclose(means[16], imagenet)
    assert any("re-estimated on 16 training radiographs" in m for m in lines)


def test_the_setting_is_recorded_only_where_it_does_something():
    """A card must not claim re-estimated statistics for a network without pretrained
    ones; impossible settings are refused before any image loads."""
    from edge_toolkit.train.trainer import TrainConfig, effective_config

    scratch = TrainConfig(data="x", family="scratch_cnn", batchnorm_images=16)
    assert effective_config(scratch).batchnorm_images == 0
    pretrained = TrainConfig(data="x", family="mobilenetv2", batchnorm_images=16,
                             model={"weights": "w.h5"})
    assert effective_config(pretrained).batchnorm_images == 16
    no_weights = TrainConfig(data="x", family="mobilenetv2", batchnorm_images=16)
    assert effective_config(no_weights).batchnorm_images == 0
    with pytest.raises(ValueError, match="label_smoothing"):
        effective_config(TrainConfig(data="x", family="scratch_cnn", label_smoothing=1.5))
