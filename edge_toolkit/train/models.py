"""The Keras builders of the model families (`edge_toolkit.families` holds the families as data).

Every model is one flat functional `tf_keras` graph from the preprocessed image (values already
in the card's range: normalisation lives in `edge_toolkit.preprocess`, not in a `Rescaling`
layer) to one sigmoid probability of 'fractured'. Flat, and free of Rescaling/Random*/Lambda
layers, so tfmot can prune and quantize it without surgery.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_toolkit.families import FAMILIES, Family, get_family, preprocess_config  # noqa: F401
from edge_toolkit.files import is_lfs_pointer
from edge_toolkit.train.tfsetup import keras

layers = keras.layers
HEAD_PREFIX = "head_"


# The families (names, defaults, preprocessing, schedules) are data in edge_toolkit.families;
# these names stay importable from here.
REGISTRY = FAMILIES


def build_model(name: str, **overrides: Any) -> tuple[Any, dict[str, Any]]:
    """Build a family by name; return (model, the full config to store in the card)."""
    family = get_family(name)
    cfg = family.config(**overrides)
    return family.build_function()(cfg), cfg


def _head(x: Any, dropout: float) -> Any:
    x = layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{HEAD_PREFIX}dropout")(x)
    # float32 output even under mixed precision, so probabilities are not float16-rounded
    return layers.Dense(1, activation="sigmoid", dtype="float32", name=f"{HEAD_PREFIX}logistic")(x)


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_weights_file(path: Path) -> None:
    """Refuse, in one line, a weights file that is not HDF5 before TensorFlow reads it (its
    own error is a traceback from h5py); a Git LFS pointer gets the fix."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the weights file ({exc.strerror or exc})") from None
    if is_lfs_pointer(head):
        raise ValueError(f"{path}: a Git LFS pointer, not the weights themselves (run `git lfs "
                         "pull`, or copy the real .h5 file)")
    if not head.startswith(HDF5_SIGNATURE):
        raise ValueError(f"{path}: not an HDF5 weights file (.h5)")


def build_mobilenetv2(cfg: dict[str, Any]) -> Any:
    size, alpha, weights = int(cfg["input_size"]), float(cfg["alpha"]), cfg["weights"]
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"MobileNetV2 weights file not found: {path}")
        if alpha != 1.0:
            raise ValueError(f"the weights file {path.name} is for alpha 1.0, not {alpha}")
        check_weights_file(path)
        weights = str(path)
    inputs = keras.Input((size, size, 3), name="image")
    # input_tensor keeps the backbone's layers in the outer graph: one flat model for tfmot
    try:
        base = keras.applications.MobileNetV2(input_tensor=inputs, include_top=False,
                                              alpha=alpha, weights=weights or None)
    except (OSError, ValueError) as exc:  # HDF5 with other layers, or unreadable midway
        raise ValueError(f"{weights}: not MobileNetV2 ImageNet weights (no top) that load "
                         f"({exc})") from None
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


def build_scratch_cnn(cfg: dict[str, Any]) -> Any:
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


def build_seed_cnn(cfg: dict[str, Any]) -> Any:
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
