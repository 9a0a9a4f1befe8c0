"""The model registry: every family is looked up by name, and its config travels in the card.

Every model is one flat functional `tf_keras` graph from the preprocessed image (values already
in the card's range: normalisation lives in `edge_toolkit.preprocess`, not in a `Rescaling`
layer) to one sigmoid probability of 'fractured'. Flat, and free of Rescaling/Random*/Lambda
layers, so tfmot can prune and quantize it without surgery.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_toolkit.train.tfsetup import keras

layers = keras.layers
HEAD_PREFIX = "head_"


@dataclass(frozen=True)
class ModelFamily:
    """A registered family: how to build it and the defaults that make it work."""

    name: str
    build: Callable[[dict[str, Any]], Any]
    defaults: dict[str, Any]
    description: str
    has_backbone: bool = False
    preprocessing: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # TrainConfig defaults that suit it

    def config(self, **overrides: Any) -> dict[str, Any]:
        unknown = set(overrides) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {sorted(unknown)}; "
                             f"known: {sorted(self.defaults)}")
        cfg = dict(self.defaults)
        cfg.update({k: v for k, v in overrides.items() if v is not None})
        return cfg


REGISTRY: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    REGISTRY[family.name] = family
    return family


def get_family(name: str) -> ModelFamily:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(REGISTRY)}") from None


def build_model(name: str, **overrides: Any) -> tuple[Any, dict[str, Any]]:
    """Build a family by name; return (model, the full config to store in the card)."""
    family = get_family(name)
    cfg = family.config(**overrides)
    return family.build(cfg), cfg


def _head(x: Any, dropout: float) -> Any:
    x = layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{HEAD_PREFIX}dropout")(x)
    # float32 output even under mixed precision, so probabilities are not float16-rounded
    return layers.Dense(1, activation="sigmoid", dtype="float32", name=f"{HEAD_PREFIX}logistic")(x)


def _mobilenetv2(cfg: dict[str, Any]) -> Any:
    size, alpha, weights = int(cfg["input_size"]), float(cfg["alpha"]), cfg["weights"]
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"MobileNetV2 weights file not found: {path}")
        if alpha != 1.0:
            raise ValueError(f"the weights file {path.name} is for alpha 1.0, not {alpha}")
        weights = str(path)
    inputs = keras.Input((size, size, 3), name="image")
    # input_tensor keeps the backbone's layers in the outer graph: one flat model for tfmot
    base = keras.applications.MobileNetV2(input_tensor=inputs, include_top=False, alpha=alpha,
                                          weights=weights or None)
    if not weights:
        # From random init every layer trains, and on small data the default 0.999 momentum
        # leaves BatchNorm's inference statistics near their initial values.
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = 0.9
    outputs = _head(base.output, float(cfg["dropout"]))
    return keras.Model(inputs, outputs, name="mobilenetv2")


def _conv_bn_relu(x: Any, filters: int, name: str) -> Any:
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    # momentum 0.9: small datasets give few steps, and 0.99 leaves inference statistics stale
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _scratch_cnn(cfg: dict[str, Any]) -> Any:
    """Four conv-BN-ReLU-pool stages doubling width, one more conv, then global pooling:
    about 245k parameters at width 16 (about 0.25 MB as int8), whatever the input size."""
    size, ch, width = int(cfg["input_size"]), int(cfg["channels"]), int(cfg["width"])
    inputs = keras.Input((size, size, ch), name="image")
    x = inputs
    for i in range(int(cfg["stages"])):
        x = _conv_bn_relu(x, width * 2**i, f"stage{i + 1}")
        x = layers.MaxPooling2D(name=f"stage{i + 1}_pool")(x)
    x = _conv_bn_relu(x, width * 2 ** (int(cfg["stages"]) - 1), "final")
    return keras.Model(inputs, _head(x, float(cfg["dropout"])), name="scratch_cnn")


def _seed_cnn(cfg: dict[str, Any]) -> Any:
    """The seed notebooks' design (conv32-pool-conv64-pool-flatten-dense128): kept for
    comparison only; its flatten-into-dense layer holds almost all of its 7.4 M weights."""
    size, ch = int(cfg["input_size"]), int(cfg["channels"])
    inputs = keras.Input((size, size, ch), name="image")
    x = layers.Conv2D(32, 3, activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="dense128")(x)
    x = layers.Dropout(float(cfg["dropout"]), name=f"{HEAD_PREFIX}dropout")(x)
    out = layers.Dense(1, activation="sigmoid", dtype="float32", name=f"{HEAD_PREFIX}logistic")(x)
    return keras.Model(inputs, out, name="seed_cnn")


register(ModelFamily(
    name="mobilenetv2",
    build=_mobilenetv2,
    # 224 px and a linear-probe head (L2 1000): the best mean per-source AUC in grouped
    # 5-fold cross-validation over both sources' train+val (benchmarks/select_probe_cv.py;
    # 256 px was within one standard error, so the cheaper input won); then gentle
    # fine-tuning of the top blocks (LP-FT), the epoch kept by val. See benchmarks/README.md.
    defaults={"input_size": 224, "alpha": 1.0, "weights": None, "dropout": 0.2,
              "fine_tune_at": "block_13_expand"},
    description="MobileNetV2 transfer learning (ImageNet weights from a file), RGB input",
    has_backbone=True,
    preprocessing={"channels": 3, "value_range": "-1,1"},
    training={"epochs": 3, "fine_tune_epochs": 6, "learning_rate": 1e-3,
              "fine_tune_lr": 3e-5, "patience": 3, "head": "probe", "probe_l2": 1000.0},
))
register(ModelFamily(
    name="scratch_cnn",
    build=_scratch_cnn,
    defaults={"input_size": 128, "channels": 1, "width": 16, "stages": 4, "dropout": 0.3},
    description="compact grayscale CNN with global pooling (~245k parameters)",
    preprocessing={"value_range": "0,1"},
    training={"epochs": 40, "learning_rate": 1e-3, "patience": 8},
))
register(ModelFamily(
    name="seed_cnn",
    build=_seed_cnn,
    defaults={"input_size": 128, "channels": 1, "dropout": 0.5},
    description="the seed flatten-dense CNN (7.4 M parameters at 128 px), for comparison",
    preprocessing={"value_range": "0,1"},
    training={"epochs": 30, "learning_rate": 1e-3, "patience": 6},
))


def preprocess_config(name: str, cfg: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """The PreprocessConfig dict that goes with a built model (size and channels from cfg)."""
    from edge_toolkit.preprocess import PreprocessConfig

    family = get_family(name)
    base = {"size": int(cfg["input_size"]), "channels": int(cfg.get("channels", 3))}
    base.update(family.preprocessing)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return PreprocessConfig(**base).to_dict()


def set_backbone_trainable(model: Any, name: str, cfg: dict[str, Any], trainable: bool) -> int:
    """Freeze the backbone, or unfreeze it from `fine_tune_at` on (BatchNorm stays frozen so
    small fine-tuning batches do not wreck its ImageNet statistics). Returns trainable count."""
    if not get_family(name).has_backbone or not cfg.get("weights"):
        for layer in model.layers:  # nothing pretrained to protect: everything trains
            layer.trainable = True
        return len(model.trainable_weights)
    start = cfg.get("fine_tune_at")
    names = [layer.name for layer in model.layers]
    from_idx = names.index(start) if trainable and start in names else len(names)
    for i, layer in enumerate(model.layers):
        if layer.name.startswith(HEAD_PREFIX):
            layer.trainable = True
        elif isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
        else:
            layer.trainable = trainable and i >= from_idx
    return len(model.trainable_weights)
