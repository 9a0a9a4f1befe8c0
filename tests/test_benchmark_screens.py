"""The arithmetic of two benchmark screens (benchmarks/pooling_screen.py,
benchmarks/learning_curve.py): the numbers they report are only as good as their pooling and
their subsets."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from extras import require

require("tensorflow")  # the script builds on select_probe_cv, which imports the trainer
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from learning_curve import group_subset  # noqa: E402
from pooling_screen import pool_maps, with_taps  # noqa: E402


def test_gem_lies_between_average_and_max_pooling():
    maps = np.random.default_rng(0).uniform(0, 6, (3, 4, 4, 5)).astype(np.float32)
    avg, mx, gem = (pool_maps(maps, how) for how in ("avg", "max", "gem3"))
    assert avg.shape == mx.shape == gem.shape == (3, 5)
    np.testing.assert_allclose(avg, maps.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(mx, maps.max(axis=(1, 2)), rtol=1e-6)
    assert np.all(avg < gem) and np.all(gem < mx)
    # one hot cell among zeros: GeM p=3 is the cube root of its share of the cells
    spike = np.zeros((1, 4, 4, 1), np.float32)
    spike[0, 1, 2, 0] = 6.0
    np.testing.assert_allclose(pool_maps(spike, "gem3")[0, 0], 6.0 / 16 ** (1 / 3), rtol=1e-4)


@pytest.mark.parametrize("how", ["gem", "median", "gemx"])
def test_an_unknown_pooling_is_refused(how):
    with pytest.raises(ValueError, match="avg, max or gemP"):
        pool_maps(np.ones((1, 2, 2, 1)), how)


def test_taps_sit_beside_each_pooling_one_at_a_time():
    x = np.arange(6.0).reshape(3, 2)
    taps = {"block_9_add": np.full((3, 1), 7.0), "block_12_add": -np.ones((3, 3))}
    sets = with_taps({"avg": x}, taps)
    assert list(sets) == ["avg", "avg+block_9_add", "avg+block_12_add"]
    assert sets["avg+block_12_add"].shape == (3, 5)
    np.testing.assert_array_equal(sets["avg+block_9_add"][:, :2], x)
    np.testing.assert_array_equal(sets["avg+block_9_add"][:, 2], 7.0)
    with pytest.raises(ValueError, match="2 rows for 3 images"):
        with_taps({"avg": x}, {"bad": np.zeros((2, 1))})


def test_learning_curve_subsets_keep_whole_groups_and_each_sources_share():
    groups = np.array([f"a{i // 3}" for i in range(60)] + [f"b{i}" for i in range(40)])
    src = np.array(["a"] * 60 + ["b"] * 40)
    rng = np.random.default_rng(0)
    keep = group_subset(groups, src, 0.5, rng)
    for g in np.unique(groups):  # a group is kept or dropped whole
        assert len(set(keep[groups == g])) == 1
    assert len(np.unique(groups[keep & (src == "a")])) == 10  # half of 20 groups
    assert len(np.unique(groups[keep & (src == "b")])) == 20  # half of 40
    assert group_subset(groups, src, 1.0, rng).all()
    assert not np.array_equal(keep, group_subset(groups, src, 0.5, rng))  # fresh draws
