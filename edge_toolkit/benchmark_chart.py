"""The benchmark's chart: AUC with its interval against file size, marker area by latency,
the Pareto front of the validated files, labels kept apart. Apart from the table code so that
matplotlib is met only here (a device install has none: `chart` says so and the table stands).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_toolkit.benchmark import shows_runs
from edge_toolkit.card_sections import is_finite_number
from edge_toolkit.files import atomic_write
from edge_toolkit.quantize.variants import NOT_VALIDATED, VALIDATED


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both size (smaller) and AUC (higher),
    in order of size: the files worth shipping."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _place_labels(ax: Any, xy: list[tuple[float, float]], texts: list[str]) -> None:
    """Put each label at the first of several offsets around its point where it overlaps no
    label already placed (greedy, in display space), so clustered variants stay readable."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    offsets = [(6, 6), (6, -14), (-6, 6), (-6, -14), (8, 18), (8, -26), (-8, 18), (-8, -26),
               (10, 30), (10, -38), (-10, 30), (-10, -38)]
    inside = ax.get_window_extent(renderer)
    placed: list[Any] = []
    for (x, y), text in zip(xy, texts):
        best: tuple[int, int, tuple[int, int]] | None = None  # (outside, overlaps, offset)
        for dx, dy in offsets:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                              fontsize=7, ha="left" if dx > 0 else "right")
            box = ann.get_window_extent(renderer).expanded(1.05, 1.1)
            ann.remove()
            outside = int(not (box.x0 >= inside.x0 and box.x1 <= inside.x1
                               and box.y0 >= inside.y0 and box.y1 <= inside.y1))
            score = (outside, sum(box.overlaps(b) for b in placed), (dx, dy))
            if best is None or score[:2] < best[:2]:
                best = score
            if score[:2] == (0, 0):
                break
        assert best is not None
        ann = ax.annotate(text, (x, y), xytext=best[2], textcoords="offset points",
                          fontsize=7, ha="left" if best[2][0] > 0 else "right",
                          arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5"})
        placed.append(ann.get_window_extent(renderer))


def chart_points(result: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The split to plot (test where some row has a defined test AUC, else val) and the rows
    with a defined AUC, a latency and a size: an undefined AUC (one class) has no place on
    an AUC axis."""
    t = str(result["threads"][0])

    def auc(r: dict[str, Any], split: str) -> Any:
        return (r["accuracy"].get(split) or {}).get("auc")

    split = "test" if any(is_finite_number(auc(r, "test")) for r in result["rows"]) else "val"
    return split, [r for r in result["rows"] if is_finite_number(auc(r, split))
                   and r["latency"].get(t) and r["size_bytes"]]


def chart(result: dict[str, Any], path: Path) -> str | None:
    """AUC (test where measured, else val) with its 95% interval against file size, marker
    area by p50 latency, the Pareto front of the validated files drawn (files that failed
    validation, and loose files never validated, hollow, each with its own legend entry),
    labels kept apart and inside the plot. None when drawn, else why not (nothing to plot,
    or no matplotlib: a device install); the file is written atomically."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ("matplotlib is not installed (pip install 'fracture-edge-toolkit[train]' "
                "for charts)")
    split, pts = chart_points(result)
    if not pts:
        return "no row has a defined AUC, a latency and a size"
    t = str(result["threads"][0])
    with_run = shows_runs(result)
    fig, ax = plt.subplots(figsize=(9, 6))
    try:
        xy, texts, shippable = _plot_families(ax, pts, split, t, with_run)
        _plot_front_and_baseline(ax, result, xy, shippable, split)
        ax.set_xscale("log")
        ax.set_xlabel("file size (KiB, log scale)")
        ax.set_ylabel(f"{split} AUC (95% CI)")
        ax.set_title(f"accuracy vs size; marker area = p50 latency @{t} thread(s)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        _place_labels(ax, xy, texts)
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)
    return None


def _plot_families(ax: Any, pts: list[dict[str, Any]], split: str, t: str, with_run: bool
                   ) -> tuple[list[tuple[float, float]], list[str], list[bool]]:
    """One marker per family; validated files filled, every other status hollow under its
    own legend entry. Returns each point, its label and whether it is validated."""
    xy, texts, shippable = [], [], []
    for fam, marker in zip(sorted({r["family"] for r in pts}), "os^Dv"):
        mine = [r for r in pts if r["family"] == fam]
        xs = np.array([r["size_bytes"] / 1024 for r in mine])
        ys = np.array([r["accuracy"][split]["auc"] for r in mine], dtype=float)
        ci = np.array([r["accuracy"][split]["auc_ci95"] for r in mine], dtype=float)
        lat = np.array([r["latency"][t]["p50_ms"] for r in mine])
        err = np.abs(np.vstack([ys - ci[:, 0], ci[:, 1] - ys]))
        ax.errorbar(xs, ys, yerr=np.nan_to_num(err), fmt="none", ecolor="0.6", lw=0.8,
                    capsize=2, zorder=1)
        status = np.array([r["status"] for r in mine])
        sizes = 40 + 300 * lat / max(float(lat.max()), 1e-9)
        ok = status == VALIDATED
        dot = ax.scatter(xs[ok], ys[ok], s=sizes[ok], marker=marker, alpha=0.7, label=fam,
                         zorder=2)
        edge = dot.get_facecolor()[0] if ok.any() else "0.3"
        for st in dict.fromkeys(status[~ok].tolist()):  # not shipped: hollow, off the front
            m = status == st
            ax.scatter(xs[m], ys[m], s=sizes[m], marker=marker, facecolors="none",
                       edgecolors=edge, linestyles="--" if st == NOT_VALIDATED else "-",
                       zorder=2, label=f"{fam}, {st.replace('-', ' ')}")
        for r, x, y, ms, good in zip(mine, xs, ys, lat, ok):
            xy.append((float(x), float(y)))
            shippable.append(bool(good))
            who = f"{r.get('run')}: " if with_run and r.get("run") else ""
            texts.append(f"{who}{fam} {r['variant']} ({ms:.1f} ms)")
    return xy, texts, shippable


def _plot_front_and_baseline(ax: Any, result: dict[str, Any], xy: list[tuple[float, float]],
                             shippable: list[bool], split: str) -> None:
    """The Pareto front of the validated files, and the global-cue baseline where the
    table has a single source (with several, each source's is its own; see the text)."""
    valid = [i for i, good in enumerate(shippable) if good]
    if valid:
        front = [valid[i] for i in pareto_front([xy[i] for i in valid])]
        ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "k--", lw=0.8,
                label="Pareto front (validated files)", zorder=0)
    bases = result.get("baselines") or []
    base = bases[0]["splits"].get(split) if len(bases) == 1 else None
    if base and is_finite_number(base.get("auc")):
        ax.axhline(base["auc"], color="grey", ls=":",
                   label=f"global-cue baseline ({bases[0]['source']}, {split})")
