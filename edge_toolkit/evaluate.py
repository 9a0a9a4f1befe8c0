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
from edge_toolkit.files import shown
from edge_toolkit.metrics import NonFiniteScoresError, finite_scores
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
    """The model or dataset cannot be evaluated; the message says why. The command exits
    `EXIT_CODE` (2), as card, classify, bench and benchmark do for unusable input."""

    EXIT_CODE = 2


def load_predictor(model: Path) -> tuple[ModelCard, Predict]:
    """(card, batch -> raw probabilities) for a run folder or a .tflite file."""
    if model.is_dir():
        card_path = model / "card.json"
        if not (card_path.exists() and (model / "model.keras").exists()):
            raise EvaluationError(f"{model}: not a run folder (needs model.keras and card.json)")
        card = _run_card(card_path)
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


def _run_card(path: Path) -> ModelCard:
    """A run folder's card.json, or one line naming it and what is wrong with it."""
    try:
        return ModelCard.load(path)
    except CardError as exc:
        raise EvaluationError("; ".join(exc.lines(shown(path)))) from None
    except (OSError, ValueError) as exc:  # unreadable, or not UTF-8 text
        why = getattr(exc, "strerror", None) or exc
        raise EvaluationError(f"{shown(path)}: cannot read ({why})") from None


def check_finite(model: Path, split: str, p: np.ndarray) -> None:
    """Refuse NaN or infinite outputs (a broken model): scored, they would make up an AUC."""
    try:
        finite_scores(p)
    except NonFiniteScoresError as exc:
        raise EvaluationError(f"{shown(model)}: {exc.bad} non-finite model outputs (NaN or "
                              f"infinite) on the {exc.total} {split} images") from None


def card_thresholds(card: ModelCard) -> dict[str, float]:
    """The card's named thresholds, and the stored one as `stored` when none of them is it
    (a hand-edited card): the operating point the device uses is always reported."""
    out = dict(card.thresholds)
    if card.threshold not in out.values():
        out["stored"] = card.threshold
    return out


def split_names(ds: Dataset, splits: list[str] | None) -> list[str]:
    """The splits to score: `splits` (default val and test, where they exist) and a flat
    folder's `all`. A split asked for by name that the data lacks is refused with the
    splits it has, unless the data is one flat folder (scored whole, as `all`)."""
    have = sorted({s.split for s in ds.samples})
    names = ", ".join(ds.source_names)
    if splits is not None and have != [FLAT_SPLIT]:
        missing = [s for s in splits if s not in have]
        if missing:
            raise EvaluationError(f"{names}: no split {', '.join(missing)} (its splits: "
                                  f"{', '.join(have) or 'none'})")
    wanted = [s for s in [*(splits or ["val", "test"]), FLAT_SPLIT] if s in have]
    if not wanted:
        raise EvaluationError(f"{names}: no val or test split to score (its splits: "
                              f"{', '.join(have) or 'none'})")
    return list(dict.fromkeys(wanted))


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
    wanted = split_names(ds, splits)
    probs, sources, families, clusters = {}, {}, {}, {}
    for split in wanted:
        loaded = load_samples([s for s in ds.samples if s.split == split], pre)
        for path, reason in loaded.skipped:
            if on_skip is not None:
                on_skip(path, reason)
        if len(loaded.y) == 0:
            continue
        p = np.asarray(predict(loaded.x), dtype=np.float64).reshape(-1)
        check_finite(Path(model), split, p)
        probs[split] = (loaded.y, p)
        sources[split] = loaded.sources
        families[split] = groups_of(ds, loaded.paths)
        clusters[split] = groups_of(ds, loaded.paths, clusters=True)
    if not probs:
        names = ", ".join(ds.source_names)
        raise EvaluationError(f"{names}: no readable images in the splits "
                              f"{', '.join(wanted)}")
    thresholds = card_thresholds(card)
    metrics = report_splits(probs, card.temperature, thresholds, bootstrap, sources,
                            families, clusters)
    return metrics, format_metrics(metrics, intervals=bootstrap > 0)
