"""`edge-toolkit calibrate`: a clinic re-chooses the operating point on its own labelled
images, TF-free. Good case, too few positives, one class, bad CSV rows, a card-less model;
and `evaluate` on a clinic folder names what it could not read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from tiny_models import RUNTIME_MODELS, cached_models

from edge_toolkit.card import read_card
from edge_toolkit.runtime.calibrate_cli import calibrate
from edge_toolkit.runtime.classifier import Classifier


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return cached_models(tmp_path_factory, RUNTIME_MODELS)


def write_clinic(root: Path, positives: int, negatives: int, seed: int = 0,
                 means: tuple[int, int] = (150, 100)) -> Path:
    """Class folders of smoothly textured images whose brightness differs by class (`means`:
    fractured, not fractured), so the tiny model, whose output follows brightness,
    separates them imperfectly."""
    rng = np.random.default_rng(seed)
    for cls, n, mean in (("fractured", positives, means[0]),
                         ("not fractured", negatives, means[1])):
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            level = np.clip(rng.normal(mean, 40), 50, 205)  # never a black or white frame
            # smooth texture (noise upsampled): pixel noise alone is refused by the gate
            texture = np.asarray(Image.fromarray(rng.normal(0, 25, (10, 10)).astype(
                np.float32)).resize((40, 40), Image.Resampling.BICUBIC))
            pixels = np.clip(level + texture, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def run(*args: object):
    return CliRunner().invoke(calibrate, [str(a) for a in args])


def test_recalibrates_and_records_both_operating_points(models, tmp_path):
    data = write_clinic(tmp_path / "clinic", 40, 60)
    out = tmp_path / "local.tflite"
    res = run(models["float"], data, "-o", out, "--target-sensitivity", 0.9, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{"):res.output.rindex("}") + 1])
    assert report["images"] == 100 and report["positives"] == 40
    assert report["after"]["sensitivity"] >= 0.9
    assert report["before"]["threshold"] == pytest.approx(0.5)
    lo, hi = report["after"]["sensitivity_ci95"]
    assert lo <= report["after"]["sensitivity"] <= hi
    assert 0 <= report["cross_validated"]["sensitivity"] <= 1
    card = read_card(out)
    assert card.threshold == pytest.approx(report["after"]["threshold"])
    assert card.temperature == pytest.approx(report["temperature_after"])
    rec = card.export["recalibrations"][-1]
    assert rec["images"] == 100 and rec["positives"] == 40 and rec["negatives"] == 60
    assert rec["before"]["threshold"] == pytest.approx(0.5)
    assert rec["data_fingerprint"].startswith("sha256:")
    clf = Classifier.load(out)  # the device loads it, at the new threshold
    assert clf.threshold == pytest.approx(card.threshold)
    # same flatbuffer: the model's answers do not change, only how they are read
    x = clf.preprocess(next((data / "fractured").iterdir()))
    assert clf.predict_raw_batch(x[None])[0] == pytest.approx(
        Classifier.load(models["float"]).predict_raw_batch(x[None])[0])


def test_a_specificity_floor_moves_the_threshold_towards_sensitivity(models, tmp_path):
    """With --min-specificity the new threshold clears both floors by the widest margin:
    never less sensitive than the plain one, recorded in the card and the report."""
    # the tiny model scores darker images higher: these fractured ones are, AUC about 0.8
    data = write_clinic(tmp_path / "clinic", 60, 140, seed=3, means=(100, 150))
    plain, floors = tmp_path / "plain.tflite", tmp_path / "floors.tflite"
    res = run(models["float"], data, "-o", plain, "--target-sensitivity", 0.8, "--json")
    assert res.exit_code == 0, res.output
    res2 = run(models["float"], data, "-o", floors, "--target-sensitivity", 0.8,
               "--min-specificity", 0.5)
    assert res2.exit_code == 0, res2.output
    assert "specificity floor 0.5" in res2.output and "WARNING" not in res2.output
    a, b = read_card(plain), read_card(floors)
    assert a.min_specificity is None and b.min_specificity == 0.5
    assert b.threshold <= a.threshold
    report = json.loads(res.output[res.output.index("{"):res.output.rindex("}") + 1])
    assert report["auc"] > 0.7
    assert report["after"]["specificity"] > 0.5  # specificity to spare at the plain one...
    assert b.threshold < a.threshold  # ...so the floors rule spends some of it
    for bad in ("1", "-0.2"):
        res3 = run(models["float"], data, "-o", tmp_path / "x.tflite", "--min-specificity", bad)
        assert res3.exit_code == 2 and not (tmp_path / "x.tflite").exists()


def test_a_floor_no_threshold_meets_is_a_warning_not_a_claim(models, tmp_path):
    """The report said "with specificity at least 0.9" when the new threshold reached far
    less: the rule's floors are not a result."""
    data = write_clinic(tmp_path / "clinic", 60, 140, seed=3, means=(100, 150))
    res = run(models["float"], data, "-o", tmp_path / "f.tflite", "--target-sensitivity",
              0.95, "--min-specificity", 0.9)
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("WARNING"))
    assert "no threshold meets both floors" in line and "under 0.9" in line


def test_without_flags_the_cards_rule_is_kept_and_0_switches_the_floor_off(models, tmp_path):
    """A file whose threshold was chosen by 0.8 sensitivity with a 0.5 specificity floor is
    recalibrated by that same rule unless told otherwise."""
    data = write_clinic(tmp_path / "clinic", 60, 140, seed=3, means=(100, 150))
    ruled = tmp_path / "ruled.tflite"
    assert run(models["float"], data, "-o", ruled, "--target-sensitivity", 0.8,
               "--min-specificity", 0.5).exit_code == 0
    again = tmp_path / "again.tflite"
    res = run(ruled, data, "-o", again)
    assert res.exit_code == 0, res.output
    assert "target sensitivity 0.8 and specificity floor 0.5" in res.output
    assert "(rule: the model card's)" in res.output
    card = read_card(again)
    assert card.target_sensitivity == 0.8 and card.min_specificity == 0.5
    assert card.threshold == pytest.approx(read_card(ruled).threshold)  # same rule, same data
    off = tmp_path / "off.tflite"
    res2 = run(ruled, data, "-o", off, "--min-specificity", 0)
    assert res2.exit_code == 0, res2.output
    assert read_card(off).min_specificity is None and "at least" not in res2.output
    assert read_card(models["float"]).target_sensitivity is not None
    plain = tmp_path / "plain.tflite"  # a card without a floor: none is added
    assert run(models["float"], data, "-o", plain).exit_code == 0
    assert read_card(plain).min_specificity is None


def test_a_csv_of_path_label_works_with_a_header(models, tmp_path):
    data = write_clinic(tmp_path / "imgs", 25, 25)
    lines = ["path,label"] + [f"{p.relative_to(tmp_path)},{p.parent.name}"
                              for p in sorted(data.rglob("*.png"))]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    res = run(models["float"], tmp_path / "labels.csv", "-o", tmp_path / "m.tflite")
    assert res.exit_code == 0, res.output
    assert "50 images (25 fractured, 25 not fractured)" in res.output
    assert (tmp_path / "m.tflite").exists()


@pytest.mark.parametrize("case, expected", [
    ("few_positives", "too few images for a meaningful threshold: 5 fractured"),
    ("one_class", "only one class"),
    ("bad_rows", "2 bad row(s): line 3: unknown label 'maybe'"),
    ("repeated_rows", "2 bad row(s): line 4: c/fractured/001.png: listed again (first on line 2)"
                      "; line 5: c/fractured/000.png: listed again (first on line 1)"),
    ("header_only", "no path,label rows"),
    ("folder_row", "line 2: c/fractured: a folder, not an image file"),
])
def test_unusable_data_is_one_line_and_writes_nothing(models, tmp_path, case, expected):
    if case == "few_positives":
        data = write_clinic(tmp_path / "c", 5, 60)
    elif case == "one_class":
        data = write_clinic(tmp_path / "c", 0, 60)
        (data / "fractured").rmdir()
    elif case == "repeated_rows":  # a repeat, and one image under both labels
        write_clinic(tmp_path / "c", 25, 25)
        data = tmp_path / "labels.csv"
        data.write_text("c/fractured/000.png,fractured\nc/fractured/001.png,1\n"
                        "c/not fractured/000.png,0\nc/fractured/001.png,1\n"
                        "c/fractured/000.png,not fractured\n")
    elif case == "header_only":
        data = tmp_path / "labels.csv"
        data.write_text("path,label\n")
    elif case == "folder_row":
        write_clinic(tmp_path / "c", 25, 25)
        data = tmp_path / "labels.csv"
        data.write_text("c/fractured/000.png,1\nc/fractured,1\n")
    else:
        imgs = write_clinic(tmp_path / "c", 25, 25)
        rows = [f"{p},{p.parent.name}" for p in sorted(imgs.rglob("*.png"))]
        rows.insert(2, "c/fractured/000.png,maybe")
        rows.insert(5, "missing.png,fractured")
        data = tmp_path / "labels.csv"
        data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out.tflite"
    res = run(models["float"], data, "-o", out)
    assert res.exit_code == 2
    errors = [line for line in res.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and expected in errors[0], res.output
    assert "Traceback" not in res.output
    assert not out.exists()


def test_a_model_without_a_card_is_refused(models, tmp_path):
    data = write_clinic(tmp_path / "c", 25, 25)
    res = run(models["bare"], data, "-o", tmp_path / "out.tflite")
    assert res.exit_code == 2 and "no edge_toolkit model card" in res.output
    assert not (tmp_path / "out.tflite").exists()


def test_never_writes_over_its_labels_an_image_or_a_device(models, tmp_path):
    data = write_clinic(tmp_path / "c", 25, 25)
    labels = tmp_path / "labels.csv"
    labels.write_text("".join(f"{p},{p.parent.name}\n" for p in sorted(data.rglob("*.png"))))
    before = labels.read_bytes()
    image = data / "fractured" / "003.png"
    image_bytes = image.read_bytes()
    for target, source in ((labels, labels), (image, data), (image, labels)):
        res = run(models["float"], source, "-o", target)
        assert res.exit_code == 2 and "is one of the inputs" in res.output, res.output
    assert labels.read_bytes() == before and image.read_bytes() == image_bytes
    res = run(models["float"], data, "-o", "/dev/null")
    assert res.exit_code == 2 and "a device, not a regular file" in res.output, res.output
    res = run(models["float"], data, "-o", tmp_path / "c")
    assert res.exit_code == 2 and "is a directory" in res.output, res.output  # click says so


def test_never_overwrites_the_model_it_recalibrates(models, tmp_path):
    data = write_clinic(tmp_path / "c", 25, 25)
    copy = tmp_path / "m.tflite"
    copy.write_bytes(Path(models["float"]).read_bytes())
    res = run(copy, data, "-o", copy)
    assert res.exit_code == 2 and "refusing to overwrite" in res.output
    assert copy.read_bytes() == Path(models["float"]).read_bytes()


def test_the_new_file_keeps_the_card_archives_other_members(models, tmp_path):
    """A gate's arrays travel beside the card: recalibrating must not drop them."""
    from edge_toolkit.card import embed_card, read_member

    data = Path(models["float"]).read_bytes()
    with_member = tmp_path / "gated.tflite"
    with_member.write_bytes(embed_card(data, read_card(models["float"]),
                                       {"edge_toolkit_gate.npz": b"arrays"}))
    res = run(with_member, write_clinic(tmp_path / "c", 25, 25), "-o", tmp_path / "out.tflite")
    assert res.exit_code == 0, res.output
    out = (tmp_path / "out.tflite").read_bytes()
    assert read_member(out, "edge_toolkit_gate.npz") == b"arrays"


@pytest.mark.parametrize("floor", [1.5, "half"])
def test_a_cards_unusable_rule_is_one_error_not_a_traceback(models, tmp_path, floor):
    from edge_toolkit.runtime.recalibrate import CalibrationError, read_labelled, recalibrate

    data = write_clinic(tmp_path / "clinic", 30, 30)
    clf = Classifier.load(models["float"])
    clf.card.min_specificity = floor
    with pytest.raises(CalibrationError, match="specificity|not a number"):
        recalibrate(clf, read_labelled(data))
    assert recalibrate(clf, read_labelled(data), min_specificity=0.5).min_specificity == 0.5


def test_ctrl_c_exits_130_and_writes_nothing(models, tmp_path, monkeypatch):
    import edge_toolkit.runtime.calibrate_cli as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "recalibrate", interrupted)
    data = write_clinic(tmp_path / "c", 25, 25)
    res = run(models["float"], data, "-o", tmp_path / "m.tflite")
    assert res.exit_code == 130 and "interrupted: nothing written" in res.output
    assert not (tmp_path / "m.tflite").exists()


def test_evaluate_names_each_unreadable_image_and_warns_of_one_class(models, tmp_path):
    """The site-shift check on a clinic's folder: a file it cannot read is left out of the
    metrics with a line naming it, never silently; one class only makes AUC undefined."""
    from edge_toolkit.cli import main

    data = write_clinic(tmp_path / "c", 25, 25)
    (data / "fractured" / "broken.png").write_bytes(b"not a png")
    res = CliRunner().invoke(main, ["evaluate", str(models["float"]), "--data", str(data),
                                    "--bootstrap", "0", "--json"])
    assert res.exit_code == 0, res.output
    skipped = [ln for ln in res.stderr.splitlines() if ln.startswith("skipped:")]
    assert len(skipped) == 1 and "broken.png" in skipped[0]
    report = json.loads(res.stdout)
    assert report["all"]["n"] == 50
    (data / "fractured" / "broken.png").unlink()
    for p in (data / "fractured").iterdir():
        p.unlink()
    (data / "fractured").rmdir()
    res = CliRunner().invoke(main, ["evaluate", str(models["float"]), "--data", str(data),
                                    "--bootstrap", "0"])
    assert "images of one class only" in res.stderr, res.output


def test_pictures_the_gate_refuses_are_listed_and_not_used(models, tmp_path):
    """A blank frame filed under fractured moved the threshold: classify would refuse it."""
    data = write_clinic(tmp_path / "clinic", 30, 30)
    Image.new("L", (64, 64), 255).save(data / "fractured" / "white.png")
    out = tmp_path / "local.tflite"
    res = run(models["float"], data, "-o", out, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{"):res.output.rindex("}") + 1])
    assert report["images"] == 60 and report["positives"] == 30
    assert [p for p, _ in report["rejected"]] == [str(data / "fractured" / "white.png")]
    assert f"rejected: {data / 'fractured' / 'white.png'}: near-uniform" in res.stderr
    rec = read_card(out).export["recalibrations"][-1]
    assert rec["rejected_by_gate"] == 1 and rec["input_gate"] is True
    res = run(models["float"], data, "-o", tmp_path / "all.tflite", "--no-gate", "--json")
    assert res.exit_code == 0 and '"images": 61' in res.output


def test_the_report_says_thresholds_are_on_each_files_own_scale(models, tmp_path):
    data = write_clinic(tmp_path / "clinic", 30, 30)
    res = run(models["float"], data, "-o", tmp_path / "local.tflite")
    assert res.exit_code == 0, res.output
    assert "compare the sensitivities and specificities, not the thresholds" in res.output


def test_the_card_records_whether_the_floors_were_met(models, tmp_path):
    data = write_clinic(tmp_path / "clinic", 30, 30, means=(128, 126))  # hard to separate
    out = tmp_path / "local.tflite"
    res = run(models["float"], data, "-o", out, "--target-sensitivity", 0.95,
              "--min-specificity", 0.9)
    assert res.exit_code == 0, res.output
    rule = read_card(out).export["recalibrations"][-1]["rule"]
    assert rule == {"target_sensitivity": 0.95, "min_specificity": 0.9,
                    "floors_met": "WARNING" not in res.output}
    assert rule["floors_met"] is False


def test_without_a_model_the_bundled_one_is_recalibrated_into_this_folder(tmp_path,
                                                                        monkeypatch):
    """Its default output used to land in the installed package's models/ folder."""
    from edge_toolkit.runtime.bundled import bundled_model

    data = Path(__file__).resolve().parents[1] / "demo" / "fracatlas" / "val"
    if not data.is_dir():
        pytest.skip("the demo sample (demo/fracatlas/val) is not in this checkout")
    monkeypatch.chdir(tmp_path)
    before = sorted(bundled_model().parent.iterdir())
    res = run(data, "--min-specificity", 0)
    assert res.exit_code == 0, res.output
    out = tmp_path / f"{bundled_model().stem}-recalibrated.tflite"
    assert out.is_file() and read_card(out).export["recalibrations"][-1]["images"] >= 40
    assert sorted(bundled_model().parent.iterdir()) == before
    res = run(tmp_path / "x.tflite")
    assert res.exit_code == 2 and "give the labelled images (DATA)" in res.output
