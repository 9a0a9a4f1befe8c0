"""`edge-toolkit calibrate MODEL DATA`: re-choose the operating point on a clinic's own
labelled images and write a new model file (TF-free; runs on the device)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edge_toolkit.card import strict_dumps
from edge_toolkit.files import OutputPathError, prepare_output, shown
from edge_toolkit.metrics import NonFiniteScoresError
from edge_toolkit.runtime.classifier import Classifier, ModelError
from edge_toolkit.runtime.interpreter import BackendMissingError
from edge_toolkit.runtime.recalibrate import (
    MIN_NEGATIVES,
    MIN_POSITIVES,
    CalibrationError,
    format_report,
    read_labelled,
    recalibrate,
    recalibrated_card,
    write_recalibrated,
)
from edge_toolkit.runtime.results import EXIT_INTERRUPTED, EXIT_USAGE
from edge_toolkit.runtime.sources import resolve_key


class CalibrateFailure(click.ClickException):
    """Unusable images, labels or model, or an output that cannot be written: one line on
    stderr, exit code 2, nothing written."""

    exit_code = EXIT_USAGE


@click.command()
@click.argument("args", nargs=-1, required=True, metavar="[MODEL.tflite] DATA")
@click.option("--target-sensitivity", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="The threshold is chosen so that this share of fractures is flagged "
                   "[default: the model card's target, else 0.95].")
@click.option("--min-specificity", type=click.FloatRange(0, 1, max_open=True),
              help="Specificity floor: the threshold then clears both floors by the widest "
                   "margin (in standard errors), never flagging fewer fractures than "
                   "--target-sensitivity alone [default: the model card's floor, if any; "
                   "0 = none].")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="New model file [default: MODEL-recalibrated.tflite beside MODEL].")
@click.option("--min-positives", default=MIN_POSITIVES, show_default=True,
              type=click.IntRange(1))
@click.option("--min-negatives", default=MIN_NEGATIVES, show_default=True,
              type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--gate/--no-gate", default=True, show_default=True,
              help="Screen the images with the model's input gate, as classify does; "
                   "rejected ones are listed and not used.")
def calibrate(args: tuple[str, ...], target_sensitivity: float | None,
              min_specificity: float | None, output: Path | None,
              min_positives: int, min_negatives: int, as_json: bool, gate: bool) -> None:
    """Choose MODEL's threshold and temperature on your own labelled images (DATA: class
    folders 'fractured' / 'not fractured', or a CSV of path,label) and write a new model.
    Without MODEL the bundled model is recalibrated (the new file goes to the current
    folder).

    Prints sensitivity and specificity before and after, with 95% intervals, and a
    cross-validated estimate of what the new threshold gives on images it was not chosen on.
    The new file's card records the old and new operating points, the image counts and the
    images' fingerprint. Without --target-sensitivity / --min-specificity the model's own
    rule (recorded in its card) is kept. Nothing is written when the images cannot support
    a threshold, a CSV row is bad or repeated, or --output is one of the inputs (exit 2),
    nor on Ctrl-C (exit 130)."""
    model, data = _model_and_data(args)
    out = output or _default_output(model)
    try:
        prepare_output(out)  # before any work: a device, a folder, no permission
        clf = Classifier.load(model, gate=gate)
        samples = read_labelled(data)
        if resolve_key(out) in {resolve_key(data)} | {resolve_key(s.path) for s in samples}:
            raise CalibrationError(f"{shown(out)}: is one of the inputs (the labels or an "
                                   "image); choose another --output")
        rec = recalibrate(clf, samples, target_sensitivity, min_positives, min_negatives,
                          min_specificity)
        card = recalibrated_card(clf.card, rec, data.name)
        written = write_recalibrated(model, out, card)
    except KeyboardInterrupt:
        click.echo("interrupted: nothing written", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except (ModelError, BackendMissingError, CalibrationError, OutputPathError,
            NonFiniteScoresError) as exc:
        raise CalibrateFailure(str(exc)) from None
    except OSError as exc:
        raise CalibrateFailure(f"{exc.filename or output}: {exc.strerror or exc}"
                                   ) from None
    for path, reason in rec.skipped:
        click.echo(f"skipped: {shown(path)}: {reason}", err=True)
    for path, reason in rec.rejected:
        click.echo(f"rejected: {shown(path)}: {reason}", err=True)
    click.echo(strict_dumps(rec.to_dict(), indent=2) if as_json
               else format_report(rec))
    click.echo(f"wrote {written}", err=True)


def _model_and_data(args: tuple[str, ...]) -> tuple[Path, Path]:
    """`MODEL DATA`, or `DATA` alone for the bundled model."""
    from edge_toolkit.runtime.bundled import MODEL_SUFFIX, NoBundledModelError, bundled_model

    if len(args) > 2:
        raise click.UsageError("give at most two arguments: [MODEL.tflite] DATA")
    if len(args) == 2:
        return Path(args[0]), Path(args[1])
    if args[0].lower().endswith(MODEL_SUFFIX):
        raise click.UsageError(f"{shown(args[0])} is a model: give the labelled images "
                               "(DATA) after it")
    try:
        return bundled_model(), Path(args[0])
    except NoBundledModelError as exc:
        raise CalibrateFailure(str(exc)) from None


def _default_output(model: Path) -> Path:
    """Beside the model, except the bundled one: its folder belongs to the installed
    package (pip would not know the file), so the current folder."""
    from edge_toolkit.runtime.bundled import MODELS_DIR

    name = f"{model.stem}-recalibrated.tflite"
    return Path(name) if model.resolve().parent == MODELS_DIR else model.with_name(name)
