"""The input gate: each quality reason, the out-of-distribution score, the override, and how
rejections are reported and counted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFilter

from edge_toolkit.card import CARD_MEMBER, ModelCard, embed_card, read_member, split_tflite
from edge_toolkit.runtime.cli import classify
from edge_toolkit.runtime.gate import (
    OOD_MEMBER,
    Gate,
    OodModel,
    QualityLimits,
    appearance,
    fit_ood,
    measure,
    quality_reason,
)


def radiograph_like(w: int = 200, h: int = 160, lo: float = 10, hi: float = 200,
                    seed: int = 0) -> Image.Image:
    """Dark background, a bright elongated 'bone' with a soft edge, mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    bone = np.exp(-(((xx - w / 2) / (w / 5)) ** 2 + ((yy - h / 2) / (h / 2.5)) ** 2) ** 2)
    texture = 0.15 * np.sin(xx / 3.0) * bone
    arr = lo + (hi - lo) * np.clip(bone + texture, 0, 1) + rng.normal(0, 2, (h, w))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")


def noise(n: int = 200) -> Image.Image:
    return Image.fromarray((np.random.default_rng(1).random((n, n)) * 255).astype(np.uint8))


CASES = {
    "too small": radiograph_like(40, 30),
    "near-uniform": Image.fromarray(
        np.random.default_rng(2).normal(128, 1, (160, 200)).clip(0, 255).astype(np.uint8)),
    "too dark": radiograph_like(lo=0, hi=35),
    "too bright": radiograph_like(lo=230, hi=255),
    "heavily blurred": radiograph_like().filter(ImageFilter.GaussianBlur(8)),
    "noise": noise(),
}


def test_a_radiograph_like_picture_passes():
    assert quality_reason(measure(radiograph_like())) is None


@pytest.mark.parametrize("reason", sorted(CASES))
def test_each_quality_reason(reason):
    got = quality_reason(measure(CASES[reason]))
    assert got is not None and got.startswith(reason), got


def test_limits_come_from_the_card_with_defaults_for_the_rest():
    gate = Gate.from_card({"quality": {"dark_p99": 10, "min_side": 20}}, None, 96)
    assert gate.check_image(CASES["too dark"]) is None  # its own limit allows it
    assert gate.check_image(CASES["too small"]) is None  # 30 px >= 20
    assert gate.check_image(CASES["noise"]).startswith("noise")  # default still applies
    old = Gate.from_card(None, None, 96)  # a card from before the gate
    assert old.limits == QualityLimits() and old.ood is None
    assert old.check_image(CASES["too small"]).startswith("too small (30 px side < 48)")


def test_the_default_smallest_side_is_capped_for_large_inputs():
    """Half the input side, but a 256 px model must take the 79 px radiographs it was
    trained on (the smallest in the shared train splits)."""
    gate = Gate.from_card(None, None, 256)
    assert gate.check_image(radiograph_like(79, 79)) is None
    assert gate.check_image(radiograph_like(60, 90)).startswith("too small (60 px side < 64)")


def features(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Correlated features on a low-dimensional manifold, like a CNN's pooled output."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(8, dim))
    return rng.normal(size=(n, 8)) @ basis + 0.1 * rng.normal(size=(n, dim))


@pytest.mark.parametrize("residual", [True, False])
def test_ood_threshold_rejects_at_most_two_percent_of_val(residual):
    model = fit_ood(features(500), features(300, seed=1), components=8, residual=residual)
    val = model.score(features(300, seed=1))
    assert np.mean(val > model.threshold) <= 0.02
    assert np.mean(val > model.threshold) >= 0.01  # the threshold is not needlessly loose
    far = model.score(4.0 * features(200, seed=2))
    assert np.mean(far > model.threshold) >= 0.95


def test_ood_residual_catches_what_leaves_the_subspace():
    train, val = features(500), features(300, seed=1)
    off = features(200, seed=3) + 2.0 * np.random.default_rng(4).normal(size=(200, 64))
    with_res = fit_ood(train, val, components=8, residual=True)
    without = fit_ood(train, val, components=8, residual=False)
    assert np.mean(with_res.score(off) > with_res.threshold) >= 0.95
    assert np.mean(with_res.score(off) > with_res.threshold) > \
        np.mean(without.score(off) > without.threshold)


def test_ood_round_trips_through_the_model_archive():
    model = fit_ood(features(200), features(100, seed=1), components=4)
    card = ModelCard(family="t", input_size=32, channels=1, preprocessing={"size": 32,
                     "channels": 1}, gate={"ood": {"member": OOD_MEMBER,
                                                   "threshold": model.threshold}})
    flat = b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64
    data = embed_card(flat, card, {OOD_MEMBER: model.to_bytes()})
    # re-embedding the card (e.g. after calibration) keeps the gate's arrays
    data = embed_card(data, card)
    assert split_tflite(data)[0] == flat and read_member(data, CARD_MEMBER)
    gate = Gate.from_card(card.gate, data, 32)
    x = features(5, seed=7)
    assert np.allclose(gate.ood.score(x), model.score(x), rtol=1e-5)
    fmap = np.repeat(x[0][None, None, :], 9, axis=0).reshape(3, 3, 64)  # (h, w, C)
    score, reason = gate.check_features(fmap)
    assert score == pytest.approx(model.score(x[0]), rel=1e-5)
    assert (reason is None) == (score <= model.threshold)
    far, why = gate.check_features(x[0] + 50.0)
    assert why is not None and "not like the radiographs" in why
    with pytest.raises(ValueError, match="lacks"):
        Gate.from_card(card.gate, flat, 32)


def document(seed: int = 0) -> Image.Image:
    """A white page with lines of dark text: sharp, bright, contrasty, nothing like a film."""
    rng = np.random.default_rng(seed)
    img = Image.new("L", (300, 400), 245)
    draw = ImageDraw.Draw(img)
    for y in range(30, 370, 18):
        draw.text((20, y), " ".join(rng.choice(["fracture", "report", "the", "page"], 6)),
                  fill=10)
    return img


def test_appearance_distance_rejects_a_document_and_keeps_radiographs():
    rng = np.random.default_rng(5)

    def film(i: int) -> Image.Image:
        return radiograph_like(int(rng.integers(150, 260)), int(rng.integers(120, 200)),
                               lo=float(rng.uniform(0, 30)), hi=float(rng.uniform(150, 230)),
                               seed=i)

    train = np.array([appearance(film(i)) for i in range(80)])
    val = np.array([appearance(film(100 + i)) for i in range(40)])
    look = fit_ood(train, val, components=4, max_val_reject=0.01)
    gate = Gate(look=look)
    assert np.mean([gate.check_image(film(600 + i)) is None for i in range(20)]) >= 0.9
    reason = gate.check_image(document())
    assert reason is not None and reason.startswith("does not look like a radiograph")


def test_ood_model_scores_one_vector_or_many():
    model = OodModel(np.zeros(3), np.eye(3)[:2], np.array([1.0, 4.0]), 0.0, 1.0)
    assert model.score(np.array([1.0, 2.0, 5.0])) == pytest.approx(np.sqrt((1 + 1) / 2))
    assert model.score(np.zeros((4, 3))).shape == (4,)


# -- the command line (bundled model: no TensorFlow needed) --------------------------------


REAL_XRAYS = Path(__file__).resolve().parents[2] / "shared" / "data" / "fracture-xray" / "test"


@pytest.fixture
def pictures(tmp_path):
    out = {}
    for name, img in [("blank", Image.new("L", (200, 160), 255)), ("noise", noise())]:
        out[name] = tmp_path / f"{name}.png"
        img.save(out[name])
    return out


@pytest.fixture
def real_xray(tmp_path):
    """A real radiograph: the bundled model's gate (fitted on real X-rays) rightly refuses
    synthetic phantoms, so what it must accept has to be real."""
    found = sorted((REAL_XRAYS / "fractured").glob("*.jpg"))[:1]
    if not found:
        pytest.skip(f"needs a real radiograph in {REAL_XRAYS} (the shared data)")
    path = tmp_path / "good.jpg"
    path.write_bytes(found[0].read_bytes())
    return path


def run(*args: object):
    return CliRunner().invoke(classify, [str(a) for a in args], catch_exceptions=False)


def test_cli_rejects_with_status_and_reason_and_counts_them_as_failed(pictures, real_xray):
    res = run(real_xray, pictures["blank"], pictures["noise"], "--format", "jsonl")
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in map(json.loads, res.stdout.splitlines())}
    assert rows["good.jpg"]["status"] == "ok" and rows["good.jpg"]["label"]
    for name in ("blank.png", "noise.png"):
        assert rows[name]["status"] == "rejected"
        assert rows[name]["label"] is None and rows[name]["probability"] is None
    assert "near-uniform" in rows["blank.png"]["error"]
    assert f"rejected: {pictures['blank']}: near-uniform" in res.stderr
    assert "2 rejected by the input gate" in res.stderr
    assert res.exit_code == 1  # rejections count like failures


def test_cli_all_rejected_is_exit_3_and_no_gate_classifies_them(pictures):
    res = run(pictures["blank"], pictures["noise"])
    assert res.exit_code == 3
    res = run("--no-gate", pictures["blank"], pictures["noise"], "--format", "jsonl")
    assert res.exit_code == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(r["label"] for r in rows)


def test_capture_rejects_a_blank_camera_frame_unless_told_not_to(pictures, tmp_path):
    from edge_toolkit.runtime.cli import capture

    args = ["--count", "1", "--interval", "0", "--save-dir", str(tmp_path / "caps"),
            "--fake-camera", str(pictures["blank"]), "-f", "jsonl"]
    res = CliRunner().invoke(capture, args, catch_exceptions=False)
    row = json.loads(res.stdout.splitlines()[0])
    assert row["status"] == "rejected" and "near-uniform" in row["error"]
    assert res.exit_code == 3
    res = CliRunner().invoke(capture, args + ["--no-gate"], catch_exceptions=False)
    assert res.exit_code == 0 and json.loads(res.stdout.splitlines()[0])["status"] == "ok"


def test_the_bundled_model_refuses_a_natural_photo(tmp_path):
    """A photograph (one matplotlib ships; nothing downloaded) is not a radiograph."""
    mpl_data = pytest.importorskip("matplotlib").get_data_path()
    photo = Path(mpl_data) / "sample_data" / "grace_hopper.jpg"
    if not photo.is_file():
        pytest.skip("matplotlib's sample photo is not installed")
    res = run(photo, "--format", "jsonl")
    row = json.loads(res.stdout.splitlines()[0])
    assert row["status"] == "rejected" and row["label"] is None, row
    assert res.exit_code == 3
