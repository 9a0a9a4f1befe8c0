"""`edge-toolkit export RUN_DIR`: every TFLite variant of a trained run, validated, carded.
TensorFlow is imported inside the command, so `--help` works without it."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import NoReturn

import click

from edge_toolkit.quantize.variants import VARIANTS, parse_variants


class Refused(click.ClickException):
    """Nothing was exported: a setting, the run, its card or model, the data or --out cannot
    be used (one line says which)."""

    exit_code = 2


def _log(msg: str) -> None:
    click.echo(msg)
    sys.stdout.flush()


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """click's FloatRange lets NaN and infinity through; neither measures anything."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


def _variants(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Every name checked before TensorFlow loads ('all,bogus' included)."""
    try:
        parse_variants(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--variants", default=None, callback=_variants,
              help=f"Comma-separated, or 'all': {', '.join(VARIANTS)} (default: all but "
                   f"the -flip ones, which double latency).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (default: RUN_DIR/export).")
@click.option("--sparsity", default=0.5, show_default=True, type=click.FloatRange(0, 1,
              min_open=True, max_open=True), help="Target sparsity of pruned variants.")
@click.option("--qat-epochs", default=3, show_default=True, type=click.IntRange(1),
              help="Fine-tuning epochs for int8-qat and int8-pqat.")
@click.option("--qat-lr", default=1e-5, show_default=True, callback=_finite,
              type=click.FloatRange(0, min_open=True), help="QAT learning rate.")
@click.option("--prune-epochs", default=4, show_default=True, type=click.IntRange(1),
              help="Pruning fine-tuning epochs (target reached after two thirds).")
@click.option("--prune-lr", type=click.FloatRange(0, min_open=True), callback=_finite,
              help="Pruning learning rate (default: 0.3 x the run's last learning rate).")
@click.option("--prune-depthwise", is_flag=True,
              help="Also prune DepthwiseConv2D kernels (off: they are few and sensitive).")
@click.option("--freeze-bn/--train-bn", default=None,
              help="BatchNorm frozen or trained while fine-tuning (default: as the run was "
              "trained: frozen for MobileNetV2, trained for the scratch CNNs).")
@click.option("--calibration-images", default=300, show_default=True,
              type=click.IntRange(1), help="Train images in the int8 representative set.")
@click.option("--tolerance", default=0.02, show_default=True, type=click.FloatRange(0),
              callback=_finite,
              help="Largest val-AUC drop below the float parent that still validates.")
@click.option("--target-sensitivity", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Sensitivity each file's threshold is chosen for on val (default: the "
                   "run's training target).")
@click.option("--min-specificity", type=click.FloatRange(0, 1, max_open=True),
              help="Specificity floor of the threshold rule (default: the run's, if any; "
                   "0: none, the plain target-sensitivity threshold). "
                   "With it the threshold clears both floors, the target sensitivity and this "
                   "specificity, by the widest margin (in standard errors) on every val "
                   "source, never less sensitive than the plain target threshold.")
@click.option("--input-type", type=click.Choice(["uint8", "int8"]), default="uint8",
              show_default=True, help="Input tensor type of full-integer models.")
@click.option("--output-type", type=click.Choice(["float32", "uint8", "int8"]),
              default="float32", show_default=True,
              help="Output tensor type of full-integer models.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path),
              help="Dataset folder (default: the one named in the run's card).")
@click.option("--batch-size", type=click.IntRange(1),
              help="Fine-tuning batch size (default: the run's).")
@click.option("--seed", type=click.IntRange(0), help="Seed (default: the run's).")
@click.option("--bootstrap", default=1000, show_default=True, type=click.IntRange(0),
              help="Bootstrap resamples for the AUC interval in each card (0: no interval).")
@click.option("--strict", is_flag=True,
              help="Exit with status 1 unless every variant validated.")
def export(run_dir: Path, variants: str | None, out: Path | None, sparsity: float, qat_epochs: int,
           qat_lr: float, prune_epochs: int, prune_lr: float | None, prune_depthwise: bool,
           freeze_bn: bool | None, calibration_images: int, tolerance: float,
           target_sensitivity: float | None, min_specificity: float | None, input_type: str,
           output_type: str,
           data: Path | None, batch_size: int | None,
           seed: int | None, bootstrap: int, strict: bool) -> None:
    """Export RUN_DIR (a folder from `edge-toolkit train`) to .tflite variants, each with its
    model card embedded, validated on the val split with the TF-free interpreter.

    \b
    Writes RUN_DIR/export/<family>-<variant>.tflite, report.json and report.md; variants
    whose val AUC drops more than --tolerance below the float model go to export/failed/.
    Exporting again into the same folder merges into its report: the variants exported
    again replace their rows, the others stay while their files are there and come from
    the same trained model. A file is replaced only once its new version is complete.

    \b
    Exit status:
      0   every requested variant has its row (some may have failed: see the report)
      1   --strict, and a variant in the report did not validate
      2   refused before any work, nothing exported: a setting, the run folder, its card
          or model.keras, the dataset (its val split) or --out (one line says which)
      130 interrupted (Ctrl-C): report.json lists the variants that finished; the one
          being exported keeps its earlier file
    """
    from edge_toolkit.quantize.exporter import ExportError, check_out
    from edge_toolkit.train.quiet import quiet_tensorflow

    try:
        check_out(out or run_dir / "export")  # before TensorFlow loads
    except ExportError as exc:
        raise Refused(str(exc)) from None
    quiet_tensorflow()  # before TensorFlow's first import
    try:
        import tensorflow  # noqa: F401
        import tensorflow_model_optimization  # noqa: F401
    except ImportError:
        raise Refused(
            "export needs TensorFlow and tensorflow-model-optimization: "
            "pip install 'fracture-edge-toolkit[train]'") from None
    from edge_toolkit.card import CardError
    from edge_toolkit.data import DatasetError
    from edge_toolkit.quantize.exporter import ExportConfig, ExportInterrupted, export_run

    cfg = ExportConfig(
        variants=variants, out=str(out) if out else None, sparsity=sparsity,
        qat_epochs=qat_epochs, qat_lr=qat_lr, prune_epochs=prune_epochs, prune_lr=prune_lr,
        prune_depthwise=prune_depthwise, freeze_bn=freeze_bn,
        calibration_images=calibration_images,
        tolerance=tolerance, target_sensitivity=target_sensitivity,
        min_specificity=min_specificity, input_type=input_type,
        output_type=output_type,
        data=str(data) if data else None, batch_size=batch_size, seed=seed,
        bootstrap=bootstrap)
    try:
        report = export_run(run_dir, cfg, log=_log)
    except (ExportError, DatasetError, CardError, ValueError) as exc:
        raise Refused(str(exc)) from None  # export_run raises these before any variant
    except ExportInterrupted as exc:
        _stop(exc.line())
    except KeyboardInterrupt:
        _stop("interrupted before any variant was exported: nothing written")
    click.echo("")
    click.echo(report.markdown())
    click.echo(f"\nreport: {Path(report.out) / 'report.md'}")
    if strict and not report.ok:
        sys.exit(1)


def _stop(line: str) -> NoReturn:
    """Ctrl-C: one line on stderr and exit 130 (click alone says "Aborted!" and exits 1)."""
    click.echo(line, err=True)
    sys.exit(130)
