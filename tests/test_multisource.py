"""Several sources as one dataset, folders scored as sites, per-source reports, grouped
folds, source-balanced weights, paired deltas and the linear-probe solver. No TensorFlow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_manifest, write_tiny_dataset
from PIL import Image

from edge_toolkit.benchmark_chart import pareto_front
from edge_toolkit.crossval import assign_folds, make_folds, summarize_folds
from edge_toolkit.data import DatasetError
from edge_toolkit.metrics import (
    family_auc,
    paired_auc_delta,
    proportion_ci,
    roc_auc,
    threshold_for_sensitivity,
)
from edge_toolkit.multisource import (
    FLAT_SPLIT,
    dataset_for_card,
    discover_scoring,
    discover_sources,
    manifest_column,
    sample_groups,
    source_balanced_weights,
    source_names,
)
from edge_toolkit.train.calibrate import choose_operating_points, format_metrics, report_splits
from edge_toolkit.train.probe import choose_l2, fit_logistic


def two_sources(tmp_path: Path) -> tuple[Path, Path]:
    a = write_tiny_dataset(tmp_path / "site-a", per_class=4)
    b = write_tiny_dataset(tmp_path / "site-b", per_class=3)
    return a, b


def test_two_folders_read_as_one_dataset_whose_samples_know_their_source(tmp_path):
    a, b = two_sources(tmp_path)
    ds = discover_sources([a, b])
    assert ds.source_names == ["site-a", "site-b"]
    assert {s.source for s in ds.samples} == {"site-a", "site-b"}
    assert sum(s.source == "site-a" for s in ds.split("train")) == 8
    assert sum(s.source == "site-b" for s in ds.split("test")) == 6
    # one source reads exactly as before, named after its folder
    single = discover_sources([a])
    assert {s.source for s in single.samples} == {"site-a"}


def test_folders_with_one_name_get_distinct_source_names(tmp_path):
    a = write_tiny_dataset(tmp_path / "x" / "data", per_class=2)
    b = write_tiny_dataset(tmp_path / "y" / "data", per_class=2)
    assert source_names([a, b]) == ["data", "data-2"]
    assert discover_sources([a, b]).source_names == ["data", "data-2"]


def test_a_flat_class_folder_is_scored_whole_and_a_test_only_folder_works(tmp_path):
    flat = tmp_path / "clinic"
    for cls in ("fractured", "normal"):
        (flat / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((20, 20), 40 * i, np.uint8)).save(flat / cls / f"{i}.png")
    ds = discover_scoring(flat)
    assert {s.split for s in ds.samples} == {FLAT_SPLIT}
    assert sorted(s.label for s in ds.samples) == [0, 0, 0, 1, 1, 1]
    only_test = write_tiny_dataset(tmp_path / "t", per_class=2, splits=("test",))
    assert {s.split for s in discover_scoring(only_test).samples} == {"test"}
    (tmp_path / "junk" / "misc").mkdir(parents=True)
    with pytest.raises(DatasetError, match="neither split folders"):
        discover_scoring(tmp_path / "junk")


def test_card_without_folders_asks_for_data(tmp_path):
    with pytest.raises(DatasetError, match="pass --data"):
        dataset_for_card({"sources": [{"name": "a"}]})
    a, _ = two_sources(tmp_path)
    ds = dataset_for_card({"roots": [str(a)], "seed": 0, "val_fraction": 0.15})
    assert ds.source_names == ["site-a"]


def test_groups_come_from_each_sources_manifest_else_file_families(tmp_path):
    a, b = two_sources(tmp_path)
    write_manifest(a, "group", lambda i: "fam-1")
    ds = discover_sources([a, b])
    groups = dict(zip([s.path for s in ds.samples], sample_groups(ds)))
    assert {g for p, g in groups.items() if str(p).startswith(str(a))} == {"site-a:fam-1"}
    b_groups = {g for p, g in groups.items() if str(p).startswith(str(b))}
    assert len(b_groups) > 1 and all(g.startswith("site-b:") for g in b_groups)


def test_source_balanced_weights():
    y = np.array([1] * 10 + [0] * 90 + [1] * 5 + [0] * 5)
    src = ["big"] * 100 + ["small"] * 10
    w = source_balanced_weights(y, src, 1.0)
    assert w.mean() == pytest.approx(1.0)
    big, small = np.array(src) == "big", np.array(src) == "small"
    assert w[big].sum() == pytest.approx(w[small].sum())  # each source weighs the same
    assert w[big & (y == 1)].sum() == pytest.approx(w[big & (y == 0)].sum())  # and classes
    w0 = source_balanced_weights(y, src, 0.0)
    assert w0[big].sum() == pytest.approx(10 * w0[small].sum())  # by size


def test_family_weight_shares_a_class_by_radiograph_not_by_copy():
    """fracture-xray-like: one fractured radiograph with 16 rotated copies beside 4 single
    ones. With p = 0.5 a copy weighs 1/4 of a single image (the family 4 in all), with p = 1
    the whole family weighs one radiograph; every class and source keeps its total."""
    y = np.array([1] * 20 + [0] * 20 + [1] * 5 + [0] * 15)
    src = ["fx"] * 40 + ["fa"] * 20
    fam = ["big"] * 16 + [f"s{i}" for i in range(24)] + [f"fa{i}" for i in range(20)]
    plain = source_balanced_weights(y, src, 1.0)
    assert np.allclose(source_balanced_weights(y, src, 1.0, None, fam, 0.0), plain)
    for power, family_total in ((0.5, 4.0), (1.0, 1.0)):
        w = source_balanced_weights(y, src, 1.0, None, fam, power)
        assert w[0] * 16 == pytest.approx(family_total * w[16])  # the family vs one single
        for cell in ((np.array(src) == "fx") & (y == 1), (np.array(src) == "fa") & (y == 0),
                     np.array(src) == "fx"):
            assert w[cell].sum() == pytest.approx(plain[cell].sum())
        assert np.allclose(w[40:], plain[40:])  # a source without copies: unchanged
    with pytest.raises(ValueError, match="family"):
        source_balanced_weights(y, src, 1.0, None, fam[:10], 0.5)


def test_family_weight_is_checked_before_training():
    pytest.importorskip("tensorflow")
    from types import SimpleNamespace

    from edge_toolkit.quantize.finetune import training_weights
    from edge_toolkit.train.trainer import TrainConfig, effective_config

    assert effective_config(TrainConfig(data="x", family_weight=0.5)).family_weight == 0.5
    assert effective_config(TrainConfig(data="x")).family_weight == 0.5  # mobilenetv2's
    assert effective_config(TrainConfig(data="x", family="scratch_cnn")).family_weight == 0.5
    assert effective_config(TrainConfig(data="x", family="seed_cnn")).family_weight == 0.0
    from edge_toolkit.train.trainer import _recorded

    assert _recorded({}, "family_weight") == 0.0  # a card from before it weighed per image
    with pytest.raises(ValueError, match="family_weight"):
        effective_config(TrainConfig(data="x", family_weight=1.5))
    # export fine-tuning (QAT, pruning) weighs the images as the run's card says
    train = SimpleNamespace(y=np.array([1, 1, 1, 0]), sources=["fx"] * 4,
                            groups=["a", "a", "b", "c"], paths=[])
    card = SimpleNamespace(export={"training": {"family_weight": 1.0}},
                           dataset={"source_balance": 1.0})
    w = training_weights(SimpleNamespace(train=train, card=card))
    assert w[0] + w[1] == pytest.approx(w[2])  # the two copies weigh one radiograph


def test_balancing_within_a_column_makes_it_say_nothing_about_the_label(tmp_path):
    """FracAtlas-like: hands often fractured, legs rarely. Balanced within region, each
    region's fractured and normal images weigh the same, and each region keeps its share."""
    y = np.array([1] * 40 + [0] * 60 + [1] * 10 + [0] * 90 + [0] * 5 + [1] + [0] * 20)
    region = ["hand"] * 100 + ["leg"] * 100 + ["shoulder"] * 5 + ["hip"] * 21
    src = ["fa"] * 226
    w = source_balanced_weights(y, src, 1.0, region)
    r = np.array(region)
    for name in ("hand", "leg"):
        m = r == name
        assert w[m & (y == 1)].sum() == pytest.approx(w[m & (y == 0)].sum())
    assert w[r == "hand"].sum() == pytest.approx(w[r == "leg"].sum())  # equal sizes
    plain = source_balanced_weights(y, src, 1.0)
    small = (r == "shoulder") | (r == "hip")  # too few of a class: the source's weights
    assert np.allclose(w[small] / plain[small], w[small][0] / plain[small][0])
    assert w[(r == "hip") & (y == 1)][0] < 5 * w[(r == "hand") & (y == 1)][0]  # no outlier
    assert np.allclose(source_balanced_weights(y, src, 1.0, [""] * 226), plain)
    two = source_balanced_weights(np.concatenate([y, [1, 0] * 20]), src + ["b"] * 40, 1.0,
                                  region + [""] * 40)
    assert two[:226].sum() == pytest.approx(two[226:].sum())  # sources keep equal shares
    assert np.allclose(source_balanced_weights(y, src, 1.0, None), plain)
    a = write_tiny_dataset(tmp_path / "site-a", per_class=2)
    files = write_manifest(a, "region", lambda i: f"r{i % 2}")
    ds = discover_sources([a])
    paths = [s.path for s in ds.samples]
    want = {q.resolve(): f"r{i % 2}" for i, q in enumerate(files)}
    assert manifest_column(ds, paths, "region") == [want[p.resolve()] for p in paths]
    assert set(manifest_column(ds, paths, "no_such_column")) == {""}


def test_folds_keep_groups_together_and_balance_strata():
    rng = np.random.default_rng(0)
    groups, labels, strata = [], [], []
    for g in range(60):
        n = int(rng.integers(1, 6))
        groups += [f"g{g}"] * n
        labels += [g % 3 == 0] * n
        strata += ["a" if g < 40 else "b"] * n
    folds = assign_folds(labels, groups, strata, k=5, seed=1)
    for g in set(groups):
        assert len({f for f, gg in zip(folds, groups) if gg == g}) == 1
    sizes = np.bincount(folds, minlength=5)
    assert sizes.min() > 0 and sizes.max() - sizes.min() <= 6
    for s in ("a", "b"):
        pos = np.bincount([f for f, lab, st in zip(folds, labels, strata) if lab and st == s],
                          minlength=5)
        assert pos.min() > 0
    assert folds == assign_folds(labels, groups, strata, k=5, seed=1)
    with pytest.raises(ValueError):
        assign_folds(labels, groups, strata, k=1)


def test_make_folds_pools_train_and_val_only(tmp_path):
    a, b = two_sources(tmp_path)
    folds = make_folds(discover_sources([a, b]), k=3)
    assert {s.split for s in folds.samples} <= {"train", "val"}
    train, held = folds.split(0)
    assert held and train and {s.split for s in held} == {"val"}
    assert not {s.path for s in train} & {s.path for s in held}
    summary = summarize_folds([{"auc": 0.8}, {"auc": 0.9}, {"auc": float("nan")}])
    assert summary["auc"]["mean"] == pytest.approx(0.85) and summary["auc"]["n"] == 2


def test_reports_and_thresholds_are_per_source():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    src = np.array(["easy"] * 200 + ["hard"] * 200)
    noise = np.where(src == "easy", 0.3, 1.2)
    p = 1 / (1 + np.exp(-(2 * (y - 0.5) + rng.normal(0, noise))))
    m = report_splits({"val": (y, p)}, 1.0, {"t": 0.5}, bootstrap=50, sources={"val": src})
    assert set(m["val"]["sources"]) == {"easy", "hard"}
    assert m["val"]["sources"]["easy"]["n"] == 200
    assert m["val"]["sources"]["easy"]["auc"] == pytest.approx(roc_auc(y[:200], p[:200]))
    assert "val/hard" in format_metrics(m)
    ops = choose_operating_points(y, p, 0.95, src)
    thr = ops["threshold"]
    q = 1 / (1 + np.exp(-np.log(p / (1 - p)) / ops["temperature"]))
    for name in ("easy", "hard"):
        mask = (src == name) & (y == 1)
        assert (q[mask] >= thr).mean() >= 0.95
    pooled_only = threshold_for_sensitivity(y, q, 0.95)
    assert thr <= pooled_only


def test_paired_delta_tells_a_real_difference_from_noise():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    good = y + rng.normal(0, 0.5, 300)
    same = paired_auc_delta(y, good, good, n=200)
    assert same["delta"] == 0 and same["ci95"] == [0.0, 0.0]
    worse = good + rng.normal(0, 1.0, 300)
    d = paired_auc_delta(y, worse, good, n=300)
    assert d["delta"] < 0 and d["ci95"][1] < 0
    tiny = good + rng.normal(0, 0.01, 300)
    d2 = paired_auc_delta(y, tiny, good, n=300)
    assert d2["ci95"][0] <= 0 <= d2["ci95"][1]
    with pytest.raises(ValueError):
        paired_auc_delta(y, good[:10], good)


def test_pareto_front_and_wilson_interval():
    pts = [(100, 0.80), (50, 0.85), (200, 0.90), (300, 0.88), (20, 0.70)]
    assert pareto_front(pts) == [4, 1, 2]
    lo, hi = proportion_ci(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-3)
    lo, hi = proportion_ci(19, 20)
    assert lo < 0.95 < hi <= 1


def test_linear_probe_solves_the_regularised_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (400, 5)) * [1, 10, 0.1, 1, 1] + [0, 5, 0, 0, 0]
    y = (x[:, 0] + 0.1 * x[:, 1] + rng.normal(0, 0.5, 400) > 0.5).astype(int)
    w = np.where(y == 1, 2.0, 1.0)
    head = fit_logistic(x, y, w, l2=1.0)
    assert roc_auc(y, head.logits(x)) > 0.9
    # optimality: the gradient of the objective in standardized space vanishes
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    p = 1 / (1 + np.exp(-head.logits(x)))
    beta = head.coef * sd
    grad = z.T @ (w * (p - y)) + 1.0 * beta
    assert np.abs(grad).max() < 1e-4
    stronger = fit_logistic(x, y, w, l2=1000.0)
    assert np.linalg.norm(stronger.coef * sd) < np.linalg.norm(beta)
    best, scores = choose_l2(x[:300], y[:300], w[:300], x[300:], y[300:], ["s"] * 100,
                             grid=(1.0, 1e6))
    assert best == 1.0 and scores[1.0] > 0.85
    # with families of copies in val the penalty is judged as training judges: per family
    fam = ["copies"] * 50 + [f"f{i}" for i in range(50)]  # one family holds half of val
    _, fam_scores = choose_l2(x[:300], y[:300], w[:300], x[300:], y[300:], ["s"] * 100,
                              grid=(1.0,), val_groups=fam)
    head1 = fit_logistic(x[:300], y[:300], w[:300], 1.0)
    assert fam_scores[1.0] == pytest.approx(family_auc(y[300:], head1.logits(x[300:]), fam))
    assert fam_scores[1.0] != pytest.approx(scores[1.0])
