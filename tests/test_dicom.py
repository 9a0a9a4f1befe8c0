"""DICOM input: files built with pydicom itself, through the same loader as every image."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_toolkit.images import ImageLoadError, ImageWarning, open_image

pydicom = pytest.importorskip("pydicom", reason="the [dicom] extra (pydicom) is not installed")
from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import (  # noqa: E402
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
SR = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR


def ramp(bits: int, h: int = 30, w: int = 40) -> np.ndarray:
    """Left dark, right bright, across the full range of `bits`."""
    top = 2 ** bits - 1
    dtype = np.uint8 if bits <= 8 else np.uint16
    return np.tile(np.linspace(0, top, w), (h, 1)).round().astype(dtype)


def dataset(arr: np.ndarray, *, bits_stored: int, photometric: str = "MONOCHROME2",
            sop: str = DX, frames: int = 1, **extra: object) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.3.4.5"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "ID-12345"
    ds.Modality = "DX"
    ds.Rows, ds.Columns = arr.shape[-2], arr.shape[-1]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = arr.tobytes()
    return ds


def save(ds: FileDataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def cols(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float64).mean(axis=0)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_monochrome2_at_each_bit_depth_is_a_full_range_ramp(tmp_path, bits):
    img = open_image(save(dataset(ramp(bits), bits_stored=bits), tmp_path / "a.dcm"))
    assert img.mode == "L" and img.size == (40, 30)
    c = cols(img)
    assert c[0] <= 1 and c[-1] >= 254 and np.all(np.diff(c) >= 0)


def test_monochrome1_is_inverted(tmp_path):
    img = open_image(save(dataset(ramp(12), bits_stored=12, photometric="MONOCHROME1"),
                          tmp_path / "a.dcm"))
    c = cols(img)
    assert c[0] >= 254 and c[-1] <= 1  # low values are white in MONOCHROME1


def test_rescale_then_window(tmp_path):
    # Stored 0..4095, rescaled to -1024..3071 (CT-like units); window 0 +- 500 on those.
    ds = dataset(ramp(12), bits_stored=12, RescaleSlope=1, RescaleIntercept=-1024,
                 WindowCenter=0, WindowWidth=1000)
    arr = np.asarray(open_image(save(ds, tmp_path / "a.dcm")), dtype=np.float64)
    values = np.linspace(0, 4095, 40).round() - 1024
    expected = np.clip((values + 0.5) / 999 + 0.5, 0, 1) * 255
    assert np.abs(arr.mean(axis=0) - expected).max() <= 1.0
    # Without the rescale the same window would put everything above +500: all white.
    ds2 = dataset(ramp(12), bits_stored=12, WindowCenter=0, WindowWidth=1000)
    plain = np.asarray(open_image(save(ds2, tmp_path / "b.dcm")))
    assert plain[:, 10:].min() == 255


def test_rescale_slope_without_window_uses_the_full_range(tmp_path):
    ds = dataset(ramp(16), bits_stored=16, RescaleSlope=2, RescaleIntercept=-100)
    c = cols(open_image(save(ds, tmp_path / "a.dcm")))
    assert c[0] <= 1 and c[-1] >= 254


def test_multiframe_takes_the_first_frame_with_a_warning(tmp_path):
    frames = np.stack([ramp(8), 255 - ramp(8)])
    path = save(dataset(frames, bits_stored=8, frames=2), tmp_path / "multi.dcm")
    with pytest.warns(ImageWarning, match="2 frames"):
        img = open_image(path)
    assert cols(img)[0] < cols(img)[-1]  # the first frame's ramp rises


def test_suffixless_file_with_the_preamble_is_read_and_study_is_hashed(tmp_path):
    path = save(dataset(ramp(8), bits_stored=8), tmp_path / "IM000001")
    img = open_image(path)
    assert img.size == (40, 30)
    study = img.info["study"]
    assert len(study) == 16 and "1.2.3.4.5" not in study


def test_a_folder_walk_finds_suffixless_dicom_files_but_not_their_index(tmp_path):
    """A PACS export names its files IM000001 and indexes them in DICOMDIR: classify, train,
    evaluate and audit walk folders through `is_image_file`, which used to take image names
    only, so a folder of such files was "no images found"."""
    from edge_toolkit.data import _list_images
    from edge_toolkit.images import is_image_file
    from edge_toolkit.runtime.sources import empty_folders, expand_paths

    export = tmp_path / "export" / "study1"
    export.mkdir(parents=True)
    im = save(dataset(ramp(8), bits_stored=8), export / "IM000001")
    save(dataset(ramp(8), bits_stored=8), export.parent / "DICOMDIR")
    (export / "notes").write_text("not an image, no preamble")
    assert is_image_file(im) and not is_image_file(export / "notes")
    assert [s.file for s in expand_paths([tmp_path / "export"])] == [str(im)]
    assert empty_folders([tmp_path / "export"]) == []
    assert _list_images(tmp_path / "export") == [im]


def test_a_fifo_in_a_folder_is_not_opened_by_the_walk(tmp_path):
    """The walk opens files without an image suffix to look for DICOM's preamble: a named
    pipe among them would block it forever, so only regular files are opened."""
    import os
    import threading

    from edge_toolkit.runtime.sources import expand_paths

    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    os.mkfifo(tmp_path / "pipe")
    save(dataset(ramp(8), bits_stored=8), tmp_path / "IM000002")
    found: list = []
    walker = threading.Thread(target=lambda: found.extend(expand_paths([tmp_path])),
                              daemon=True)
    walker.start()
    walker.join(20)
    if walker.is_alive():  # unblock the stuck open() so the test process can end
        with open(tmp_path / "pipe", "wb"):
            pass
        pytest.fail("the folder walk blocked on a named pipe")
    assert [s.file for s in found] == [str(tmp_path / "IM000002")]


def test_rle_compressed_decodes(tmp_path):
    ds = dataset(ramp(16), bits_stored=16)
    ds.compress(RLELossless)
    c = cols(open_image(save(ds, tmp_path / "rle.dcm")))
    assert c[0] <= 1 and c[-1] >= 254


def test_jpeg_baseline_decodes_with_pillow(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(ramp(8)).save(buf, "JPEG", quality=95)
    ds = dataset(ramp(8), bits_stored=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    c = cols(open_image(save(ds, tmp_path / "jpeg.dcm")))
    assert c[0] < 10 and c[-1] > 245


@pytest.mark.parametrize("syntax, bits, marker", [
    (JPEGLosslessSV1, 16, b"\xc3"),  # JPEG Lossless, process 14
    (JPEGExtended12Bit, 12, b"\xc1"),  # JPEG Extended, 12-bit samples
])
def test_compressed_without_a_decoder_names_the_one_to_install(tmp_path, syntax, bits, marker):
    ds = dataset(ramp(16), bits_stored=bits)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\xd8\xff" + marker + b"\0" * 32 + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    path = save(ds, tmp_path / "lossless.dcm")
    with pytest.raises(ImageLoadError) as err:
        open_image(path)
    assert "needs a decoder" in err.value.reason and "python-gdcm" in err.value.reason


def test_structured_report_is_refused_as_holding_no_image(tmp_path):
    ds = dataset(ramp(8), bits_stored=8, sop=SR)
    del ds.PixelData
    ds.Modality = "SR"
    with pytest.raises(ImageLoadError, match="holds no image .Comprehensive SR"):
        open_image(save(ds, tmp_path / "report.dcm"))


@pytest.mark.parametrize("cut", ["header", "pixels", "garbage"])
def test_broken_dicom_is_one_line_error_without_identifiers(tmp_path, cut):
    good = save(dataset(ramp(16), bits_stored=16), tmp_path / "good.dcm").read_bytes()
    bad = tmp_path / "bad.dcm"
    if cut == "header":
        bad.write_bytes(good[:200])
    elif cut == "pixels":
        bad.write_bytes(good[:-1000])
    else:
        bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x13\x37" * 50)
    with pytest.raises(ImageLoadError) as err:
        open_image(bad)
    msg = str(err.value)
    assert "\n" not in msg and "Doe" not in msg and "ID-12345" not in msg
    assert "damaged" in err.value.reason or "not a valid" in err.value.reason


def test_large_dicom_is_reduced_before_the_luts(tmp_path):
    arr = np.tile(np.linspace(0, 4095, 2400), (2200, 1)).round().astype(np.uint16)
    img = open_image(save(dataset(arr, bits_stored=12), tmp_path / "big.dcm"))
    assert img.size == (1200, 1100)
    c = cols(img)
    assert c[0] <= 1 and c[-1] >= 254


def _voi_lut_dataset(arr: np.ndarray, lut: list[int], bits: int, first: int = 0
                     ) -> FileDataset:
    from pydicom.dataset import Dataset

    ds = dataset(arr, bits_stored=12)
    item = Dataset()
    item.LUTDescriptor = [len(lut), first, bits]
    item.LUTData = lut
    item["LUTData"].VR = "US"
    ds.VOILUTSequence = [item]
    return ds


def test_a_voi_lut_with_8_bit_entries_maps_12_bit_values_without_wrapping(tmp_path):
    # The common case: 12-bit values through a 4096-entry LUT whose outputs are 8-bit.
    # pydicom's apply_voi indexes such a LUT with uint8, so values above 255 wrapped.
    arr = ramp(12)
    lut = [int(i * 255 / 4095) for i in range(4096)]
    img = open_image(save(_voi_lut_dataset(arr, lut, 8), tmp_path / "voi.dcm"))
    expected = np.asarray(lut)[arr.astype(np.int64)].astype(np.float64)
    assert np.abs(np.asarray(img, np.float64) - expected).max() <= 1


def test_a_voi_lut_declared_16_bit_holding_12_bit_values_spans_the_range(tmp_path):
    lut = list(range(4096))  # declared 16 bits, values only up to 4095 (a common mislabel)
    c = cols(open_image(save(_voi_lut_dataset(ramp(12), lut, 16), tmp_path / "voi16.dcm")))
    assert c[0] <= 1 and c[-1] >= 254


def test_empty_display_settings_fall_back_to_the_full_range(tmp_path):
    ds = dataset(ramp(12), bits_stored=12, WindowCenter=None, WindowWidth=None)
    ds.VOILUTSequence = []
    c = cols(open_image(save(ds, tmp_path / "empty.dcm")))
    assert c[0] <= 1 and c[-1] >= 254


def test_a_dataset_in_memory_goes_through_the_same_display_pipeline(tmp_path):
    from edge_toolkit.dicom import dataset_to_image

    ds = dataset(ramp(12), bits_stored=12, photometric="MONOCHROME1")
    from_file = open_image(save(ds, tmp_path / "a.dcm"))
    from_memory = dataset_to_image(pydicom.dcmread(tmp_path / "a.dcm"), 10_000_000)
    assert np.array_equal(np.asarray(from_file), np.asarray(from_memory))
    assert cols(from_memory)[0] >= 254  # MONOCHROME1 inverted here too


def test_modality_is_recorded_and_the_gate_refuses_a_nuclear_medicine_scan(tmp_path):
    from edge_toolkit.runtime.gate import Gate

    rng = np.random.default_rng(0)
    arr = (rng.random((120, 100)) * 3000 + 500).astype(np.uint16)
    scan = open_image(save(dataset(arr, bits_stored=12, Modality="NM"), tmp_path / "nm.dcm"))
    film = open_image(save(dataset(arr, bits_stored=12, Modality="DX"), tmp_path / "dx.dcm"))
    assert scan.info["dicom_modality"] == "NM"
    reason = Gate().check_image(scan)
    assert reason is not None and "NM (nuclear medicine)" in reason
    assert "modality" not in (Gate().check_image(film) or "")


def _j2k_header(width: int, height: int) -> bytes:
    """A JPEG 2000 codestream's start: SOC, then SIZ with the picture's size."""
    import struct

    return (b"\xff\x4f\xff\x51" + struct.pack(">HH", 41, 0)
            + struct.pack(">IIIIIIII", width, height, 0, 0, width, height, 0, 0)
            + struct.pack(">HBBB", 1, 7, 1, 1))


def test_codestream_sizes_are_read_from_jpeg_and_jpeg2000_headers():
    from edge_toolkit.dicom import codestream_size

    buf = io.BytesIO()
    Image.fromarray(ramp(8)).save(buf, "JPEG")
    assert codestream_size(buf.getvalue()) == (40, 30)
    assert codestream_size(_j2k_header(13000, 9000)) == (13000, 9000)
    assert codestream_size(b"not a codestream") is None
    assert codestream_size(buf.getvalue()[:12]) is None  # cut before the frame header


def test_compressed_data_bigger_than_its_header_is_refused_before_decoding(tmp_path):
    from pydicom.uid import JPEG2000Lossless

    ds = dataset(ramp(8), bits_stored=8)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([_j2k_header(13000, 13000) + b"\0" * 64])
    ds["PixelData"].VR = "OB"
    with pytest.raises(ImageLoadError, match="13000x13000 pixels but the header says 40x30"):
        open_image(save(ds, tmp_path / "bomb.dcm"))


def test_pydicom_warnings_become_one_line_that_quotes_no_value(tmp_path):
    import warnings

    import pydicom.config

    ds = dataset(ramp(8), bits_stored=8)
    path = save(ds, tmp_path / "a.dcm")
    with pydicom.config.disable_value_validation():  # write an invalid UID on purpose
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = "1.2.826.0.SMITH^JOHN.19800101"
        ds.save_as(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        open_image(path)
    texts = [str(w.message) for w in caught]
    assert texts and all("SMITH" not in t for t in texts)
    assert all(isinstance(w.message, ImageWarning) for w in caught)
    assert any("do not follow the standard" in t for t in texts)


def test_damaged_compressed_data_is_called_damaged_not_a_missing_decoder(tmp_path):
    ds = dataset(ramp(16), bits_stored=16)
    ds.compress(RLELossless)
    frame = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])  # cut short
    with pytest.raises(ImageLoadError) as err:
        open_image(save(ds, tmp_path / "rle.dcm"))
    assert "damaged" in err.value.reason and "decoder" not in err.value.reason


def test_the_decoder_hint_is_a_runnable_pip_command():
    from edge_toolkit.dicom import _install_hint

    hint = _install_hint(JPEGLosslessSV1)
    assert hint == "pip install python-gdcm"
    both = _install_hint("1.2.840.10008.1.2.4.80")
    assert both == "pip install pyjpegls (or: pip install python-gdcm)"


def test_implicit_vr_without_file_meta_decodes(tmp_path):
    ds = dataset(ramp(12), bits_stored=12)
    del ds.file_meta
    path = tmp_path / "old.dcm"
    ds.save_as(path, enforce_file_format=False, implicit_vr=True, little_endian=True)
    c = cols(open_image(path))
    assert c[0] <= 1 and c[-1] >= 254


def test_a_dicomdir_named_directly_is_called_an_index_not_damaged(tmp_path):
    import shutil

    from pydicom.data import get_testdata_file

    index = get_testdata_file("DICOMDIR")
    if index is None:
        pytest.skip("pydicom's test files do not include a DICOMDIR here")
    path = Path(shutil.copy(index, tmp_path / "DICOMDIR"))
    with pytest.raises(ImageLoadError, match="holds no image .Media Storage Directory"):
        open_image(path)


def test_an_8_bit_voi_lut_stored_as_padded_bytes_is_read_one_byte_an_entry(tmp_path):
    from pydicom.dataset import Dataset

    ds = dataset(ramp(8), bits_stored=8)
    lut = bytes(255 - i for i in range(255))  # 255 entries (odd), inverted, plus one pad byte
    item = Dataset()
    item.LUTDescriptor = [255, 0, 8]
    item.LUTData = lut + b"\0"
    item["LUTData"].VR = "OW"
    ds.VOILUTSequence = [item]
    got = np.asarray(open_image(save(ds, tmp_path / "padded.dcm")), np.float64)
    expected = np.asarray(list(lut))[np.clip(ramp(8).astype(np.int64), 0, 254)]
    assert np.abs(got - expected).max() <= 1  # the inverted LUT, read entry by entry
