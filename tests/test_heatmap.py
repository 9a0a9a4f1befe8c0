"""Heatmaps on the device: class activation maps from the model's feature-map output, mapped
back through the letterbox onto the original picture, for float and int8 models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import cached_models, make_images

from edge_toolkit.preprocess import PreprocessConfig, resize_gray
from edge_toolkit.runtime import Classifier
from edge_toolkit.runtime.heatmap import (
    HeatmapError,
    content_box,
    explain_file,
    explain_image,
    heat_rgba,
    overlay,
    overlay_source,
    source_text,
    to_original,
)
from edge_toolkit.synthetic import phantom

GAP = {"arch": "gap", "features": "last", "size": 64, "value_range": "0,1"}
SPECS = {"gap_float": GAP, "gap_int8": {**GAP, "int8": True}, "single": {}}
SIDE = 192  # phantom side; cropped to 192 x 128 so the model sees it letterboxed


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("ai_edge_litert")
    return cached_models(tmp_path_factory, SPECS)


def _fractured(seed: int, at: float) -> tuple[Image.Image, float, float]:
    """A horizontal bone with a vertical fracture at `at` of its half length; returns the
    picture (192 x 128) and the fracture's x and the shaft's y in its pixels."""
    arr = phantom(np.random.default_rng(seed), True, SIDE, center=(0.5, 0.5), angle=0.0,
                  fracture_at=at, slope=0.0)
    # phantom's draw order: centre x, y, angle, tissue level, width, contrast, half length
    rng = np.random.default_rng(seed)
    draws = [rng.uniform(lo, hi) for lo, hi in
             ((0.4, 0.6), (0.4, 0.6), (0, np.pi), (10, 30), (0.18, 0.3), (40, 70), (0.3, 0.45))]
    half_len = SIDE * draws[-1]  # in picture pixels (drawn at 2x, halved)
    top = 32
    return Image.fromarray(arr[top:top + 128]), SIDE / 2 + at * half_len, SIDE / 2 - top


@pytest.mark.parametrize("name", ["gap_float", "gap_int8"])
def test_heatmap_peak_follows_a_fracture_moved_along_the_bone(models, name):
    """A hand-set detector of a dark gap across a bright shaft (tests/tiny_models.py): its
    map must peak on the gap wherever the gap is, through export to TFLite (float and int8),
    the letterbox and the upsampling. What is checked is the heatmap machinery, not that a
    trained model finds real fractures."""
    clf = Classifier.load(models[name])
    assert clf.has_heatmap
    for seed in range(3):
        peaks = []
        for at in (-0.6, -0.2, 0.2, 0.6):
            img, x_true, y_bone = _fractured(seed, at)
            ex = explain_image(clf, img)
            assert ex.heat.shape == (img.height, img.width)
            assert ex.heat.min() >= 0.0 and ex.heat.max() == pytest.approx(1.0)
            y, x = np.unravel_index(np.argmax(ex.heat), ex.heat.shape)
            assert abs(x - x_true) <= 8, (seed, at, x, x_true)
            assert abs(y - y_bone) <= 16, (seed, at, y, y_bone)
            peaks.append(x)
        assert peaks == sorted(peaks)


def test_without_a_fracture_the_peak_is_not_where_a_gap_would_be(models):
    clf = Classifier.load(models["gap_float"])
    img, x_true, _ = _fractured(0, 0.2)
    arr = phantom(np.random.default_rng(0), False, SIDE, center=(0.5, 0.5), angle=0.0)
    ex = explain_image(clf, Image.fromarray(arr[32:160]))
    _, x = np.unravel_index(np.argmax(ex.heat), ex.heat.shape)
    assert abs(x - x_true) > 8
    assert explain_image(clf, img).result.raw_probability > ex.result.raw_probability


@pytest.mark.parametrize("fit", ["pad", "stretch"])
@pytest.mark.parametrize("wh", [(150, 90), (90, 150), (120, 120)])
def test_map_on_the_square_goes_back_onto_the_original_picture(fit, wh):
    """Mapping the preprocessed square itself back must give the original picture (blurred),
    with the letterbox bands cut away."""
    w, h = wh
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 255, (h // 10 + 1, w // 10 + 1)).astype(np.uint8)
    original = np.kron(blocks, np.ones((10, 10), np.uint8))[:h, :w]
    cfg = PreprocessConfig(size=64, channels=1, fit=fit)
    square = resize_gray(Image.fromarray(original), cfg).astype(np.float32)
    back = to_original(square, w, h, cfg)
    assert back.shape == (h, w)
    corr = np.corrcoef(back.ravel(), original.ravel().astype(np.float32))[0, 1]
    assert corr > 0.9
    left, top, right, bottom = content_box(w, h, cfg)
    if fit == "stretch" or w == h:
        assert (left, top, right, bottom) == (0, 0, 64, 64)
    else:
        assert (right - left, bottom - top) == ((64, round(h * 64 / w)) if w > h
                                                else (round(w * 64 / h), 64))


def test_overlay_and_colour_layer():
    img = Image.fromarray(np.full((20, 30), 100, np.uint8))
    heat = np.zeros((20, 30), np.float32)
    heat[5:10, 10:20] = 1.0
    plain = np.asarray(overlay(img, heat, 0.0))
    assert plain.shape == (20, 30, 3) and (plain == 100).all()
    full = np.asarray(overlay(img, heat, 1.0, "jet"))
    assert (full[0, 0] == 100).all() and tuple(full[7, 15]) == (128, 0, 0)  # jet's top
    rgba = np.asarray(heat_rgba(heat))
    assert rgba[..., 3].max() == 255 and rgba[0, 0, 3] == 0
    with pytest.raises(HeatmapError):
        overlay(img, heat, 0.5, "rainbow")
    with pytest.raises(HeatmapError):
        overlay(img, heat[:5], 0.5)


def test_single_output_model_classifies_without_a_heatmap(models, tmp_path):
    clf = Classifier.load(models["single"])
    path = make_images(tmp_path, 1)[0]
    ex = explain_file(clf, path)
    assert ex.heat is None and ex.result.ok
    assert ex.result.probability == pytest.approx(clf.predict_file(path).probability)


def _cli(*args: str) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-m", "edge_toolkit.cli", *args],
                          capture_output=True, text=True, env=env)


def test_classify_heatmap_writes_overlays_beside_the_results(models, tmp_path):
    pics = tmp_path / "pics"
    pics.mkdir()
    img, _, _ = _fractured(1, 0.2)
    img.save(pics / "bone.png")
    (pics / "broken.png").write_text("not a picture")
    out = tmp_path / "heat"
    r = _cli("classify", str(models["gap_int8"]), str(pics), "--heatmap", str(out),
             "-f", "csv", "-q")
    assert r.returncode == 1, r.stderr  # one bad file
    assert "broken.png" in r.stderr and "bone.png" in r.stdout
    written = sorted(p.name for p in out.iterdir())
    assert written == ["bone.heatmap.png"]
    with Image.open(out / "bone.heatmap.png") as o:
        assert o.size == img.size and o.mode == "RGB"
    r = _cli("classify", str(models["single"]), str(pics / "bone.png"), "--heatmap",
             str(tmp_path / "none"), "-q")
    assert r.returncode == 0 and "no feature-map output" in r.stderr


def test_same_named_images_never_overwrite_each_others_overlay(models, tmp_path):
    """Two `bone.png` from two folders: each overlay names its image inside the PNG; the
    second gets a name of its own (a hash of its path, so the same in every run) and a note
    says which; a later run with only the second image, into the same folder, still does not
    overwrite the first image's overlay."""
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "heat"
    for folder, (seed, at) in ((a, (1, 0.2)), (b, (2, -0.3))):
        folder.mkdir()
        _fractured(seed, at)[0].save(folder / "bone.png")
    r = _cli("classify", str(models["gap_float"]), str(a), str(b), "--heatmap", str(out),
             "-f", "csv", "-q")
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 2 and "bone.heatmap.png" in names, names
    other = next(n for n in names if n != "bone.heatmap.png")
    assert other.startswith("bone~") and f"heatmap written as {other}" in r.stderr
    owners = {n: overlay_source(out / n) for n in names}
    assert owners == {"bone.heatmap.png": source_text(str((a / "bone.png").resolve())),
                      other: source_text(str((b / "bone.png").resolve()))}
    first = (out / "bone.heatmap.png").read_bytes()
    r = _cli("classify", str(models["gap_float"]), str(b), "--heatmap", str(out), "-q")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == names  # b's overlay: the same name again
    assert (out / "bone.heatmap.png").read_bytes() == first
    r = _cli("classify", str(models["gap_float"]), str(a), "--heatmap", str(out), "-q")
    assert r.returncode == 0 and "heatmap written as" not in r.stderr  # its own: rewritten


def test_heatmap_goes_through_the_input_gate(models, tmp_path):
    """classify --heatmap and the web station explain through the Classifier's own path:
    a blank frame is refused (no label, no heat) unless the gate is off."""
    blank = Image.new("L", (128, 128), 200)
    clf = Classifier.load(models["gap_float"])
    ex = explain_image(clf, blank, file="blank.png")
    assert ex.result.status == "rejected" and ex.result.label is None and ex.heat is None
    assert "uniform" in ex.result.error
    ex = explain_image(Classifier.load(models["gap_float"], gate=False), blank)
    assert ex.result.ok and ex.heat is not None and ex.heat.shape == (128, 128)
    blank.save(tmp_path / "blank.png")
    r = _cli("classify", str(models["gap_float"]), str(tmp_path / "blank.png"), "--heatmap",
             str(tmp_path / "heat"), "-f", "csv", "-q")
    assert r.returncode == 3 and "rejected" in r.stderr
    assert not list((tmp_path / "heat").iterdir())
