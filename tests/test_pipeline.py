"""The one-command pipeline and the benchmark table, on tiny generated data."""

from __future__ import annotations

import csv
import json

import pytest
from extras import require

require("tensorflow")

from click.testing import CliRunner  # noqa: E402

from edge_toolkit.benchmark import below_floor, markdown  # noqa: E402
from edge_toolkit.benchmark_cli import benchmark  # noqa: E402
from edge_toolkit.card import ModelCard, read_card  # noqa: E402
from edge_toolkit.pipeline import run_pipeline  # noqa: E402
from edge_toolkit.synthetic import write_synthetic  # noqa: E402


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    data = write_synthetic(root / "data", {"train": 12, "val": 8, "test": 6}, size=24)
    logs: list[str] = []
    folder, ok = run_pipeline(data, root / "out", ["scratch_cnn", "seed_cnn"],
                              "float32,int8-ptq", None, [1], epochs=1, fine_tune_epochs=0,
                              size=16, min_auc=None, log=logs.append,
                              target_sensitivity=0.8, min_specificity=0.3)
    return folder, ok, logs


def test_pipeline_writes_models_and_one_table(pipeline_run):
    folder, ok, logs = pipeline_run
    assert ok, "\n".join(logs[-20:])
    for fam in ("scratch_cnn", "seed_cnn"):
        assert (folder / fam / "model.keras").exists()
        for v in ("float32", "int8-ptq"):
            assert (folder / fam / "export" / f"{fam}-{v}.tflite").exists()
    result = json.loads((folder / "benchmark.json").read_text())
    rows = {(r["family"], r["variant"]) for r in result["rows"]}
    assert rows == {(f, v) for f in ("scratch_cnn", "seed_cnn") for v in ("float32", "int8-ptq")}
    for r in result["rows"]:
        assert r["status"] in ("validated", "failed-validation")
        assert set(r["accuracy"]) == {"val", "test"}
        assert r["latency"]["1"]["p50_ms"] > 0 and r["peak_rss_mb"] > 0
    int8 = next(r for r in result["rows"] if r["variant"] == "int8-ptq")
    f32 = next(r for r in result["rows"] if r["variant"] == "float32")
    assert int8["size_bytes"] < 0.4 * f32["size_bytes"]
    assert (folder / "benchmark.png").stat().st_size > 0
    with open(folder / "benchmark.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    md = (folder / "benchmark.md").read_text()
    assert "| scratch_cnn | int8-ptq |" in md and "baseline" in md
    # the operating rule reaches every run and every exported file
    for fam in ("scratch_cnn", "seed_cnn"):
        run_card = ModelCard.load(folder / fam / "card.json")
        file_card = read_card(folder / fam / "export" / f"{fam}-int8-ptq.tflite")
        for card in (run_card, file_card):
            assert (card.target_sensitivity, card.min_specificity) == (0.8, 0.3)
    stages = json.loads((folder / "pipeline.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["train scratch_cnn", "export scratch_cnn",
                                             "train seed_cnn", "export seed_cnn", "benchmark"]


def test_a_failed_stage_is_reported_and_the_rest_still_runs(tmp_path):
    data = write_synthetic(tmp_path / "data", {"train": 8, "val": 6, "test": 4}, size=16)
    logs: list[str] = []
    folder, ok = run_pipeline(data, tmp_path / "out", ["no_such_family", "scratch_cnn"],
                              "float32", None, [1], epochs=1, fine_tune_epochs=0, size=16,
                              min_auc=None, log=logs.append)
    assert not ok
    stages = json.loads((folder / "pipeline.json").read_text())["stages"]
    assert stages[0]["stage"] == "train no_such_family" and not stages[0]["ok"]
    assert "unknown model family" in stages[0]["reason"]
    assert all(s["ok"] for s in stages[1:]) and (folder / "benchmark.md").exists()


def test_benchmark_cli_and_min_auc_floor(pipeline_run, tmp_path):
    folder, _, _ = pipeline_run
    runner = CliRunner()
    res = runner.invoke(benchmark, [str(folder / "scratch_cnn"), "--threads", "1", "--runs",
                                    "3", "--warmup", "1", "--bootstrap", "20",
                                    "--out", str(tmp_path), "--min-auc", "1.01"])
    assert res.exit_code == 1, res.output
    assert "below --min-auc" in res.output and "| scratch_cnn | float32 |" in res.output
    result = json.loads((tmp_path / "benchmark.json").read_text())
    assert below_floor(result, 0.0) == []
    assert len(below_floor(result, 1.01)) == 2


def test_markdown_keeps_failed_rows():
    result = {"threads": [1], "runs": 3, "warmup": 1, "created": "now", "seconds": 1,
              "host": {"machine": "x", "cpu_count": 2, "python": "3"}, "baseline": None,
              "rows": [{"family": "f", "variant": "int8-qat", "status": "export-failed",
                        "reason": "boom", "size_bytes": None, "gzip_bytes": None,
                        "sparsity": None, "accuracy": {}, "latency": {},
                        "peak_rss_mb": None}]}
    md = markdown(result)
    assert "| f | int8-qat | export-failed ⚠ |" in md and "- f int8-qat: boom" in md


def test_resume_reuses_trained_models(pipeline_run):
    folder, _, _ = pipeline_run
    before = (folder / "scratch_cnn" / "model.keras").stat().st_mtime_ns
    logs: list[str] = []
    _, ok = run_pipeline(folder.parent / "data", folder, ["scratch_cnn"], "float32", None, [1],
                         epochs=1, fine_tune_epochs=0, size=16, min_auc=None,
                         log=logs.append, resume=True, target_sensitivity=0.8,
                         min_specificity=0.3)
    assert ok and any("reusing" in m for m in logs)
    assert (folder / "scratch_cnn" / "model.keras").stat().st_mtime_ns == before
    stages = json.loads((folder / "pipeline.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["train scratch_cnn", "export scratch_cnn",
                                             "benchmark"]


def resume_edited_copy(pipeline_run, tmp_path, edit=None, rule=(0.8, 0.3), seed=0):
    """Copy the trained scratch run, let `edit` change its card.json, `--resume` the
    pipeline over it with the operating rule `rule` and `seed`: (ok, first stage record,
    log lines)."""
    import shutil

    folder, _, _ = pipeline_run
    copy = tmp_path / "out"
    shutil.copytree(folder / "scratch_cnn", copy / "scratch_cnn")
    card_path = copy / "scratch_cnn" / "card.json"
    if edit is not None:
        card = json.loads(card_path.read_text())
        edit(card)
        card_path.write_text(json.dumps(card))
    logs: list[str] = []
    _, ok = run_pipeline(folder.parent / "data", copy, ["scratch_cnn"], "float32", None, [1],
                         epochs=1, fine_tune_epochs=0, size=16, min_auc=None,
                         log=logs.append, resume=True, target_sensitivity=rule[0],
                         min_specificity=rule[1], seed=seed)
    return ok, json.loads((copy / "pipeline.json").read_text())["stages"][0], logs


def test_the_seed_reaches_every_training_and_resume_tells_seeds_apart(pipeline_run, tmp_path):
    """`pipeline --seed S` trains with S (recorded in each card and pipeline.json); a
    --resume'd run asked for another seed is refused, not reported as that seed's."""
    folder, _, _ = pipeline_run
    assert ModelCard.load(folder / "scratch_cnn" / "card.json").export["training"]["seed"] == 0
    assert json.loads((folder / "pipeline.json").read_text())["seed"] == 0
    ok, stage, _ = resume_edited_copy(pipeline_run, tmp_path / "a", seed=0)
    assert ok and stage["ok"]
    ok, stage, _ = resume_edited_copy(pipeline_run, tmp_path / "b", seed=1)
    assert not ok and "other settings (seed)" in stage["reason"]


@pytest.mark.parametrize("option, key", [(["--seed", "2"], "seed"),
                                         (["--family-weight", "0"], "family_weight")])
def test_pipeline_cli_passes_training_options(pipeline_run, tmp_path, option, key):
    """Each CLI option reaches the trainer: asked over a run trained otherwise (seed 0, the
    scratch CNN's family weight 0.5), the resumed stage is refused and names the setting."""
    import shutil

    from edge_toolkit.pipeline import pipeline

    folder, _, _ = pipeline_run
    shutil.copytree(folder / "scratch_cnn", tmp_path / "out" / "scratch_cnn")
    args = ["--data", str(folder.parent / "data"), "--families", "scratch_cnn", "--variants",
            "float32", "--size", "16", "--epochs", "1", "--fine-tune-epochs", "0",
            "--target-sensitivity", "0.8", "--min-specificity", "0.3", "--threads", "1",
            "--out", str(tmp_path), "--name", "out", "--resume"]
    result = CliRunner().invoke(pipeline, [*args, *option])
    assert result.exit_code == 1, result.output
    assert f"other settings ({key})" in result.output
    assert json.loads((tmp_path / "out" / "pipeline.json").read_text())["seed"] == (
        2 if key == "seed" else 0)


@pytest.mark.parametrize("rule, differs", [((0.9, 0.3), "target_sensitivity"),
                                           ((0.8, None), "min_specificity")])
def test_resume_refuses_a_run_trained_by_another_operating_rule(pipeline_run, tmp_path, rule,
                                                                differs):
    """A --resume'd pipeline asked for another rule must not report the old run's threshold
    as if it were chosen by the new one: the stage fails in one line, nothing is retrained
    over it."""
    model = tmp_path / "out" / "scratch_cnn" / "model.keras"
    ok, stage, _ = resume_edited_copy(pipeline_run, tmp_path, rule=rule)
    assert not ok
    assert stage["stage"] == "train scratch_cnn" and not stage["ok"]
    assert f"other settings ({differs})" in stage["reason"]
    trained = pipeline_run[0] / "scratch_cnn" / "model.keras"
    # copytree keeps modification times: a retrained model would have a new one
    assert model.stat().st_mtime_ns == trained.stat().st_mtime_ns


@pytest.mark.parametrize("edit, differs", [
    ({"balance_within": "region"}, "balance_within"),  # trained with strata, asked without
    ({"selection": None}, "selection"),  # a card that does not say how it selected
    ({"min_specificity": None}, "min_specificity"),  # a card from before the floor existed
    ({"augment": {"mixup": 0.2}}, "augment"),  # trained with mixup, asked without
    ({"augment": {"redraw": None}}, "augment"),  # a card whose draws repeated every epoch
])
def test_resume_reads_settings_a_card_lacks_as_their_old_defaults(pipeline_run, tmp_path,
                                                                   edit, differs):
    def change(card: dict) -> None:
        for key, value in edit.items():
            if value is None:
                card["export"]["training"].pop(key)
            elif isinstance(value, dict):
                for k, v in value.items():
                    if v is None:
                        card["export"]["training"][key].pop(k)
                    else:
                        card["export"]["training"][key][k] = v
            else:
                card["export"]["training"][key] = value

    ok, stage, _ = resume_edited_copy(pipeline_run, tmp_path, change)
    assert not ok and f"other settings ({differs})" in stage["reason"]


def test_loose_files_keep_their_validation_status(pipeline_run, tmp_path):
    from edge_toolkit.benchmark import row_from_file
    from edge_toolkit.card import embed_card, read_card

    folder, _, _ = pipeline_run
    src = folder / "scratch_cnn" / "export" / "scratch_cnn-int8-ptq.tflite"
    assert row_from_file(src).status == "validated"
    card = read_card(src)
    card.export["validation"]["status"] = "failed-validation"
    failed = tmp_path / "failed.tflite"
    failed.write_bytes(embed_card(src.read_bytes(), card))
    row = row_from_file(failed)
    assert row.status == "failed-validation" and row.variant == "int8-ptq"
    del card.export["validation"]  # a card without a validation record claims nothing
    loose = tmp_path / "loose.tflite"
    loose.write_bytes(embed_card(src.read_bytes(), card))
    assert row_from_file(loose).status == "not-validated"
    bad = tmp_path / "bad.tflite"
    bad.write_text("not a model")
    from edge_toolkit.benchmark import BenchmarkError

    with pytest.raises(BenchmarkError, match="not a TFLite model"):
        row_from_file(bad)


def test_pipeline_json_is_written_as_each_stage_ends(tmp_path):
    data = write_synthetic(tmp_path / "data", {"train": 8, "val": 6, "test": 4}, size=16)
    seen: list[dict] = []

    def log(msg: str) -> None:  # what a killed run would have left behind, stage by stage
        if msg.startswith("== ") and (tmp_path / "out" / "pipeline.json").exists():
            seen.append(json.loads((tmp_path / "out" / "pipeline.json").read_text()))

    _, ok = run_pipeline(data, tmp_path / "out", ["scratch_cnn"], "float32", None, [1],
                         epochs=1, fine_tune_epochs=0, size=16, min_auc=None, log=log)
    assert ok
    assert [[s["stage"] for s in p["stages"]] for p in seen] == [
        ["train scratch_cnn"], ["train scratch_cnn", "export scratch_cnn"]]
    assert all(not p["finished"] and "--resume" in p["resume"] for p in seen)
    final = json.loads((tmp_path / "out" / "pipeline.json").read_text())
    assert final["finished"] and "resume" not in final and final["data"] == [str(data)]


def test_the_demo_sample_gets_short_settings(tmp_path):
    from edge_toolkit.pipeline import DEMO_SAMPLE, REPO, is_demo_sample

    assert is_demo_sample(REPO / "demo" / "fracatlas")
    assert is_demo_sample(DEMO_SAMPLE) and not is_demo_sample(tmp_path)
    assert not is_demo_sample(None)


def test_resume_reuses_a_card_that_lacks_a_setting_asked_at_its_default(pipeline_run, tmp_path):
    def change(card: dict) -> None:
        card["export"]["training"].pop("balance_within")  # a card from before the option
        card["export"]["training"].pop("preprocessing", None)  # a default_factory field
        card["export"]["training"]["augment"].pop("mixup")  # augmentation added since

    ok, _, logs = resume_edited_copy(pipeline_run, tmp_path, change)
    assert ok and any("reusing" in m for m in logs), "\n".join(logs[-5:])


@pytest.mark.parametrize("intensity, reused", [(None, True), ("equalize", False)])
def test_resume_compares_the_preprocessing_the_card_records(pipeline_run, tmp_path, intensity,
                                                             reused):
    """A card from before the intensity step (no key) was trained without it and is reused;
    one trained with another step is not (its images would be preprocessed otherwise)."""
    def change(card: dict) -> None:
        assert card["preprocessing"]["intensity"] == "none"
        if intensity is None:
            del card["preprocessing"]["intensity"]
        else:
            card["preprocessing"]["intensity"] = intensity

    ok, stage, logs = resume_edited_copy(pipeline_run, tmp_path, change)
    assert ok == stage["ok"] == reused == any("reusing" in m for m in logs)
    if not reused:
        assert ("other settings (preprocessing intensity equalize -> none)"
                in stage["reason"])
