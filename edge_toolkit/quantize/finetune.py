"""Fine-tuning for QAT and pruning, the way the run was trained (imports TensorFlow).

Same train split (rediscovered from the card), same preprocessing, same augmentation,
per-image weights (class and source balance) and batch size as the parent run; a low learning
rate; the epoch kept is the one with the best validation AUC (in numpy on the whole val split
after each epoch; the mean over sources, as training selects), among the epochs allowed
(pruning only counts epochs that reached the target sparsity).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_toolkit.train.augment import AugmentConfig, build_augmenter, epoch_steps, make_dataset
from edge_toolkit.train.tfsetup import determinism, keras, set_seed


def training_weights(ctx: Any) -> np.ndarray:
    """Per-image weights as in training: classes balanced within each source (and within
    each value of `balance_within`, if the run used it), sources balanced and copies of one
    radiograph weighted (`family_weight`) as the run's card says."""
    from edge_toolkit.multisource import manifest_column, source_balanced_weights

    train = ctx.train
    within = (ctx.card.export.get("training") or {}).get("balance_within")
    strata = manifest_column(ctx.dataset, train.paths, within) if within else None
    if strata is not None and not any(strata):
        ctx.log(f"WARNING: the run balanced classes within {within!r}, which no manifest.csv "
                "of this data has: fine-tuning without it")
        strata = None
    power = float((ctx.card.export.get("training") or {}).get("family_weight") or 0.0)
    return source_balanced_weights(train.y, train.sources,
                                   float(ctx.card.dataset.get("source_balance", 1.0)), strata,
                                   train.groups, power)


class BestByValAUC(keras.callbacks.Callback):
    """Keep the weights of the epoch with the best val AUC among epochs >= `first_epoch`."""

    def __init__(self, x: np.ndarray, y: np.ndarray, first_epoch: int = 0,
                 log: Any = None, label: str = "", sources: list[str] | None = None,
                 groups: list[str] | None = None) -> None:
        super().__init__()
        self.x, self.y, self.first_epoch = x, y, first_epoch
        self.sources = sources or [""] * len(y)
        self.groups = groups or None
        self.log, self.label = log, label
        self.best_auc = -np.inf
        self.best_epoch: int | None = None
        self.best_weights: list[np.ndarray] | None = None
        self.history: list[float] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        from edge_toolkit.train.trainer import selection_auc, source_aucs

        p = self.model.predict(self.x, batch_size=64, verbose=0).reshape(-1)
        auc = selection_auc(source_aucs(self.y, p, self.sources, self.groups))  # as training
        self.history.append(float(auc))
        eligible = epoch >= self.first_epoch
        if self.log:
            loss = (logs or {}).get("loss", float("nan"))
            self.log(f"{self.label} epoch {epoch + 1}: loss {loss:.4f} val_auc {auc:.4f}"
                     + ("" if eligible else " (before target sparsity: not kept)"))
        if eligible and (auc > self.best_auc or self.best_weights is None):
            self.best_auc, self.best_epoch = float(auc), epoch + 1
            self.best_weights = self.model.get_weights()

    def restore(self) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def eta_text(seconds: float) -> str:
    """'45 s', '3 min 10 s': short enough for one progress line."""
    s = max(0, round(seconds))
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s"


class EtaProgress(keras.callbacks.Callback):
    """A line every `every` seconds with batches done, time spent and time left: QAT, pruning
    and PQAT fine-tuning take minutes with nothing else to show. The estimate is the time per
    batch since the first one ended (the first also builds the graph; the per-epoch
    validation is included) times the batches left."""

    def __init__(self, epochs: int, steps: int, log: Callable[[str], None], label: str,
                 every: float = 15.0, clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__()
        self.epochs, self.steps, self.log, self.label = epochs, max(1, steps), log, label
        self.every, self.clock = every, clock
        self.epoch = 0
        self.t0 = self.last = 0.0
        self.first: tuple[float, int] | None = None  # (time, batches done) after batch one

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.t0 = self.last = self.clock()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        now = self.clock()
        total = self.epochs * self.steps
        done = min(total, self.epoch * self.steps + batch + 1)
        if self.first is None:
            self.first = (now, done)
        if now - self.last < self.every:
            return
        self.last = now
        spent = now - self.t0
        t1, d1 = self.first
        left = (f"about {eta_text((now - t1) / (done - d1) * (total - done))} left"
                if done > d1 else "estimating the time left")
        self.log(f"{self.label}: epoch {self.epoch + 1}/{self.epochs}, batch "
                 f"{min(batch + 1, self.steps)}/{self.steps} ({100 * done / total:.0f}%), "
                 f"{eta_text(spent)} spent, {left}")


def freeze_batchnorm(model: Any) -> int:
    """Put every BatchNormalization layer (bare or inside a tfmot wrapper) in inference mode
    with frozen parameters; returns how many. Low-LR fine-tuning should not re-estimate
    statistics from small augmented batches, and MobileNetV2 runs were trained with BN frozen
    (ImageNet statistics): letting BN train would change the network under QAT."""
    n = 0
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if isinstance(inner, keras.layers.BatchNormalization):
            layer.trainable = False
            n += 1
    return n


def augment_config(card_training: dict[str, Any]) -> AugmentConfig:
    return AugmentConfig.from_record(card_training.get("augment"))


def fine_tune(model: Any, ctx: Any, epochs: int, lr: float, label: str,
              callbacks: tuple[Any, ...] = (), first_epoch: int = 0) -> dict[str, Any]:
    """Fit `model` on ctx's train split for `epochs` at `lr`; restore the best val-AUC epoch
    (from `first_epoch` on, 0-based). Returns what happened, for the card."""
    if epochs < 1:
        raise ValueError(f"{label}: needs at least one fine-tuning epoch")
    t0 = time.perf_counter()
    repro = determinism(bool(ctx.freeze_bn))
    set_seed(ctx.seed, repro["deterministic"])
    train, val = ctx.train, ctx.val
    aug = ctx.augment
    value_range = ctx.preprocess.value_range
    augmenter = build_augmenter(aug, value_range, ctx.seed)  # as training builds it
    weights = training_weights(ctx)
    ds = make_dataset(train.x, train.y, ctx.batch_size, augmenter, shuffle=True,
                      seed=ctx.seed, weights=weights, mixup=aug.mixup, redraw=aug.redraw)
    frozen = freeze_batchnorm(model) if ctx.freeze_bn else 0
    smoothing = float((getattr(ctx, "training", None) or {}).get("label_smoothing") or 0.0)
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=keras.losses.BinaryCrossentropy(label_smoothing=smoothing))
    best = BestByValAUC(val.x, val.y, first_epoch, ctx.log, label, val.sources, val.groups)
    eta = EtaProgress(epochs, math.ceil(len(train.y) / ctx.batch_size), ctx.log, label)
    model.fit(ds, epochs=epochs, callbacks=[*callbacks, best, eta], verbose=0,
              steps_per_epoch=epoch_steps(len(train.y), ctx.batch_size, aug.redraw))
    best.restore()
    return {"epochs": epochs, "learning_rate": lr, "batch_size": ctx.batch_size,
            "best_epoch": best.best_epoch, "keras_val_auc": best.best_auc,
            "val_auc_per_epoch": best.history, "augment": aug.to_dict(),
            "label_smoothing": smoothing,
            "sample_weights": {"min": float(weights.min()), "max": float(weights.max())},
            "train_images": int(len(train.y)),
            "frozen_batchnorm_layers": frozen, "determinism": repro,
            "seconds": round(time.perf_counter() - t0, 1)}
