"""Field-by-field checks of a model card and typed views of its loose sections.

A card is read on a device from a file anyone may have edited: `"threshold": "high"` must be
one clear line, not a traceback, and `threshold: 5.0` or `temperature: 0` must be refused, not
turned into nonsense. `card_problems` lists one line per invalid field. The `dataset`,
`metrics` and `export` sections stay plain JSON objects in the file (old cards read as they
are, and newer keys, e.g. per-source metrics, pass through); `DatasetInfo`, `SplitMetrics`,
`ExportInfo` and `Validation` are the typed way to read them, with their defaults stated once.
Standard library only (plus the TF-free variant table).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edge_toolkit.quantize.variants import EXPORT_FAILED, FAILED_VALIDATION, VALIDATED, VARIANTS

# Variant names a card may carry: the export table's, the trained Keras model's, and the
# stand-in card the runtime builds for a model without one.
KNOWN_VARIANTS = ("keras", *VARIANTS, "no card")
STATUSES = (VALIDATED, FAILED_VALIDATION, EXPORT_FAILED)
DEFAULT_VAL_FRACTION = 0.15
DEFAULT_SEED = 0


def safe_repr(value: Any, limit: int = 40) -> str:
    """A short repr for messages: long values cut, so one bad field stays one line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A number a report can print: not a bool, not NaN or infinite (NumPy's too)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Checker:
    """Collects one line per problem, each naming the field."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, name: str, want: str, value: Any) -> None:
        self.problems.append(f"{name} must be {want}, not {safe_repr(value)}")

    def prob(self, name: str, value: Any, *, low_open: bool = True,
             high_open: bool = True, optional: bool = False) -> None:
        if optional and value is None:
            return
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        ok = is_number(value) and math.isfinite(value) and \
            (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
        if not ok:
            self.bad(name, f"a number in {lo}0, 1{hi}", value)

    def kind(self, name: str, value: Any, types: type | tuple[type, ...], want: str,
             optional: bool = False) -> bool:
        if (optional and value is None) or isinstance(value, types):
            return True
        self.bad(name, want, value)
        return False

    def score(self, name: str, value: Any) -> None:
        """A metric in [0, 1], or None / NaN (undefined, e.g. AUC on one class)."""
        if value is None or (is_number(value) and (math.isnan(value) or 0 <= value <= 1)):
            return
        self.bad(name, "a number in [0, 1] (or null)", value)


def card_problems(data: dict[str, Any]) -> list[str]:
    """Every problem in a card's JSON object, one line each (empty when it is valid)."""
    c = _Checker()
    c.kind("family", data.get("family"), str, "a string")
    if not is_int(data.get("input_size")) or not 8 <= data["input_size"] <= 4096:
        c.bad("input_size", "an integer from 8 to 4096", data.get("input_size"))
    if data.get("channels") not in (1, 3) or isinstance(data.get("channels"), bool):
        c.bad("channels", "1 or 3", data.get("channels"))
    if c.kind("preprocessing", data.get("preprocessing"), dict, "an object"):
        _preprocessing(c, data["preprocessing"])
    labels = data.get("labels", ["not fractured", "fractured"])
    positive = data.get("positive_label", "fractured")
    if not isinstance(labels, list) or len(labels) != 2 \
            or not all(isinstance(x, str) for x in labels) or labels[0] == labels[1]:
        c.bad("labels", "two distinct strings", labels)
    elif positive not in labels:
        c.bad("positive_label", f"one of the labels {labels}", positive)
    if data.get("output", "sigmoid") not in ("sigmoid", "softmax"):
        c.bad("output", "'sigmoid' or 'softmax'", data.get("output"))
    c.prob("threshold", data.get("threshold", 0.5))
    thresholds = data.get("thresholds", {})
    if c.kind("thresholds", thresholds, dict, "an object of name: threshold"):
        for name, value in thresholds.items():
            c.prob(f"thresholds.{name}", value)
    c.prob("target_sensitivity", data.get("target_sensitivity", 0.95), high_open=False)
    c.prob("min_specificity", data.get("min_specificity"), optional=True)
    temperature = data.get("temperature", 1.0)
    if not (is_number(temperature) and math.isfinite(temperature) and temperature > 0):
        c.bad("temperature", "a number > 0", temperature)
    if data.get("variant", "keras") not in KNOWN_VARIANTS:
        c.bad("variant", f"one of {', '.join(KNOWN_VARIANTS)}", data.get("variant"))
    c.kind("parent", data.get("parent"), str, "a string or null", optional=True)
    c.prob("sparsity", data.get("sparsity"), low_open=False, high_open=False, optional=True)
    c.kind("data_fingerprint", data.get("data_fingerprint"), str, "a string or null",
           optional=True)
    for name in ("model_config", "versions"):
        c.kind(name, data.get(name, {}), dict, "an object")
    for name in ("heatmap", "gate"):  # owned by their features; loosely checked here
        c.kind(name, data.get(name), dict, "an object or null", optional=True)
    c.kind("created", data.get("created"), str, "a string or null", optional=True)
    c.kind("notes", data.get("notes", ""), str, "a string")
    for name, section in (("dataset", DatasetInfo), ("export", ExportInfo)):
        if c.kind(name, data.get(name, {}), dict, "an object"):
            c.problems += [f"{name}.{p}" for p in section.problems(data.get(name, {}))]
    metrics = data.get("metrics", {})
    if c.kind("metrics", metrics, dict, "an object of split: metrics"):
        for split, m in metrics.items():
            if c.kind(f"metrics.{split}", m, dict, "an object"):
                c.problems += [f"metrics.{split}.{p}" for p in SplitMetrics.problems(m)]
    return c.problems


def _preprocessing(c: _Checker, pre: dict[str, Any]) -> None:
    from edge_toolkit.preprocess import _RESAMPLE, INTENSITY, VALUE_RANGES, PreprocessConfig

    choices = {"resize": tuple(_RESAMPLE), "fit": ("pad", "stretch"),
               "value_range": tuple(VALUE_RANGES), "intensity": INTENSITY}
    for name in sorted(set(pre) - set(PreprocessConfig.__dataclass_fields__)):
        # a step this version cannot apply would be skipped silently: train/serve skew
        c.bad(f"preprocessing.{name}", "a step this edge_toolkit knows (a newer version's "
              "model?)", pre[name])
    for name, allowed in choices.items():
        if name in pre and pre[name] not in allowed:
            c.bad(f"preprocessing.{name}", f"one of {', '.join(allowed)}", pre[name])
    if "size" in pre and (not is_int(pre["size"]) or not 8 <= pre["size"] <= 4096):
        c.bad("preprocessing.size", "an integer from 8 to 4096", pre["size"])
    if "channels" in pre and (pre["channels"] not in (1, 3) or isinstance(pre["channels"], bool)):
        c.bad("preprocessing.channels", "1 or 3", pre["channels"])
    if "max_pixels" in pre and (not is_int(pre["max_pixels"]) or pre["max_pixels"] < 1):
        c.bad("preprocessing.max_pixels", "a positive integer", pre["max_pixels"])


class _Section:
    """A typed view of one card section: known fields typed, the rest kept in `extra`."""

    @classmethod
    def problems(cls, data: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Any:
        data = dict(data or {})
        bad = cls.problems(data)
        if bad:
            raise ValueError("; ".join(bad))
        known = {f.name for f in fields(cls)} - {"extra"}  # type: ignore[arg-type]
        kwargs = {k: v for k, v in data.items() if k in known and v is not None}
        obj = cls(**kwargs)  # type: ignore[call-arg]
        obj.extra = {k: v for k, v in data.items() if k not in known}  # type: ignore[attr-defined]
        return obj

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)  # type: ignore[call-overload]
        extra = out.pop("extra", {})
        return {**out, **extra}


@dataclass
class DatasetInfo(_Section):
    """Which data a model was trained and judged on: its name and fingerprint, and how val
    was split off (so evaluation and export rebuild the same split)."""

    name: str | None = None
    root: str | None = None  # a machine's folder: a hint, not an identity
    fingerprint: str | None = None
    seed: int = DEFAULT_SEED
    val_fraction: float = DEFAULT_VAL_FRACTION
    carved_val: bool | None = None
    # how a carved val was grouped; cards from before content grouping carved by name
    val_grouping: str = "name"
    counts: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def problems(cls, data: dict[str, Any]) -> list[str]:
        c = _Checker()
        for name in ("name", "root", "fingerprint"):
            c.kind(name, data.get(name), str, "a string or null", optional=True)
        if "seed" in data and not is_int(data["seed"]):
            c.bad("seed", "an integer", data["seed"])
        vf = data.get("val_fraction", DEFAULT_VAL_FRACTION)
        if not (is_number(vf) and 0 <= vf < 1):
            c.bad("val_fraction", "a number in [0, 1)", vf)
        c.kind("carved_val", data.get("carved_val"), bool, "true, false or null", optional=True)
        from edge_toolkit.data import VAL_GROUPINGS

        if data.get("val_grouping") not in (None, *VAL_GROUPINGS):
            c.bad("val_grouping", f"one of {', '.join(VAL_GROUPINGS)}", data["val_grouping"])
        for name in ("counts", "skipped"):
            c.kind(name, data.get(name, {}), dict, "an object")
        c.kind("sources", data.get("sources"), list, "a list or null", optional=True)
        return c.problems


@dataclass
class SplitMetrics(_Section):
    """One split's scores; `sources` (per-source breakdowns, same shape) passes through."""

    n: int | None = None
    positives: int | None = None
    auc: float | None = None
    auc_ci95: list[float] | None = None
    ece: float | None = None
    operating_points: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def problems(cls, data: dict[str, Any]) -> list[str]:
        c = _Checker()
        for name in ("n", "positives"):
            if data.get(name) is not None and not (is_int(data[name]) and data[name] >= 0):
                c.bad(name, "a count (integer >= 0)", data[name])
        c.score("auc", data.get("auc"))
        c.kind("operating_points", data.get("operating_points", {}), dict, "an object")
        return c.problems


@dataclass
class Validation(_Section):
    """How an exported file compared with its float parent on val (`compare_to_parent`)."""

    status: str = VALIDATED
    reason: str | None = None
    split: str = "val"
    n: int = 0
    tolerance: float = 0.02
    auc: float = math.nan
    parent_auc: float = math.nan
    delta_auc: float = math.nan
    threshold: float = 0.5
    temperature: float = 1.0
    sensitivity: float = math.nan
    specificity: float = math.nan
    accuracy: float = math.nan
    confusion: dict[str, int] = field(default_factory=dict)
    agreement: float = math.nan
    mean_abs_diff: float = math.nan
    max_abs_diff: float = math.nan
    suggested_thresholds: dict[str, float] | None = None
    at_parent_threshold: dict[str, Any] | None = None
    # with several sources: each one's {auc, parent_auc, delta_auc}; each must hold too
    sources: dict[str, dict[str, float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == VALIDATED

    @classmethod
    def problems(cls, data: dict[str, Any]) -> list[str]:
        c = _Checker()
        if data.get("status") not in STATUSES:
            c.bad("status", f"one of {', '.join(STATUSES)}", data.get("status"))
        c.kind("reason", data.get("reason"), str, "a string or null", optional=True)
        for name in ("auc", "parent_auc", "agreement"):
            c.score(name, data.get(name))
        per_source = data.get("sources")
        if c.kind("sources", per_source, dict, "an object of source: scores, or null",
                  optional=True) and per_source:
            for src, scores in per_source.items():
                if c.kind(f"sources.{src}", scores, dict, "an object"):
                    for name in ("auc", "parent_auc"):
                        c.score(f"sources.{src}.{name}", scores.get(name))
        return c.problems


@dataclass
class ExportInfo(_Section):
    """What export did to make this file; `validation` is None for a card export never
    judged (a Keras run's card, or a file made by hand)."""

    variant: str | None = None
    weights: str | None = None
    full_integer: bool | None = None
    validation: Validation | None = None
    thresholds: str | None = None  # what export did with the thresholds, in words
    parent: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def problems(cls, data: dict[str, Any]) -> list[str]:
        c = _Checker()
        if data.get("variant") is not None and data["variant"] not in KNOWN_VARIANTS:
            c.bad("variant", f"one of {', '.join(KNOWN_VARIANTS)}", data["variant"])
        v = data.get("validation")
        if c.kind("validation", v, dict, "an object or null", optional=True) and v:
            c.problems += [f"validation.{p}" for p in Validation.problems(v)]
        c.kind("thresholds", data.get("thresholds"), str, "a string or null", optional=True)
        c.kind("parent", data.get("parent", {}), dict, "an object", optional=True)
        return c.problems

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ExportInfo:
        info = super().from_dict(data)
        if isinstance(info.validation, dict):
            info.validation = Validation.from_dict(info.validation) if info.validation else None
        return info
