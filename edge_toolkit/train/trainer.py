"""Train a registered model family on a dataset folder and write a self-describing run folder.

Run folder: `model.keras`, `card.json` (the model card), `history.csv`, `predictions.csv`,
`metrics.json`, and PNG plots. Transfer-learning families train in two phases: the head on a
frozen backbone, then the top of the backbone at a lower learning rate. The best epoch by
validation AUC across both phases is kept. Thresholds and temperature come from `val` only.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_toolkit.card import ModelCard, strict_dumps
from edge_toolkit.data import LABELS, Dataset, LoadedSplit, load_samples
from edge_toolkit.files import shown
from edge_toolkit.metrics import check_floors, family_auc, has_repeats, log_loss, roc_auc
from edge_toolkit.multisource import (
    by_source,
    describe_sources,
    discover_sources,
    groups_of,
    manifest_column,
    source_balanced_weights,
)
from edge_toolkit.preprocess import PreprocessConfig
from edge_toolkit.train import plots
from edge_toolkit.train.augment import AugmentConfig, build_augmenter, epoch_steps, make_dataset
from edge_toolkit.train.averaging import EpochWeights, interpolate_weights
from edge_toolkit.train.calibrate import (
    choose_operating_points,
    floor_line,
    format_metrics,
    report_splits,
)
from edge_toolkit.train.models import (
    build_model,
    check_weights_file,
    get_family,
    preprocess_config,
)
from edge_toolkit.train.models import set_backbone_trainable as _set_trainable
from edge_toolkit.train.tfsetup import (
    determinism,
    keras,
    predict_in_batches,
    set_seed,
    strategy_and_precision,
    versions,
)

Log = Callable[[str], None]


@dataclass
class TrainConfig:
    data: str | list[str]  # one dataset folder, or several sources trained on as one
    family: str = "mobilenetv2"
    out: str = "runs"
    name: str | None = None
    model: dict[str, Any] = field(default_factory=dict)  # family overrides (alpha, weights…)
    preprocessing: dict[str, Any] = field(default_factory=dict)  # fit, resize… overrides
    augment: AugmentConfig | None = None  # None: the family's (families.py), else the defaults
    # None: the family's own default (ModelFamily.training), else the value in FALLBACK
    epochs: int | None = None
    fine_tune_epochs: int | None = None
    batch_size: int = 32
    learning_rate: float | None = None
    fine_tune_lr: float | None = None
    # "constant": fine-tuning at fine_tune_lr throughout; "cosine": decayed per step from
    # fine_tune_lr to 0 over the fine-tuning epochs
    fine_tune_schedule: str | None = None
    patience: int | None = None
    # "probe": the head of a pretrained backbone is fitted in closed form (train/probe.py)
    # before fine-tuning; "train": by SGD for `epochs`
    head: str | None = None
    probe_l2: float | None = None  # the probe's L2 penalty; 0 = choose it on val
    # >0: a pretrained backbone's BatchNorm statistics are re-estimated on this many training
    # radiographs before the probe (train/batchnorm.py); 0: its ImageNet statistics
    batchnorm_images: int | None = None
    # >0: the mean of the weights after the last N fine-tuning epochs (stochastic weight
    # averaging) is one more candidate, judged on val like an epoch (train/averaging.py)
    average_epochs: int | None = None
    # mixes (1 - a) * probe + a * fine-tuned weights, one candidate per a (WiSE-FT)
    probe_mix: tuple[float, ...] | None = None
    # which candidate the run keeps: "best" (the highest val AUC of all), or one named in
    # advance: "probe", "last" (epoch), "average", "mix-A" (A one of probe_mix). A fixed
    # choice, made by cross-validation, avoids the best-of-many bias of a noisy val split.
    keep: str | None = None
    target_sensitivity: float = 0.95
    # set: the stored threshold clears both floors (target_sensitivity and this specificity)
    # by the widest margin on every val source, never less sensitive than the plain one
    min_specificity: float | None = None
    # 0: each source weighs by its size; 1: every source weighs the same (classes are
    # balanced within each source either way)
    source_balance: float = 1.0
    # a manifest column (e.g. "region"): classes are also balanced within each of its values
    balance_within: str | None = None
    # >0: within each class of a source, an image weighs 1 / (its family of copies' size)^p,
    # so rotated copies of one radiograph stop outweighing single ones (1: each counts once)
    family_weight: float | None = None
    # >0: the gradient-trained phases' targets become 1 - s/2 and s/2 (label smoothing)
    label_smoothing: float = 0.0
    val_fraction: float = 0.15
    seed: int = 0
    mixed_precision: bool | None = None
    bootstrap: int = 1000
    workers: int = 4


FALLBACK = {"epochs": 12, "fine_tune_epochs": 8, "learning_rate": 1e-3, "fine_tune_lr": 2e-5,
            "patience": 4, "head": "train", "probe_l2": 0.0, "average_epochs": 0,
            "probe_mix": (), "keep": "best", "batchnorm_images": 0,
            "fine_tune_schedule": "constant", "family_weight": 0.0}
SCHEDULES = ("constant", "cosine")


def resolve_defaults(cfg: TrainConfig) -> TrainConfig:
    """Fill unset schedule fields from the family's defaults, then the fallbacks."""
    family = get_family(cfg.family)
    fill: dict[str, Any] = {k: family.training.get(k, v) for k, v in FALLBACK.items()
                            if getattr(cfg, k) is None}
    if cfg.augment is None:
        fill["augment"] = family_augment(cfg.family)
    return replace(cfg, **fill)


def family_augment(family: str) -> AugmentConfig:
    """The family's augmentation (its `training["augment"]` over AugmentConfig's defaults)."""
    return AugmentConfig(**get_family(family).training.get("augment", {}))


def data_roots(cfg: TrainConfig) -> list[str]:
    return [cfg.data] if isinstance(cfg.data, str | Path) else [str(d) for d in cfg.data]


def class_weights(y: np.ndarray) -> dict[int, float]:
    """Inverse-frequency weights (n / 2 n_c), so each class counts the same in the loss."""
    n = len(y)
    counts = np.bincount(y.astype(int), minlength=2)
    return {c: float(n / (2 * counts[c])) if counts[c] else 1.0 for c in (0, 1)}


def load_splits(ds: Dataset, pre: PreprocessConfig, log: Log, workers: int = 4
                ) -> dict[str, LoadedSplit]:
    """Preprocess every split once, reporting each unreadable file by name."""
    out = {}
    for split in ds.splits:
        t = time.perf_counter()
        loaded = load_samples(ds.split(split), pre, workers=workers)
        for path, reason in loaded.skipped:
            log(f"skipped {shown(path)}: {reason}")
        log(f"{split}: {len(loaded.y)} images ({int(loaded.y.sum())} fractured), "
            f"{len(loaded.skipped)} skipped, {time.perf_counter() - t:.1f}s")
        out[split] = loaded
    return out


def predict(model: Any, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return predict_in_batches(model, x, batch_size).reshape(-1).astype(np.float64)


def leak_warnings(ds: Dataset) -> list[str]:
    """The dataset audit's quick check on the exact split training will use (a carved val
    included): exact and near copies of val/test images in train."""
    from edge_toolkit.audit import quick_leak_check

    return list(quick_leak_check(ds.root, samples=ds.samples).warning_lines())


RUN_FILES = ("card.json", "model.keras", "history.csv", "predictions.csv", "best.weights.h5",
             "export")  # any of these: the folder holds a run (or what one left)


def _run_dir(cfg: TrainConfig, log: Log = print) -> Path:
    """A fresh folder for this run. A named one that holds an earlier run (or what an
    interrupted one left) is moved aside first, whole, to `.replaced/NAME-STAMP` beside it:
    its exports, checkpoint and reports must not pass for the new run's, and nothing of it
    is deleted. A folder with other things in it is refused."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(cfg.out) / (cfg.name or f"{cfg.family}-{stamp}")
    if cfg.name and path.is_dir() and any(path.iterdir()):
        if not any((path / f).exists() for f in RUN_FILES):
            raise ValueError(f"{shown(path)}: exists and is not a run folder; choose another "
                             "--name or --out")
        aside = path.parent / ".replaced" / f"{path.name}-{stamp}"
        n = 1
        while aside.exists():
            aside, n = path.parent / ".replaced" / f"{path.name}-{stamp}-{n}", n + 1
        aside.parent.mkdir(parents=True, exist_ok=True)
        path.rename(aside)
        log(f"{shown(path)} held an earlier run: moved to {shown(aside)} (delete it when it is "
            "no longer needed)")
    try:
        path.mkdir(parents=True, exist_ok=bool(cfg.name))
    except FileExistsError:
        raise ValueError(f"{shown(path)}: already exists; choose another --out or "
                         "--name") from None
    except NotADirectoryError:
        raise ValueError(f"{shown(path)}: a file is in the way of this folder (--out "
                         f"{shown(cfg.out)}); choose another --out") from None
    return path


def source_aucs(y: np.ndarray, p: np.ndarray, sources: list[str],
                groups: Sequence[str] | None = None) -> dict[str, float]:
    """AUC of each source (NaN where a source has one class only); family-weighted where
    `groups` (each image's family) has a family with several images, so 67 rotated copies
    of one radiograph count once, not 67 times."""
    fam = np.asarray(list(groups)) if has_repeats(groups) else None
    return {name: roc_auc(y[m], p[m]) if fam is None else family_auc(y[m], p[m], fam[m])
            for name, m in by_source(sources).items()}


def selection_auc(aucs: dict[str, float]) -> float:
    """The checkpoint criterion: the mean of the sources' validation AUCs, so every site
    counts the same whatever its size (one source: its AUC)."""
    vals = [a for a in aucs.values() if not np.isnan(a)]
    return float(np.mean(vals)) if vals else float("nan")


def val_scores(model: Any, val: LoadedSplit) -> dict[str, float]:
    """`val_auc` (the selection criterion: the mean of the sources' AUCs, family-weighted
    where `val.groups` repeats), `val_loss`, with several sources each one's AUC as
    `val_auc_<source>`, and with families the per-image criterion as `per_image_val_auc`."""
    p = predict(model, val.x)
    aucs = source_aucs(val.y, p, val.sources, val.groups or None)
    out = {"val_auc": selection_auc(aucs), "val_loss": log_loss(val.y, p)}
    if has_repeats(val.groups or None):
        out["per_image_val_auc"] = selection_auc(source_aucs(val.y, p, val.sources))
    return out | ({f"val_auc_{k}": v for k, v in aucs.items()} if len(aucs) > 1 else {})


def score_details(scores: dict[str, Any]) -> str:
    """" (fracatlas 0.86 fracture-xray 0.91; per image 0.89)" for a log line: each source's
    AUC and, where families made the criterion family-weighted, the per-image one."""
    parts = " ".join(f"{k[8:]} {v:.4f}" for k, v in scores.items() if k.startswith("val_auc_"))
    if "per_image_val_auc" in scores:
        parts += f"; per image {scores['per_image_val_auc']:.4f}"
    return f" ({parts.lstrip('; ')})" if parts else ""


def _val_monitor(model: Any, val: LoadedSplit) -> Any:
    """Writes `val_scores` into the epoch's logs before early stopping and the checkpoint
    read them."""

    class ValMonitor(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if logs is not None:
                logs.update(val_scores(model, val))

    return ValMonitor()


def _probe_phase(model: Any, train_s: LoadedSplit, weights: np.ndarray, val_s: LoadedSplit,
                 cfg: TrainConfig, log: Log) -> tuple[dict[str, Any], dict[str, float]]:
    """Phase 1 as a linear probe: the head fitted exactly on the frozen backbone's features;
    returns the probe's record and its history row (scored on val like an epoch)."""
    from edge_toolkit.train.probe import probe

    t = time.perf_counter()
    record = probe(model, train_s.x, train_s.y, weights, val_s.x, val_s.y, val_s.sources,
                   float(cfg.probe_l2 or 0.0), log, val_groups=val_s.groups or None)
    row = {"phase": 1, "phase_start": 1, "candidate": "probe"} | val_scores(model, val_s)
    log(f"phase 1 linear probe (L2 {record['l2']:g}): val_loss {row['val_loss']:.4f} "
        f"val_auc {row['val_auc']:.4f}{score_details(row)}, {time.perf_counter() - t:.0f}s")
    return record, row


def _weight_space_candidates(model: Any, collector: EpochWeights,
                             probe_weights: list[np.ndarray] | None, cfg: TrainConfig,
                             val: LoadedSplit, history: list[dict[str, Any]],
                             log: Log) -> dict[str, tuple[float, list[np.ndarray]]]:
    """Candidates made from the fine-tuning path without more training, each scored on val
    like an epoch and appended to `history`: the average of the last epochs (phase 3), and
    mixes of the probe with the fine-tuned weights (phase 4; the average, else the last
    epoch). Returns name -> (val AUC, weights) for each, the last epoch's weights included
    (as "last", already scored as an epoch)."""
    current = model.get_weights()
    averaged = collector.average()
    out: dict[str, tuple[float, list[np.ndarray]]] = {}
    if collector.snapshots:
        out["last"] = (float(history[-1]["val_auc"]), collector.snapshots[-1][1])
    candidates = []
    if averaged is not None:
        candidates.append((3, "average", f"weight average of fine-tuning epochs "
                                         f"{collector.epochs_averaged()}", averaged))
    # early stopping has restored the best epoch into the model: the mix starts from the
    # end of fine-tuning (the average, else the last epoch's snapshot), as WiSE-FT does
    last = collector.snapshots[-1][1] if collector.snapshots else current
    tuned = averaged if averaged is not None else last
    for alpha in (cfg.probe_mix or ()) if probe_weights is not None else ():
        candidates.append((4, f"mix-{alpha:g}",
                           f"probe mixed with fine-tuned weights, alpha {alpha:g}",
                           interpolate_weights(probe_weights, tuned, alpha)))
    for phase, name, what, weights in candidates:
        model.set_weights(weights)
        row = {"phase": phase, "phase_start": 1, "candidate": name} | val_scores(model, val)
        history.append(row)
        log(f"{what}: val_auc {row['val_auc']:.4f}")
        out[name] = (row["val_auc"], weights)
    model.set_weights(current)
    return out


def check_keep(cfg: TrainConfig) -> None:
    """The `keep` rule must name a candidate this configuration makes."""
    keep = cfg.keep or "best"
    names = {"best", "probe", "last", "average"} | {f"mix-{a:g}" for a in cfg.probe_mix or ()}
    if keep not in names:
        raise ValueError(f"keep {keep!r}: expected one of {sorted(names)}")
    if keep == "average" and (cfg.average_epochs or 0) < 2:
        raise ValueError("keep 'average' needs average_epochs of 2 or more")
    if keep == "probe" and cfg.head != "probe":
        raise ValueError("keep 'probe' needs the linear-probe head (head 'probe')")
    if keep != "best" and not cfg.fine_tune_epochs:
        raise ValueError(f"keep {keep!r} needs fine-tuning epochs")


def check_numbers(cfg: TrainConfig, probe_head: bool) -> None:
    """Settings that cannot train, refused before any image is loaded (they used to fail
    after training, or deep inside TensorFlow)."""
    if not 0 < cfg.target_sensitivity < 1:
        raise ValueError(f"target sensitivity {cfg.target_sensitivity:g}: between 0 and 1")
    if cfg.batch_size < 1:
        raise ValueError(f"batch size {cfg.batch_size}: 1 or more")
    if (cfg.fine_tune_epochs or 0) < 0:
        raise ValueError(f"fine-tuning epochs {cfg.fine_tune_epochs}: 0 or more")
    if not probe_head and (cfg.epochs or 0) < 1:
        raise ValueError(f"epochs {cfg.epochs}: 1 or more (this run trains its head, or the "
                         "whole network, by gradient descent)")


def kept_candidate(history: list[dict[str, Any]]) -> str:
    """The name of the history row with the best val AUC (what keep 'best' keeps)."""
    best = max(history, key=lambda r: r["val_auc"])
    return str(best.get("candidate", ""))


def _radiograph_statistics(model: Any, x: np.ndarray, cfg: TrainConfig, log: Log) -> None:
    """The backbone's BatchNorm statistics re-estimated on `cfg.batchnorm_images` training
    radiographs drawn at random (un-augmented, as served)."""
    from edge_toolkit.train.batchnorm import reestimate_batchnorm

    t = time.perf_counter()
    pick = np.sort(np.random.default_rng(cfg.seed).choice(
        len(x), min(int(cfg.batchnorm_images), len(x)), replace=False))
    # random batches; drawn exactly as the measured runs drew them (benchmarks/README.md)
    order = pick[np.random.default_rng(cfg.seed).permutation(len(pick))]
    used = reestimate_batchnorm(model, x, indices=order)
    log(f"BatchNorm statistics re-estimated on {used} training radiographs "
        f"({len(pick)} drawn), {time.perf_counter() - t:.0f}s")


def learning_rate(lr: float, schedule: str, epochs: int, steps_per_epoch: int) -> Any:
    """Adam's learning rate: `lr` throughout, or a per-step cosine decay from `lr` to 0
    that ends with the phase's last scheduled step."""
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, max(1, epochs * steps_per_epoch))
    return lr


def _fit_phase(model: Any, train_ds: Any, val: LoadedSplit, epochs: int, lr: Any,
               cfg: TrainConfig, checkpoint: Any, phase: int, log: Log,
               extra: list[Any] | None = None, steps: int | None = None
               ) -> list[dict[str, Any]]:
    if epochs <= 0:
        return []
    loss = keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss,
                  weighted_metrics=[keras.metrics.AUC(name="auc")])
    stop = keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=cfg.patience,
                                         restore_best_weights=True)

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            log(f"phase {phase} epoch {epoch + 1}/{epochs}: loss {logs.get('loss', 0):.4f} "
                f"auc {logs.get('auc', 0):.4f} val_loss {logs.get('val_loss', 0):.4f} "
                f"val_auc {logs.get('val_auc', 0):.4f}{score_details(logs)}")

    hist = model.fit(train_ds, epochs=epochs, verbose=0, steps_per_epoch=steps,
                     callbacks=[_val_monitor(model, val), stop, checkpoint, Progress(),
                                *(extra or [])])
    rows = [{k: float(v[i]) for k, v in hist.history.items()}
            | {"phase": phase, "candidate": f"{'head ' if phase == 1 else ''}epoch {i + 1}"}
            for i in range(len(hist.history["loss"]))]
    if rows:
        rows[0]["phase_start"] = 1
    return rows


def effective_config(cfg: TrainConfig) -> TrainConfig:
    """The settings a training runs with (and its card records): the family's defaults
    filled in, and a family's fixed `keep` replaced by "best" where the run makes no
    LP-FT candidates (no pretrained backbone, no probe head or no fine-tuning)."""
    keep_asked = cfg.keep is not None
    cfg = resolve_defaults(cfg)
    family = get_family(cfg.family)
    model_weights = cfg.model.get("weights", family.defaults.get("weights"))
    lp_ft = bool(family.has_backbone and model_weights and cfg.head == "probe"
                 and cfg.fine_tune_epochs)
    if not keep_asked and not lp_ft:
        cfg = replace(cfg, keep="best")
    if not 0 <= cfg.label_smoothing < 1 or (cfg.batchnorm_images or 0) < 0:
        raise ValueError("label_smoothing must be in [0, 1) and batchnorm_images 0 or more")
    if not 0 <= cfg.family_weight <= 1:
        raise ValueError("family_weight must be between 0 (per image) and 1 (per radiograph)")
    if cfg.fine_tune_schedule not in SCHEDULES:
        raise ValueError(f"fine_tune_schedule {cfg.fine_tune_schedule!r}: one of {SCHEDULES}")
    if cfg.batchnorm_images and not (family.has_backbone and model_weights):
        cfg = replace(cfg, batchnorm_images=0)  # no pretrained statistics to re-estimate
    return cfg


def train(cfg: TrainConfig, log: Log = print, dataset: Dataset | None = None) -> Path:
    """Train, calibrate on val, report every split, write the run folder; return its path.
    `dataset` stands in for the folders (cross-validation folds)."""
    made: list[Path] = []
    try:
        return _train(cfg, log, dataset, made)
    except BaseException:  # a run that failed before writing anything leaves no empty folder
        for folder in made:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    finally:  # a failed GPU run must not leave mixed float16 on for the rest of the process:
        keras.mixed_precision.set_global_policy("float32")  # tfmot and TFLite reject it


def _train(cfg: TrainConfig, log: Log, dataset: Dataset | None, made: list[Path]) -> Path:
    t0 = time.perf_counter()
    cfg = effective_config(cfg)
    family = get_family(cfg.family)
    model_weights = cfg.model.get("weights", family.defaults.get("weights"))
    check_keep(cfg)
    check_numbers(cfg, bool(family.has_backbone and model_weights and cfg.head == "probe"))
    if family.has_backbone and model_weights and Path(model_weights).is_file():
        check_weights_file(Path(model_weights))  # before the images load, not after
    if cfg.min_specificity is not None:  # before training, not after it
        check_floors(cfg.target_sensitivity, cfg.min_specificity)
    repro = determinism(bool(family.has_backbone and model_weights and cfg.fine_tune_epochs))
    set_seed(cfg.seed, repro["deterministic"])
    if not repro["deterministic"]:
        log(f"note: not bit-reproducible on this device ({repro['reason']})")
    roots = data_roots(cfg)
    ds = dataset or discover_sources(roots, val_fraction=cfg.val_fraction, seed=cfg.seed)
    if len(roots) > 1:
        log(f"sources: {', '.join(ds.source_names)} (balance {cfg.source_balance:g})")
    for line in leak_warnings(ds):  # the first line already says WARNING
        log(line)
    if ds.carved_val:
        log(f"no val/ folder: carved {cfg.val_fraction:.0%} of train as validation "
            f"(seed {cfg.seed})")
    if cfg.balance_within and not any(manifest_column(
            ds, [s.path for s in ds.samples if s.split == "train"], cfg.balance_within)):
        raise ValueError(f"--balance-within {cfg.balance_within}: no source's manifest.csv "
                         f"has a {cfg.balance_within!r} column with values for its images")
    model_cfg = family.config(**cfg.model)
    pre = run_preprocessing(cfg)
    run = _run_dir(cfg, log)
    made.append(run)
    log(f"run folder: {run}")
    splits = load_splits(ds, pre, log, workers=cfg.workers)
    for loaded in splits.values():  # families: the criterion and reports count each once
        loaded.groups = groups_of(ds, loaded.paths)
        loaded.clusters = groups_of(ds, loaded.paths, clusters=True)
    train_s, val_s = splits["train"], splits.get("val")
    if val_s is None or len(val_s.y) == 0 or len(set(val_s.y.tolist())) < 2:
        raise ValueError("validation split needs images of both classes")

    strategy, mixed = strategy_and_precision(cfg.mixed_precision)
    log(f"devices: {strategy.num_replicas_in_sync} replica(s), mixed precision {mixed}")
    batch = cfg.batch_size * strategy.num_replicas_in_sync
    augmenter = build_augmenter(cfg.augment, pre.value_range, cfg.seed)
    strata = (manifest_column(ds, train_s.paths, cfg.balance_within)
              if cfg.balance_within else None)
    if strata is not None:
        log(f"classes balanced within each {cfg.balance_within}: "
            f"{', '.join(sorted({v or '(none)' for v in strata}))}")
    weights = source_balanced_weights(train_s.y, train_s.sources, cfg.source_balance, strata,
                                      train_s.groups, cfg.family_weight)
    train_ds = make_dataset(train_s.x, train_s.y, batch, augmenter, shuffle=True,
                            seed=cfg.seed, weights=weights, mixup=cfg.augment.mixup,
                            redraw=cfg.augment.redraw)
    steps = epoch_steps(len(train_s.y), batch, cfg.augment.redraw)
    with strategy.scope():
        model, model_cfg = build_model(cfg.family, **model_cfg)
    ckpt_path = run / "best.weights.h5"  # a fresh folder: no earlier run's checkpoint
    checkpoint = keras.callbacks.ModelCheckpoint(str(ckpt_path), monitor="val_auc", mode="max",
                                                 save_best_only=True, save_weights_only=True)
    history: list[dict[str, Any]] = []
    probe_record, probe_weights, fixed_kept = None, None, False
    kept_weights = None  # the kept candidate when it is held in memory, not in ckpt_path
    pretrained = family.has_backbone and bool(model_cfg.get("weights"))
    with strategy.scope():
        _set_trainable(model, cfg.family, model_cfg, trainable=False)
        if pretrained and cfg.batchnorm_images:
            _radiograph_statistics(model, train_s.x, cfg, log)
        if cfg.head == "probe" and pretrained:
            probe_record, row = _probe_phase(model, train_s, weights, val_s, cfg, log)
            # the probe is the first candidate: kept in memory (a weights file saved before
            # compile() does not load into the compiled model); fine-tuning must beat it
            probe_weights = model.get_weights()
            kept_weights = probe_weights
            checkpoint.best = row["val_auc"]
            history.append(row)
        else:
            history += _fit_phase(model, train_ds, val_s, cfg.epochs, cfg.learning_rate, cfg,
                                  checkpoint, 1, log, steps=steps)
        if pretrained and cfg.fine_tune_epochs > 0:
            n = _set_trainable(model, cfg.family, model_cfg, trainable=True)
            log(f"fine-tuning from {model_cfg.get('fine_tune_at')}: {n} trainable tensors")
            # at least the last epoch: 'last' and the probe mixes need it
            collector = EpochWeights(model, max(1, cfg.average_epochs or 0))
            lr = learning_rate(cfg.fine_tune_lr, cfg.fine_tune_schedule,
                               cfg.fine_tune_epochs, steps or math.ceil(len(train_s.y) / batch))
            history += _fit_phase(model, train_ds, val_s, cfg.fine_tune_epochs, lr, cfg,
                                  checkpoint, 2, log, [collector], steps)
            extra = _weight_space_candidates(model, collector, probe_weights, cfg, val_s,
                                             history, log)
            fixed = {"probe": probe_weights} | {k: w for k, (_, w) in extra.items()}
            extra.pop("last", None)  # already a candidate as the last epoch
            if cfg.keep != "best" and fixed.get(cfg.keep) is not None:
                kept_weights = fixed[cfg.keep]  # named in advance: val does not choose
                ckpt_path.unlink(missing_ok=True)
                fixed_kept = True
            elif extra and max(a for a, _ in extra.values()) > checkpoint.best:
                # an average or a mix beat every epoch: kept in memory
                checkpoint.best, kept_weights = max(extra.values(), key=lambda c: c[0])
                ckpt_path.unlink(missing_ok=True)
    if cfg.keep != "best" and not fixed_kept:
        raise ValueError(f"keep {cfg.keep!r} needs a pretrained backbone, a linear-probe "
                         f"head and fine-tuning")
    kept = cfg.keep if cfg.keep != "best" else kept_candidate(history)
    log(f"kept: {kept} ({'named in advance' if cfg.keep != 'best' else 'best val AUC'})")
    if ckpt_path.exists():
        model.load_weights(str(ckpt_path))  # best val AUC over both phases
        ckpt_path.unlink()
    elif kept_weights is not None:  # no fine-tuning epoch beat the probe (or the average)
        model.set_weights(kept_weights)
    keras.mixed_precision.set_global_policy("float32")
    if mixed:  # save a float32 model: the TFLite converter and tfmot reject mixed precision
        weights_now = model.get_weights()
        model, _ = build_model(cfg.family, **model_cfg)
        model.set_weights(weights_now)
    for layer in model.layers:
        layer.trainable = True

    probs = {s: (v.y, predict(model, v.x)) for s, v in splits.items()}
    sources = {s: v.sources for s, v in splits.items()}
    ops = choose_operating_points(*probs["val"], cfg.target_sensitivity, sources["val"],
                                  cfg.min_specificity)
    if "floor_margin" in ops:
        log(floor_line(ops))
    metrics = report_splits(probs, ops["temperature"], ops["thresholds"], cfg.bootstrap,
                            sources, {s: v.groups for s, v in splits.items()},
                            {s: v.clusters for s, v in splits.items()})
    log(format_metrics(metrics, intervals=cfg.bootstrap > 0))
    card = ModelCard(
        family=cfg.family, input_size=pre.size, channels=pre.channels,
        preprocessing=pre.to_dict(), labels=list(LABELS), positive_label=LABELS[1],
        threshold=ops["threshold"], thresholds=ops["thresholds"],
        target_sensitivity=cfg.target_sensitivity, min_specificity=cfg.min_specificity,
        temperature=ops["temperature"],
        model_config=model_cfg, variant="keras", parent=None,
        data_fingerprint=ds.fingerprint(),
        dataset={"root": str(Path(roots[0]).resolve()),
                 "roots": [str(Path(r).resolve()) for r in roots],
                 "sources": describe_sources(ds), "counts": ds.counts(),
                 "carved_val": ds.carved_val, "val_fraction": cfg.val_fraction,
                 "seed": cfg.seed, "source_balance": cfg.source_balance,
                 "val_grouping": ds.val_grouping, "name": " + ".join(ds.source_names),
                 "skipped": {s: len(v.skipped) for s, v in splits.items()}},
        metrics=metrics,
        export={"training": {k: v for k, v in asdict(cfg).items() if k not in ("data", "out")}
                | {"mixed_precision": mixed, "selection": SELECTION,
                   "params": int(model.count_params()),
                   "probe": probe_record, "determinism": repro, "kept": kept,
                   "epochs_run": len(history),
                   "wall_seconds": round(time.perf_counter() - t0, 1)}},
        versions=versions(), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    write_run(run, model, card, history, probs, splits)
    log(f"done in {time.perf_counter() - t0:.0f}s: {run}")
    return run


def write_run(run: Path, model: Any, card: ModelCard, history: list[dict[str, Any]],
              probs: dict[str, tuple[np.ndarray, np.ndarray]],
              splits: dict[str, LoadedSplit]) -> None:
    model.save(run / "model.keras")
    card.save(run / "card.json")
    (run / "metrics.json").write_text(strict_dumps(card.metrics, indent=2) + "\n")
    if history:
        keys = sorted({k for h in history for k in h})
        with open(run / "history.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["epoch", *keys])
            w.writeheader()
            for i, h in enumerate(history):
                w.writerow({"epoch": i + 1, **h})
        plots.learning_curves(history, run / "learning_curves.png")
    write_predictions(run / "predictions.csv", probs, splits)
    plot_evaluation(run, card, probs)


def write_predictions(path: Path, probs: dict[str, tuple[np.ndarray, np.ndarray]],
                      splits: dict[str, LoadedSplit]) -> None:
    """Every scored image's raw probability. A file name that is not valid UTF-8 is written
    with its own bytes (surrogateescape), so `evaluate` reads the same path back."""
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(["split", "source", "path", "label", "probability_raw"])
        for split, (y, p) in probs.items():
            loaded = splits[split]
            for path_, src, yi, pi in zip(loaded.paths, loaded.sources, y, p):
                w.writerow([split, src, str(path_), int(yi), f"{pi:.6f}"])


def plot_evaluation(run: Path, card: ModelCard,
                    probs: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    from edge_toolkit.metrics import apply_temperature

    cal = {s: (y, apply_temperature(p, card.temperature)) for s, (y, p) in probs.items()
           if s != "train" and len(y)}
    points = {}
    for s, m in card.metrics.items():
        op = m["operating_points"].get("high_sensitivity")
        if op and s in cal:
            points[s] = (1 - op["specificity"], op["sensitivity"])
    plots.roc_plot(cal, run / "roc.png", points)
    conf = {s: m["operating_points"]["high_sensitivity"]["confusion"]
            for s, m in card.metrics.items() if "high_sensitivity" in m["operating_points"]}
    plots.confusion_plot(conf, card.labels, run / "confusion_matrix.png")


class FoldError(Exception):
    """A cross-validation fold's training failed or its process died; the message says which."""


def _discover(cfg: TrainConfig) -> Dataset:
    return discover_sources(data_roots(cfg), val_fraction=cfg.val_fraction, seed=cfg.seed)


def _fold_dataset(ds: Dataset, cfg: TrainConfig, folds: int, k: int
                  ) -> tuple[Dataset, int, int]:
    """Fold k's dataset (its held-out images as `val`); the same in every process."""
    from edge_toolkit.crossval import make_folds

    train_part, held = make_folds(ds, folds, cfg.seed).split(k)
    return (Dataset(ds.root, train_part + held, class_folders=ds.class_folders,
                    sources=ds.sources), len(train_part), len(held))


def fold_error_file(cfg: TrainConfig) -> Path:
    """Where a failed fold's traceback goes: beside its run folder, so --resume never
    mistakes it for a finished fold."""
    return Path(cfg.out) / f"{cfg.name}-error.txt"


def _fold_worker(cfg: TrainConfig, folds: int, k: int, queue: Any) -> None:
    """Train fold k in this (child) process; send log lines, then ("done", run folder) or
    ("error", message). The traceback of an error is kept in `fold_error_file`."""
    import traceback

    error_file = fold_error_file(cfg)
    try:
        error_file.unlink(missing_ok=True)
        fold_ds, _, _ = _fold_dataset(_discover(cfg), cfg, folds, k)
        run = train(cfg, log=queue.put, dataset=fold_ds)
        queue.put(("done", str(run)))
    except BaseException as exc:  # the parent reports it as one line
        where = ""
        try:
            error_file.parent.mkdir(parents=True, exist_ok=True)
            error_file.write_text(traceback.format_exc())
            where = f" (traceback in {error_file})"
        except OSError:
            pass
        first = (str(exc).strip().splitlines() or [""])[0]  # TF's messages run to pages
        queue.put(("error", f"{type(exc).__name__}: {first}{where}"))


def _train_fold_in_child(cfg: TrainConfig, folds: int, k: int, log: Log) -> Path:
    """Why a child process: TensorFlow keeps what a finished training allocated (a 224 px
    2-fold CV grew to 21 GB in its second fold); a fold's process ends with its fold and
    gives everything back, and a fold killed for memory is one line, not a lost CV
    (`--resume` reuses the folds already finished)."""
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")  # a fresh interpreter: no TensorFlow state is inherited
    messages = ctx.Queue()
    child = ctx.Process(target=_fold_worker, args=(cfg, folds, k, messages), daemon=True)
    child.start()
    try:
        while True:
            alive = child.is_alive()  # read before the queue: a child that just sent "done"
            try:                      # and exited still has its last messages queued
                msg = messages.get(timeout=2)
            except queue_mod.Empty:
                if not alive:
                    child.join()
                    raise FoldError(
                        f"fold {k + 1}: the training process ended with exit code "
                        f"{child.exitcode}" + (" (killed: out of memory?)"
                                               if child.exitcode == -9 else "")) from None
                continue
            if isinstance(msg, tuple):
                child.join()
                if msg[0] == "error":
                    raise FoldError(f"fold {k + 1}: {msg[1]}")
                return Path(msg[1])
            log(msg)
    finally:
        if child.is_alive():
            child.terminate()
            child.join(timeout=10)


# How a run chooses what it keeps; recorded in each card, so a resumed command never reuses
# a run chosen by another rule. 2: the mean of the sources' family-weighted val AUCs.
# 3: the probe's penalty search as well.
SELECTION = "family-weighted-3"


def _comparable(cfg: TrainConfig) -> dict[str, Any]:
    """The settings that decide a run's model and operating point, as its card records them
    (mixed precision left to the device, None, is not compared; every other None is a
    setting of its own, e.g. no specificity floor)."""
    d = json.loads(json.dumps(asdict(effective_config(cfg)), default=str))
    out = {k: v for k, v in d.items()
           if k not in ("name", "out", "data", "bootstrap", "workers", "preprocessing")
           and not (k == "mixed_precision" and v is None)}
    return out | {"selection": SELECTION}


def run_preprocessing(cfg: TrainConfig) -> PreprocessConfig:
    """The preprocessing a run with these settings trains with and records in its card
    (the family's, the model's size, then the overrides that are set)."""
    return PreprocessConfig.from_dict(preprocess_config(
        cfg.family, get_family(cfg.family).config(**cfg.model), **cfg.preprocessing))


def _recorded(training: dict[str, Any], key: str) -> Any:
    """A setting as a card's training record has it; one the card predates is read as the
    default of its time (no floor, no strata, per-image selection)."""
    if key == "augment" and isinstance(training.get(key), dict):  # keys added since: off
        return asdict(AugmentConfig.from_record(training[key]))
    if key in training:
        return json.loads(json.dumps(training[key], default=str))
    defaults = {f.name: f.default if f.default is not MISSING
                else None if f.default_factory is MISSING
                else f.default_factory() for f in fields(TrainConfig)}
    # the fallbacks are each option's "off", what a run did before the option existed
    value = ({"selection": "per-image-1"} | FALLBACK).get(key, defaults.get(key))
    return json.loads(json.dumps(value, default=str))


def reusable_run(run: Path, cfg: TrainConfig, ds: Dataset) -> bool:
    """A run folder left by an earlier, interrupted command (a CV fold, a pipeline's or a
    site-shift run) with these same settings (operating rule included) and these same
    images can be reused; one trained differently cannot (a clear error, not a silent mix
    of rules in one report). The run is finished once its predictions are written."""
    card_path = run / "card.json"
    if not (card_path.exists() and (run / "predictions.csv").exists()):
        return False
    card = ModelCard.load(card_path)
    training = card.export.get("training", {})
    want = _comparable(cfg)
    differ = sorted(k for k, v in want.items() if _recorded(training, k) != v)
    had = PreprocessConfig.from_dict(card.preprocessing).to_dict()  # old cards: defaults
    asked = run_preprocessing(cfg).to_dict()
    differ += [f"preprocessing {k} {had[k]} -> {asked[k]}" for k in had if had[k] != asked[k]]
    if card.data_fingerprint != ds.fingerprint():
        differ.append("the images (other data, or another fold or number of folds)")
    if differ:
        raise ValueError(f"{run}: trained with other settings ({', '.join(differ)}); remove "
                         f"it or choose another --name")
    return True


def train_or_reuse(cfg: TrainConfig, resume: bool = False, log: Log = print) -> Path:
    """`train(cfg)`, unless `resume` and `reusable_run` says the run folder it would write
    already holds the same training finished."""
    done = Path(cfg.out) / (cfg.name or "")
    if resume and cfg.name and reusable_run(done, cfg, _discover(cfg)):
        log(f"reusing {done} (--resume: same settings and images)")
        return done
    return train(cfg, log=log)


def cross_validate(cfg: TrainConfig, folds: int = 5, log: Log = print,
                   resume: bool = False) -> dict[str, Any]:
    """Grouped, stratified k-fold cross-validation of one training recipe over the pooled
    train+val images (test stays out): each fold trains on the rest, in its own process, and
    is scored on its held-out images, per source. `resume` reuses folds an interrupted CV
    with the same settings finished. Returns per-fold AUCs and their mean and sd; writes
    `crossval.json` beside the fold runs."""

    from edge_toolkit.crossval import summarize_folds

    t0 = time.perf_counter()
    ds = _discover(cfg)
    base = cfg.name or f"{cfg.family}-cv{folds}"
    scores = []
    for k in range(folds):
        fold_cfg = replace(cfg, name=f"{base}/fold{k + 1}", bootstrap=0)
        run = Path(cfg.out) / base / f"fold{k + 1}"
        fold_ds, n_train, n_held = _fold_dataset(ds, cfg, folds, k)
        if resume and reusable_run(run, fold_cfg, fold_ds):
            log(f"== fold {k + 1}/{folds}: reusing {run} (finished earlier)")
        else:
            log(f"== fold {k + 1}/{folds}: {n_train} train, {n_held} held out")
            run = _train_fold_in_child(fold_cfg, folds, k, log)
        val = ModelCard.load(run / "card.json").metrics["val"]
        # family-weighted where the held-out fold has copies, as training selects
        per_source = {name: m.get("auc_family", m["auc"])
                      for name, m in (val.get("sources") or {}).items()}
        scores.append({"pooled": val.get("auc_family", val["auc"]), **per_source,
                       "mean_of_sources": selection_auc(per_source) if per_source
                       else val.get("auc_family", val["auc"])})
    result = {"folds": folds, "config": {k: v for k, v in asdict(cfg).items()
                                         if k not in ("data", "out")},
              "sources": ds.source_names, "per_fold": scores,
              "summary": summarize_folds(scores),
              "seconds": round(time.perf_counter() - t0, 1)}
    out = Path(cfg.out) / base
    (out / "crossval.json").write_text(strict_dumps(result, indent=2) + "\n")
    for key, v in result["summary"].items():
        log(f"cross-validated AUC {key}: {v['mean']:.3f} ± {v['sd']:.3f} over {v['n']} folds")
    return result
