"""The TF-free core: image decoding, preprocessing, dataset discovery, model card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_dataset
from PIL import Image

from edge_toolkit.card import CardError, ModelCard, embed_card, read_card, split_tflite
from edge_toolkit.data import DatasetError, carve_validation, class_id, discover, load_samples
from edge_toolkit.images import ImageLoadError, open_image
from edge_toolkit.preprocess import PreprocessConfig, preprocess

GOOD = ["gray.png", "rgb.jpg", "rgba.png", "palette.png", "cmyk.jpg", "gray16.png",
        "exif_rotated.jpg"]


@pytest.mark.parametrize("name", GOOD)
def test_every_common_kind_loads_as_the_same_gray_ramp(awkward_images, name):
    img = open_image(awkward_images[name])
    assert img.mode == "L"
    arr = np.asarray(img, dtype=np.float64)
    if name == "exif_rotated.jpg":
        assert img.size == (30, 40)  # EXIF orientation 6 applied: portrait now
        arr = np.rot90(arr)  # undo the display rotation: the ramp runs top to bottom
        arr = arr[::-1]
    else:
        assert img.size == (40, 30)
    cols = arr.mean(axis=0)
    if name == "rgba.png":
        assert cols[:5].max() < 5  # transparent pixels become black background
        cols = cols[5:]
    assert np.all(np.diff(cols) > -6), "the ramp must still rise left to right"
    assert cols[-1] - cols[0] > 150


def test_16bit_png_keeps_its_scale(tmp_path):
    dark = np.full((8, 8), 4095, np.uint16)  # 12-bit full white stored in 16 bits
    Image.fromarray(dark).save(tmp_path / "a.png")
    assert np.asarray(open_image(tmp_path / "a.png")).mean() == pytest.approx(255, abs=1)


@pytest.mark.parametrize("name,reason", [("truncated.jpg", "truncated"),
                                         ("empty.png", "empty"),
                                         ("text.png", "not an image")])
def test_bad_files_raise_one_line_reason(awkward_images, name, reason):
    with pytest.raises(ImageLoadError) as err:
        open_image(awkward_images[name])
    assert reason in err.value.reason
    assert name in str(err.value) and "\n" not in str(err.value)


def test_pixel_cap_and_missing_and_broken_link(tmp_path, awkward_images):
    with pytest.raises(ImageLoadError, match="pixel bomb"):
        open_image(awkward_images["gray.png"], max_pixels=100)
    with pytest.raises(ImageLoadError, match="no such file"):
        open_image(tmp_path / "nope.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(ImageLoadError, match="broken symbolic link"):
        open_image(tmp_path / "link.png")


@pytest.mark.parametrize("fit", ["pad", "stretch"])
@pytest.mark.parametrize("channels,value_range,lo,hi", [(1, "0,1", 0, 1), (3, "-1,1", -1, 1)])
def test_preprocess_shape_range_and_fit(awkward_images, fit, channels, value_range, lo, hi):
    cfg = PreprocessConfig(size=16, channels=channels, value_range=value_range, fit=fit)
    x = preprocess(awkward_images["gray.png"], cfg)
    assert x.shape == (16, 16, channels) and x.dtype == np.float32
    assert x.min() >= lo and x.max() <= hi
    if fit == "pad":  # 40x30 letterboxed: top and bottom rows are background
        assert np.allclose(x[0], lo) and np.allclose(x[-1], lo)
    else:
        assert not np.allclose(x[0], lo)


def test_preprocess_same_for_file_and_pil(awkward_images):
    cfg = PreprocessConfig(size=16)
    a = preprocess(awkward_images["rgb.jpg"], cfg)
    b = preprocess(Image.open(awkward_images["rgb.jpg"]), cfg)
    np.testing.assert_array_equal(a, b)


def test_preprocess_config_rejects_nonsense():
    with pytest.raises(ValueError):
        PreprocessConfig(channels=2)
    with pytest.raises(ValueError):
        PreprocessConfig(fit="crop")
    with pytest.raises(ValueError, match="intensity"):
        PreprocessConfig(intensity="clahe")


def _exposures(tmp_path: Path) -> tuple[Path, Path]:
    """One 'radiograph' (a bone-like bar on soft tissue, 60x40) at two windowings: the
    second is dim and flat, as another hospital's processing might leave it."""
    base = np.tile(np.linspace(0.2, 0.5, 60), (40, 1))
    base[:, 25:35] = 0.8
    a, b = tmp_path / "bright.png", tmp_path / "dim.png"
    Image.fromarray(np.clip(base * 255, 0, 255).astype(np.uint8)).save(a)
    Image.fromarray(np.clip(60 + base * 80, 0, 255).astype(np.uint8)).save(b)
    return a, b


@pytest.mark.parametrize("intensity", ["autocontrast", "equalize"])
def test_intensity_normalisation_evens_out_windowing_but_not_the_border(tmp_path, intensity):
    bright, dim = _exposures(tmp_path)
    plain = PreprocessConfig(size=30, channels=1, value_range="0,1")
    norm = PreprocessConfig(size=30, channels=1, value_range="0,1", intensity=intensity)
    gap = np.abs(preprocess(bright, plain) - preprocess(dim, plain))[5:-5].mean()
    assert gap > 0.05  # the two windowings differ as they are
    x_bright, x_dim = preprocess(bright, norm), preprocess(dim, norm)
    assert np.abs(x_bright - x_dim)[5:-5].mean() < gap / 4
    assert x_dim[5:-5].max() > 0.95 and x_dim[5:-5].min() < 0.2  # the full range is used
    # 60x40 letterboxed to 30x20: rows 0-4 and 25-29 are border, left black by both
    assert np.all(x_dim[:5] == 0) and np.all(x_dim[-5:] == 0)
    np.testing.assert_array_equal(x_dim, preprocess(Image.open(dim), norm))


def test_cards_without_an_intensity_step_read_as_none_and_unknown_steps_are_refused():
    old = PreprocessConfig(size=32).to_dict()
    del old["intensity"]  # a card written before the option existed
    assert PreprocessConfig.from_dict(old).intensity == "none"
    card = ModelCard(family="f", input_size=32, channels=3, preprocessing=old)
    assert ModelCard.from_json(card.to_json()).preprocess_config.intensity == "none"
    for pre, problem in ((old | {"intensity": "clahe"}, "preprocessing.intensity"),
                         (old | {"sharpen": 2}, "preprocessing.sharpen")):
        bad = ModelCard(family="f", input_size=32, channels=3, preprocessing=pre)
        with pytest.raises(CardError, match=problem):
            ModelCard.from_json(bad.to_json())


@pytest.mark.parametrize("name,label", [("fractured", 1), ("not fractured", 0),
                                        ("not_fractured", 0), ("Normal", 0), ("dog", None)])
def test_class_names_map(name, label):
    assert class_id(name) == label


def test_discover_counts_and_fingerprint(tiny_dataset):
    ds = discover(tiny_dataset)
    assert ds.counts() == {s: {"fractured": 6, "not fractured": 6}
                           for s in ("train", "val", "test")}
    fp = ds.fingerprint()
    assert fp.startswith("sha256:") and discover(tiny_dataset).fingerprint() == fp
    (tiny_dataset / "train" / "fractured" / "train-0-0.png").unlink()
    assert discover(tiny_dataset).fingerprint() != fp


def test_discover_carves_val_reproducibly(tmp_path):
    root = write_tiny_dataset(tmp_path / "d", per_class=20, splits=("train", "test"))
    a, b = discover(root, seed=3), discover(root, seed=3)
    assert a.carved_val and [s.path for s in a.split("val")] == [s.path for s in b.split("val")]
    assert {s.label for s in a.split("val")} == {0, 1}
    assert len(a.split("val")) == 6 and len(a.split("train")) == 34


def test_carve_keeps_rotated_families_together():
    from edge_toolkit.data import Sample

    samples = [Sample(Path(f"train/fractured/{i}-rotated{j}.jpg"), 1, "train")
               for i in range(10) for j in range(3)]
    samples += [Sample(Path(f"train/normal/n{i}.jpg"), 0, "train") for i in range(10)]
    out = carve_validation(samples, 0.3, seed=1)
    for i in range(10):
        fam = {s.split for s in out if s.path.name.startswith(f"{i}-")}
        assert len(fam) == 1


@pytest.mark.parametrize("setup,msg", [
    ("one_class", "both classes"), ("empty", "no image files"), ("unknown", "unknown class"),
    ("no_train", "no train/ folder")])
def test_discover_errors_say_what_was_found(tmp_path, setup, msg):
    root = tmp_path / "d"
    if setup == "one_class":
        write_tiny_dataset(root, classes=("fractured",))
    elif setup == "empty":
        (root / "train" / "fractured").mkdir(parents=True)
    elif setup == "unknown":
        write_tiny_dataset(root, classes=("fractured", "cats"))
    else:
        (root / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match=msg):
        discover(root)


def test_load_samples_skips_and_reports_bad_files(tiny_dataset):
    bad = tiny_dataset / "train" / "fractured" / "broken.png"
    bad.write_text("nope")
    ds = discover(tiny_dataset)
    loaded = load_samples(ds.split("train"), PreprocessConfig(size=8, channels=1))
    assert loaded.x.shape == (12, 8, 8, 1) and len(loaded.y) == 12
    assert loaded.skipped == [(str(bad), "not an image file (unrecognised format)")]


def _fake_tflite(n: int = 64) -> bytes:
    return b"\x1c\x00\x00\x00TFL3" + bytes(range(n))


def test_card_roundtrip_in_tflite_bytes(tmp_path):
    card = ModelCard(family="x", input_size=8, channels=1, preprocessing={"size": 8},
                     threshold=0.3, metrics={"val": {"auc": np.float64(0.9)}})
    data = embed_card(_fake_tflite(), card)
    bare, back = split_tflite(data)
    assert bare == _fake_tflite() and back is not None
    assert back.threshold == 0.3 and back.metrics["val"]["auc"] == 0.9
    card.variant = "int8-ptq"
    again = embed_card(data, card)  # re-embedding replaces, never stacks
    assert split_tflite(again)[0] == _fake_tflite()
    (tmp_path / "m.tflite").write_bytes(again)
    assert read_card(tmp_path / "m.tflite").variant == "int8-ptq"


def test_card_absent_or_file_not_tflite():
    assert split_tflite(_fake_tflite())[1] is None
    with pytest.raises(CardError, match="not a TFLite model"):
        split_tflite(b"GIF89a....")
    with pytest.raises(CardError, match="lacks"):
        ModelCard.from_dict({"schema": "edge_toolkit.card/1", "family": "x"})


def test_carve_keeps_content_families_whole(tmp_path):
    """Exact and near copies under unrelated names (as in the Kaggle data, where a carve by
    name put copies of 79 of 190 val images in train) never straddle the carve-out."""
    from PIL import Image

    from edge_toolkit.audit.leakage import quick_leak_check

    rng = np.random.default_rng(0)
    root = tmp_path / "d"
    for label, cls in ((1, "fractured"), (0, "not fractured")):
        folder = root / "train" / cls
        folder.mkdir(parents=True)
        for i in range(12):
            base = np.kron(rng.integers(0, 255, (8, 8)), np.ones((8, 8))).astype(np.uint8)
            img = Image.fromarray(base, "L")
            img.save(folder / f"a{label}{i:02d}.png")
            img.save(folder / f"copy-{label}{i:02d}.png")  # exact copy, another name
            img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((80, 80)).save(
                folder / f"z{label}{i:02d}.jpg", quality=95)  # near copy
    (root / "test").mkdir()
    leaks = {}
    for grouping in ("name", "content"):
        ds = discover(root, val_fraction=0.25, seed=0, val_grouping=grouping)
        assert ds.carved_val and ds.val_grouping == grouping
        assert {s.label for s in ds.split("val")} == {0, 1}
        leaks[grouping] = quick_leak_check(root, samples=ds.samples).splits["val"]
    assert leaks["name"].leaked > 0  # by name, copies land on both sides
    assert leaks["content"].leaked == 0 and leaks["content"].files in (15, 18, 21)
    with pytest.raises(ValueError, match="val grouping"):
        discover(root, val_grouping="nope")


def test_carve_on_the_kaggle_sample_leaves_no_copy_of_val_in_train():
    """On the shared Kaggle slice a carve by file name put an exact or near copy of 79 of
    its 190 val images in train; grouped by content families, none."""
    from edge_toolkit.audit.leakage import quick_leak_check

    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / \
        "kaggle-original-sample"
    if not root.is_dir():
        pytest.skip(f"{root} is absent (the shared real-data slice)")
    by_name = discover(root, val_grouping="name")
    by_content = discover(root)
    name_leak = quick_leak_check(root, samples=by_name.samples).splits["val"]
    content_leak = quick_leak_check(root, samples=by_content.samples).splits["val"]
    assert name_leak.leaked > 0.3 * name_leak.files  # what the name-only carve did
    assert content_leak.leaked == 0 and content_leak.files > 0.8 * name_leak.files
