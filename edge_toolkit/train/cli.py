"""`edge-toolkit train` and `edge-toolkit evaluate`. TensorFlow is imported inside the
commands, so `--help` works on a device install and a missing TF gives the install command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from edge_toolkit.families import list_families
from edge_toolkit.preprocess import INTENSITY


def _log(msg: str) -> None:
    click.echo(msg, err=False)
    sys.stdout.flush()


def _need_tf() -> None:
    from edge_toolkit.train.quiet import quiet_tensorflow

    quiet_tensorflow()  # before TensorFlow's first import
    try:
        import tensorflow  # noqa: F401
        import tf_keras  # noqa: F401
    except ImportError:
        raise MissingTensorFlow(
            "this command needs TensorFlow: pip install 'fracture-edge-toolkit[train]'") from None


class MissingTensorFlow(click.ClickException):
    """A device install (no [train] extra) asked to train: a setup problem, exit 2 as
    every other unusable-input error."""

    exit_code = 2


def parse_augment(base: Any, items: tuple[str, ...]) -> Any:
    """Apply KEY=VALUE overrides to an AugmentConfig (numbers, a flip mode, redraw 0/1)."""
    from dataclasses import fields, replace

    known = {f.name: f.type for f in fields(base)}
    changes: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise ValueError(f"{item!r}: expected KEY=VALUE with KEY one of {sorted(known)}")
        if key == "redraw":
            if value not in ("0", "1"):
                raise ValueError(f"{item!r}: redraw takes 1 (fresh draws every epoch) or 0")
            changes[key] = value == "1"
            continue
        try:
            changes[key] = value if key == "flip" else float(value)
        except ValueError:
            raise ValueError(f"{item!r}: {key} takes a number") from None
        if key != "flip" and not 0 <= changes[key] < float("inf"):
            raise ValueError(f"{item!r}: {key} must be a finite number, 0 (off) or more")
    return replace(base, **changes)


@click.command()
@click.option("--data", required=True, multiple=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Dataset folder: DATA/{train,val,test}/<class>/<images>. Repeat it to train "
                   "one model on several sources (sites); reports are then per source.")
@click.option("--source-balance", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="With several sources: 1 = each source weighs the same in training, "
                   "0 = each weighs by its size (classes are balanced within each source).")
@click.option("--balance-within", metavar="COLUMN",
              help="Also balance the classes within each value of this manifest.csv column "
                   "(e.g. region: FracAtlas's hands are fractured far more often than its "
                   "legs), so the column's value alone does not predict the label; values "
                   "with fewer than 5 images of a class keep the source's weights.")
@click.option("--family-weight", type=click.FloatRange(0, 1),
              help="Within each class of a source, an image weighs 1 / (its family of copies "
                   "of one radiograph)^P: 0 = every image the same, 1 = every radiograph "
                   "the same (fracture-xray's rotated copies) [default: the family's].")
@click.option("--model", "family", type=click.Choice(list_families()), default="mobilenetv2",
              show_default=True, help="Model family from the registry.")
@click.option("--size", type=int, help="Input size in pixels (default: the family's).")
@click.option("--alpha", type=float, help="MobileNetV2 width multiplier.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path),
              help="MobileNetV2 ImageNet weights file (.h5, no top); none = random init.")
@click.option("--channels", type=click.IntRange(1, 3), help="scratch_cnn: 1 (gray) or 3.")
@click.option("--fit", type=click.Choice(["pad", "stretch"]), help="Letterbox or stretch.")
@click.option("--intensity", type=click.Choice(INTENSITY),
              help="Per-image grey-level normalisation of the resized radiograph, recorded "
                   "in the card and applied on the device too [default: none].")
@click.option("--epochs", type=click.IntRange(0),
              help="Epochs (head phase) [default: the family's].")
@click.option("--fine-tune-epochs", type=click.IntRange(0),
              help="Epochs fine-tuning the backbone top (pretrained backbones) "
                   "[default: the family's].")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--lr", "learning_rate", type=float,
              help="Learning rate [default: the family's].")
@click.option("--fine-tune-lr", type=float, help="Fine-tuning learning rate.")
@click.option("--patience", type=click.IntRange(0), help="Early-stopping patience (epochs).")
@click.option("--head", type=click.Choice(["probe", "train"]),
              help="Pretrained backbones: fit the head as a linear probe (closed form) before "
                   "fine-tuning, or train it by SGD for --epochs [default: the family's].")
@click.option("--probe-l2", type=float,
              help="Linear probe L2 penalty; 0 = choose it on val [default: the family's].")
@click.option("--fine-tune-schedule", type=click.Choice(["constant", "cosine"]),
              help="Fine-tuning learning rate: constant, or a cosine decay to 0 over the "
                   "fine-tuning epochs [default: the family's].")
@click.option("--batchnorm-images", type=click.IntRange(0),
              help="Re-estimate the pretrained backbone's BatchNorm statistics on this many "
                   "training radiographs before fitting the head; 0 keeps ImageNet's "
                   "[default: the family's].")
@click.option("--average-epochs", type=click.IntRange(0),
              help="Also try the mean of the weights after the last N fine-tuning epochs "
                   "(stochastic weight averaging) as a candidate, judged on val "
                   "[default: the family's].")
@click.option("--probe-mix", help="Comma-separated a values: also try (1 - a) x the linear "
                                   "probe's weights + a x the fine-tuned ones (WiSE-FT), "
                                   "each judged on val, e.g. 0.5,0.75.")
@click.option("--keep", help="Which candidate the run keeps: best (highest val AUC of all), "
                              "or one named in advance: probe, last, average, mix-A "
                              "[default: the family's].")
@click.option("--target-sensitivity", default=0.95, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Threshold is chosen on val to reach this sensitivity.")
@click.option("--min-specificity", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Specificity floor. With it the threshold clears both floors, the target "
                   "sensitivity and this "
                   "specificity, by the widest margin (in standard errors) on every val "
                   "source, never less sensitive than the plain target threshold.")
@click.option("--no-augment", is_flag=True, help="Switch augmentation off.")
@click.option("--aug", "aug_overrides", multiple=True, metavar="KEY=VALUE",
              help="Augmentation setting, e.g. --aug rotation=0.25 --aug "
                   "flip=horizontal_and_vertical (keys: rotation, flip, zoom, shift, "
                   "brightness, contrast, gamma, blur, noise, mixup; redraw=0 repeats the "
                   "first epoch's random draws every epoch, as runs whose cards lack it did).")
@click.option("--label-smoothing", type=click.FloatRange(0, 0.5), default=0.0,
              show_default=True,
              help="Targets of every gradient-trained phase become 1 - S/2 and S/2 instead "
                   "of 1 and 0 (the closed-form probe is not smoothed).")
@click.option("--dropout", type=float, help="Dropout before the classifier.")
@click.option("--fine-tune-at", help="MobileNetV2: first backbone layer to unfreeze.")
@click.option("--out", default="runs", show_default=True, help="Parent folder of run folders.")
@click.option("--name", help="Run folder name (default: FAMILY-TIMESTAMP).")
@click.option("--seed", default=0, show_default=True)
@click.option("--mixed-precision/--no-mixed-precision", default=None,
              help="Default: on with a GPU, off on CPU.")
@click.option("--folds", type=click.IntRange(2), default=None,
              help="Instead of one training: grouped, stratified K-fold cross-validation over "
                   "the pooled train+val images (groups from each source's manifest.csv, "
                   "`group` or `block` column, else file families); prints each source's AUC "
                   "mean ± sd over folds and writes crossval.json.")
@click.option("--resume", is_flag=True,
              help="With --folds: reuse the folds an interrupted cross-validation of the same "
                   "settings (same --out and --name) finished; train the rest.")
def train(data: tuple[Path, ...], source_balance: float, balance_within: str | None,
          family_weight: float | None,
          family: str, size: int | None,
          alpha: float | None,
          weights: Path | None, channels: int | None, fit: str | None, intensity: str | None,
          epochs: int | None,
          fine_tune_epochs: int | None, batch_size: int, learning_rate: float | None,
          fine_tune_lr: float | None, fine_tune_schedule: str | None,
          patience: int | None, head: str | None,
          probe_l2: float | None, batchnorm_images: int | None,
          average_epochs: int | None, probe_mix: str | None,
          keep: str | None, target_sensitivity: float, min_specificity: float | None,
          no_augment: bool, aug_overrides: tuple[str, ...], label_smoothing: float,
          dropout: float | None,
          fine_tune_at: str | None, out: str, name: str | None, seed: int,
          mixed_precision: bool | None, folds: int | None, resume: bool) -> None:
    """Train a model family on a dataset folder and write a run folder with the model, its
    card, history, metrics and plots. Uses a GPU when TensorFlow sees one."""
    _need_tf()
    from edge_toolkit.data import DatasetError
    from edge_toolkit.train.augment import AugmentConfig
    from edge_toolkit.train.trainer import FoldError, TrainConfig
    from edge_toolkit.train.trainer import train as run_training

    model = {"input_size": size, "alpha": alpha, "channels": channels, "dropout": dropout,
             "weights": str(weights) if weights else None, "fine_tune_at": fine_tune_at}
    model = {k: v for k, v in model.items() if v is not None}
    from edge_toolkit.train.trainer import family_augment

    # None: the family's own augmentation; --aug changes it key by key
    aug = AugmentConfig(0, "none", 0, 0, 0, 0) if no_augment else None
    try:
        if aug_overrides:
            aug = parse_augment(aug or family_augment(family), aug_overrides)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--aug") from None
    try:
        mix = tuple(float(a) for a in probe_mix.split(",") if a.strip()) if probe_mix else None
    except ValueError:
        raise click.BadParameter("numbers between 0 and 1, e.g. 0.5,0.75",
                                 param_hint="--probe-mix") from None
    if mix and not all(0 <= a <= 1 for a in mix):
        raise click.BadParameter("each value must be between 0 and 1", param_hint="--probe-mix")
    roots = [str(d) for d in data]
    cfg = TrainConfig(data=roots[0] if len(roots) == 1 else roots, family=family, out=out,
                      name=name, model=model,
                      preprocessing={"fit": fit, "intensity": intensity}, augment=aug,
                      epochs=epochs,
                      fine_tune_epochs=fine_tune_epochs, batch_size=batch_size,
                      learning_rate=learning_rate, fine_tune_lr=fine_tune_lr,
                      fine_tune_schedule=fine_tune_schedule, patience=patience,
                      head=head, probe_l2=probe_l2, batchnorm_images=batchnorm_images,
                      average_epochs=average_epochs,
                      probe_mix=mix, keep=keep,
                      target_sensitivity=target_sensitivity,
                      min_specificity=min_specificity, seed=seed,
                      source_balance=source_balance, balance_within=balance_within,
                      family_weight=family_weight,
                      label_smoothing=label_smoothing, mixed_precision=mixed_precision)
    if resume and not folds:
        raise click.UsageError("--resume goes with --folds")
    try:
        if folds:
            from edge_toolkit.train.trainer import cross_validate

            cross_validate(cfg, folds, log=_log, resume=resume)
        else:
            run_training(cfg, log=_log)
    except (DatasetError, ValueError, FileNotFoundError, FoldError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        again = ("rerun with --resume to reuse the folds already finished" if folds else
                 "a rerun with the same --name moves what it left aside")
        click.echo(f"interrupted: the run did not finish; {again}", err=True)
        sys.exit(130)


@click.command()
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--data", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Dataset folder to score on, repeatable: the Kaggle layout, or a flat "
                   "folder of class folders ('fractured', 'not fractured'), e.g. another "
                   "hospital's images. Default: the folders the model was trained on.")
@click.option("--splits", default="val,test", show_default=True,
              help="Splits to score (a flat folder is scored whole).")
@click.option("--bootstrap", type=click.IntRange(0), default=1000, show_default=True,
              help="Bootstrap resamples for the confidence intervals (0: none).")
@click.option("--json", "as_json", is_flag=True, help="Print metrics as JSON.")
def evaluate(model: Path, data: tuple[Path, ...], splits: str, bootstrap: int,
             as_json: bool) -> None:
    """Evaluate MODEL (a run folder, or a .tflite file with a card) on each split, pooled and
    per source: on its own data, or on any other folder (site-shift check).

    Thresholds and temperature are those stored in the card (chosen on val at training
    time); nothing is re-chosen here, least of all on test. An unreadable image is left out
    with a `skipped: PATH: reason` line on stderr. --json is strict JSON (null where a number
    is undefined). Exit 0; 2 when the model, its card or the data cannot be used (one
    `Error:` line naming the file)."""
    from edge_toolkit.evaluate import EvaluationError, evaluate_model
    from edge_toolkit.files import shown

    def skipped(path: str, reason: str) -> None:
        click.echo(f"skipped: {shown(path)}: {reason}", err=True)

    names = [s.strip() for s in splits.split(",") if s.strip()]
    try:  # the default asks for val and test where they exist; named splits must exist
        metrics, text = evaluate_model(model, data, None if splits == "val,test" else names,
                                       bootstrap, skipped)
    except EvaluationError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EvaluationError.EXIT_CODE)
    for line in one_class_warnings(metrics):
        click.echo(f"warning: {line}", err=True)
    if as_json:
        from edge_toolkit.card import strict_dumps

        click.echo(strict_dumps(metrics, indent=2))
    else:
        click.echo(text)


def one_class_warnings(metrics: dict[str, Any]) -> list[str]:
    """A split, or a source within one, whose images are of one class: its AUC (and its
    sensitivity or specificity) is undefined, shown as null / nan."""
    out = []
    for split, m in metrics.items():
        parts = [(split, m)] + [(f"{split}/{name}", sm)
                                for name, sm in (m.get("sources") or {}).items()]
        for label, sm in parts:
            auc = sm.get("auc") if isinstance(sm, dict) else None
            if auc is not None and auc != auc:
                out.append(f"{label}: images of one class only: AUC is undefined, and so is "
                           "sensitivity or specificity")
    return out
