"""`edge-toolkit audit` on awkward inputs: DICOM, unreadable folders, links, FIFOs, damaged
files, odd layouts, bad options and Ctrl-C. One clear line and a documented exit code each,
never a traceback; tiny generated images only."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edge_toolkit.audit.cli import audit
from edge_toolkit.audit.report import format_text, run_audit
from edge_toolkit.audit.resplit import parse_fractions
from edge_toolkit.audit.scan import scan
from edge_toolkit.images import ImageWarning, open_image

sys.path.insert(0, str(Path(__file__).parent))
from test_audit import build_clean, jpeg_bytes, picture  # noqa: E402


def cli(*args: object) -> object:
    return CliRunner().invoke(audit, [str(a) for a in args])


def one_line_error(res: object, code: int = 2) -> str:
    """The error of a refused run: the exit code, one line, no traceback."""
    assert res.exit_code == code, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


# ---------------------------------------------------------------- DICOM (finding 1)


def write_dicom(path: Path, seed: int, side: int = 0) -> Path:
    """A small 12-bit DICOM picture; `side` > 0: a large noise one (slow to decode)."""
    pydicom = pytest.importorskip("pydicom", reason="the [dicom] extra (pydicom) is not "
                                  "installed")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    assert pydicom
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = "CR"
    if side:
        arr = (np.random.default_rng(seed).random((side, side)) * 4095).astype(np.uint16)
    else:
        arr = np.asarray(picture(seed, (40, 48)), dtype=np.uint16) * 16
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_files_are_audited_like_any_image(tmp_path: Path) -> None:
    """A valid DICOM (`.dcm`, or a suffix-less PACS export `IM000001`) crashed the audit with
    a traceback: its header was re-read with PIL, which cannot open DICOM."""
    root = build_clean(tmp_path / "d", splits=("train", "test"), per_class=3)
    write_dicom(root / "train" / "fractured" / "scan.dcm", 1)
    write_dicom(root / "test" / "normal" / "IM000001", 2)
    res = cli(root, "--json", "--bootstrap", "0")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["files"] == 14 and doc["unreadable"] == []
    stats = doc["splits"]["train"]["fractured"]
    assert stats["formats"]["DICOM"] == 1 and "48x40" not in stats["sizes"]["most_common"]
    assert "40x48" in stats["sizes"]["most_common"]  # width x height from the DICOM tags


def test_dataset_discovery_and_leak_check_read_dicom(tmp_path: Path) -> None:
    """The same crash reached training: `data.discover` carves val with the audit's scan,
    and `quick_leak_check` scans the trainer's split."""
    from edge_toolkit.audit import quick_leak_check
    from edge_toolkit.data import discover

    root = build_clean(tmp_path / "d", splits=("train", "test"), per_class=4)
    write_dicom(root / "train" / "fractured" / "IM000001", 3)
    ds = discover(root)
    assert any(s.path.name == "IM000001" for s in ds.samples)
    assert not quick_leak_check(root, samples=ds.samples).leaked


# ---------------------------------------------------------------- folders that cannot be read


def unprivileged(locked: Path) -> list[str]:
    """A command prefix under which `locked` (mode 000) really cannot be read; root reads
    anything, so as root the capabilities that allow it are dropped (setpriv)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: a folder cannot be made unreadable")
        drop = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}"]
    probe = subprocess.run([*prefix, "ls", str(locked)], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("permissions are not enforced here (a mode-000 folder can be read)")
    return prefix


def run_unprivileged(prefix: list[str], *args: object) -> subprocess.CompletedProcess[str]:
    code = "from edge_toolkit.audit.cli import audit; audit()"
    return subprocess.run([*prefix, sys.executable, "-c", code, *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def locked() -> Iterator[list[Path]]:
    """Folders to make unreadable; their mode is restored afterwards so tmp_path is removed."""
    folders: list[Path] = []
    yield folders
    for f in folders:
        f.chmod(0o755)


def test_an_unreadable_split_folder_is_one_line_and_exit_2(tmp_path: Path,
                                                            locked: list[Path]) -> None:
    root = build_clean(tmp_path / "d", splits=("train", "test"), per_class=3)
    (root / "test").chmod(0)
    locked.append(root / "test")
    res = run_unprivileged(unprivileged(root / "test"), root, "--no-shortcuts")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.strip() == f"Error: {root / 'test'}: cannot read folder (permission denied)"


def test_an_unreadable_class_folder_is_reported_and_never_clean(tmp_path: Path,
                                                                 locked: list[Path]) -> None:
    """rglob skipped a folder it could not read without a word, and the verdict said CLEAN."""
    root = build_clean(tmp_path / "d", splits=("train", "test"), per_class=3)
    sub = root / "test" / "normal" / "more"
    sub.mkdir()
    (root / "train" / "fractured" / "0.png").replace(sub / "copy.png")  # hidden by the lock
    sub.chmod(0)
    locked.append(sub)
    prefix = unprivileged(sub)
    res = run_unprivileged(prefix, root, "--json", "--no-shortcuts")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert "CLEAN" not in doc["verdict"] and doc["verdict"].startswith("VERDICT: NOT CHECKED")
    assert doc["unreadable_folders"] == [{"folder": "test/normal/more", "split": "test",
                                          "reason": "permission denied"}]
    text = run_unprivileged(prefix, root, "--no-shortcuts").stdout
    assert "test/normal/more/: permission denied" in text and "CLEAN" not in text


# ---------------------------------------------------------------- files that are not files


def test_broken_links_loops_and_fifos_are_listed_as_unreadable(tmp_path: Path) -> None:
    """They vanished from the report; a FIFO must be named, never opened (it would block)."""
    root = build_clean(tmp_path / "d", splits=("train", "test"), per_class=3)
    folder = root / "train" / "normal"
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "loop1.png").symlink_to("loop2.png")
    (folder / "loop2.png").symlink_to("loop1.png")
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    os.mkfifo(folder / "pipe.png")
    d = run_audit(root, bootstrap=0).data
    reasons = {u["file"].rsplit("/", 1)[1]: u["reason"] for u in d["unreadable"]}
    assert reasons == {"gone.png": "broken symbolic link (its target does not exist)",
                       "loop1.png": "symbolic link loop", "loop2.png": "symbolic link loop",
                       "pipe.png": "is a FIFO (named pipe), not a regular file"}
    assert d["splits"]["train"]["not fractured"]["unreadable"] == 4


# ---------------------------------------------------------------- unreadable is no copy


def test_unreadable_files_are_neither_copies_nor_label_conflicts(tmp_path: Path) -> None:
    """Two empty files, or two identically damaged ones, in train and test counted as an
    exact copy across splits (a LEAK verdict) and as one image under two labels."""
    root = build_clean(tmp_path / "d", splits=("train", "test"), per_class=3)
    for split, cls in (("train", "fractured"), ("test", "normal")):
        (root / split / cls / "empty.png").write_bytes(b"")
        (root / split / cls / "damaged.jpg").write_bytes(b"not a JPEG at all\n")
    d = run_audit(root, bootstrap=0).data
    assert len(d["unreadable"]) == 4
    assert not d["leaked"] and d["verdict"].startswith("VERDICT: CLEAN")
    assert d["leakage"]["splits"]["test"]["exact_in_train"] == 0
    assert d["label_conflicts"] == {"exact": [], "near": []}


# ---------------------------------------------------------------- layout


def test_val_and_valid_together_are_refused(tmp_path: Path) -> None:
    """The audit merged them silently; every other command refuses the layout."""
    root = build_clean(tmp_path / "d", splits=("train", "val"), per_class=2)
    build_clean(root, splits=("valid",), per_class=2, seed0=3000)
    line = one_line_error(cli(root, "--no-shortcuts"))
    assert "both val/ and valid/ are the val split" in line


def test_unknown_class_folders_are_named_with_the_names_accepted(tmp_path: Path) -> None:
    root = build_clean(tmp_path / "d", classes=("benign", "Fracture_Yes"), splits=("train",),
                       per_class=2)
    line = one_line_error(cli(root))
    assert "train/Fracture_Yes" in line and "train/benign" in line
    assert "'fractured'" in line and "'not fractured'" in line
    assert "an empty dataset" not in line


def test_an_image_outside_class_folders_is_said_to_be_so(tmp_path: Path) -> None:
    root = build_clean(tmp_path / "d", splits=("train", "test"), per_class=3)
    picture(7).save(root / "train" / "stray.png")
    text = format_text(run_audit(root, bootstrap=0))
    assert "outside a class folder" in text and "train/stray.png" in text
    assert "not image files by name" not in text


# ---------------------------------------------------------------- --fractions


BAD_FRACTIONS = ["nan,1,1", "inf,1,1", "train=inf", "abc", "70,abc,15",
                 "train=0.5,train=0.5", "1e308,1e308", "train=-1,test=2", "0,0,0",
                 "train=1,dev=1", "70,,30", "1,2,3,4"]


@pytest.mark.parametrize("text", BAD_FRACTIONS)
def test_bad_fractions_are_refused_naming_the_option(text: str) -> None:
    with pytest.raises(ValueError, match=r"^--fractions .*use e\.g\. 70,15,15"):
        parse_fractions(text)


def test_bad_fractions_are_refused_before_any_work(tmp_path: Path) -> None:
    """Checked up front: a folder that is no dataset at all still gets the --fractions line
    (the scan, which would refuse it, never starts), and nothing is written."""
    (tmp_path / "photos").mkdir()
    for text in ("nan,1,1", "abc"):
        line = one_line_error(cli(tmp_path, "--resplit", tmp_path / "out", "--fractions", text))
        assert line.startswith("Error: --fractions") and "could not convert" not in line
    assert not (tmp_path / "out").exists()


def test_good_fractions_still_parse() -> None:
    assert parse_fractions("train=1e308") == {"train": 1.0}
    assert parse_fractions("valid=1, training=3") == {"train": 0.75, "val": 0.25}


def test_resplit_json_goes_through_the_same_json_safety(tmp_path: Path) -> None:
    """doc["resplit"] skipped `json_safe`: its numbers came out unlike the rest (a NaN share
    came out as the invalid JSON `NaN`)."""
    root = build_clean(tmp_path / "d", per_class=3)
    res = cli(root, "--resplit", tmp_path / "o", "--fractions", "1,1,1", "--json",
              "--no-shortcuts")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert doc["resplit"]["fractions"] == {"train": 0.3333, "val": 0.3333, "test": 0.3333}


# ---------------------------------------------------------------- --resplit output


def test_resplit_folder_honours_the_umask(tmp_path: Path) -> None:
    """It was created 0700 (mkdtemp's mode) whatever the umask; an existing empty folder
    keeps its own mode."""
    root = build_clean(tmp_path / "d", per_class=3)
    old = os.umask(0o022)
    try:
        assert cli(root, "--resplit", tmp_path / "new", "--no-shortcuts").exit_code == 0
        kept = tmp_path / "kept"
        kept.mkdir()
        kept.chmod(0o750)
        assert cli(root, "--resplit", kept, "--no-shortcuts").exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o755
    assert stat.S_IMODE(kept.stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "new" / "train").stat().st_mode) == 0o755


def test_resplit_onto_a_file_says_it_is_not_a_folder(tmp_path: Path) -> None:
    root = build_clean(tmp_path / "d", per_class=2)
    (tmp_path / "afile").write_text("x")
    line = one_line_error(cli(root, "--resplit", tmp_path / "afile"))
    assert "is not a folder" in line and "not empty" not in line


def test_report_inside_the_resplit_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    """`--resplit o2 --report o2` wrote the whole re-split, then failed on --report."""
    root = build_clean(tmp_path / "d", per_class=2)
    for report in (tmp_path / "o2", tmp_path / "o2" / "r.json"):
        line = one_line_error(cli(root, "--resplit", tmp_path / "o2", "--report", report))
        assert "--report" in line and "--resplit" in line
        assert not (tmp_path / "o2").exists()


def test_a_resplit_that_leaves_a_split_empty_warns(tmp_path: Path) -> None:
    """One family per class (resized copies of one picture): whole families go to one split
    each, so val and test get nothing; that used to pass without a word."""
    root = tmp_path / "d"
    for cls, seed in (("fractured", 1), ("normal", 2)):
        folder = root / "train" / cls
        folder.mkdir(parents=True)
        for side in (96, 90, 84, 78):
            picture(seed).resize((side, side)).save(folder / f"{side}.png")
    res = cli(root, "--resplit", tmp_path / "o", "--fractions", "50,25,25", "--no-shortcuts")
    assert res.exit_code == 0, res.output
    assert "warning: --resplit: the new val/ is empty" in res.stderr
    assert "warning: --resplit: the new test/ is empty" in res.stderr


# ---------------------------------------------------------------- --threshold 1.0


def test_threshold_one_matches_identical_pixels(tmp_path: Path) -> None:
    """Documented as "identical pixels", it matched nothing: float32 correlation of an image
    with itself is 0.9999994."""
    root = build_clean(tmp_path / "d", splits=("train", "test"), per_class=3)
    picture(1000).save(root / "test" / "fractured" / "same.png", compress_level=1)  # new bytes
    res = cli(root, "--threshold", "1.0", "--json", "--no-shortcuts")
    doc = json.loads(res.stdout)
    test = doc["leakage"]["splits"]["test"]
    assert test["exact_in_train"] == 0 and test["near_only_in_train"] == 1


# ---------------------------------------------------------------- warnings


def test_image_warnings_are_one_escaped_line_each(tmp_path: Path) -> None:
    """A JPEG missing its end marker loads with a warning: it came in Python's two-line
    warning format, with the file name raw."""
    root = build_clean(tmp_path / "d", splits=("train", "test"), per_class=3)
    name = "cut\x1b[31m.jpg"
    data = jpeg_bytes(picture(5))
    (root / "train" / "fractured" / name).write_bytes(data[:-2])
    res = cli(root, "--no-shortcuts")
    assert res.exit_code == 0, res.output
    lines = res.stderr.splitlines()
    path = root / "train" / "fractured" / "cut\\x1b[31m.jpg"
    assert lines == [f"warning: {path}: JPEG end marker missing; the image data is complete, "
                     "loaded anyway"]


def test_warnings_are_kept_per_file_under_the_thread_pool(tmp_path: Path) -> None:
    """Each worker used to enter `warnings.catch_warnings`, which swaps process-wide state:
    threads undid each other's filters. Every file gets its own warning, and the caller's
    warning filters are as they were."""
    root = build_clean(tmp_path / "d", splits=("train",), per_class=1)
    folder = root / "train" / "fractured"
    for i in range(24):
        (folder / f"cut{i}.jpg").write_bytes(jpeg_bytes(picture(2000 + i))[:-2])
    expected = set()  # the files the loader warns about, one at a time (most of them)
    for p in folder.glob("cut*.jpg"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            open_image(p)
        expected |= {p.name} if caught else set()
    assert len(expected) > 12
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        sc = scan(root, workers=8)
        assert list(warnings.filters) == before
    assert not [w for w in leaked if "end marker" in str(w.message)]  # not printed raw
    warned = {r.path.name for r in sc.records if r.warning}
    assert warned == expected and all(r.readable for r in sc.records)
    assert all(r.warning.startswith("JPEG end marker missing") for r in sc.records if r.warning)


# ---------------------------------------------------------------- label conflicts


@pytest.mark.parametrize("batch", [4096, 1])  # 1: every pair in its own batch
def test_near_label_conflicts_are_direct_matches_not_chains(tmp_path: Path, batch: int,
                                                            monkeypatch) -> None:
    """A ~ B ~ C, but A and C are different pictures (correlation about 0.95): the report
    called the whole chain "one image under two labels"; only B ~ C is such a pair."""
    monkeypatch.setattr("edge_toolkit.audit.duplicates._PAIR_BATCH", batch)
    a = np.asarray(picture(1), dtype=np.float64)
    d = np.asarray(picture(2), dtype=np.float64)

    def img(x: np.ndarray) -> Image.Image:
        return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))

    root = tmp_path / "d"
    for cls in ("fractured", "normal"):
        (root / "train" / cls).mkdir(parents=True)
    img(a).save(root / "train" / "fractured" / "A.png")
    img(0.875 * a + 0.125 * d).save(root / "train" / "fractured" / "B.png")
    img(0.75 * a + 0.25 * d).save(root / "train" / "normal" / "C.png")
    doc = run_audit(root, bootstrap=0).data
    assert doc["near_duplicates"]["families"] == 1  # the chain is one family
    near = doc["label_conflicts"]["near"]
    assert [sorted(e["files"]) for e in near] == [["train/fractured/B.png",
                                                   "train/normal/C.png"]]
    assert near[0]["correlation"] >= 0.975


# ---------------------------------------------------------------- smaller


def test_shortcut_skip_gives_counts_per_class(tmp_path: Path) -> None:
    root = build_clean(tmp_path / "d", classes=("fractured",), splits=("train", "test"),
                       per_class=12)
    build_clean(root, classes=("normal",), splits=("test",), per_class=2, seed0=5000)
    skipped = run_audit(root, bootstrap=0).data["shortcuts"]["skipped"]
    assert "found 12 (fractured 12, not fractured 0)" in skipped


def test_without_train_no_copy_in_train_line_is_printed(tmp_path: Path) -> None:
    root = build_clean(tmp_path / "d", splits=("test",), per_class=4)
    text = format_text(run_audit(root, bootstrap=0))
    assert "copy in train;" not in text and "VERDICT: NOT CHECKED - no train/" in text


def test_ctrl_c_is_one_line_and_exit_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    from edge_toolkit.audit import report

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    root = build_clean(tmp_path / "d", per_class=2)
    monkeypatch.setattr(report, "run_audit", interrupted)
    res = cli(root, "--report", tmp_path / "r.json")
    assert res.exit_code == 130
    assert res.stdout == "" and len(res.stderr.splitlines()) == 1
    assert res.stderr.startswith("interrupted:")
    assert not (tmp_path / "r.json").exists()


def test_names_that_are_not_utf8_stay_escaped_in_json(tmp_path: Path) -> None:
    """Their bytes reached --json as lone surrogates (`\\udcff`): not valid UTF-8 JSON.
    They are shown as `\\xff`, as on the terminal."""
    root = build_clean(tmp_path / "d", splits=("train", "test"), per_class=3)
    folder = os.fsencode(root / "test" / "fractured")
    copied = (root / "train" / "fractured" / "0.png").read_bytes()
    try:
        with open(os.path.join(folder, b"bad\xffname.png"), "wb") as f:
            f.write(copied)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    res = cli(root, "--json", "--no-shortcuts")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    example = doc["leakage"]["splits"]["test"]["examples"][0]
    assert example["file"] == "test/fractured/bad\\xffname.png"
    json.dumps(doc, ensure_ascii=False).encode("utf-8")  # no lone surrogate anywhere


def test_a_resplit_names_the_folders_it_could_not_read(tmp_path: Path) -> None:
    """The re-split silently lacked the files of a folder the scan could not list."""
    from edge_toolkit.audit.resplit import write
    from edge_toolkit.audit.scan import scan

    root = build_clean(tmp_path / "d", splits=("train", "test"), per_class=4)
    sc = scan(root)
    sc.unread_folders.append({"folder": "test/normal/more", "split": "test",
                              "reason": "permission denied"})
    result = write(sc, tmp_path / "out", {"train": 0.75, "test": 0.25})
    warned = [w for w in result.warnings() if "could not be read" in w]
    assert warned and "test/normal/more" in warned[0]
    assert result.to_dict()["warnings"] == result.warnings()


def test_warnings_stay_with_their_file_when_dicom_and_jpeg_decode_side_by_side(
        tmp_path: Path) -> None:
    """A DICOM read recorded every thread's warnings while it decoded: JPEGs' notes landed
    on DICOM records (and were lost from their own) when names of both sorted together."""
    folder = tmp_path / "d" / "train" / "fractured"
    folder.mkdir(parents=True)
    (tmp_path / "d" / "train" / "not fractured").mkdir()
    for i in range(8):
        write_dicom(folder / f"k{5 * i:03d}d.dcm", i, side=1200)
    rng = np.random.default_rng(0)
    for i in range(40):
        path = folder / f"k{i:03d}.jpg"
        Image.fromarray((rng.random((300, 300)) * 255).astype(np.uint8)).save(path,
                                                                              quality=90)
        path.write_bytes(path.read_bytes()[:-2])  # no end marker: a warning, read anyway
    with warnings.catch_warnings():  # both scans see every warning (pytest resets filters)
        warnings.simplefilter("always", ImageWarning)
        alone = {r.rel: r.warning for r in scan(tmp_path / "d", workers=1).records}
        together = {r.rel: r.warning for r in scan(tmp_path / "d", workers=4).records}
    assert together == alone
    assert not any(w for rel, w in together.items() if rel.endswith(".dcm"))
    assert sum(1 for rel, w in together.items() if rel.endswith(".jpg") and w) >= 30
