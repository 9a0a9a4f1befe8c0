"""One place that imports TensorFlow for training: Keras 2 (tf_keras), seeds, GPU strategy.

tensorflow-model-optimization rejects Keras 3 models, so `TF_USE_LEGACY_KERAS=1` must be set
before TensorFlow is first imported. Every training module gets `tf` and `keras` from here.
"""

from __future__ import annotations

import os
import random
from types import ModuleType
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

INSTALL_HINT = "training needs TensorFlow: pip install 'fracture-edge-toolkit[train]'"


def import_tf() -> tuple[ModuleType, ModuleType]:
    """Return (tensorflow, tf_keras), or raise ImportError with the install command."""
    try:
        import tensorflow as tf
        import tf_keras as keras
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from None
    return tf, keras


tf, keras = import_tf()


def set_seed(seed: int, deterministic: bool = True) -> None:
    """Seed Python, numpy and TensorFlow so a run can be repeated; with `deterministic`,
    also make every op deterministic, and without it turn that off again: the setting is
    process-wide, and a run that cannot honour it (see `determinism`: frozen BatchNorm on a
    GPU) must not inherit it from an earlier run in the same process."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)
    if deterministic:
        # same seed, same data -> same model (tf.data's parallel random augmentation included)
        tf.config.experimental.enable_op_determinism()
    else:  # TensorFlow has no public switch-off: the one its own tests use (TF 2.21)
        from tensorflow.python.framework import config as tf_config

        tf_config.disable_op_determinism()  # if a TF upgrade drops it, a test says so


def gpus() -> list[Any]:
    return tf.config.list_physical_devices("GPU")


def determinism(frozen_batchnorm_training: bool, devices: list[Any] | None = None
                ) -> dict[str, Any]:
    """What reproducibility this device can honour, decided before TensorFlow is asked.

    On a CPU every op has a deterministic kernel. On a GPU, op determinism plus training
    through BatchNormalization frozen in inference mode (fine-tuning a pretrained backbone,
    QAT/pruning with frozen BN) raises UnimplementedError: there is no deterministic GPU
    kernel for that backward pass. Such runs are seeded but not bit-reproducible, and the
    card says so."""
    devices = gpus() if devices is None else devices
    if not devices:
        return {"deterministic": True, "device": "cpu",
                "reason": "CPU kernels are deterministic: same seed and data, same model"}
    if frozen_batchnorm_training:
        return {"deterministic": False, "device": "gpu",
                "reason": "no deterministic GPU kernel for the backward pass of BatchNorm "
                          "frozen in inference mode: seeded, not bit-reproducible"}
    return {"deterministic": True, "device": "gpu",
            "reason": "op determinism on: same seed, data and GPU model, same model"}


def strategy_and_precision(mixed_precision: bool | None = None) -> tuple[Any, bool]:
    """MirroredStrategy over the GPUs TensorFlow sees (default strategy on CPU), and whether
    mixed float16 was switched on (default: only with a GPU, where it pays)."""
    found = gpus()
    for g in found:
        try:
            tf.config.experimental.set_memory_growth(g, True)
        except (ValueError, RuntimeError):
            pass
    use_mp = bool(found) if mixed_precision is None else mixed_precision
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mp else "float32")
    strategy = tf.distribute.MirroredStrategy() if found else tf.distribute.get_strategy()
    return strategy, use_mp


def versions() -> dict[str, str]:
    from edge_toolkit import __version__

    out = {"edge_toolkit": __version__, "tensorflow": tf.__version__,
           "tf_keras": keras.__version__}
    try:
        import tensorflow_model_optimization as tfmot

        out["tfmot"] = tfmot.__version__
    except ImportError:
        pass
    return out


def predict_in_batches(model: Any, x: Any, batch_size: int = 64) -> Any:
    """`model`'s outputs for a numpy array, one batch at a time. Why: `model.predict(x)` on a
    whole array first copies all of it into one tensor, and did so at every val scoring;
    a 256 px fold (about 2,400 images each side, 1.9 GB per split) was killed for memory
    at 24 GB."""
    import numpy as np

    if len(x) == 0:
        return np.zeros((0, *model.output_shape[1:]), np.float32)
    return np.concatenate([np.asarray(model.predict_on_batch(x[i:i + batch_size]))
                           for i in range(0, len(x), batch_size)])
