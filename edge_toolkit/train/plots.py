"""PNG plots for a run folder: learning curves, ROC curves, confusion matrices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_toolkit.metrics import roc_auc, roc_curve


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(history: list[dict[str, Any]], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = list(range(1, len(history) + 1))
    for ax, key in zip(axes, ("loss", "auc")):
        for prefix, style in (("", "-"), ("val_", "--")):
            vals = [h.get(prefix + key, np.nan) for h in history]
            ax.plot(epochs, vals, style, label=(prefix or "train_") + key)
        phases = [i + 1 for i, h in enumerate(history) if h.get("phase_start")]
        for x in phases[1:]:
            ax.axvline(x - 0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def roc_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path,
             operating_point: dict[str, tuple[float, float]] | None = None) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    for split, (y, p) in curves.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{split} (AUC {roc_auc(y, p):.3f})")
    for split, (fpr, tpr) in (operating_point or {}).items():
        ax.plot([fpr], [tpr], "o", label=f"{split} at threshold")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion_plot(confusions: dict[str, dict[str, int]], labels: list[str], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(confusions), figsize=(4 * len(confusions), 3.6),
                             squeeze=False)
    for ax, (split, c) in zip(axes[0], confusions.items()):
        m = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        ax.imshow(m, cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center")
        ax.set_xticks([0, 1], [f"pred {labels[0]}", f"pred {labels[1]}"], fontsize=8)
        ax.set_yticks([0, 1], [labels[0], labels[1]], fontsize=8)
        ax.set_title(split)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
