"""The fine-tuning learning-rate schedule: constant, or a cosine decay that ends at 0 with the
last fine-tuning step; recorded in the card, and read as constant from cards before it."""

from __future__ import annotations

import pytest

pytest.importorskip("tensorflow")

from edge_toolkit.train.tfsetup import keras  # noqa: E402
from edge_toolkit.train.trainer import TrainConfig, effective_config, learning_rate  # noqa: E402


def test_cosine_decays_from_the_rate_to_zero_over_the_phase():
    assert learning_rate(3e-5, "constant", 6, 10) == 3e-5
    schedule = learning_rate(3e-5, "cosine", 6, 10)
    assert float(schedule(0)) == pytest.approx(3e-5)
    assert float(schedule(30)) == pytest.approx(1.5e-5, rel=1e-4)  # halfway
    assert float(schedule(60)) == pytest.approx(0.0, abs=1e-12)


def test_the_schedule_defaults_to_constant_and_refuses_unknown_names():
    assert effective_config(TrainConfig(data="x")).fine_tune_schedule == "constant"
    with pytest.raises(ValueError, match="fine_tune_schedule"):
        effective_config(TrainConfig(data="x", fine_tune_schedule="linear"))


def test_a_run_fine_tunes_with_the_schedule_and_records_it(tmp_path):
    from edge_toolkit.card import ModelCard
    from edge_toolkit.synthetic import write_synthetic
    from edge_toolkit.train.trainer import _recorded, train

    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False,
                                              weights=None)
    weights = tmp_path / "backbone.h5"
    backbone.save_weights(str(weights))
    data = write_synthetic(tmp_path / "data", {"train": 12, "val": 6, "test": 4}, size=24)
    cfg = TrainConfig(data=str(data), family="mobilenetv2", out=str(tmp_path / "runs"),
                      name="cosine", model={"input_size": 32, "weights": str(weights)},
                      fine_tune_epochs=2, batch_size=8, bootstrap=0,
                      fine_tune_schedule="cosine", mixed_precision=False)  # GPU: compiled
    run = train(cfg, log=lambda m: None)
    training = ModelCard.load(run / "card.json").export["training"]
    assert training["fine_tune_schedule"] == "cosine"
    rate = keras.models.load_model(run / "model.keras").optimizer.get_config()["learning_rate"]
    assert rate["class_name"] == "CosineDecay"
    n_train = sum(1 for f in (data / "train").rglob("*") if f.is_file())
    assert rate["config"]["decay_steps"] == 2 * -(-n_train // 8)  # 2 epochs of the batches
    training.pop("fine_tune_schedule")  # a card from before the option: constant
    assert _recorded(training, "fine_tune_schedule") == "constant"


def test_a_gpu_shaped_run_trains_every_new_option_and_saves_float32(tmp_path, monkeypatch):
    """No GPU in CI: stand in for one with a MirroredStrategy over the CPU in mixed float16,
    as `strategy_and_precision` sets up on a GPU, and fine-tune with the cosine schedule
    (under a loss-scale optimizer), family weights, fresh draws and re-estimated BatchNorm
    statistics, with determinism decided as for one GPU (off: frozen BatchNorm). The run must
    finish, record each option in its card, save a float32 model that predicts, and leave
    the process in float32."""
    import numpy as np

    import edge_toolkit.train.trainer as trainer
    from edge_toolkit.card import ModelCard
    from edge_toolkit.synthetic import write_synthetic
    from edge_toolkit.train.tfsetup import determinism, tf

    def gpu_like(mixed_precision=None):
        keras.mixed_precision.set_global_policy("mixed_float16")
        return tf.distribute.MirroredStrategy(["/cpu:0"]), True

    policies: list[str] = []  # the policy each model is built under

    def build_and_record(*args, **kwargs):
        policies.append(keras.mixed_precision.global_policy().name)
        return build_model(*args, **kwargs)

    build_model = trainer.build_model
    monkeypatch.setattr(trainer, "strategy_and_precision", gpu_like)
    monkeypatch.setattr(trainer, "build_model", build_and_record)
    monkeypatch.setattr(trainer, "determinism",  # decided as on a machine with one GPU
                        lambda frozen: determinism(frozen, devices=["/physical_device:GPU:0"]))
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False,
                                              weights=None)
    weights = tmp_path / "backbone.h5"
    backbone.save_weights(str(weights))
    data = write_synthetic(tmp_path / "data", {"train": 12, "val": 6, "test": 4}, size=24)
    lines: list[str] = []
    cfg = TrainConfig(data=str(data), family="mobilenetv2", out=str(tmp_path / "runs"),
                      name="gpu-like", model={"input_size": 32, "weights": str(weights)},
                      fine_tune_epochs=2, batch_size=8, bootstrap=0, batchnorm_images=8,
                      fine_tune_schedule="cosine", family_weight=0.5)
    from tensorflow.python.framework.config import is_op_determinism_enabled

    from edge_toolkit.train.tfsetup import set_seed

    before = is_op_determinism_enabled()
    try:
        run = trainer.train(cfg, log=lines.append)
        assert not is_op_determinism_enabled()
    finally:  # process-wide: later tests start as they would have
        set_seed(0, before)
    assert policies == ["mixed_float16", "float32"]  # trained in float16, saved in float32
    assert keras.mixed_precision.global_policy().name == "float32"
    assert any("not bit-reproducible" in m for m in lines)
    model = keras.models.load_model(run / "model.keras", compile=False)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    training = ModelCard.load(run / "card.json").export["training"]
    assert (training["fine_tune_schedule"], training["family_weight"]) == ("cosine", 0.5)
    assert training["augment"]["redraw"] is True and training["batchnorm_images"] == 8
    assert training["determinism"]["deterministic"] is False  # frozen BatchNorm on a GPU
    probs = trainer.predict(model, np.zeros((2, 32, 32, 3), np.float32))
    assert np.isfinite(probs).all()
