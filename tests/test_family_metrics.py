"""Family-weighted AUC and the family bootstrap: copies of one radiograph (fracture-xray's
rotations) or one patient's images count once. No TensorFlow."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import write_manifest, write_tiny_dataset

from edge_toolkit.benchmark import _accuracy, _auc_cell
from edge_toolkit.metrics import (
    bootstrap_auc_ci,
    family_auc,
    family_bootstrap_ci,
    family_weights,
    roc_auc,
    summarize,
    weighted_auc,
)
from edge_toolkit.multisource import discover_sources, groups_of
from edge_toolkit.train.calibrate import format_metrics, report_splits


def copies_data() -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]:
    """20 families, one image each, except one easy fractured family copied 60 times: per
    image the copies dominate, per family they count once."""
    rng = np.random.default_rng(3)
    y1 = np.array([1] * 10 + [0] * 10)
    p1 = np.round(rng.random(20) * 0.6 + 0.2 * y1, 3)  # a weak model on the singletons
    y = np.concatenate([y1, np.ones(60, int)])
    p = np.concatenate([p1, np.full(60, 0.99)])  # the copied family: confidently right
    groups = [f"f{i}" for i in range(20)] + ["big"] * 60
    y_dedup = np.concatenate([y1, [1]])
    p_dedup = np.concatenate([p1, [0.99]])
    return y, p, groups, y_dedup, p_dedup


def test_weighted_auc_with_equal_weights_is_the_rank_auc_ties_included():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.round(rng.random(400) + 0.4 * y, 1)  # many ties
    assert abs(weighted_auc(y, p, np.ones(400)) - roc_auc(y, p)) < 1e-12
    assert abs(weighted_auc(y, p, np.full(400, 3.0)) - roc_auc(y, p)) < 1e-12
    assert np.isnan(weighted_auc(np.ones(5), np.arange(5.0), np.ones(5)))


def test_weighted_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 120)
    p = np.round(rng.random(120), 2)
    w = rng.random(120)
    pos, neg = y == 1, y == 0
    a, b = p[pos][:, None], p[neg][None, :]
    pair = w[pos][:, None] * w[neg][None, :]
    want = (((a > b) + 0.5 * (a == b)) * pair).sum() / pair.sum()
    assert abs(weighted_auc(y, p, w) - want) < 1e-12


def test_a_copied_family_counts_once():
    y, p, groups, y_dedup, p_dedup = copies_data()
    per_image = roc_auc(y, p)
    assert per_image > roc_auc(y_dedup, p_dedup) + 0.05  # the copies inflate it
    assert abs(family_auc(y, p, groups) - roc_auc(y_dedup, p_dedup)) < 1e-12
    w = family_weights(groups)
    assert w[-1] == 1 / 60 and w[0] == 1.0


def test_the_family_interval_resamples_families_not_copies():
    y, p, groups, _, _ = copies_data()
    lo_i, hi_i = bootstrap_auc_ci(y, p, n=300)
    lo_f, hi_f = family_bootstrap_ci(y, p, groups, n=300)
    assert lo_f <= family_auc(y, p, groups) <= hi_f
    assert hi_f - lo_f > 1.5 * (hi_i - lo_i)  # 21 families say less than 80 images
    assert np.isnan(family_bootstrap_ci(np.ones(4), np.arange(4.0), list("abcd"))[0])


def test_summaries_add_the_family_auc_only_where_a_family_repeats():
    y, p, groups, _, _ = copies_data()
    m = summarize(y, p, {"t": 0.5}, bootstrap=50, groups=groups)
    assert m["families"] == 21 and m["families_with_fracture"] == 11
    assert abs(m["auc_family"] - family_auc(y, p, groups)) < 1e-12
    singles = [f"g{i}" for i in range(len(y))]
    assert "auc_family" not in summarize(y, p, {}, bootstrap=0, groups=singles)
    assert "auc_family" not in summarize(y, p, {}, bootstrap=0)


def test_reports_give_each_source_its_family_auc():
    y, p, groups, y_dedup, p_dedup = copies_data()
    src = ["copies"] * len(y)
    y2 = np.array([1, 0] * 10)
    p2 = np.linspace(0.1, 0.9, 20)
    y_all, p_all = np.concatenate([y, y2]), np.concatenate([p, p2])
    sources = src + ["clinic"] * 20
    fam = groups + [f"c{i}" for i in range(20)]
    m = report_splits({"val": (y_all, p_all)}, 1.0, {"t": 0.5}, bootstrap=30,
                      sources={"val": sources}, groups={"val": fam})
    per = m["val"]["sources"]
    assert abs(per["copies"]["auc_family"] - roc_auc(y_dedup, p_dedup)) < 1e-9
    assert "auc_family" not in per["clinic"]  # every image its own family: nothing to add
    text = format_metrics(m)
    assert "family-weighted AUC" in text and "over 21 families (11 with a fracture)" in text


def test_benchmark_cells_show_the_per_family_auc():
    y, p, groups, _, _ = copies_data()
    acc = _accuracy(y, p, 0.5, 40, groups)
    cell = _auc_cell(acc)
    assert cell.startswith(f"{roc_auc(y, p):.3f}") and "per family" in cell
    assert "per family" not in _auc_cell(_accuracy(y, p, 0.5, 40))


def test_groups_of_follows_loaded_paths_and_the_manifest(tmp_path):
    a = write_tiny_dataset(tmp_path / "site-a", per_class=3)
    files = write_manifest(a, "group", lambda i: f"g{i % 2}")
    ds = discover_sources([a])
    paths = [s.path for s in ds.samples][::-1]  # any order, e.g. after skipped files
    got = groups_of(ds, paths)
    want = {q.resolve(): f"site-a:g{i % 2}" for i, q in enumerate(files)}
    assert got == [want[q.resolve()] for q in paths]


def reference_interval(y, p, families, clusters, n, seed):
    """The cluster bootstrap spelled out: each drawn cluster's images appended once per draw."""
    y, p = np.asarray(y).astype(int), np.asarray(p, float)
    base = family_weights(families)
    keys = np.asarray(clusters)
    uniq = np.unique(keys)
    members = [np.flatnonzero(keys == k) for k in uniq]
    with_pos = np.array([y[m].any() for m in members])
    strata = [np.flatnonzero(with_pos), np.flatnonzero(~with_pos)]
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(n):
        draw = np.concatenate([s[rng.integers(0, len(s), len(s))] for s in strata])
        idx = np.concatenate([members[c] for c in draw])
        aucs.append(weighted_auc(y[idx], p[idx], base[idx]))
    return tuple(np.quantile(aucs, [0.025, 0.975]))


def test_the_cluster_bootstrap_counts_a_cluster_drawn_twice_twice():
    y, p, groups, _, _ = copies_data()
    clusters = [f"b{i // 4}" for i in range(20)] + ["big"] * 60
    got = family_bootstrap_ci(y, p, groups, clusters, n=200, seed=5)
    want = reference_interval(y, p, groups, clusters, 200, 5)
    assert np.allclose(got, want)


def test_patient_blocks_are_resampled_but_do_not_reweight_images():
    """FracAtlas: no copies (each image its own family) but blocks of consecutive ids that
    mix classes: the AUC stays the per-image one, the interval resamples blocks."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 120)
    p = rng.random(120) + 0.5 * y
    families = [f"img{i}" for i in range(120)]
    blocks = [f"block{i // 25}" for i in range(120)]  # the last block has 20 images
    m = summarize(y, p, {}, bootstrap=200, groups=families, clusters=blocks)
    assert m["auc_family"] == pytest.approx(roc_auc(y, p))
    assert m["clusters"] == 5 and m["families"] == 120
    lo, hi = m["auc_family_ci95"]
    assert lo < m["auc"] < hi  # every block mixes classes: all resampled together
    assert "the interval resamples 5 groups" in format_metrics({"val": m | {"ece": 0.0,
                                                                       "auc_ci95": [0, 1]}})


def test_benchmark_csv_has_the_whole_splits_family_auc(tmp_path):
    from edge_toolkit.benchmark import write_csv

    y, p, groups, _, _ = copies_data()
    acc = _accuracy(y, p, 0.5, 30, groups)
    row = {"family": "f", "variant": "float32", "status": "validated", "reason": "",
           "size_bytes": 1, "gzip_bytes": 1, "sparsity": 0.0, "accuracy": {"test": acc},
           "latency": {}, "peak_rss_mb": 1.0}
    write_csv({"threads": [], "rows": [row]}, tmp_path / "b.csv")
    with open(tmp_path / "b.csv", newline="") as f:
        out = next(csv.DictReader(f))
    assert float(out["test_auc_family"]) == pytest.approx(acc["auc_family"])
    assert float(out["test_auc_family_lo"]) <= float(out["test_auc_family"])


def test_blocks_are_clusters_not_families(tmp_path):
    """A manifest with a patient `block` column: families come from file names (no copies
    here), clusters from the blocks; a `group` column would be both."""
    a = write_tiny_dataset(tmp_path / "site-a", per_class=3)
    files = write_manifest(a, "block", lambda i: f"b{i // 3}")
    ds = discover_sources([a])
    paths = [s.path for s in ds.samples]
    families, clusters = groups_of(ds, paths), groups_of(ds, paths, clusters=True)
    assert len(set(families)) == len(paths)  # each radiograph its own family
    assert len(set(clusters)) == (len(files) + 2) // 3  # blocks of three
    y = np.array([s.label for s in ds.samples])
    p = np.linspace(0, 1, len(y))
    m = summarize(y, p, {}, bootstrap=20, groups=families, clusters=clusters)
    assert m["auc_family"] == pytest.approx(roc_auc(y, p)) and "clusters" in m


def test_a_family_split_between_clusters_is_drawn_whole_and_one_cluster_gives_no_interval():
    y = np.array([1, 0, 1, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 0])
    p = np.array([0.9, 0.1, 0.6, 0.4, 0.7, 0.3, 0.5, 0.8, 0.2, 0.35, 0.65, 0.15, 0.3, 0.1])
    families = ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f0", "f8", "f9", "f10", "f11",
                "f12", "f13"]  # f0 in two clusters
    clusters = ["c0", "c0", "c1", "c1", "c2", "c2", "c3", "c3", "c4", "c4", "c5", "c5",
                "c6", "c7"]
    moved = list(clusters)
    moved[7] = "c0"  # f0 kept with its first cluster
    got = family_bootstrap_ci(y, p, families, clusters, n=100, seed=1)
    assert np.isfinite(got).all()
    assert np.allclose(got, reference_interval(y, p, families, moved, 100, 1))
    assert np.isnan(family_bootstrap_ci(y, p, families, ["one"] * 14, n=50)[0])


def test_too_few_groups_give_no_interval_rather_than_a_false_one():
    y = np.array([1, 0] * 20)
    p = np.linspace(0, 1, 40)
    families = [f"img{i}" for i in range(40)]
    blocks = [f"b{i // 10}" for i in range(40)]  # 4 patient blocks
    assert np.isnan(family_bootstrap_ci(y, p, families, blocks, n=50)[0])
    m = summarize(y, p, {}, bootstrap=50, groups=families, clusters=blocks)
    text = format_metrics({"test": m | {"ece": 0.0}})
    assert "[too few groups for an interval]" in text and "nan" not in text
    y2 = np.array([1] + [0] * 39)  # one fractured family alone in its stratum
    fam2 = [f"f{i // 4}" for i in range(40)]
    assert np.isnan(family_bootstrap_ci(y2, p, fam2, n=50)[0])
    assert "too few groups" in _auc_cell(_accuracy(y, p, 0.5, 30, families, blocks))


def test_a_blank_group_is_no_group(tmp_path):
    """A manifest whose `group` is blank for most rows must not join those images into one
    family: they fall back to their file-name families."""
    a = write_tiny_dataset(tmp_path / "site-a", per_class=3)
    files = write_manifest(a, "group", lambda i: "g" if i < 2 else "")
    ds = discover_sources([a])
    fams = groups_of(ds, [s.path for s in ds.samples])
    assert len(set(fams)) == len(files) - 1  # the two "g" rows together, the rest alone


def test_metrics_without_a_bootstrap_show_no_interval():
    """A cross-validation fold skips the bootstrap: its report must not read as if the
    interval were nan or the groups too few."""
    y = np.array([1, 0] * 20)
    p = np.linspace(0, 1, 40)
    families = [f"f{i // 2}" for i in range(40)]
    m = summarize(y, p, {}, bootstrap=0, groups=families, clusters=families)
    text = format_metrics({"val": m}, intervals=False)
    assert "AUC" in text and "family-weighted AUC" in text
    assert "nan" not in text and "too few" not in text and "[" not in text
    with_ci = summarize(y, p, {}, bootstrap=50, groups=families, clusters=families)
    assert format_metrics({"val": with_ci}).count("[") == 2  # per image and per family
