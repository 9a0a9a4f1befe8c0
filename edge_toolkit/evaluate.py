"""Evaluate a trained model on a dataset's splits with the card's own operating points.

Works for a Keras run folder (needs TensorFlow) and for a `.tflite` file (runtime only, no
TensorFlow). Temperature and thresholds are read from the card, never re-chosen here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_toolkit.card import CardError, ModelCard, read_card
from edge_toolkit.data import Dataset, DatasetError, Sample, load_samples
from edge_toolkit.multisource import (
    FLAT_SPLIT,
    check_manifests,
    dataset_for_card,
    discover_scoring,
    groups_of,
    merge,
    source_names,
)
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


def run_split_samples(run: Path, split: str) -> list[Sample]:
    """The images of one split of a run (or a cross-validation fold), as its predictions.csv
    lists them: the exact images it was scored on, folds included."""
    import csv

    # a file name that is not UTF-8 was written with its own bytes (`write_predictions`)
    with open(Path(run) / "predictions.csv", newline="", encoding="utf-8",
              errors="surrogateescape") as f:
        return [Sample(Path(r["path"]), int(r["label"]), split, r["source"])
                for r in csv.DictReader(f) if r["split"] == split]


def scoring_dataset(card: ModelCard, data: Sequence[str | Path] | None) -> Dataset:
    """The folders to score on: `data` (any layout, flat folders included), else the
    folders the model was trained on, split as training split them. Folders are named as
    `train` names them (one given twice is refused), and their manifests read before any
    image is scored."""
    try:
        if data:
            ds = merge([discover_scoring(d, n) for d, n in zip(data, source_names(data))])
        else:
            ds = dataset_for_card(card.dataset)
        check_manifests(ds)
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from None
    return ds


def evaluate_model(model: Path, data: Sequence[str | Path] | Path | None = None,
                   splits: list[str] | None = None, bootstrap: int = 1000,
                   on_skip: Callable[[str, str], None] | None = None
                   ) -> tuple[dict[str, Any], str]:
    """Metrics per split, pooled and per source, at the card's thresholds; and a summary.
    A flat folder's images form the split `all`, which is always scored. `on_skip(path,
    reason)` hears of each image that could not be read (it is left out of the metrics)."""
    from edge_toolkit.train.calibrate import format_metrics, report_splits

    if bootstrap < 0:  # numpy would fail after every image was scored
        raise EvaluationError(f"--bootstrap {bootstrap}: 0 (no intervals) or more resamples")
    card, predict = load_predictor(Path(model))
    if isinstance(data, str | Path):
        data = [data]
    ds = scoring_dataset(card, data)
    pre = PreprocessConfig.from_dict(card.preprocessing)
    wanted = [*(splits or ["val", "test"]), FLAT_SPLIT]
    probs, sources, families, clusters = {}, {}, {}, {}
    for split in wanted:
        if split not in {s.split for s in ds.samples}:
            continue
        loaded = load_samples([s for s in ds.samples if s.split == split], pre)
        for path, reason in loaded.skipped:
            if on_skip is not None:
                on_skip(path, reason)
        if len(loaded.y) == 0:
            continue
        probs[split] = (loaded.y, np.asarray(predict(loaded.x), dtype=np.float64))
        sources[split] = loaded.sources
        families[split] = groups_of(ds, loaded.paths)
        clusters[split] = groups_of(ds, loaded.paths, clusters=True)
    if not probs:
        names = ", ".join(ds.source_names)
        raise EvaluationError(f"{names}: no readable images in the splits {splits}")
    thresholds = card.thresholds or {"stored": card.threshold}
    metrics = report_splits(probs, card.temperature, thresholds, bootstrap, sources,
                            families, clusters)
    return metrics, format_metrics(metrics, intervals=bootstrap > 0)
