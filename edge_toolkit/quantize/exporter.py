"""Turn a trained run folder into every deployable `.tflite` variant, validate each, report.

    from edge_toolkit.quantize.exporter import ExportConfig, export_run
    report = export_run("runs/scratch", ExportConfig(variants="float32,int8-qat"))
    print(report.markdown())

For each variant in the table (`variants.py`, in table order): build the Keras model to convert
(the trained model itself, or a QAT / pruned / prune-preserving-QAT fine-tuned copy), convert,
run the flatbuffer through the TF-free interpreter on the validation split, measure sparsity
in the file's weights, embed the model card, write `<family>-<variant>.tflite`, read it back.
A variant whose val AUC is more than `tolerance` below the Keras float parent's is written to
`failed/` (not beside the shipped files) with status failed-validation; a variant that raises
is export-failed with a one-line reason, and the others go on. `report.json` and `report.md`
hold the table; an export into a folder that already holds one merges into it (rows of the
variants exported again are replaced, the others kept while their files are there and come
from the same trained model). Each file is written beside its final name and renamed into
place, so an earlier file survives until its replacement is complete (Ctrl-C included).
Quantization and fine-tuning shift a model's outputs, so each variant's temperature and
thresholds are chosen again on val (never test), as training does; the parent's stay in the
card under export.parent.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import traceback
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_toolkit.card import CardError, ModelCard, Validation, embed_card, jsonable, read_card
from edge_toolkit.card_sections import is_number, safe_repr
from edge_toolkit.data import DatasetError, LoadedSplit, load_samples
from edge_toolkit.files import (
    OutputPathError,
    atomic_write,
    is_lfs_pointer,
    prepare_output,
    shown,
)
from edge_toolkit.lazy import resolve
from edge_toolkit.metrics import apply_temperature, roc_auc
from edge_toolkit.quantize.inspect import gzip_size, sparsity, weight_tensors
from edge_toolkit.quantize.representative import DEFAULT_IMAGES, representative_images
from edge_toolkit.quantize.validate import compare_to_parent
from edge_toolkit.quantize.variants import (
    EXPORT_FAILED,
    FAILED_VALIDATION,
    VALIDATED,
    VARIANTS,
    Variant,
    parse_variants,
)
from edge_toolkit.runtime.classifier import Classifier
from edge_toolkit.runtime.interpreter import default_threads

FAILED_DIR = "failed"
PRUNE_LR_FACTOR = 0.3
CARD_FORMAT = ("ZIP archive appended after the TFLite flatbuffer, one member "
               "edge_toolkit_card.json (edge_toolkit.card.embed_card / read_card)")
THRESHOLD_NOTE = ("threshold(s) and temperature re-chosen on val for this file, as training "
                  "chose the parent's (quantization and fine-tuning shift outputs); the "
                  "parent's are under export.parent; metrics are this file's at its own")


class ExportError(RuntimeError):
    """The run cannot be exported at all (no model, no card, no data): message says why."""


class ExportInterrupted(KeyboardInterrupt):
    """Ctrl-C during the variants: `report` (already written) lists every variant that
    finished; the one being exported kept its earlier file, if it had one."""

    def __init__(self, report: Path, finished: list[str], stopped: str | None) -> None:
        super().__init__(stopped or "")
        self.report, self.finished, self.stopped = report, finished, stopped

    def line(self) -> str:
        """What the command prints: where it stopped and what finished."""
        done = (f"finished {', '.join(self.finished)} (in {shown(self.report)})"
                if self.finished else "no variant finished")
        if self.stopped is None:
            return f"interrupted while writing the report: {done}"
        return (f"interrupted while exporting {self.stopped}: {done}; {self.stopped}'s "
                "earlier file, if any, is kept")


@dataclass
class ExportConfig:
    """Everything `edge-toolkit export` can set; None means: take it from the run."""

    # None: every variant but the mirror-averaged (-flip) ones (twice the latency);
    # "all": every one
    variants: str | list[str] | None = None
    out: str | None = None  # default RUN/export
    sparsity: float = 0.5
    qat_epochs: int = 3
    qat_lr: float = 1e-5
    prune_epochs: int = 4
    prune_lr: float | None = None  # default: PRUNE_LR_FACTOR x the run's last learning rate
    prune_depthwise: bool = False
    freeze_bn: bool | None = None  # BatchNorm frozen while fine-tuning; None: as in training
    qat_depthwise_per_channel: bool = True  # see quantize/qat.py; False = stock tfmot
    calibration_images: int = DEFAULT_IMAGES
    tolerance: float = 0.02
    # sensitivity each file's threshold is chosen for on val (None: the run's own target)
    target_sensitivity: float | None = None
    # specificity floor of the threshold rule (None: the run's own, see TrainConfig; 0: none,
    # the plain target-sensitivity threshold even for a run trained with a floor)
    min_specificity: float | None = None
    input_type: str = "uint8"
    output_type: str = "float32"
    data: str | list[str] | None = None  # default: the dataset folder(s) in the run's card
    batch_size: int | None = None  # fine-tuning batch size (default: the run's)
    seed: int | None = None  # default: the run's
    bootstrap: int = 1000  # AUC interval resamples in each card's metrics
    threads: int | None = None  # interpreter threads for validation

    def check(self) -> None:
        if self.input_type not in ("uint8", "int8"):
            raise ValueError(f"input type must be uint8 or int8, not {self.input_type!r}")
        if self.output_type not in ("float32", "uint8", "int8"):
            raise ValueError(f"output type must be float32, uint8 or int8, not "
                             f"{self.output_type!r}")
        if not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"sparsity must be between 0 and 1, not {self.sparsity}")
        if self.calibration_images < 1:
            raise ValueError("calibration images must be at least 1")
        if self.min_specificity:  # 0 and None switch the floor off / defer to the run
            from edge_toolkit.metrics import check_floors

            check_floors(self.target_sensitivity or 0.5, self.min_specificity)
        for name in ("qat_epochs", "prune_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1")
        # a negative tolerance stays possible here (it forces failed-validation in tests);
        # NaN or infinity would fail or pass every file without measuring anything
        if not (is_number(self.tolerance) and math.isfinite(self.tolerance)):
            raise ValueError(f"tolerance must be a finite number, not {self.tolerance!r}")
        if self.bootstrap < 0:
            raise ValueError(f"bootstrap must be 0 (no interval) or more, not {self.bootstrap}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, not {self.batch_size}")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"seed must be 0 or more, not {self.seed}")


@dataclass
class VariantResult:
    """One row of the report."""

    variant: str
    status: str
    reason: str | None = None
    file: str | None = None  # relative to the export folder
    size_bytes: int | None = None
    gzip_bytes: int | None = None
    sparsity: float | None = None
    val_auc: float | None = None
    delta_auc: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    agreement: float | None = None
    mean_abs_diff: float | None = None
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    seconds: float | None = None
    traceback: str | None = None
    exported: str | None = None  # when this row's export finished (rows can be kept)


@dataclass
class ExportReport:
    run: str
    out: str
    family: str
    parent: dict[str, Any]
    config: dict[str, Any]
    results: list[VariantResult] = field(default_factory=list)
    seconds: float = 0.0
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    # rows carried over from an earlier export into this folder (same trained model)
    kept: list[str] = field(default_factory=list)

    def result(self, variant: str) -> VariantResult:
        return next(r for r in self.results if r.variant == variant)

    @property
    def ok(self) -> bool:
        return all(r.status == VALIDATED for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        return report_markdown(self)

    def write(self, folder: str | Path | None = None) -> tuple[Path, Path]:
        """Both files, each renamed into place whole (a Ctrl-C never leaves half a report)."""
        folder = Path(folder or self.out)
        js, md = folder / "report.json", folder / "report.md"
        atomic_write(js, (json.dumps(self.to_dict(), indent=2, default=jsonable)
                          + "\n").encode())
        atomic_write(md, (self.markdown() + "\n").encode())
        return js, md


class ExportContext:
    """What the variant builders share: the run's card, model, data and caches (lazy)."""

    def __init__(self, run_dir: str | Path, cfg: ExportConfig, log: Any = print) -> None:
        self.run = Path(run_dir)
        self.card_path, model_path = self.run / "card.json", self.run / "model.keras"
        if not self.card_path.is_file() or not model_path.is_file():
            raise ExportError(f"{self.run}: not a run folder (needs model.keras and card.json)")
        self.card = _load_run_card(self.card_path)
        self.cfg, self.log = cfg, log
        training = self.card.export.get("training") or {}
        if not isinstance(training, dict):
            raise ExportError(f"{shown(self.card_path)}: export.training is "
                              f"{safe_repr(training)}, not an object")
        self.training: dict[str, Any] = dict(training)
        self.preprocess = self.card.preprocess_config
        seed = cfg.seed if cfg.seed is not None else self.card.dataset.get(
            "seed", self._training_value("seed", 0, self.card.dataset_info.seed))
        self.seed = int(seed)
        self.batch_size = int(cfg.batch_size or self._training_value("batch_size", 1, 32))
        self.prune_lr, self.freeze_bn = self._fine_tune_defaults()
        self.cache: dict[str, Any] = {}
        self._model: Any = None
        self._dataset: Any = None
        self._splits: dict[str, LoadedSplit] = {}
        self._rep: np.ndarray | None = None
        self._parent_probs: np.ndarray | None = None

    def _training_value(self, key: str, least: float, default: Any,
                        whole: bool = True) -> Any:
        """A number from the card's export.training, checked: a hand-edited card names its
        file and field rather than failing inside int() or float()."""
        value = self.training.get(key)
        if value is None:
            return default
        ok = is_number(value) and math.isfinite(value) and value >= least
        if not ok or (whole and not float(value).is_integer()):
            what = f"a {'whole ' if whole else ''}number of {least:g} or more"
            raise ExportError(f"{shown(self.card_path)}: export.training.{key} is "
                              f"{safe_repr(value)}, not {what}")
        return int(value) if whole else float(value)

    def _fine_tune_defaults(self) -> tuple[float, bool]:
        """Pruning LR and BatchNorm handling, as the run was trained: transfer families
        (MobileNetV2) were fine-tuned with BN frozen at `fine_tune_lr`; the others trained BN
        at `learning_rate`. Pruning defaults to PRUNE_LR_FACTOR x that phase's peak rate (1e-4
        overfit MobileNetV2 in 4 epochs; 3e-5 left a pruned scratch CNN unrecovered); with
        `--fine-tune-schedule cosine` the run ended near 0, but pruning must recover from the
        weights it removes, so it starts from the same peak-based rate either way."""
        from edge_toolkit.families import get_family

        try:
            transfer = get_family(self.card.family).has_backbone
        except ValueError:
            transfer = True
        number = self._training_value
        if transfer and number("fine_tune_epochs", 0, 1) > 0:
            last_lr = number("fine_tune_lr", 0, 0, whole=False) or 1e-4
        else:
            last_lr = number("learning_rate", 0, 0, whole=False) or 1e-3
        prune_lr = PRUNE_LR_FACTOR * last_lr if self.cfg.prune_lr is None else self.cfg.prune_lr
        freeze = self.cfg.freeze_bn if self.cfg.freeze_bn is not None else transfer
        return float(prune_lr), bool(freeze)

    @property
    def augment(self) -> Any:
        from edge_toolkit.quantize.finetune import augment_config

        return augment_config(self.training)

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = _load_model(self.run / "model.keras")
        return self._model

    @property
    def model_sha256(self) -> str:
        """What ties a report's rows to this trained model (its exact bytes)."""
        if "model_sha256" not in self.cache:
            digest = hashlib.sha256((self.run / "model.keras").read_bytes()).hexdigest()
            self.cache["model_sha256"] = f"sha256:{digest}"
        return self.cache["model_sha256"]

    @property
    def dataset(self) -> Any:
        if self._dataset is None:
            from edge_toolkit.multisource import dataset_for_card

            data = [self.cfg.data] if isinstance(self.cfg.data, str) else self.cfg.data
            for folder in data or []:
                if not Path(folder).is_dir():
                    raise ExportError(f"{shown(folder)}: no such dataset folder (--data)")
            try:
                ds = dataset_for_card(self.card.dataset, data)
            except DatasetError as exc:
                raise ExportError(str(exc)) from None
            self._check_val(ds)
            fp = self.card.data_fingerprint
            if fp and ds.fingerprint() != fp:
                self.log(f"WARNING: {', '.join(ds.source_names)} differs from the run's "
                         f"training data (fingerprint {ds.fingerprint()} vs {fp}); "
                         "validation numbers are on this data")
            self._dataset = ds
        return self._dataset

    def _check_val(self, ds: Any) -> None:
        """Export validates every file and chooses its thresholds on the run's own val
        images. A val split carved from train where training had a val/ folder (a copy
        without it), or the other way round, would put other images, some perhaps trained
        on, in their place while the cards still describe the run's: refused."""
        trained = self.card.dataset_info.carved_val
        if trained is None or bool(trained) == bool(ds.carved_val):
            return
        folders = ", ".join(shown(p) for p in ds.sources.values()) or shown(ds.root)
        if ds.carved_val:
            raise ExportError(
                f"{folders}: no val/ folder, but the run was validated on one; export "
                "validates each file and chooses its thresholds on the run's val images, and "
                "images carved from train cannot stand in: pass --data the dataset with its "
                "val/ folder")
        raise ExportError(
            f"{folders}: has a val/ folder, but the run carved its val split from train "
            f"({shown(self.card_path)}: carved_val true); those images may have been trained "
            "on: pass --data the dataset as it was trained (without val/)")

    def split(self, name: str) -> LoadedSplit:
        if name not in self._splits:
            t = time.perf_counter()
            loaded = load_samples(self.dataset.split(name), self.preprocess)
            from edge_toolkit.multisource import groups_of

            loaded.groups = groups_of(self.dataset, loaded.paths)  # family-weighted scores
            loaded.clusters = groups_of(self.dataset, loaded.paths, clusters=True)
            for path, reason in loaded.skipped:
                self.log(f"skipped {path}: {reason}")
            if len(loaded.y) == 0:
                raise ExportError(f"{', '.join(self.dataset.source_names)}: no readable "
                                  f"{name} images")
            self.log(f"{name}: {len(loaded.y)} images ({int(loaded.y.sum())} "
                     f"{self.card.positive_label}), {time.perf_counter() - t:.1f}s")
            self._splits[name] = loaded
        return self._splits[name]

    @property
    def train(self) -> LoadedSplit:
        return self.split("train")

    @property
    def val(self) -> LoadedSplit:
        return self.split("val")

    @property
    def test(self) -> LoadedSplit | None:
        """The test split, only ever reported (None when the dataset has none)."""
        return self.split("test") if "test" in self.dataset.splits else None

    @property
    def representative(self) -> np.ndarray:
        if self._rep is None:
            self._rep = representative_images(self.train.x, self.cfg.calibration_images,
                                              self.seed, warn=lambda m: self.log(f"WARNING: {m}"))
        return self._rep

    @property
    def parent_probs(self) -> np.ndarray:
        """The Keras float model's raw outputs on val: the reference for every variant."""
        if self._parent_probs is None:
            p = self.model.predict(self.val.x, batch_size=64, verbose=0).reshape(-1)
            self._parent_probs = p.astype(np.float64)
        return self._parent_probs


def _load_run_card(path: Path) -> ModelCard:
    """The run's card.json; one line naming the file when it cannot be used."""
    try:
        return ModelCard.load(path)
    except CardError as exc:
        raise ExportError(f"{shown(path)}: {exc}") from None
    except OSError as exc:
        raise ExportError(f"{shown(path)}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:  # not UTF-8 text
        raise ExportError(f"{shown(path)}: not a model card ({_one_line(exc)})") from None


def _load_model(path: Path) -> Any:
    """The run's Keras model; one line naming the file when it is damaged, empty or a Git
    LFS pointer (Keras' own error is an h5py traceback)."""
    from edge_toolkit.train.tfsetup import keras

    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise ExportError(f"{shown(path)}: cannot read ({exc.strerror or exc})") from None
    if not head:
        raise ExportError(f"{shown(path)}: an empty file, not a model; restore it or train the "
                          "run again")
    if is_lfs_pointer(head):
        raise ExportError(f"{shown(path)}: a Git LFS pointer, not the model (run `git lfs "
                          "pull`, or copy the real file)")
    try:
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise ExportError(f"{shown(path)}: damaged, not a Keras model that loads "
                          f"({_one_line(exc)}); restore it or train the run again") from None


def check_out(out: Path) -> None:
    """Refuse, before any work and without creating anything, an output folder that cannot
    be one: a file at its place or in its way, or no write access where it would go."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{shown(out)}: a file, not a folder; choose another --out")
    have = next((p for p in (out, *out.parents) if p.exists()), None)
    if have is not None and not have.is_dir():
        raise ExportError(f"{shown(out)}: the file {shown(have)} is in the way of this "
                          "folder; choose another --out")
    if have is not None and not os.access(have, os.W_OK | os.X_OK):
        raise ExportError(f"{shown(out)}: cannot be written ({shown(have)}: permission "
                          "denied); choose another --out")


def _make_out(out: Path) -> None:
    """Create the output folder (once the model has loaded) and probe that it takes files."""
    try:
        prepare_output(out, folder=True)
    except OutputPathError as exc:
        raise ExportError(f"{exc}; choose another --out") from None


def _result_from(row: Any) -> VariantResult:
    """A report.json row back as a VariantResult (keys it does not know are ignored)."""
    if not isinstance(row, dict) or not isinstance(row.get("variant"), str):
        raise ValueError(f"a row is {safe_repr(row)}")
    known = VariantResult.__dataclass_fields__
    kept = {k: v for k, v in row.items() if k in known}
    for key, value in kept.items():  # what the table prints must be what it can print
        want = ROW_TYPES.get(key)
        if value is not None and want is not None and (
                not isinstance(value, want) or isinstance(value, bool)):
            raise ValueError(f"row {row['variant']}: {key} is {safe_repr(value)}")
    return VariantResult(**kept)


ROW_TYPES: dict[str, Any] = {
    "status": str, "reason": str, "file": str, "size_bytes": int, "gzip_bytes": int,
    "sparsity": (int, float), "val_auc": (int, float), "delta_auc": (int, float),
    "sensitivity": (int, float), "specificity": (int, float), "agreement": (int, float),
    "mean_abs_diff": (int, float), "input": dict, "output": dict, "seconds": (int, float),
    "traceback": str, "exported": str}


def _not_this_model(ctx: ExportContext, parent: dict[str, Any], row: VariantResult,
                    out: Path) -> str | None:
    """Why an earlier report's row cannot stand beside this export's (None: it can): it
    must name a known variant, come from this very model and card (model bytes where the
    report recorded them, the card's data, threshold and temperature), and its file must
    still be there and carry a card that says the same."""
    card = ctx.card
    if row.variant not in VARIANTS:
        return "not a known variant"
    sha = parent.get("model_sha256")
    if sha is not None and sha != ctx.model_sha256:
        return "exported from another model.keras"
    same = {"data_fingerprint": card.data_fingerprint, "threshold": card.threshold,
            "temperature": card.temperature}
    if any(parent.get(k) != v for k, v in same.items()):
        return "exported when the run's card said otherwise"
    if not row.file:
        return None if sha is not None else "no file, and no record of the model it came from"
    path = out / row.file
    if not path.is_file():
        return f"its file {shown(path)} is gone"
    try:
        file_card = read_card(path)
    except (OSError, CardError, ValueError):
        file_card = None
    made = (file_card.export.get("parent") or {}) if file_card is not None else {}
    if (file_card is None or file_card.variant != row.variant
            or made.get("created") != card.created
            or any(made.get(k) != v for k, v in same.items())):
        return f"its file {shown(path)} is not this run's {row.variant} export"
    return None


def earlier_rows(ctx: ExportContext, out: Path, log: Any) -> dict[str, VariantResult]:
    """The rows of an earlier export into `out` that still hold for this run; a line for
    each one dropped (its file, if any, stays on disk)."""
    path = out / "report.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        parent = data["parent"]
        rows = [_result_from(r) for r in data["results"]]
        if not isinstance(parent, dict):
            raise TypeError("no parent record")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log(f"WARNING: {shown(path)}: not a readable export report ({_one_line(exc)}); it "
            "is replaced, the files beside it stay")
        return {}
    kept: dict[str, VariantResult] = {}
    for row in rows:
        why = _not_this_model(ctx, parent, row, out)
        if why:
            log(f"{shown(path)}: earlier row {row.variant} not kept: {why}")
        else:
            kept[row.variant] = row
    return kept


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from edge_toolkit.train.tfsetup import versions

    out = versions()
    for pkg in ("ai-edge-litert", "tensorflow-model-optimization"):
        try:
            out[pkg.replace("-", "_")] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")[:300]


def operating_points(ctx: ExportContext, p: np.ndarray, check: Validation
                     ) -> dict[str, Any]:
    """Temperature and thresholds for this file, chosen on val like the trainer does, and the
    check's sensitivity, specificity and agreement restated at them (as the file will run)."""
    from edge_toolkit.metrics import at_threshold
    from edge_toolkit.train.calibrate import choose_operating_points

    y = ctx.val.y
    target = ctx.cfg.target_sensitivity or ctx.card.target_sensitivity
    floor = (ctx.card.min_specificity if ctx.cfg.min_specificity is None
             else ctx.cfg.min_specificity or None)
    ops = choose_operating_points(y, p, target, ctx.val.sources, floor)
    q = apply_temperature(p, ops["temperature"])
    q_parent = apply_temperature(ctx.parent_probs, ctx.card.temperature)
    op = at_threshold(y, q, ops["threshold"])
    check.at_parent_threshold = {k: getattr(check, k) for k in (
        "threshold", "temperature", "sensitivity", "specificity", "agreement")}
    check.threshold, check.temperature = ops["threshold"], ops["temperature"]
    check.sensitivity, check.specificity = op["sensitivity"], op["specificity"]
    check.accuracy, check.confusion = op["accuracy"], op["confusion"]
    check.agreement = float(np.mean((q >= ops["threshold"]) == (q_parent >= ctx.card.threshold)))
    return ops


def variant_card(ctx: ExportContext, variant: Variant, p: np.ndarray, check: Validation,
                 file_sparsity: float, settings: dict[str, Any], info: dict[str, Any],
                 io: dict[str, Any], versions: dict[str, str], ops: dict[str, Any],
                 p_test: np.ndarray | None = None) -> ModelCard:
    """The parent's card, re-stamped for this file: variant, parent, measured sparsity,
    export settings, its own operating points, validation, and this file's metrics on val
    (and test, reported only), pooled and per source. The card names its datasets and their
    fingerprints, never the folders of the machine that trained it."""
    from edge_toolkit.train.calibrate import report_splits

    parent = ctx.card
    card = ModelCard.from_dict(json.loads(parent.to_json()))
    card.temperature, card.threshold = ops["temperature"], ops["threshold"]
    card.thresholds = ops["thresholds"]
    card.target_sensitivity = ops["target_sensitivity"]
    card.min_specificity = ops.get("min_specificity")
    val, test = ctx.val, ctx.test
    probs = {"val": (val.y, p)}
    sources = {"val": val.sources}
    if test is not None and p_test is not None:
        probs["test"], sources["test"] = (test.y, p_test), test.sources
    families = {"val": val.groups} | ({"test": test.groups} if "test" in probs else {})
    clusters = {"val": val.clusters} | ({"test": test.clusters} if "test" in probs else {})
    metrics = report_splits(probs, card.temperature, card.thresholds, ctx.cfg.bootstrap,
                            sources, families, clusters)
    parent_val = (parent.metrics.get("val") or {}).get("auc")
    card.variant = variant.name
    card.parent = ctx.run.name
    card.sparsity = round(float(file_sparsity), 6)
    card.metrics = metrics
    # a file travels: it names its data (name, fingerprint, split recipe), not this
    # machine's folders (the run's own card.json keeps the root, for later commands here)
    card.dataset = {k: v for k, v in parent.dataset.items() if k not in ("root", "roots")}
    card.dataset.setdefault("name", Path(str(parent.dataset.get("root", ""))).name or None)
    if card.model_config.get("weights"):  # the weights file by name, not by folder
        card.model_config["weights"] = Path(str(card.model_config["weights"])).name
    card.export = {
        "variant": variant.name, "description": variant.description,
        "weights": variant.weights, "full_integer": variant.full_integer,
        "converter": settings, **io,
        "representative_images": settings.get("representative_images", 0),
        "calibration_seed": ctx.seed if variant.needs_representative_data else None,
        "fine_tune": info,
        "validation": check.to_dict(),
        "thresholds": THRESHOLD_NOTE,
        "parent": {"run": ctx.run.name,
                   "variant": parent.variant, "data_fingerprint": parent.data_fingerprint,
                   "created": parent.created, "card_val_auc": parent_val,
                   "threshold": parent.threshold, "thresholds": parent.thresholds,
                   "temperature": parent.temperature},
        "training": _without_folders(parent.export.get("training")),
        "card_format": CARD_FORMAT,
    }
    card.versions = versions
    card.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return card


def _without_folders(training: dict[str, Any] | None) -> dict[str, Any] | None:
    """The training settings with the weights file named, not its folder on this machine."""
    if not training or not (training.get("model") or {}).get("weights"):
        return training
    model = dict(training["model"], weights=Path(str(training["model"]["weights"])).name)
    return {**training, "model": model}


def _file_for(out: Path, family: str, variant: Variant, status: str) -> Path:
    folder = out if status == VALIDATED else out / FAILED_DIR
    return folder / variant.file_name(family)


def _remove_stale(out: Path, family: str, variant: Variant, keep: Path | None = None
                  ) -> None:
    """Remove the variant's files of either status folder but `keep` (the one just written):
    only ever after its new file is in place, or after its export failed."""
    for status in (VALIDATED, FAILED_VALIDATION):
        path = _file_for(out, family, variant, status)
        if path != keep:
            path.unlink(missing_ok=True)


READ_BACK_IMAGES = 32  # val images re-run through the written file


def read_back(path: Path, card: ModelCard, x: np.ndarray, p: np.ndarray,
              threads: int | None, name: Path | None = None) -> None:
    """Reload the written file as the device will (`Classifier.load`) and check that its
    card and its outputs are the ones validated; ExportError otherwise. `name`: the file's
    final name, for messages, when `path` is its temporary one."""
    from edge_toolkit.runtime.classifier import ModelError

    name = name or path
    try:
        back = Classifier.load(path, num_threads=threads)
    except ModelError as exc:
        raise ExportError(f"the written file does not load: {exc}") from None
    if back.card.to_json() != card.to_json():
        raise ExportError(f"{name}: the card did not read back intact")
    n = min(len(x), READ_BACK_IMAGES)
    again = back.predict_raw_batch(x[:n])
    if not np.allclose(again, p[:n], rtol=0, atol=1e-6):
        worst = float(np.max(np.abs(again - p[:n])))
        raise ExportError(f"{name}: read back, it predicts differently from what was "
                          f"validated (max difference {worst:.2g})")


def export_variant(ctx: ExportContext, variant: Variant, out: Path,
                   versions: dict[str, str]) -> VariantResult:
    """Build, convert, validate, card, write and read back one variant; never raises but
    KeyboardInterrupt. The earlier file of the variant stays until the new one, written
    and read back under a temporary name, is renamed over it; after a failure the caller
    decides what happens to it (`export_run`)."""
    from edge_toolkit.quantize.convert import (
        heatmap_section,
        mirror_averaged,
        to_tflite,
        with_feature_output,
    )

    t0 = time.perf_counter()
    cfg, family = ctx.cfg, ctx.card.family
    ctx.log(f"--- {variant.name}: {variant.description}")
    try:
        model, info = resolve(variant.builder)(ctx)
        # the last feature map as a second output (heatmaps, input gate), from the model as
        # trained or fine-tuned; validation below still compares probabilities only
        heatmap = heatmap_section(model)
        model = with_feature_output(model)
        if variant.mirror_average:
            model = mirror_averaged(model)
        rep = ctx.representative if variant.needs_representative_data else None
        bare, settings = to_tflite(model, variant, rep, cfg.input_type, cfg.output_type)
        # the device's own path: the runtime Classifier, fed the card about to be embedded
        clf = Classifier.from_bytes(bare, ctx.card, name=f"{variant.name} (converted)",
                                    num_threads=cfg.threads)
        if clf.has_features and (heatmap is None
                                 or list(clf.feature_shape or ()) != heatmap["feature_shape"]):
            raise ExportError(f"feature output {clf.feature_shape} does not match the head")
        p = clf.predict_raw_batch(ctx.val.x)
        p_test = clf.predict_raw_batch(ctx.test.x) if ctx.test is not None else None
        check = compare_to_parent(ctx.val.y, p, ctx.parent_probs, ctx.card, cfg.tolerance,
                                  ctx.val.sources)
        file_sparsity = sparsity(bare, weight_tensors(bare))
        io = clf.tensor_io()
        ops = operating_points(ctx, p, check)
        if "floor_margin" in ops:  # as training says it: how far the threshold clears
            from edge_toolkit.train.calibrate import floor_line

            ctx.log(f"{variant.name}: {floor_line(ops)}")
        card = variant_card(ctx, variant, p, check, file_sparsity, settings, info, io, versions,
                            ops, p_test)
        card.heatmap = heatmap if clf.has_features else None
        members: dict[str, bytes] = {}
        if clf.has_features:  # the input gate's out-of-distribution fit, on this very file
            from edge_toolkit.quantize.gate_fit import fit_gate

            card.gate, members = fit_gate(clf, ctx.train.x, ctx.val.x,
                                          train_files=ctx.train.paths,
                                          val_files=ctx.val.paths)
        data = embed_card(bare, card, members)
        path = _file_for(out, family, variant, check.status)
        path.parent.mkdir(parents=True, exist_ok=True)
        # read back under its temporary name: a file that fails leaves the earlier one
        atomic_write(path, data, verify=lambda tmp: read_back(tmp, card, ctx.val.x, p,
                                                              cfg.threads, name=path))
        _remove_stale(out, family, variant, keep=path)  # the other status folder's
        result = VariantResult(
            variant=variant.name, status=check.status, reason=check.reason,
            file=str(path.relative_to(out)), size_bytes=len(data), gzip_bytes=gzip_size(data),
            sparsity=file_sparsity, val_auc=check.auc, delta_auc=check.delta_auc,
            sensitivity=check.sensitivity, specificity=check.specificity,
            agreement=check.agreement, mean_abs_diff=check.mean_abs_diff,
            input=io["input"], output=io["output"])
        ctx.log(f"{variant.name}: {result.status}, {len(data):,} bytes (gzip "
                f"{result.gzip_bytes:,}), sparsity {file_sparsity:.1%}, val AUC "
                f"{check.auc:.4f} ({check.delta_auc:+.4f}), agreement "
                f"{check.agreement:.1%} -> {path}")
        if check.reason:
            ctx.log(f"WARNING: {variant.name} failed validation: {check.reason}")
    except Exception as exc:  # one variant failing must not stop the others
        result = VariantResult(variant=variant.name, status=EXPORT_FAILED,
                               reason=_one_line(exc), traceback=traceback.format_exc())
        ctx.log(f"ERROR: {variant.name} export failed: {result.reason}")
    result.seconds = round(time.perf_counter() - t0, 1)
    result.exported = _now()
    return result


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def export_run(run_dir: str | Path, cfg: ExportConfig | None = None, log: Any = print
               ) -> ExportReport:
    """Export every requested variant of a run folder; write and return the report.

    Everything that can be refused is, before any variant and before the output folder is
    made: settings, the card, --out, the dataset (its val split), the model. The report
    merges with an earlier one in the folder (`earlier_rows`) and is rewritten after each
    variant; Ctrl-C raises ExportInterrupted once it lists what finished."""
    t0 = time.perf_counter()
    cfg = cfg or ExportConfig()
    cfg.check()
    variants = parse_variants(cfg.variants)
    ctx = ExportContext(run_dir, cfg, log)
    out = Path(cfg.out) if cfg.out else ctx.run / "export"
    check_out(out)
    ctx.dataset  # noqa: B018 - the folders and their val split, checked before the model loads
    ctx.model  # noqa: B018 - a damaged model.keras is one line, before export/ exists
    if cfg.threads is None:
        cfg.threads = default_threads()
    val = ctx.val
    if len(set(val.y.tolist())) < 2:
        raise ExportError("the validation split needs images of both classes")
    p_parent = ctx.parent_probs
    parent_auc = roc_auc(val.y, apply_temperature(p_parent, ctx.card.temperature))
    log(f"parent {ctx.run.name} ({ctx.card.family}): Keras float val AUC {parent_auc:.4f} on "
        f"{len(val.y)} images; threshold {ctx.card.threshold:.4f}, temperature "
        f"{ctx.card.temperature:.3f}; fine-tuning batch {ctx.batch_size}, pruning LR "
        f"{ctx.prune_lr:g}, BatchNorm {'frozen' if ctx.freeze_bn else 'trained'}")
    _make_out(out)
    versions = _versions()
    report = ExportReport(
        run=str(ctx.run), out=str(out), family=ctx.card.family,
        parent={"run": ctx.run.name, "val_auc": parent_auc, "val_n": int(len(val.y)),
                "threshold": ctx.card.threshold, "temperature": ctx.card.temperature,
                "data_fingerprint": ctx.card.data_fingerprint,
                "card_created": ctx.card.created, "model_sha256": ctx.model_sha256,
                "keras_bytes": (ctx.run / "model.keras").stat().st_size,
                "params": int(ctx.model.count_params())},
        config=asdict(cfg) | {"variants": [v.name for v in variants],
                              "batch_size": ctx.batch_size, "seed": ctx.seed,
                              "prune_lr": ctx.prune_lr, "freeze_bn": ctx.freeze_bn},
        versions=versions)
    rows = earlier_rows(ctx, out, log)
    done: list[str] = []

    def publish() -> None:
        report.results = [rows[n] for n in VARIANTS if n in rows]
        report.kept = [n for n in VARIANTS if n in rows and n not in done]
        report.seconds = round(time.perf_counter() - t0, 1)
        report.write(out)

    current: str | None = None
    try:
        for variant in variants:
            current = variant.name
            result = export_variant(ctx, variant, out, versions)
            earlier = rows.get(variant.name)
            if result.status == EXPORT_FAILED and earlier is not None and earlier.file:
                # an earlier good export of this very model is not lost to a failed retry
                log(f"ERROR: {variant.name}: this export failed ({result.reason}); the "
                    f"earlier file {earlier.file} and its row are kept")
            else:
                if result.status == EXPORT_FAILED:  # no file of it may pass for this export
                    _remove_stale(out, ctx.card.family, variant)
                rows[variant.name] = result
                done.append(variant.name)
            current = None
            publish()  # after each variant, so a long export shows progress on disk
    except KeyboardInterrupt:
        if rows:
            publish()
        raise ExportInterrupted(out / "report.json", done, current) from None
    report.created = _now()
    publish()
    return report


def _fmt(x: float | None, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:,.1f}"


def report_markdown(report: ExportReport) -> str:
    """The table: variant, status, size, gzip, sparsity, val AUC, delta, sens, spec, agreement."""
    p, c = report.parent, report.config
    ref = next((r.size_bytes for r in report.results if r.variant == "float32"
                and r.size_bytes), None)
    lines = [
        f"# Export report: {p['run']} ({report.family})",
        "",
        f"Parent: Keras float model, val AUC {_fmt(p['val_auc'], '.4f')} on {p['val_n']} "
        f"images; threshold {_fmt(p['threshold'], '.4f')}, temperature "
        f"{_fmt(p['temperature'], '.3f')} (each variant's own are re-chosen on val); data "
        f"{p['data_fingerprint']}.",
        f"Settings: tolerance {c['tolerance']}, full-integer input type {c['input_type']}, "
        f"output type {c['output_type']} (the input column says each file's), "
        f"calibration images {c['calibration_images']}, sparsity "
        f"{c['sparsity']}, QAT {c['qat_epochs']} epochs at {c['qat_lr']:g}, pruning "
        f"{c['prune_epochs']} epochs at {c['prune_lr']:g}, BatchNorm "
        f"{'frozen' if c['freeze_bn'] else 'trained'} while fine-tuning; "
        f"{report.seconds:.0f} s in all.",
        "",
        "| variant | status | size KiB | x float32 | gzip KiB | sparsity | val AUC | dAUC | "
        "sens | spec | agreement | mean abs dp | input | s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in report.results:
        ratio = f"{r.size_bytes / ref:.2f}" if ref and r.size_bytes else "-"
        inp = r.input["dtype"] if r.input else "-"
        status = r.status if r.status == VALIDATED else f"**{r.status}**"
        lines.append(
            f"| {r.variant} | {status} | {_kib(r.size_bytes)} | {ratio} | {_kib(r.gzip_bytes)} "
            f"| {_fmt(r.sparsity, '.1%')} | {_fmt(r.val_auc, '.4f')} | "
            f"{_fmt(r.delta_auc, '+.4f')} | {_fmt(r.sensitivity, '.3f')} | "
            f"{_fmt(r.specificity, '.3f')} | {_fmt(r.agreement, '.1%')} | "
            f"{_fmt(r.mean_abs_diff, '.4f')} | {inp} | {_fmt(r.seconds, '.0f')} |")
    if report.kept:
        lines += ["", f"Kept from an earlier export into this folder, same trained model (each "
                  f"file's card holds its own settings): {', '.join(report.kept)}."]
    problems = [r for r in report.results if r.reason]
    if problems:
        lines += ["", "Problems:", ""]
        lines += [f"- {r.variant} ({r.status}): {r.reason}" for r in problems]
    lines += [
        "",
        "dAUC: val AUC minus the Keras float parent's, pooled (with several sources each "
        "source's must hold too: a file can fail on one source with a pooled dAUC inside the "
        "tolerance; Problems names it). sens/spec: at the file's own stored "
        "threshold (chosen on val for the target sensitivity). agreement: fraction of val "
        "images where the file and the parent, each at its own threshold, decide the same. "
        "Sparsity: "
        "exact zeros in the file's conv/dense weights. gzip: `gzip -9` of the whole file. "
        f"Files that failed validation are in `{FAILED_DIR}/`, not beside the shipped ones. "
        "Each file carries its model card (`edge-toolkit card FILE`).",
    ]
    return "\n".join(lines)
