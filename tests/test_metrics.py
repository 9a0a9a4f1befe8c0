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
    floor_margin,
    roc_auc,
    sigmoid,
    threshold_balanced,
    threshold_for_floors,
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


def test_floor_margin_counts_standard_errors_above_each_floor():
    # 100 positives, 90 at or above 0.5: sensitivity exactly 0.90, margin 0 on that side;
    # 100 negatives, 70 below 0.5: specificity 0.70, (0.70 - 0.50) / sqrt(0.25 / 100) = 4
    y = np.r_[np.ones(100), np.zeros(100)].astype(int)
    p = np.r_[np.full(90, 0.8), np.full(10, 0.2), np.full(70, 0.2), np.full(30, 0.8)]
    assert floor_margin(y, p, 0.5, 0.90, 0.50) == pytest.approx(0.0)
    assert floor_margin(y, p, 0.5, 0.80, 0.60) == pytest.approx(
        min(0.10 / np.sqrt(0.16 / 100), 0.10 / np.sqrt(0.24 / 100)))
    # a class with no images sets no floor
    assert floor_margin(y[:100], p[:100], 0.5, 0.85, 0.5) == pytest.approx(
        0.05 / np.sqrt(0.85 * 0.15 / 100))


def _scores(rng, n_pos, n_neg, shift):
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(int)
    return y, np.r_[rng.normal(shift, 1, n_pos), rng.normal(0, 1, n_neg)]


def test_floors_threshold_spends_spare_specificity_on_sensitivity():
    y, p = _scores(np.random.default_rng(0), 100, 300, 1.6)  # specificity to spare
    plain = threshold_for_sensitivity(y, p, 0.9)
    thr, margin = threshold_for_floors([(y, p)], 0.9, 0.5, plain)
    assert thr < plain  # more sensitive than exactly the target
    sens = np.mean(p[y == 1] >= thr)
    spec = np.mean(p[y == 0] < thr)
    assert sens > 0.9 and spec > 0.5
    # the two margins end up balanced: neither floor is cleared by far more than the other
    m_sens = (sens - 0.9) / np.sqrt(0.09 / 100)
    m_spec = (spec - 0.5) / np.sqrt(0.25 / 300)
    assert margin == pytest.approx(min(m_sens, m_spec))
    assert abs(m_sens - m_spec) < 1.0
    # it is the best threshold at or below the plain one
    for t in np.unique(p[y == 1]):
        if t <= plain:
            assert floor_margin(y, p, t, 0.9, 0.5) <= margin + 1e-12


def test_floors_threshold_never_gives_up_sensitivity_and_the_worst_source_binds():
    rng = np.random.default_rng(1)
    y, p = _scores(rng, 100, 300, 0.3)  # hard: no specificity to spare at 0.9 sensitivity
    plain = threshold_for_sensitivity(y, p, 0.9)
    thr, margin = threshold_for_floors([(y, p)], 0.9, 0.5, plain)
    assert thr == plain and margin < 0  # the floors cannot both be met; sensitivity first
    easy, hard = _scores(rng, 100, 300, 3.0), _scores(rng, 100, 300, 1.5)
    both = [easy, hard]
    plain = min(threshold_for_sensitivity(y_, p_, 0.9) for y_, p_ in both)
    thr, margin = threshold_for_floors(both, 0.9, 0.5, plain)
    assert margin == pytest.approx(min(floor_margin(y_, p_, thr, 0.9, 0.5) for y_, p_ in both))
    assert margin == pytest.approx(floor_margin(*hard, thr, 0.9, 0.5))  # the hard site binds


def test_operating_points_with_a_specificity_floor_are_recorded_and_more_sensitive():
    y, p = _scores(np.random.default_rng(2), 120, 280, 2.0)
    p = 1 / (1 + np.exp(-p))
    src = np.array(["a", "b"] * 200)
    plain = choose_operating_points(y, p, 0.9, src)
    floors = choose_operating_points(y, p, 0.9, src, min_specificity=0.5)
    assert "floor_margin" not in plain
    assert floors["min_specificity"] == 0.5 and floors["floor_margin"] > 0
    assert floors["threshold"] < plain["threshold"]
    assert floors["temperature"] == plain["temperature"]
    q = apply_temperature(p, floors["temperature"])
    for s in ("a", "b"):
        m = src == s
        assert at_threshold(y[m], q[m], floors["threshold"])["sensitivity"] > 0.9


def test_floors_threshold_does_not_spend_a_source_s_specificity_for_nothing():
    """Source A's fractures are all flagged early, so its margin stops moving; lower
    thresholds tie on the smallest margin, and B's specificity must not be given up."""
    rng = np.random.default_rng(4)
    a = _scores(rng, 10, 10, 4.0)
    b = _scores(rng, 500, 1500, 3.0)
    plain = min(threshold_for_sensitivity(y_, p_, 0.9) for y_, p_ in (a, b))
    thr, margin = threshold_for_floors([a, b], 0.9, 0.5, plain)
    spec_b = np.mean(b[1][b[0] == 0] < thr)
    lowest_same_margin = min(t for t in np.unique(np.r_[a[1][a[0] == 1], b[1][b[0] == 1]])
                             if t <= plain and min(floor_margin(*a, t, 0.9, 0.5),
                                                   floor_margin(*b, t, 0.9, 0.5)) == margin)
    assert np.mean(b[1][b[0] == 0] < lowest_same_margin) < spec_b  # the tie was broken
    assert spec_b > 0.8


@pytest.mark.parametrize("sens, spec", [(1.0, 0.5), (0.9, 0.0), (0.9, 1.0), (0.0, 0.5)])
def test_floors_of_0_or_1_are_refused(sens, spec):
    y = np.array([0, 1, 0, 1])
    p = np.array([0.1, 0.9, 0.4, 0.6])
    with pytest.raises(ValueError, match="between 0 and 1"):
        threshold_for_floors([(y, p)], sens, spec, 0.6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_refused_not_ranked(bad):
    """NaN used to rank highest (argsort puts it last) and count negative at any threshold
    (NaN >= t is False): a broken model still got an AUC and a specificity."""
    from edge_toolkit.metrics import family_auc, paired_auc_delta, summarize

    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8, bad, bad])
    good = np.linspace(0.1, 0.9, 6)
    calls = [lambda: roc_auc(y, p), lambda: at_threshold(y, p, 0.5),
             lambda: bootstrap_auc_ci(y, p, n=5), lambda: paired_auc_delta(y, good, p, n=5),
             lambda: family_auc(y, p, list("aabbcc")),
             lambda: summarize(y, p, {"stored": 0.5}, bootstrap=0),
             lambda: expected_calibration_error(y, p)]
    for call in calls:
        with pytest.raises(ValueError, match=r"^2 non-finite model outputs \(NaN or infinite\) "
                                             r"among 6$"):
            call()
    assert roc_auc(y, good) == pytest.approx(brute_auc(y, good))  # finite scores still score


def test_the_non_finite_error_survives_pickling():
    import pickle

    from edge_toolkit.metrics import NonFiniteScoresError

    err = pickle.loads(pickle.dumps(NonFiniteScoresError(2, 6)))
    assert (err.bad, err.total) == (2, 6) and "2 non-finite" in str(err)
