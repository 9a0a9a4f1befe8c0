"""benchmarks/threshold_transfer.py: the out-of-fold predictions it chooses an operating point
on must be each held-out image once, from the fold that held it out."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from threshold_transfer import (  # noqa: E402
    CrossFitError,
    cross_fitted_operating_points,
    decisions_by_source,
    out_of_fold,
    raw_threshold,
)

from edge_toolkit.metrics import apply_temperature  # noqa: E402
from edge_toolkit.train.calibrate import choose_operating_points  # noqa: E402


def write_cv(folder: Path, folds: list[list[tuple[str, str, int, float]]]) -> None:
    """A finished cross-validation: crossval.json and each fold's predictions.csv, whose
    `val` rows are the fold's held-out images and whose `train` rows must be ignored."""
    folder.mkdir(parents=True)
    (folder / "crossval.json").write_text(json.dumps({"folds": len(folds)}))
    for k, held in enumerate(folds):
        run = folder / f"fold{k + 1}"
        run.mkdir()
        with open(run / "predictions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["split", "source", "path", "label", "probability_raw"])
            w.writerow(["train", "a", f"train-only-{k}.png", 1, 0.01])
            for path, source, label, p in held:
                w.writerow(["val", source, path, label, p])


def two_folds(rng: np.random.Generator) -> list[list[tuple[str, str, int, float]]]:
    out = []
    for k in range(2):
        rows = []
        for i in range(40):
            label = int(i % 3 == 0)
            p = float(np.clip(rng.normal(0.3 + 0.4 * label, 0.15), 0.01, 0.99))
            rows.append((f"f{k}-{i}.png", "a" if i % 2 else "b", label, p))
        out.append(rows)
    return out


def test_out_of_fold_pools_the_held_out_rows_of_every_fold(tmp_path):
    folds = two_folds(np.random.default_rng(0))
    write_cv(tmp_path / "cv", folds)
    oof = out_of_fold(tmp_path / "cv")
    held = [r for rows in folds for r in rows]
    assert oof.folds == 2 and len(oof.y) == len(held) == 80
    assert oof.paths == [r[0] for r in held]  # no train row, each held-out image once
    np.testing.assert_allclose(oof.p, [r[3] for r in held])
    ops = cross_fitted_operating_points(oof, 0.9, 0.5)
    plain = choose_operating_points(oof.y, oof.p, 0.9, oof.sources, 0.5)
    assert ops["threshold"] == plain["threshold"]
    assert ops["temperature"] == plain["temperature"]
    assert ops["cross_fitted"] == {"folder": str(tmp_path / "cv"), "folds": 2, "images": 80,
                                   "fractured": int(oof.y.sum())}


def test_an_image_held_out_twice_or_a_missing_fold_is_refused(tmp_path):
    folds = two_folds(np.random.default_rng(1))
    folds[1][0] = folds[0][0]
    write_cv(tmp_path / "dup", folds)
    with pytest.raises(CrossFitError, match="more than one fold"):
        out_of_fold(tmp_path / "dup")
    write_cv(tmp_path / "gone", two_folds(np.random.default_rng(2)))
    (tmp_path / "gone" / "fold2" / "predictions.csv").unlink()
    with pytest.raises(CrossFitError, match="no predictions.csv in fold2"):
        out_of_fold(tmp_path / "gone")
    with pytest.raises(CrossFitError, match="no crossval.json"):
        out_of_fold(tmp_path)


def test_decisions_are_counted_per_source():
    y = np.array([1, 1, 0, 0, 1, 0, 0, 0])
    q = np.array([0.9, 0.2, 0.1, 0.8, 0.7, 0.1, 0.2, 0.3])
    src = ["a"] * 4 + ["b"] * 4
    out = decisions_by_source(y, q, 0.5, src)
    assert out["a"] == {"sensitivity": 0.5, "specificity": 0.5, "images": 4, "fractured": 2}
    assert out["b"] == {"sensitivity": 1.0, "specificity": 1.0, "images": 4, "fractured": 1}


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_a_raw_threshold_is_where_the_calibrated_probability_reaches_the_threshold(temperature):
    raw = raw_threshold(0.3, temperature)
    assert apply_temperature(np.array([raw]), temperature)[0] == pytest.approx(0.3)
    if temperature != 1.0:  # a temperature above 1 (an overconfident model) lowers the raw cut
        assert (raw < 0.3) == (temperature > 1)
