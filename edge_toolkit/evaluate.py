"""Evaluate a trained model on a dataset's splits with the card's own operating points.

Works for a Keras run folder (needs TensorFlow) and for a `.tflite` file (runtime only, no
TensorFlow). Temperature and thresholds are read from the card, never re-chosen here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_toolkit.card import CardError, ModelCard, read_card
from edge_toolkit.data import DatasetError, discover, load_samples
from edge_toolkit.preprocess import PreprocessConfig

Predict = Callable[[np.ndarray], np.ndarray]


class EvaluationError(Exception):
    """The model or dataset cannot be evaluated; the message says why."""


def load_predictor(model: Path) -> tuple[ModelCard, Predict]:
    """(card, batch -> raw probabilities) for a run folder or a .tflite file."""
    if model.is_dir():
        card_path = model / "card.json"
        if not (card_path.exists() and (model / "model.keras").exists()):
            raise EvaluationError(f"{model}: not a run folder (needs model.keras and card.json)")
        card = ModelCard.load(card_path)
        from edge_toolkit.train.tfsetup import keras

        net = keras.models.load_model(model / "model.keras", compile=False)
        return card, lambda x: net.predict(x, batch_size=64, verbose=0).reshape(-1)
    try:
        card = read_card(model)
    except (OSError, CardError) as exc:
        raise EvaluationError(f"{model}: {exc}") from None
    if card is None:
        raise EvaluationError(f"{model}: no model card in this file")
    from edge_toolkit.runtime.classifier import Classifier, ModelError
    from edge_toolkit.runtime.interpreter import BackendMissingError

    try:
        clf = Classifier.load(model)
    except (ModelError, BackendMissingError) as exc:
        raise EvaluationError(str(exc)) from None
    return card, clf.predict_raw_batch


def dataset_root(card: ModelCard, data: Path | None) -> Path:
    root = data or (Path(card.dataset["root"]) if card.dataset.get("root") else None)
    if root is None:
        raise EvaluationError("no dataset given and the card names none: use --data")
    return root


def evaluate_model(model: Path, data: Path | None = None, splits: list[str] | None = None,
                   bootstrap: int = 1000) -> tuple[dict[str, Any], str]:
    """Metrics per split at the card's thresholds, and a printable summary."""
    from edge_toolkit.train.calibrate import format_metrics, report_splits

    card, predict = load_predictor(Path(model))
    root = dataset_root(card, data)
    try:
        info = card.dataset_info
        ds = discover(root, val_fraction=info.val_fraction, seed=info.seed,
                      val_grouping=info.val_grouping)
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from None
    pre = PreprocessConfig.from_dict(card.preprocessing)
    probs = {}
    for split in splits or ["val", "test"]:
        if split not in ds.splits:
            continue
        loaded = load_samples(ds.split(split), pre)
        probs[split] = (loaded.y, np.asarray(predict(loaded.x), dtype=np.float64))
    if not probs:
        raise EvaluationError(f"{root}: none of the splits {splits} exist")
    thresholds = card.thresholds or {"stored": card.threshold}
    metrics = report_splits(probs, card.temperature, thresholds, bootstrap)
    return metrics, format_metrics(metrics)
