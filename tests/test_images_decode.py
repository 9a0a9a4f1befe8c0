"""Decoding edge cases: JPEGs missing only their end marker, large images in bounded memory."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import gradient
from PIL import Image

from edge_toolkit.images import WORK_SIZE, ImageLoadError, ImageWarning, open_image

ROOT = Path(__file__).resolve().parents[1]


def _jpeg(progressive: bool = False) -> bytes:
    rng = np.random.default_rng(0)
    arr = np.clip(gradient(200, 150).astype(int) + rng.integers(-20, 20, (150, 200)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, "JPEG", quality=90, progressive=progressive)
    assert buf.getvalue().endswith(b"\xff\xd9")
    return buf.getvalue()


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_missing_only_its_end_marker_loads_with_a_warning(tmp_path, progressive):
    data = _jpeg(progressive)
    whole, cut = tmp_path / "whole.jpg", tmp_path / "no_eoi.jpg"
    whole.write_bytes(data)
    cut.write_bytes(data[:-2])
    with pytest.warns(ImageWarning, match="end marker missing"):
        img = open_image(cut)
    assert np.array_equal(np.asarray(img), np.asarray(open_image(whole)))


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_jpeg_with_image_data_cut_short_stays_an_error(tmp_path, progressive, keep):
    data = _jpeg(progressive)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageLoadError, match="truncated"):
        open_image(path)


def test_large_jpeg_is_decoded_small_and_keeps_its_orientation(tmp_path):
    g = np.tile(np.linspace(0, 255, 4000, dtype=np.float64), (3000, 1)).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    Image.fromarray(np.stack([g] * 3, -1)).save(tmp_path / "big.jpg", quality=90, exif=exif)
    img = open_image(tmp_path / "big.jpg")
    assert img.mode == "L" and img.width < img.height  # portrait after the EXIF rotation
    assert WORK_SIZE <= min(img.size) < 2 * WORK_SIZE
    rows = np.asarray(img, dtype=np.float64).mean(axis=1)
    assert rows[-1] - rows[0] > 200  # the ramp now runs top to bottom


def test_large_16bit_png_reduced_keeps_its_bit_depth_scale(tmp_path):
    arr = np.full((2500, 2100), 4095, np.uint16)  # 12-bit full white in 16 bits
    arr[:, :700] = 0
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = open_image(tmp_path / "a.png")
    assert img.size == (1050, 1250)  # reduced by 2
    out = np.asarray(img)
    assert out[:, :340].max() == 0 and out[:, 360:].min() >= 254


_CHILD = textwrap.dedent("""
    import sys
    from edge_toolkit.runtime.bench import peak_rss_kb
    from edge_toolkit.runtime.bundled import bundled_model
    from edge_toolkit.runtime.classifier import Classifier
    clf = Classifier.load(bundled_model(), num_threads=1)
    result = clf.predict_file(sys.argv[1])
    assert result.status in ("ok", "rejected"), result.error  # decoded; the gate may refuse
    print(peak_rss_kb())
""")


@pytest.mark.parametrize("kind", ["gray16", "rgba"])
def test_peak_memory_classifying_a_7000px_png_stays_under_300_mb(tmp_path, kind):
    n = 7000
    ramp = np.linspace(0, 1, n, dtype=np.float32)
    if kind == "gray16":
        arr = (ramp[:, None] * 3000 + ramp[None, :] * 1000).astype(np.uint16)
        img = Image.fromarray(arr)
    else:
        arr = np.empty((n, n, 4), np.uint8)
        arr[..., :3] = (ramp * 255).astype(np.uint8)[:, None, None]
        arr[..., 3] = 255
        arr[:, :500, 3] = 0
        img = Image.fromarray(arr, "RGBA")
    path = tmp_path / f"{kind}.png"
    img.save(path, compress_level=1)
    del arr, img
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    peak_mb = int(out.stdout.split()[-1]) / 1024
    assert peak_mb < 300, f"peak {peak_mb:.0f} MB"


def test_one_bright_pixel_does_not_darken_a_16bit_film(tmp_path):
    # 11-bit data (max 2040) in a 16-bit PNG; one annotation pixel at the format's maximum
    # used to double the scale and halve every other grey level.
    rng = np.random.default_rng(0)
    arr = (rng.random((120, 160)) * 2040).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "plain.png")
    arr[0, 0] = 65535
    Image.fromarray(arr).save(tmp_path / "marked.png")
    plain = np.asarray(open_image(tmp_path / "plain.png"), np.float64)
    marked = np.asarray(open_image(tmp_path / "marked.png"), np.float64)
    assert abs(plain.mean() - marked.mean()) < 1.0
    assert plain.mean() > 100  # 11 bits scaled to 8, not to 16


def test_signed_integer_pictures_are_shifted_not_clipped():
    arr = np.tile(np.linspace(-1000, 1000, 64), (48, 1)).astype(np.int32)
    out = np.asarray(open_image(Image.fromarray(arr, "I")), np.float64).mean(axis=0)
    assert out[0] <= 1 and out[-1] >= 240 and np.all(np.diff(out) >= 0)
    assert 110 < out[32] < 140  # zero sits mid-grey: negatives were clipped to black


def test_a_pil_picture_gets_the_same_size_limits_as_a_file():
    big = Image.new("L", (3000, 2100), 90)
    assert open_image(big).size == (1500, 1050)  # reduced like a decoded file
    with pytest.raises(ImageLoadError, match="too many pixels"):
        open_image(big, max_pixels=1_000_000)


def test_a_multipage_tiff_says_which_picture_was_read(tmp_path):
    pages = [Image.fromarray(gradient(80, 60)), Image.new("L", (80, 60), 0)]
    pages[0].save(tmp_path / "two.tif", save_all=True, append_images=pages[1:])
    with pytest.warns(ImageWarning, match="2 pictures in one file; using the first"):
        img = open_image(tmp_path / "two.tif")
    assert np.asarray(img).std() > 10  # the gradient, not the black page


def test_a_large_big_endian_16bit_tiff_is_read(tmp_path):
    """Pillow's crop/reduce/getextrema refuse 'I;16B': such a TIFF was 'cannot decode'."""
    arr = np.tile(np.linspace(0, 4095, 2100), (2100, 1)).astype(">u2")
    Image.fromarray(arr).save(tmp_path / "be.tif")
    out = np.asarray(open_image(tmp_path / "be.tif"), np.float64).mean(axis=0)
    assert out[0] <= 1 and out[-1] >= 254 and np.all(np.diff(out) >= 0)


def test_collected_warnings_are_each_threads_own_and_the_hook_goes_away(recwarn):
    """Another thread's warnings never land in a collecting thread's list (a DICOM read
    used to record every thread's), and the hook is gone when no thread collects."""
    import threading
    import warnings

    from edge_toolkit.images import collected_warnings

    before = warnings.showwarning
    inside, go, done = threading.Event(), threading.Event(), threading.Event()
    got: dict[str, list[str]] = {}

    def collector(name: str) -> None:
        with collected_warnings() as caught:
            inside.set()
            go.wait(5)
            warnings.warn(ImageWarning(f"{name}: mine"), stacklevel=1)
        got[name] = [str(w.message) for w in caught]
        done.set()

    t = threading.Thread(target=collector, args=("a",))
    t.start()
    inside.wait(5)
    with collected_warnings() as mine:
        warnings.warn(ImageWarning("b: mine"), stacklevel=1)
    warnings.warn(ImageWarning("c: not collected"), stacklevel=1)  # "a" still collects
    go.set()
    done.wait(5)
    t.join(5)
    assert got["a"] == ["a: mine"] and [str(w.message) for w in mine] == ["b: mine"]
    assert [str(w.message) for w in recwarn] == ["c: not collected"]
    assert warnings.showwarning is before


_TWICE = textwrap.dedent("""
    import sys, warnings
    warnings.filterwarnings("ignore")  # a notebook's first cell: notes and refusals must hold
    sys.path.insert(0, sys.argv[1])
    from test_dicom import dataset, ramp
    from edge_toolkit.images import ImageLoadError, collected_warnings, open_image
    import pydicom.config
    folder = sys.argv[2]
    for name in ("a.dcm", "b.dcm"):
        ds = dataset(ramp(8), bits_stored=8)
        with pydicom.config.disable_value_validation():
            ds.StudyInstanceUID = "1.2.826.0.SMITH^JOHN.19800101"  # not a valid UID
            ds.save_as(f"{folder}/{name}", enforce_file_format=True)
    for name in ("a.dcm", "b.dcm"):
        with collected_warnings() as caught:
            open_image(f"{folder}/{name}")
        notes = [str(w.message) for w in caught]
        assert len(notes) == 1 and "do not follow the standard" in notes[0], notes
        assert "SMITH" not in notes[0]
    for _ in range(2):
        try:
            open_image(f"{folder}/huge.png")
        except ImageLoadError as exc:
            assert "too many pixels" in exc.reason
        else:
            raise AssertionError("a 10000x10000 picture was not refused")
    print("ok")
""")


def test_notes_and_refusals_hold_for_a_second_file_and_under_ignore_filters(tmp_path):
    """Python shows a warning once per line of code unless told otherwise, and a notebook
    may ignore them all: the second DICOM with the same odd value lost its note, and a
    refusal that rode on Pillow's warning depended on the filters."""
    pytest.importorskip("pydicom", reason="the [dicom] extra (pydicom) is not installed")
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", 10000, 10000, 8, 0, 0, 0, 0)  # 8-bit grey, 10000 px
    (tmp_path / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                                        + chunk(b"IEND", b""))
    res = subprocess.run([sys.executable, "-c", _TWICE, str(ROOT / "tests"), str(tmp_path)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_the_hook_put_back_by_another_catch_warnings_never_calls_itself(recwarn):
    """Another thread's catch_warnings can put the hook back after the last collector left;
    the next collector then saved the hook as what it wraps, and every later warning
    recursed until RecursionError."""
    import warnings

    from edge_toolkit.images import collected_warnings

    original = warnings.showwarning
    try:
        with collected_warnings():
            hook = warnings.showwarning
        warnings.showwarning = hook  # as that other catch_warnings' exit would
        with collected_warnings():
            pass
        warnings.warn(ImageWarning("after"), stacklevel=1)
    finally:
        warnings.showwarning = original
    assert [str(w.message) for w in recwarn] == ["after"]
