"""A tiny trained run folder for the export tests: a 2-stage scratch CNN at 16 px, fit for a
few epochs on a tiny synthetic phantom set, with a card written the way the trainer writes
it (dataset root, split seed, operating points chosen on val, training settings)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TINY = {"size": 16, "width": 8, "stages": 2}
TINY_COUNTS = {"train": 24, "val": 10, "test": 2}  # per class


def make_tiny_run(root: Path, name: str = "tiny-run", epochs: int = 4, family: str =
                  "scratch_cnn", model_overrides: dict | None = None,
                  counts: dict | None = None) -> Path:
    """Write `root/data` (synthetic) and `root/<name>` (model.keras + card.json)."""
    from edge_toolkit.card import ModelCard
    from edge_toolkit.data import LABELS, discover, load_samples
    from edge_toolkit.preprocess import PreprocessConfig
    from edge_toolkit.synthetic import write_synthetic
    from edge_toolkit.train.augment import AugmentConfig
    from edge_toolkit.train.calibrate import choose_operating_points, report_splits
    from edge_toolkit.train.models import build_model, preprocess_config
    from edge_toolkit.train.tfsetup import keras, set_seed, versions

    set_seed(0)
    data = root / "data"
    if not data.exists():
        write_synthetic(data, counts or TINY_COUNTS, size=64, seed=0)
    overrides = model_overrides or {"input_size": TINY["size"], "width": TINY["width"],
                                    "stages": TINY["stages"]}
    model, cfg = build_model(family, **overrides)
    pre = PreprocessConfig.from_dict(preprocess_config(family, cfg))
    ds = discover(data)
    train = load_samples(ds.split("train"), pre)
    val = load_samples(ds.split("val"), pre)
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    model.fit(train.x, train.y.astype("float32"), batch_size=16, epochs=epochs, verbose=0)
    p_val = model.predict(val.x, verbose=0).reshape(-1)
    ops = choose_operating_points(val.y, p_val, 0.9)
    aug = AugmentConfig(rotation=0.02, flip="horizontal", zoom=0.0, shift=0.05,
                        brightness=0.0, contrast=0.0)
    card = ModelCard(
        family=family, input_size=pre.size, channels=pre.channels,
        preprocessing=pre.to_dict(), labels=list(LABELS), positive_label=LABELS[1],
        threshold=ops["threshold"], thresholds=ops["thresholds"], target_sensitivity=0.9,
        temperature=ops["temperature"], model_config=cfg, variant="keras",
        data_fingerprint=ds.fingerprint(),
        dataset={"root": str(data.resolve()), "val_fraction": 0.15, "seed": 0,
                 "carved_val": ds.carved_val, "counts": ds.counts()},
        metrics=report_splits({"val": (val.y, p_val)}, ops["temperature"], ops["thresholds"],
                              bootstrap=0),
        export={"training": {"augment": aug.to_dict(), "batch_size": 16, "seed": 0,
                             "epochs": epochs}},
        versions=versions(), created="2026-01-01T00:00:00+00:00")
    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    model.save(run / "model.keras")
    card.save(run / "card.json")
    return run


def block_tensorflow_code() -> str:
    """Python source that makes importing TensorFlow, tf_keras or keras fail, for child
    processes that check a module works on a device without TensorFlow."""
    return (
        "import sys, importlib.abc\n"
        "class _Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'tf_keras', 'keras',\n"
        "                                  'tensorflow_model_optimization'):\n"
        "            raise ImportError(f'{name} is blocked in this test')\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
