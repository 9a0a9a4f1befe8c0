"""`edge-toolkit pipeline`: dataset folder -> trained models -> every optimized variant ->
validation of each export -> one benchmark table, all in one run folder.

With no `--data` it runs on the small real sample shipped in the repository (`demo/`, a few
hundred reduced X-rays; not in the wheel) with short settings and, when present, the ImageNet
weights in `../shared/weights`; without the sample (an installed wheel) on SYNTHETIC phantoms.
A stage that fails says why; the stages that do not depend on it still run and report.
`pipeline.json` is rewritten as each stage ends, so a killed run shows how far it got.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from edge_toolkit.files import shown

# Settings per family for the synthetic demo (fast) and for real data (the defaults).
DEMO_MODELS: dict[str, dict[str, Any]] = {
    "scratch_cnn": {"input_size": 96},
    "mobilenetv2": {"input_size": 96, "alpha": 0.35},  # random init unless --weights
}
DEMO_TRAIN = {"epochs": 15, "fine_tune_epochs": 3, "patience": 6, "bootstrap": 200}
DEMO_EXPORT = {"qat_epochs": 1, "prune_epochs": 2, "calibration_images": 100, "bootstrap": 200}
# The real demo sample (`demo/`, shipped in the repository, not in the wheel).
REPO = Path(__file__).resolve().parents[1]
DEMO_SAMPLE = REPO / "demo" / "fracture-xray"
DEMO_SOURCES = [DEMO_SAMPLE, REPO / "demo" / "fracatlas"]  # what `pipeline` alone trains on
DEMO_WEIGHTS = "shared/weights/mobilenet_v2_1.0_224_no_top.h5"
SAMPLE_TRAIN = {"epochs": 8, "fine_tune_epochs": 2, "patience": 4, "bootstrap": 200}
# 110 training images cannot win back 50% pruning (val AUC -0.10 on demo/fracatlas); at 30%
# the pruned MobileNetV2 validated (+0.01). Epochs after the target is reached help too.
SAMPLE_EXPORT = {"qat_epochs": 2, "prune_epochs": 6, "sparsity": 0.3,
                 "calibration_images": 110, "bootstrap": 200}
SAMPLE_NOTE = ("a few hundred reduced images make a WEAK model: this run shows the job, "
               "not the accuracy a real dataset reaches")


def is_demo_sample(data: Path | None) -> bool:
    """Whether `data` is (in) the repository's demo sample: short settings apply."""
    return data is not None and (REPO / "demo") in Path(data).resolve().parents


def demo_weights() -> Path | None:
    """The shared ImageNet weights beside the repository or the current folder, if any."""
    for base in (REPO.parent, Path.cwd().parent, Path.cwd()):
        if (base / DEMO_WEIGHTS).is_file():
            return base / DEMO_WEIGHTS
    return None


class Stages:
    """Runs named stages, logs each one's time and failure, and remembers the outcome."""

    def __init__(self, log: Any, on_change: Any = None) -> None:
        self.log = log
        self.on_change = on_change or (lambda: None)
        self.results: list[dict[str, Any]] = []

    def run(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.log(f"== {name}")
        t0 = time.perf_counter()
        try:
            value = fn(*args, **kwargs)
        except KeyboardInterrupt:  # recorded, so pipeline.json says where it stopped
            self.results.append({"stage": name, "ok": False, "reason": "interrupted (Ctrl-C)",
                                 "seconds": round(time.perf_counter() - t0, 1)})
            self.on_change()
            raise
        except Exception as exc:  # a failed stage must not hide the others' results
            reason = f"{exc.__class__.__name__}: {exc}".splitlines()[0]
            self.log(f"!! {name} failed: {reason}")
            self.results.append({"stage": name, "ok": False, "reason": reason,
                                 "seconds": round(time.perf_counter() - t0, 1),
                                 "traceback": traceback.format_exc()})
            self.on_change()
            return None
        self.results.append({"stage": name, "ok": True,
                             "seconds": round(time.perf_counter() - t0, 1)})
        self.on_change()
        self.log(f"   {name} done in {time.perf_counter() - t0:.0f}s")
        return value

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.results)


def run_pipeline(data: Path | list[Path] | None, out: Path, families: list[str],
                 variants: str | None,
                 weights: Path | None, threads: list[int], epochs: int | None,
                 fine_tune_epochs: int | None, size: int | None, min_auc: float | None,
                 log: Any = print, resume: bool = False, site_shift: bool | None = None,
                 target_sensitivity: float | None = None,
                 min_specificity: float | None = None, seed: int = 0,
                 family_weight: float | None = None) -> tuple[Path, bool]:
    """Every stage, in order; returns (pipeline folder, whether every stage succeeded).
    With several dataset folders (sources), one model per family is trained on all of them,
    and (`site_shift`) each family is also trained on each source alone and every model
    scored on every source's test split. `seed` draws every training (and each export's
    calibration images, which follow their run's seed): rerun with other seeds to see how
    far one table's numbers move. `family_weight` overrides every family's default (0: each
    image counts the same, as runs before family weights)."""
    from edge_toolkit.benchmark import below_floor, markdown, run_benchmark, write_outputs
    from edge_toolkit.quantize.exporter import ExportConfig, export_run
    from edge_toolkit.site_shift import leave_one_source_out, site_shift_markdown, write_site_shift
    from edge_toolkit.synthetic import write_synthetic
    from edge_toolkit.train.trainer import TrainConfig, train_or_reuse

    out.mkdir(parents=True, exist_ok=True)
    roots = [Path(data)] if isinstance(data, str | Path) else [Path(r) for r in data or []]
    state: dict[str, Any] = {"data": [str(r) for r in roots], "synthetic": False,
                             "families": families, "variants": variants, "seed": seed,
                             "family_weight": family_weight}

    def write_state(finished: bool = False) -> None:
        rows = [{k: v for k, v in r.items() if k != "traceback"} for r in stages.results]
        hint = {} if finished else {"resume": "rerun the same command with --resume: models "
                                              "already trained here are reused"}
        (out / "pipeline.json").write_text(json.dumps(
            state | {"finished": finished, "stages": rows} | hint, indent=2) + "\n")

    stages = Stages(log, write_state)
    sample = ((not roots and DEMO_SAMPLE.is_dir())
              or bool(roots) and all(is_demo_sample(r) for r in roots))
    if sample:
        roots = roots or [r for r in DEMO_SOURCES if r.is_dir()]
        state["data"] = [str(r) for r in roots]
        weights = weights or demo_weights()
        log(f"   demo: the real sample in {', '.join(map(str, roots))}; {SAMPLE_NOTE}")
        log(f"   MobileNetV2 weights: {weights or 'none found (random init: expect it to fail)'}")
    demo = not roots
    state["synthetic"] = demo
    if demo:
        made = stages.run("synthetic data", write_synthetic, out / "data-synthetic",
                          {"train": 120, "val": 60, "test": 60}, 96)
        roots = [made] if made is not None else []
        state["data"] = [str(r) for r in roots]
        log("   SYNTHETIC phantoms: the scores below say nothing about real X-rays")
    runs, shifts = [], []
    for family in families:
        model: dict[str, Any] = dict(DEMO_MODELS.get(family, {})) if demo or sample else {}
        if size:
            model["input_size"] = size
        if family == "mobilenetv2" and weights:
            model["weights"] = str(weights)
            model["alpha"] = 1.0
        train_kw: dict[str, Any] = (dict(DEMO_TRAIN) if demo else
                                    dict(SAMPLE_TRAIN) if sample else {}) | {"seed": seed}
        if epochs is not None:
            train_kw["epochs"] = epochs
        if fine_tune_epochs is not None:
            train_kw["fine_tune_epochs"] = fine_tune_epochs
        if family_weight is not None:
            train_kw["family_weight"] = family_weight
        if target_sensitivity is not None:
            train_kw["target_sensitivity"] = target_sensitivity
        if min_specificity is not None:  # exports are told too: a --resume'd run may
            train_kw["min_specificity"] = min_specificity  # carry another rule
        if not roots:  # the synthetic data stage failed
            break
        cfg = TrainConfig(data=[str(r) for r in roots] if len(roots) > 1 else str(roots[0]),
                          family=family, out=str(out), name=family, model=model, **train_kw)
        run = stages.run(f"train {family}", train_or_reuse, cfg, resume,
                         log=lambda m: log(f"   {m}"))
        if run is None:
            continue
        exp = ExportConfig(variants=variants, target_sensitivity=target_sensitivity,
                           min_specificity=min_specificity,
                           **(DEMO_EXPORT if demo else SAMPLE_EXPORT if sample else {}))
        if stages.run(f"export {family}", export_run, run, exp,
                      log=lambda m: log(f"   {m}")) is not None:
            runs.append(run)
        # on by default with several real sources; the demo sample skips it unless asked
        if (site_shift if site_shift is not None else not sample) and len(roots) > 1:
            shift = stages.run(f"site shift {family}", leave_one_source_out, cfg, roots,
                               out / "site-shift", run, 200 if demo or sample else 1000,
                               lambda m: log(f"   {m}"), resume)
            if shift is not None:
                shifts.append(shift)
                write_site_shift(shifts, out)
    result = None
    if runs:
        result = stages.run("benchmark", run_benchmark, runs, None, threads,
                            runs=50 if not demo else 20, bootstrap=200 if demo else 1000,
                            log=lambda m: log(f"   {m}"))
    if result is not None:
        if sample:
            result["note"] = f"Demo sample: {SAMPLE_NOTE}."
        for p in write_outputs(result, out):
            log(f"   wrote {p}")
        log("")
        log(markdown(result))
        if min_auc is not None:
            for line in below_floor(result, min_auc):
                stages.results.append({"stage": "min-auc", "ok": False, "reason": line})
                log(f"!! below --min-auc: {line}")
    if shifts:
        log("")
        log("Site shift (each family trained on one source, scored on every source's test):")
        log(site_shift_markdown(shifts))
    write_state(finished=True)
    failed = [r for r in stages.results if not r["ok"]]
    for r in failed:
        log(f"FAILED {r['stage']}: {r['reason']}")
    return out, not failed


@click.command()
@click.option("--data", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Dataset folder DATA/{train,val,test}/<class>/; repeat it for several "
                   "sources (sites). Default: the real demo sample in the repository's "
                   "demo/ (a weak model; shows the job), or synthetic phantoms where there "
                   "is none (an installed package).")
@click.option("--site-shift/--no-site-shift", default=None,
              help="With several --data: also train each family on each source alone and "
                   "score every model on every source's test split [default: on for real "
                   "data, off for the demo sample].")
@click.option("--families", default="mobilenetv2,scratch_cnn", show_default=True,
              help="Model families from the registry, comma-separated.")
@click.option("--variants", default=None,
              help="Export variants, comma-separated, or 'all' (default: all but "
                   "the -flip ones, which double latency).")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path),
              help="MobileNetV2 ImageNet weights (.h5, alpha 1.0, no top).")
@click.option("--size", type=click.IntRange(8),
              help="Input size for every family (default: each family's).")
@click.option("--epochs", type=click.IntRange(1), help="Head/scratch training epochs.")
@click.option("--fine-tune-epochs", type=click.IntRange(0), help="Backbone fine-tuning epochs.")
@click.option("--threads", default="1,2", show_default=True, help="Latency thread counts.")
@click.option("--target-sensitivity", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Sensitivity the thresholds are chosen for on val [default: train's].")
@click.option("--min-specificity", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Specificity floor: thresholds clear both floors by the widest margin on "
                   "every val source (see `train --help`).")
@click.option("--min-auc", type=float, help="Fail if a validated variant's val AUC is lower.")
@click.option("--family-weight", type=click.FloatRange(0, 1),
              help="Copies of one radiograph share their weight as 1/(family size)^P, for "
                   "every family [default: each family's own, see `train --help`].")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Seed of every training in the run (data order, augmentation, "
                   "initialisation, a carved val split). One table is one seed: the seed "
                   "alone moves unseen-site AUC by up to 0.055, so compare several.")
@click.option("--out", default="runs", show_default=True, help="Parent folder.")
@click.option("--name", help="Pipeline folder name (default: pipeline-TIMESTAMP).")
@click.option("--resume", is_flag=True,
              help="Reuse models already trained in the pipeline folder (after a crash).")
def pipeline(data: tuple[Path, ...], site_shift: bool | None, families: str,
             variants: str | None,
             weights: Path | None, size: int | None, epochs: int | None,
             fine_tune_epochs: int | None, threads: str, target_sensitivity: float | None,
             min_specificity: float | None, min_auc: float | None,
             family_weight: float | None, seed: int, out: str,
             name: str | None, resume: bool) -> None:
    """Train -> export every variant -> validate -> benchmark table, in one run folder.

    Exit status: 0 when every stage succeeded, 1 when any failed (the others still ran and
    reported; pipeline.json lists each stage), 2 for settings refused before anything ran,
    130 when interrupted (Ctrl-C; --resume goes on). TensorFlow's own log lines go to
    tensorflow.log in the pipeline folder, not to the screen."""
    from edge_toolkit.families import list_families
    from edge_toolkit.quantize.variants import parse_variants
    from edge_toolkit.train.quiet import quiet_tensorflow, stderr_to

    fams = [f.strip() for f in families.split(",") if f.strip()]
    unknown = [f for f in fams if f not in list_families()]
    if not fams or unknown:
        raise click.BadParameter(
            f"{'unknown: ' + ', '.join(unknown) + '; ' if unknown else 'none given; '}known: "
            f"{', '.join(list_families())}", param_hint="--families")
    try:
        parse_variants(variants)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--variants") from None
    quiet_tensorflow()  # before TensorFlow's first import
    folder = Path(out) / (name or f"pipeline-{datetime.now():%Y%m%d-%H%M%S}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"{shown(folder)}: cannot be the pipeline folder "
                                   f"({exc.strerror or exc})") from None
    try:
        with stderr_to(folder / "tensorflow.log"):
            import tensorflow  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "the pipeline trains models: pip install 'fracture-edge-toolkit[train]'") from None

    def log(msg: str) -> None:
        click.echo(msg)
        sys.stdout.flush()

    from edge_toolkit.benchmark_cli import parse_threads

    log(f"TensorFlow's own messages: {folder / 'tensorflow.log'}")
    try:
        with stderr_to(folder / "tensorflow.log"):
            _, ok = run_pipeline(list(data), folder, fams, variants, weights,
                                 parse_threads(threads), epochs, fine_tune_epochs, size,
                                 min_auc, log, resume=resume, site_shift=site_shift,
                                 target_sensitivity=target_sensitivity,
                                 min_specificity=min_specificity, seed=seed,
                                 family_weight=family_weight)
    except KeyboardInterrupt:
        click.echo(f"interrupted: what finished is in {shown(folder)} (pipeline.json); to go "
                   f"on, rerun the same command with --resume --name {shown(folder.name)}",
                   err=True)
        sys.exit(130)
    log(f"pipeline folder: {folder}")
    if not ok:
        sys.exit(1)
