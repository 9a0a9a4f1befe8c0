"""Dataset audit: duplicates, leakage, label conflicts, shortcuts, re-split, CLI exit codes.

Every dataset here is generated: smooth random "radiographs" that are far apart from each
other, plus planted copies (byte-identical, flipped + resized + re-encoded, rotated).
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edge_toolkit.audit.cli import EXIT_LEAK, audit
from edge_toolkit.audit.groups import DisjointSet
from edge_toolkit.audit.hashing import NEAR_THRESHOLD, best_correlation, signature
from edge_toolkit.audit.leakage import quick_leak_check
from edge_toolkit.audit.report import format_text, run_audit
from edge_toolkit.audit.resplit import MANIFEST, parse_fractions

KAGGLE_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / \
    "kaggle-original-sample"


def picture(seed: int, size: tuple[int, int] = (96, 96)) -> Image.Image:
    """A smooth random grayscale picture with a bright blob: unlike any other seed's."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(6, 6))
    img = Image.fromarray(((coarse - coarse.min()) / np.ptp(coarse) * 200).astype(np.uint8))
    arr = np.asarray(img.resize(size, Image.Resampling.BICUBIC), dtype=np.float64)
    yy, xx = np.mgrid[: size[1], : size[0]]
    cy, cx = rng.uniform(0.3, 0.7) * size[1], rng.uniform(0.3, 0.7) * size[0]
    arr += 55 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size[0] / 8) ** 2))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")


def jpeg_bytes(img: Image.Image, quality: int = 80) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def build_clean(root: Path, classes: tuple[str, str] = ("fractured", "normal"),
                splits: tuple[str, ...] = ("train", "val", "test"), per_class: int = 6,
                seed0: int = 1000) -> Path:
    seed = seed0
    for split in splits:
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                picture(seed).save(d / f"{i}.png")
                seed += 1
    return root


def build_leaky(root: Path) -> Path:
    """train/test only (like the original Kaggle data), with planted problems in test."""
    tr_f, tr_n = root / "train" / "fractured", root / "train" / "not fractured"
    te_f, te_n = root / "test" / "fractured", root / "test" / "not fractured"
    for d in (tr_f, tr_n, te_f, te_n):
        d.mkdir(parents=True)
    for i in range(6):
        picture(i).save(tr_f / f"f{i}.png")
        picture(100 + i).save(tr_n / f"n{i}.png")
    (tr_f / "notes.txt").write_text("not an image\n")
    # test/fractured: exact copy, flipped+resized+re-encoded copy, rotated copy, a new image
    (te_f / "copy.png").write_bytes((tr_f / "f0.png").read_bytes())
    flipped = picture(1).transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((72, 72))
    (te_f / "f1-variant.jpg").write_bytes(jpeg_bytes(flipped))
    picture(2).rotate(30, resample=Image.Resampling.BILINEAR).save(te_f / "turned.png")
    picture(50).save(te_f / "new.png")
    # test/not fractured: a train 'fractured' image under the other label, a broken file
    (te_n / "conflict.png").write_bytes((tr_f / "f3.png").read_bytes())
    (te_n / "broken.png").write_text("this is text, not a PNG\n")
    picture(150).save(te_n / "new1.png")
    picture(151).save(te_n / "new2.png")
    return root


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(p.relative_to(root).as_posix().encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def leaky(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_leaky(tmp_path_factory.mktemp("leaky") / "data")


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_clean(tmp_path_factory.mktemp("clean") / "data")


@pytest.fixture(scope="module")
def leaky_report(leaky: Path):
    return run_audit(leaky, bootstrap=50)


# ---------------------------------------------------------------- signatures


def test_signature_tolerates_copies_and_separates_images() -> None:
    base = picture(7)
    variants = [
        base.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        base.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
        base.rotate(90),
        base.rotate(17, resample=Image.Resampling.BILINEAR),
        base.rotate(-40, resample=Image.Resampling.BILINEAR),
        base.resize((300, 300), Image.Resampling.BICUBIC),
        Image.open(io.BytesIO(jpeg_bytes(base.resize((60, 60)), quality=60))),
    ]
    a = signature(base)
    corr = best_correlation(np.stack([a] * len(variants)),
                            np.stack([signature(v) for v in variants]))
    assert corr.min() >= NEAR_THRESHOLD, corr
    others = np.stack([signature(picture(s)) for s in range(20, 40)])
    assert best_correlation(np.stack([a] * len(others)), others).max() < NEAR_THRESHOLD


def test_flat_image_matches_nothing() -> None:
    flat = signature(Image.new("L", (50, 50), 128))
    assert not flat.any()
    assert best_correlation(flat[None], flat[None])[0] < NEAR_THRESHOLD


def test_disjoint_set_components() -> None:
    d = DisjointSet(6)
    d.union_pairs([0, 3], [2, 4])
    d.union_by_key(["a", None, "b", "x", None, "b"])
    assert d.components(min_size=2) == [[0, 2, 5], [3, 4]]


def test_parse_fractions() -> None:
    assert parse_fractions("70,15,15") == pytest.approx({"train": 0.7, "val": 0.15, "test": 0.15})
    assert parse_fractions("train=4,test=1") == pytest.approx({"train": 0.8, "test": 0.2})
    for bad in ("val=1", "a=1,b=2", "1,2,3,4", "train=-1,test=2"):
        with pytest.raises(ValueError):
            parse_fractions(bad)


# ---------------------------------------------------------------- the audit itself


def test_leaky_counts_and_verdict(leaky_report) -> None:
    d = leaky_report.data
    assert d["splits_present"] == ["train", "test"]
    assert d["files"] == 20  # 12 train + 8 test image files; notes.txt is ignored
    assert d["ignored_files"] == ["train/fractured/notes.txt"]
    assert [u["file"] for u in d["unreadable"]] == ["test/not fractured/broken.png"]
    assert "not an image" in d["unreadable"][0]["reason"]
    assert d["splits"]["test"]["not fractured"]["unreadable"] == 1
    assert d["splits"]["train"]["fractured"]["formats"] == {"PNG": 6}

    ex = d["exact_duplicates"]
    assert (ex["groups"], ex["cross_split_groups"], ex["redundant_files"]) == (2, 2, 2)
    near = d["near_duplicates"]
    assert near["families"] == 2 and near["cross_split_families"] == 2
    fam_files = sorted(f for fam in near["list"] for f in fam["files"])
    assert fam_files == ["test/fractured/f1-variant.jpg", "test/fractured/turned.png",
                         "train/fractured/f1.png", "train/fractured/f2.png"]
    conflicts = d["label_conflicts"]["exact"]
    assert len(conflicts) == 1 and conflicts[0]["labels"] == ["fractured", "not fractured"]
    assert sorted(conflicts[0]["files"]) == ["test/not fractured/conflict.png",
                                             "train/fractured/f3.png"]

    test = d["leakage"]["splits"]["test"]
    assert test["files"] == 8
    assert test["exact_in_train"] == 2 and test["near_only_in_train"] == 2
    assert test["exact_or_near_in_train_pct"] == 50.0
    assert d["leaked"] is True and d["verdict"].startswith("VERDICT: LEAK")
    assert "val" not in d["leakage"]["splits"]


def test_leaky_text_report(leaky_report) -> None:
    text = format_text(leaky_report)
    for needle in ("Files per split and class", "Unreadable files (1)", "broken.png",
                   "Exact duplicates", "Near duplicates", "Label conflicts",
                   "VERDICT: LEAK", "Shortcut check", "test: 2/8 (25.0%)"):
        assert needle in text, needle


def test_shortcut_section(leaky_report) -> None:
    sh = leaky_report.data["shortcuts"]
    assert sh["skipped"] is None
    assert set(sh["splits"]) == {"test"} and set(sh["logistic"]) == {"test"}
    auc = sh["splits"]["test"]["auc"]
    lo, hi = sh["splits"]["test"]["auc_ci95"]
    assert 0.0 <= lo <= auc <= hi <= 1.0
    assert set(sh["single_features"]) == {"log_width", "log_height", "log_aspect",
                                          "mean_intensity", "std_intensity"}


def test_shortcut_finds_a_planted_shortcut(tmp_path: Path) -> None:
    """Fractured images are larger: a size-only model must separate the classes."""
    root = tmp_path / "data"
    for split, n in (("train", 12), ("test", 6)):
        for cls, size in (("fractured", (128, 96)), ("normal", (80, 80))):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                picture(hash((split, cls, i)) % 10_000, size).save(d / f"{i}.png")
    sh = run_audit(root, near=False, bootstrap=0).data["shortcuts"]
    assert sh["splits"]["test"]["auc"] == 1.0


def test_clean_dataset(clean: Path) -> None:
    d = run_audit(clean, bootstrap=0).data
    assert d["splits_present"] == ["train", "val", "test"]
    assert d["exact_duplicates"]["groups"] == 0
    assert d["near_duplicates"]["families"] == 0
    assert d["leaked"] is False and d["verdict"].startswith("VERDICT: CLEAN")
    assert d["splits"]["val"]["not fractured"]["folder"] == "normal"  # alias of the class
    assert set(d["leakage"]["splits"]) == {"val", "test"}


def test_quick_leak_check(leaky: Path, clean: Path) -> None:
    exact = quick_leak_check(leaky, near=False)
    assert exact.leaked and exact.splits["test"].exact == 2 and exact.splits["test"].near_only == 0
    assert "near copies not checked" in exact.verdict()
    both = quick_leak_check(leaky)
    assert both.splits["test"].leaked == 4
    lines = both.warning_lines()
    assert lines[0].startswith("WARNING") and any("--resplit" in x for x in lines)
    assert quick_leak_check(clean).warning_lines() == []


def test_quick_leak_check_uses_the_callers_split(clean: Path) -> None:
    """A validation set carved from train is checked as the trainer will use it."""
    from edge_toolkit.data import Sample

    samples = [Sample(p, 1 if p.parent.name == "fractured" else 0, p.parts[-3])
               for p in sorted(clean.rglob("*.png"))]
    copy = next(s for s in samples if s.split == "train")  # also listed as val: a leak only
    # this split shows
    leak = quick_leak_check(clean, samples=[*samples, Sample(copy.path, copy.label, "val")])
    assert leak.splits["val"].exact == 1


# ---------------------------------------------------------------- re-split


def test_resplit_is_leak_free_and_source_untouched(leaky: Path, tmp_path: Path) -> None:
    before = tree_digest(leaky)
    out = tmp_path / "resplit"
    res = CliRunner().invoke(audit, [str(leaky), "--resplit", str(out), "--json",
                                     "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    rs = doc["resplit"]
    assert rs["dropped_exact_copies"] == 1 and rs["dropped_label_conflicts"] == 2
    assert rs["skipped_unreadable"] == 1
    assert rs["hard_linked"] + rs["copied"] == 16
    assert tree_digest(leaky) == before
    assert (out / MANIFEST).is_file()
    assert {p.name for p in (out / "train").iterdir()} == {"fractured", "not fractured"}
    again = run_audit(out, bootstrap=0).data
    assert again["leaked"] is False
    assert again["exact_duplicates"]["groups"] == 0
    assert again["label_conflicts"] == {"exact": [], "near": []}
    # each near family stayed together: f1 with its variant, f2 with its rotation
    for fam in again["near_duplicates"]["list"]:
        assert len(fam["splits"]) == 1


def test_resplit_is_reproducible_and_stratified(clean: Path, tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        res = CliRunner().invoke(audit, [str(clean), "--resplit", str(out), "--fractions",
                                         "50,25,25", "--seed", "3", "--no-shortcuts"])
        assert res.exit_code == 0, res.output
        runs.append((out / MANIFEST).read_text())
        counts = {s: len(list((out / s).rglob("*.png"))) for s in ("train", "val", "test")}
        assert counts == {"train": 18, "val": 9, "test": 9}
        assert len(list((out / "val" / "fractured").glob("*.png"))) in (4, 5)
    assert runs[0] == runs[1]


def test_resplit_keeps_name_families_together(tmp_path: Path) -> None:
    """`7.png` in train and `7-rotated2.png` in test name one source: one split, even though
    their pixels differ."""
    root = build_clean(tmp_path / "d", splits=("train", "test"), per_class=4)
    picture(77).save(root / "test" / "fractured" / "3-rotated2.png")
    out = tmp_path / "o"
    res = CliRunner().invoke(audit, [str(root), "--resplit", str(out), "--no-shortcuts"])
    assert res.exit_code == 0, res.output
    assert "File-name families (N.jpg, N-rotated...) spanning splits: 1 of 1 " in res.output
    homes = {p.parts[-3] for p in out.rglob("*.png") if p.stem in ("3", "3-rotated2")}
    assert len(homes) == 1


def test_resplit_refuses_bad_outputs(leaky: Path, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    inside = leaky / "resplit-here"
    for out in (busy, inside, leaky):
        res = CliRunner().invoke(audit, [str(leaky), "--resplit", str(out)])
        assert res.exit_code == 2, (out, res.output)
    assert not inside.exists()
    res = CliRunner().invoke(audit, [str(leaky), "--resplit", str(tmp_path / "o"),
                                     "--fractions", "val=1"])
    assert res.exit_code == 2


# ---------------------------------------------------------------- CLI


def test_cli_exit_codes_and_json(leaky: Path, clean: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(audit, [str(leaky), "--bootstrap", "0"])
    assert res.exit_code == 0 and "VERDICT: LEAK" in res.output
    res = runner.invoke(audit, [str(leaky), "--fail-on-leak", "--json", "--bootstrap", "0"])
    assert res.exit_code == EXIT_LEAK == 3
    doc = json.loads(res.output)
    for key in ("splits", "unreadable", "exact_duplicates", "near_duplicates",
                "label_conflicts", "leakage", "shortcuts", "verdict", "leaked", "seconds"):
        assert key in doc, key
    report = tmp_path / "r.json"
    res = runner.invoke(audit, [str(clean), "--fail-on-leak", "--no-shortcuts",
                                "--report", str(report)])
    assert res.exit_code == 0 and "VERDICT: CLEAN" in res.output
    assert json.loads(report.read_text())["leaked"] is False
    res = runner.invoke(audit, [str(leaky), "--no-near", "--fail-on-leak", "--no-shortcuts"])
    assert res.exit_code == 3 and "not checked" in res.output


def test_cli_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(audit, [str(tmp_path / "missing")]).exit_code == 2
    (tmp_path / "photos").mkdir()
    res = runner.invoke(audit, [str(tmp_path)])
    assert res.exit_code == 2 and "no train/, val/ or test/" in res.output


def test_odd_layouts_are_reported_not_fatal(tmp_path: Path) -> None:
    root = build_clean(tmp_path / "d", splits=("train",), per_class=3)
    (root / "train" / "cats").mkdir()
    (root / "train" / "stray.png").write_bytes(b"")
    (root / "train" / "fractured" / "empty.jpg").write_bytes(b"")
    d = run_audit(root, bootstrap=0).data
    assert d["unknown_class_folders"] == ["train/cats"]
    assert d["outside_class_folders"] == ["train/stray.png"]  # not "not an image by name"
    assert d["ignored_files"] == []
    assert d["unreadable"] == [{"file": "train/fractured/empty.jpg",
                                "reason": "empty file (0 bytes)"}]
    assert d["verdict"].startswith("VERDICT: NOT CHECKED")
    assert d["shortcuts"]["skipped"]


def test_audit_never_imports_tensorflow(leaky: Path) -> None:
    code = ("import sys; from click.testing import CliRunner; "
            "from edge_toolkit.cli import main; "
            f"r = CliRunner().invoke(main, ['audit', {str(leaky)!r}, '--bootstrap', '0']); "
            "assert r.exit_code == 0, r.output; "
            "bad = [m for m in ('tensorflow', 'keras', 'sklearn', 'imagehash') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------- real data


@pytest.mark.realdata
def test_kaggle_original_sample(tmp_path: Path) -> None:
    if not KAGGLE_SAMPLE.is_dir():
        pytest.skip(f"{KAGGLE_SAMPLE} is absent (the shared real-data slice)")
    t0 = time.perf_counter()
    rep = run_audit(KAGGLE_SAMPLE, bootstrap=0).data
    test = rep["leakage"]["splits"]["test"]
    assert test["exact_in_train_pct"] > 90.0  # 491 of 506 when written
    assert rep["near_duplicates"]["cross_split_families"] >= 50  # rotated N-rotated... families
    assert rep["leaked"]
    res = CliRunner().invoke(audit, [str(KAGGLE_SAMPLE), "--resplit", str(tmp_path / "o"),
                                     "--no-shortcuts", "--json"])
    assert res.exit_code == 0, res.output[-2000:]
    assert not quick_leak_check(tmp_path / "o").leaked
    assert time.perf_counter() - t0 < 60


def test_control_characters_in_file_names_are_escaped_in_the_report(tmp_path: Path) -> None:
    root = build_clean(tmp_path / "ds")
    folder = root / "train" / "fractured"
    (folder / "two\nlines.jpg").write_bytes(b"not a picture")  # listed as unreadable
    (folder / "copy\x1b[31m.png").write_bytes((folder / "0.png").read_bytes())  # a duplicate
    text = format_text(run_audit(root))
    assert "two\\nlines.jpg" in text and "copy\\x1b[31m.png" in text
    assert "\x1b" not in text and not any(ln.startswith("lines.jpg") for ln in text.splitlines())
