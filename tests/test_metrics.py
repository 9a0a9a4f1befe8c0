"""Metrics against brute force and known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edge_toolkit.metrics import (
    apply_temperature,
    at_threshold,
    bootstrap_auc_ci,
    expected_calibration_error,
    fit_temperature,
    roc_auc,
    sigmoid,
    threshold_balanced,
    threshold_for_sensitivity,
)
from edge_toolkit.train.calibrate import choose_operating_points


def brute_auc(y, p):
    pos, neg = p[y == 1], p[y == 0]
    pairs = list(itertools.product(pos, neg))
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 40)
    y[:2] = [0, 1]
    p = rng.integers(0, 6, 40) / 5.0  # many ties
    assert roc_auc(y, p) == pytest.approx(brute_auc(y, p))


def test_auc_edge_cases():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = y * 0.5 + rng.normal(0, 0.5, 300)
    lo, hi = bootstrap_auc_ci(y, p, n=300)
    assert lo < roc_auc(y, p) < hi and hi - lo < 0.2


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_sensitivity_threshold_reaches_target_with_fewest_false_alarms(target):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.3 + rng.uniform(0, 0.7, 200), 0, 1)
    t = threshold_for_sensitivity(y, p, target)
    assert at_threshold(y, p, t)["sensitivity"] >= target
    higher = np.unique(p[p > t])
    if len(higher):  # the next threshold up would miss the target
        assert at_threshold(y, p, higher[0])["sensitivity"] < target


def test_balanced_threshold_separates_separable_data():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    op = at_threshold(y, p, threshold_balanced(y, p))
    assert op["sensitivity"] == 1.0 and op["specificity"] == 1.0


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 2, 5000)
    y = (rng.uniform(size=5000) < sigmoid(z)).astype(int)
    overconfident = sigmoid(z * 3.0)  # logits 3x too large
    t = fit_temperature(y, overconfident)
    assert t == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(y, overconfident)
    after = expected_calibration_error(y, apply_temperature(overconfident, t))
    assert after < before / 2


def test_operating_points_use_only_the_given_split():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 300), 0.01, 0.99)  # overlapping classes
    ops = choose_operating_points(y, p, 0.9)
    q = apply_temperature(p, ops["temperature"])
    assert at_threshold(y, q, ops["threshold"])["sensitivity"] >= 0.9
    assert ops["thresholds"]["high_sensitivity"] <= ops["thresholds"]["balanced"]
