"""Local recalibration: a clinic re-chooses a model's operating point on its own images.

A threshold chosen on the training sites' validation images does not carry over to another
hospital's (the bundled model's specificity fell to 0.07 on one). With a few hundred labelled
local images, `recalibrate` fits the temperature and picks the threshold reaching the target
sensitivity on them, reports before/after with intervals (and a cross-validated estimate,
since in-sample numbers flatter a threshold chosen on the same images), and writes a new
model file whose card records both operating points and what they were chosen on.
TF-free: it runs on the device.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_toolkit.card import ModelCard, embed_card
from edge_toolkit.data import Dataset, DatasetError, Sample, class_id
from edge_toolkit.files import atomic_write, kind_of
from edge_toolkit.images import ImageLoadError, is_image_name, open_image
from edge_toolkit.metrics import (
    apply_temperature,
    confusion,
    fit_temperature,
    proportion_ci,
    roc_auc,
    stored_threshold,
    threshold_balanced,
)
from edge_toolkit.multisource import discover_scoring

MIN_POSITIVES = 20  # fewer: the threshold for 95% sensitivity hangs on one or two images
MIN_NEGATIVES = 20
DEFAULT_TARGET = 0.95  # the sensitivity target when neither the call nor the card names one
CV_FOLDS = 5


class CalibrationError(ValueError):
    """The images cannot give a trustworthy operating point; nothing is written."""


def read_labelled(source: str | Path) -> list[Sample]:
    """Labelled images from a CSV of `path,label` (paths relative to the CSV; a header row
    is optional; labels `fractured`/`not fractured`/1/0 and the class-folder aliases) or a
    folder (class folders, or the train/val/test layout: every image counts)."""
    source = Path(source)
    if source.is_dir():
        try:
            return [Sample(s.path, s.label, "calibration") for s in
                    discover_scoring(source).samples]
        except DatasetError as exc:
            raise CalibrationError(str(exc)) from None
    if not source.is_file():
        raise CalibrationError(f"{source}: no such folder or CSV file")
    samples, bad = [], []
    first_line: dict[str, int] = {}  # each image once: a repeat would count twice
    try:
        with open(source, newline="", encoding="utf-8") as f:
            for lineno, row in enumerate(csv.reader(f), start=1):
                if not row or not "".join(row).strip():
                    continue
                problem, sample = _csv_row(row, source.parent)
                if problem and lineno == 1 and not samples:
                    continue  # a header row
                if sample is not None:
                    key = os.path.realpath(sample.path)
                    if key in first_line:
                        problem = (f"{row[0].strip()}: listed again (first on line "
                                   f"{first_line[key]})")
                    first_line.setdefault(key, lineno)
                if problem:
                    bad.append(f"line {lineno}: {problem}")
                else:
                    samples.append(sample)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CalibrationError(f"{source}: not a readable CSV file ({exc})") from None
    if not samples and not bad:
        raise CalibrationError(f"{source}: no path,label rows")
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise CalibrationError(f"{source}: {len(bad)} bad row(s): {'; '.join(bad[:3])}{more}")
    return samples


def _csv_row(row: list[str], base: Path) -> tuple[str | None, Sample | None]:
    if len(row) < 2:
        return "expected path,label", None
    path_text, label_text = row[0].strip(), row[1].strip()
    label = {"1": 1, "0": 0}.get(label_text, class_id(label_text))
    if label is None:
        return f"unknown label {label_text!r} (use fractured / not fractured, or 1 / 0)", None
    path = Path(path_text) if Path(path_text).is_absolute() else base / path_text
    if not is_image_name(path) and path.suffix.lower() not in (".dcm", ""):
        return f"{path_text}: not an image file name", None
    if not path.exists():
        return f"{path_text}: no such file", None
    if not path.is_file():
        return f"{path_text}: {kind_of(path.stat().st_mode)}, not an image file", None
    return None, Sample(path, label, "calibration")


def operating_point(y: np.ndarray, q: np.ndarray, threshold: float) -> dict[str, Any]:
    """Sensitivity and specificity at `threshold` with Wilson 95% intervals."""
    c = confusion(y, q, threshold)
    pos, neg = c["tp"] + c["fn"], c["tn"] + c["fp"]
    return {"threshold": float(threshold),
            "sensitivity": c["tp"] / pos if pos else float("nan"),
            "sensitivity_ci95": list(proportion_ci(c["tp"], pos)),
            "specificity": c["tn"] / neg if neg else float("nan"),
            "specificity_ci95": list(proportion_ci(c["tn"], neg)), "confusion": c}


def cross_validated(y: np.ndarray, raw: np.ndarray, target: float, folds: int = CV_FOLDS,
                    seed: int = 0, min_specificity: float | None = None) -> dict[str, Any]:
    """What the recipe (fit temperature, pick threshold) gives on images it did not see:
    stratified folds, each scored with the operating point chosen on the others."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), int)
    for c in (0, 1):
        idx = np.flatnonzero(y == c)
        fold[rng.permutation(idx)] = np.arange(len(idx)) % folds
    pred = np.zeros(len(y), bool)
    for k in range(folds):
        tr, te = fold != k, fold == k
        t = fit_temperature(y[tr], raw[tr])
        thr, _ = stored_threshold(y[tr], apply_temperature(raw[tr], t), target,
                                  min_specificity=min_specificity)
        pred[te] = apply_temperature(raw[te], t) >= thr
    tp, fn = int((pred & (y == 1)).sum()), int((~pred & (y == 1)).sum())
    tn, fp = int((~pred & (y == 0)).sum()), int((pred & (y == 0)).sum())
    return {"folds": folds, "sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp),
            "sensitivity_ci95": list(proportion_ci(tp, tp + fn)),
            "specificity_ci95": list(proportion_ci(tn, tn + fp))}


@dataclass
class Recalibration:
    """Before and after on the clinic's images, and what the new card will say."""

    model: str
    images: int
    positives: int
    negatives: int
    fingerprint: str
    auc: float
    target_sensitivity: float
    before: dict[str, Any]
    after: dict[str, Any]
    cross_validated: dict[str, Any]
    temperature_before: float
    temperature_after: float
    thresholds_after: dict[str, float]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    min_specificity: float | None = None
    rule_from: str = "given"  # where the rule came from: given, the model card, or both
    rejected: list[tuple[str, str]] = field(default_factory=list)  # by the input gate
    gate: bool = True  # whether the input gate screened the images

    @property
    def floors_met(self) -> bool:
        """Whether the new threshold clears the specificity floor on these images too."""
        return (self.min_specificity is None
                or self.after["specificity"] >= self.min_specificity)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def operating_rule(card: Any, target_sensitivity: float | None,
                   min_specificity: float | None) -> tuple[float, float | None]:
    """The rule to recalibrate by: what was asked, else what the model's card records (the
    rule its threshold was chosen by), else 0.95 sensitivity and no specificity floor. A
    floor of 0 switches the card's floor off. Why: a clinic recalibrating the bundled model
    expects its operating rule kept, not silently replaced by another default."""
    try:
        target = (target_sensitivity if target_sensitivity is not None
                  else float(getattr(card, "target_sensitivity", None) or DEFAULT_TARGET))
        floor = min_specificity if min_specificity is not None else getattr(
            card, "min_specificity", None)
        return target, (float(floor) if floor else None)
    except (TypeError, ValueError):
        raise CalibrationError("the model card's operating rule is not a number; give "
                               "--target-sensitivity and --min-specificity") from None


def recalibrate(clf: Any, samples: list[Sample], target_sensitivity: float | None = None,
                min_positives: int = MIN_POSITIVES, min_negatives: int = MIN_NEGATIVES,
                min_specificity: float | None = None) -> Recalibration:
    """Score `samples` with the Classifier `clf`, then choose temperature and threshold by
    `operating_rule` (None: the card's). Raises CalibrationError when the images cannot
    support the choice."""
    if not clf.has_card:
        raise CalibrationError(f"{clf.model_path}: has no model card to recalibrate")
    if min_specificity is not None and not 0 <= min_specificity < 1:
        raise CalibrationError(f"minimum specificity must be 0 (off) or between 0 and 1, "
                               f"not {min_specificity}")
    asked = [target_sensitivity is not None, min_specificity is not None]
    rule_from = ("given" if all(asked) else "the model card's" if not any(asked)
                 else "given, the rest the model card's")
    target_sensitivity, min_specificity = operating_rule(clf.card, target_sensitivity,
                                                         min_specificity)
    if min_specificity is not None and not 0 < min_specificity < 1:  # a card's, unchecked
        raise CalibrationError(f"{clf.model_path}: its card's minimum specificity "
                               f"{min_specificity} is not between 0 and 1; give "
                               "--min-specificity")
    if not 0 < target_sensitivity < 1:
        raise CalibrationError(f"target sensitivity must be between 0 and 1, not "
                               f"{target_sensitivity}")
    raw, labels, kept, skipped, rejected = [], [], [], [], []
    for s in samples:
        try:
            img = open_image(s.path, max_pixels=clf.config.max_pixels)
        except ImageLoadError as exc:
            skipped.append((str(s.path), exc.reason))
            continue
        # through the model's input gate, as on the device: an operating point fitted on
        # pictures the device would refuse is not the one it runs at
        result, inference = clf.classify_image(img, file=str(s.path))
        if inference is None:
            rejected.append((str(s.path), result.error or "rejected by the input gate"))
            continue
        raw.append(float(inference.raw))
        labels.append(s.label)
        kept.append(s)
    y, r = np.asarray(labels, int), np.asarray(raw, np.float64)
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if not len(y):
        raise CalibrationError(f"no usable images: {len(skipped)} unreadable, {len(rejected)} "
                               "rejected by the input gate")
    if pos == 0 or neg == 0:
        only = "fractured" if pos else "not fractured"
        raise CalibrationError(f"only one class among the {len(y)} readable images "
                               f"(all {only}): both are needed to choose a threshold")
    if pos < min_positives or neg < min_negatives:
        raise CalibrationError(f"too few images for a meaningful threshold: {pos} fractured "
                               f"and {neg} not fractured (need at least {min_positives} and "
                               f"{min_negatives})")
    card = clf.card
    q_before = apply_temperature(r, card.temperature)
    t_after = fit_temperature(y, r)
    q_after = apply_temperature(r, t_after)
    thresholds = {"high_sensitivity": stored_threshold(y, q_after, target_sensitivity,
                                                       min_specificity=min_specificity)[0],
                  "balanced": threshold_balanced(y, q_after)}
    return Recalibration(
        model=clf.model_path, images=len(y), positives=pos, negatives=neg,
        fingerprint=Dataset(Path("."), kept).fingerprint(), auc=roc_auc(y, r),
        target_sensitivity=target_sensitivity,
        before=operating_point(y, q_before, clf.threshold),
        after=operating_point(y, q_after, thresholds["high_sensitivity"]),
        cross_validated=cross_validated(y, r, target_sensitivity,
                                        min_specificity=min_specificity),
        temperature_before=float(card.temperature), temperature_after=float(t_after),
        thresholds_after=thresholds, skipped=skipped, min_specificity=min_specificity,
        rule_from=rule_from, rejected=rejected, gate=clf.gate is not None)


def recalibrated_card(card: ModelCard, rec: Recalibration, data_name: str) -> ModelCard:
    """The card with the new operating point; the old one and the evidence are recorded."""
    new = ModelCard.from_dict(card.to_dict())
    new.threshold = rec.thresholds_after["high_sensitivity"]
    new.thresholds = dict(rec.thresholds_after)
    new.temperature = rec.temperature_after
    new.target_sensitivity = rec.target_sensitivity
    new.min_specificity = rec.min_specificity
    history = list((card.export or {}).get("recalibrations") or [])
    history.append({
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": data_name, "images": rec.images, "positives": rec.positives,
        "negatives": rec.negatives, "data_fingerprint": rec.fingerprint,
        "before": {"threshold": rec.before["threshold"], "temperature": rec.temperature_before,
                   "thresholds": dict(card.thresholds), "sensitivity":
                   rec.before["sensitivity"], "specificity": rec.before["specificity"]},
        "after": {"threshold": rec.after["threshold"], "temperature": rec.temperature_after,
                  "thresholds": dict(rec.thresholds_after),
                  "sensitivity": rec.after["sensitivity"],
                  "specificity": rec.after["specificity"]},
        "cross_validated": rec.cross_validated,
        "rule": {"target_sensitivity": rec.target_sensitivity,
                 "min_specificity": rec.min_specificity, "floors_met": rec.floors_met},
        "input_gate": rec.gate, "rejected_by_gate": len(rec.rejected),
        "unreadable": len(rec.skipped),
        "note": "threshold and temperature re-chosen on these local images; in-sample "
                "figures flatter them, the cross-validated ones do not",
    })
    new.export = dict(card.export or {}) | {"recalibrations": history}
    return new


def write_recalibrated(model: str | Path, out: str | Path, card: ModelCard) -> Path:
    """Write `model`'s flatbuffer with `card` to `out` atomically (never over `model`)."""
    model, out = Path(model), Path(out)
    if out.resolve() == model.resolve():
        raise CalibrationError(f"{out}: refusing to overwrite the model being recalibrated")
    out.parent.mkdir(parents=True, exist_ok=True)
    # from the whole file: the card archive's other members (the gate's arrays) are kept
    return atomic_write(out, embed_card(model.read_bytes(), card))


def format_report(rec: Recalibration) -> str:
    def op(name: str, d: dict[str, Any]) -> str:
        s_lo, s_hi = d["sensitivity_ci95"]
        p_lo, p_hi = d["specificity_ci95"]
        thr = f"threshold {d['threshold']:.3f}  " if "threshold" in d else ""
        return (f"{name:<22} {thr}sensitivity {d['sensitivity']:.3f} [{s_lo:.2f}, "
                f"{s_hi:.2f}]  specificity {d['specificity']:.3f} [{p_lo:.2f}, {p_hi:.2f}]")

    cv = rec.cross_validated
    short = not rec.floors_met
    left_out = [f"{len(rec.skipped)} unreadable skipped"] if rec.skipped else []
    if rec.rejected:
        left_out.append(f"{len(rec.rejected)} rejected by the input gate, not used")
    rescaled = abs(rec.temperature_after - rec.temperature_before) > 1e-9
    return "\n".join([
        f"{rec.images} images ({rec.positives} fractured, {rec.negatives} not fractured), "
        f"AUC {rec.auc:.3f}" + "".join(f"; {x}" for x in left_out)
        + ("" if rec.gate else "; input gate off"),
        op("before (stored)", rec.before),
        op("after (these images)", rec.after),
        op(f"after ({cv['folds']}-fold CV)", cv),
        f"temperature {rec.temperature_before:.3f} -> {rec.temperature_after:.3f}; target "
        f"sensitivity {rec.target_sensitivity:g}"
        + (f" and specificity floor {rec.min_specificity:g} (widest margin on both)"
           if rec.min_specificity is not None else "") + f" (rule: {rec.rule_from}); "
        "intervals: Wilson 95%",
        *(["thresholds apply to each file's own calibrated probability (its temperature), "
           "so compare the sensitivities and specificities, not the thresholds"]
          if rescaled else []),
        *([f"WARNING: no threshold meets both floors on these images: specificity "
           f"{rec.after['specificity']:.3f} is under {rec.min_specificity:g}; kept the one "
           "for the target sensitivity"] if short else []),
    ])
