"""The model card: everything a model file needs to describe itself.

A card travels with every artefact: as `card.json` beside a Keras model in a run folder, and
inside every `.tflite` file as a ZIP archive appended after the flatbuffer (the flatbuffer
loader ignores trailing bytes; any ZIP reader finds the archive from the end of the file, so
`unzip -p model.tflite edge_toolkit_card.json` shows it). The runtime therefore needs no side
files and no TensorFlow. This module imports only the standard library (numpy and PIL only
when the preprocessing is checked). Every field is checked when a card is read:
`card_sections.card_problems` lists one line per invalid field.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
import zipfile
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_toolkit import __version__
from edge_toolkit.card_sections import (  # noqa: F401  (Validation: re-exported)
    DatasetInfo,
    ExportInfo,
    SplitMetrics,
    Validation,
    card_problems,
    safe_repr,
)

if TYPE_CHECKING:
    from edge_toolkit.preprocess import PreprocessConfig

CARD_SCHEMA = "edge_toolkit.card/1"
CARD_MEMBER = "edge_toolkit_card.json"
# The SHA-256 of the flatbuffer the card describes, beside the card: the ZIP's own CRCs guard
# the card and the gate's arrays, nothing guarded the weights (a bad SD card or copy then
# still gave confident answers). Files written before it have none and are not checked.
CHECKSUM_MEMBER = "model.sha256"
TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier at bytes 4..8


class CardError(ValueError):
    """A model file is missing its card, or the card cannot be read or is invalid.

    `problems` holds one line per invalid field (empty for other failures), so a caller can
    print each on its own line prefixed with the file name.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])

    def lines(self, name: str | Path) -> list[str]:
        """The error as lines naming `name`: one per problem, or the message."""
        return [f"{name}: {p}" for p in self.problems] or [f"{name}: {self}"]


@dataclass
class ModelCard:
    """What a model is, how to feed it and how to read its output.

    `threshold` applies to the calibrated probability of `positive_label` (the model's
    sigmoid output, re-scaled by `temperature` on the logit), so what the runtime reports and
    what it compares to the threshold are on one scale.
    """

    family: str
    input_size: int
    channels: int
    preprocessing: dict[str, Any]
    labels: list[str] = field(default_factory=lambda: ["not fractured", "fractured"])
    positive_label: str = "fractured"
    output: str = "sigmoid"
    threshold: float = 0.5
    thresholds: dict[str, float] = field(default_factory=dict)
    target_sensitivity: float = 0.95
    # set: the threshold clears this specificity and target_sensitivity by the widest margin
    # on every source (metrics.threshold_for_floors); None: exactly the target sensitivity
    min_specificity: float | None = None
    temperature: float = 1.0
    model_config: dict[str, Any] = field(default_factory=dict)
    variant: str = "keras"
    parent: str | None = None
    sparsity: float | None = None
    data_fingerprint: str | None = None
    dataset: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    # Class-activation map: which output is the last feature map and the head's weights
    # (None in models exported before heatmaps existed: they classify without one).
    heatmap: dict[str, Any] | None = None
    # Input gate: quality limits and the out-of-distribution score's parameters and threshold
    # (None: the model carries no gate of its own).
    gate: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=lambda: {"edge_toolkit": __version__})
    created: str | None = None
    notes: str = "Research and education use only; not a diagnosis."
    schema: str = CARD_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """Strict JSON: an undefined metric (NaN, e.g. AUC on one class) is written null, so
        any JSON reader (`unzip -p ... | jq`) takes the card."""
        return strict_dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Build a card from its JSON object, checking every field (see `card_problems`)."""
        if not isinstance(data, dict):
            raise CardError("model card is not a JSON object")
        schema = data.get("schema", "")
        if not str(schema).startswith("edge_toolkit.card/"):
            raise CardError(f"unknown model card schema {safe_repr(schema)}")
        missing = [n for n in ("family", "input_size", "channels", "preprocessing")
                   if n not in data]
        if missing:
            raise CardError(f"model card lacks {', '.join(missing)}")
        problems = card_problems(data)
        if problems:
            lines = [f"invalid model card: {p}" for p in problems]
            raise CardError(lines[0] if len(lines) == 1 else
                            f"invalid model card ({len(lines)} problems): "
                            + "; ".join(problems), lines)
        known = {f.name for f in fields(cls)}
        card = cls(**{k: v for k, v in data.items() if k in known})
        card.metrics = undefined_as_nan(card.metrics)
        return card

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CardError(f"model card is not valid JSON ({exc})") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        return cls.from_json(Path(path).read_text())

    # Typed views of the loose sections: validated when the card is read, defaults stated once.

    @property
    def preprocess_config(self) -> PreprocessConfig:
        from edge_toolkit.preprocess import PreprocessConfig

        return PreprocessConfig.from_dict(self.preprocessing)

    @property
    def dataset_info(self) -> DatasetInfo:
        return DatasetInfo.from_dict(self.dataset)

    @property
    def export_info(self) -> ExportInfo:
        return ExportInfo.from_dict(self.export)

    def split_metrics(self, split: str) -> SplitMetrics | None:
        """The metrics of one split (None when the card has none for it)."""
        found = self.metrics.get(split)
        return SplitMetrics.from_dict(found) if isinstance(found, dict) else None

    @property
    def positive_index(self) -> int:
        return self.labels.index(self.positive_label)

    @property
    def negative_label(self) -> str:
        return next(lb for lb in self.labels if lb != self.positive_label)


def jsonable(obj: Any) -> Any:
    """numpy scalars and paths in metrics must not break JSON writing."""
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def strict_json(obj: Any) -> Any:
    """`obj` with every NaN or infinity (Python or numpy) as None, numbers kept exact:
    `json.dumps` would write a bare `NaN`, which strict JSON readers refuse."""
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    if not isinstance(obj, str | bytes | bool | int | float | None) and hasattr(obj, "item"):
        obj = obj.item()  # a numpy scalar
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def strict_dumps(obj: Any, **kwargs: Any) -> str:
    """`json.dumps` of `strict_json(obj)` (numpy arrays and paths as `jsonable` has them);
    ValueError rather than a bare NaN if anything non-finite got through."""
    return json.dumps(strict_json(obj), allow_nan=False,
                      default=lambda o: strict_json(jsonable(o)), **kwargs)


def undefined_as_nan(obj: Any) -> Any:
    """A card's metrics as read back: the null that `to_json` wrote for an undefined number
    is NaN again, as the code that made the metrics had it."""
    if isinstance(obj, dict):
        return {k: undefined_as_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [undefined_as_nan(v) for v in obj]
    return math.nan if obj is None else obj


def check_flatbuffer(data: bytes) -> None:
    """Cheap structural checks that name the problem before the interpreter does."""
    if not data:
        raise CardError("empty file (0 bytes), not a TFLite model")
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise CardError("not a TFLite model (no TFL3 flatbuffer identifier at bytes 4-8: "
                        "wrong file, or its start is damaged)")
    root = int.from_bytes(data[:4], "little")
    if root + 4 > len(data):
        raise CardError(f"TFLite flatbuffer is truncated: its root table is at byte {root}, "
                        f"the file has {len(data)} bytes")


# What zipfile raises on a damaged archive besides BadZipFile: a flipped byte can name an
# unknown compression method (NotImplementedError), set the encryption flag (RuntimeError),
# break the deflate stream (zlib.error), cut a member short (EOFError) or make a header
# unparsable (struct.error, ValueError incl. UnicodeDecodeError, LookupError, OverflowError).
ARCHIVE_ERRORS = (zipfile.BadZipFile, NotImplementedError, RuntimeError, zlib.error, EOFError,
                  ValueError, struct.error, LookupError, OverflowError, OSError)


def _why(exc: BaseException) -> str:
    """A zipfile failure's message on one line (its class when it has none)."""
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def split_tflite(data: bytes) -> tuple[bytes, ModelCard | None]:
    """Split a file's bytes into the bare flatbuffer and its card (None when it has none).
    CardError for a card archive cut short, a damaged card, or weights whose checksum no
    longer matches the one stored beside the card."""
    check_flatbuffer(data)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            if CARD_MEMBER not in infos:
                return data, None
            # zipfile shifts header offsets by the bytes prepended to the archive, so the
            # earliest member header marks where the flatbuffer ends.
            archive_start = min(i.header_offset for i in infos.values())
            card = ModelCard.from_json(zf.read(CARD_MEMBER).decode("utf-8"))
            expected = (zf.read(CHECKSUM_MEMBER).decode("ascii").strip()
                        if CHECKSUM_MEMBER in infos else None)
    except zipfile.BadZipFile:
        if CARD_MEMBER.encode() in data:  # a card archive that no longer opens: cut short
            raise CardError("the embedded model card is damaged (file truncated?)") from None
        return data, None
    except CardError:
        raise
    except ARCHIVE_ERRORS as exc:
        raise CardError(f"the embedded model card is damaged ({_why(exc)})") from None
    bare = data[:archive_start] if archive_start > 0 else data
    check_flatbuffer(bare)
    if expected is not None and model_checksum(bare) != expected:
        raise CardError("the model's weights are damaged: their SHA-256 differs from the one "
                        "stored with its card (copy the file again)")
    return bare, card


def model_checksum(bare: bytes) -> str:
    """The SHA-256 (hex) of a bare flatbuffer, as stored beside its card."""
    return hashlib.sha256(bare).hexdigest()


def embed_card(model: bytes, card: ModelCard, members: dict[str, bytes] | None = None) -> bytes:
    """Return `model` (a bare or carded flatbuffer) with `card` appended as a ZIP archive.

    Other members of an existing archive (the input gate's arrays) are kept unless `members`
    replaces them; `members` adds files next to the card. The flatbuffer's SHA-256 is
    stored beside the card, and `split_tflite` refuses a file whose weights no longer match.
    """
    bare, _ = split_tflite(model)
    extra = {name: data for name in _member_names(model)
             if name not in (CARD_MEMBER, CHECKSUM_MEMBER)
             and (data := read_member(model, name)) is not None}
    extra.update(members or {})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(CARD_MEMBER, card.to_json())
        zf.writestr(CHECKSUM_MEMBER, model_checksum(bare) + "\n")
        for name, data in sorted(extra.items()):
            zf.writestr(name, data)
    return bare + buf.getvalue()


def _member_names(data: bytes) -> list[str]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return zf.namelist()
    except ARCHIVE_ERRORS:
        return []


def read_member(data: bytes, name: str) -> bytes | None:
    """One file of the archive appended to a model (`data`: the whole file), or None."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return zf.read(name) if name in zf.namelist() else None
    except ARCHIVE_ERRORS:
        return None


def read_card(path: str | Path) -> ModelCard | None:
    """Read the card of a `.tflite` file; None if the file has no card."""
    from edge_toolkit.files import read_regular

    return split_tflite(read_regular(path))[1]


def load_card(path: str | Path) -> ModelCard:
    """The card of a `.tflite` file; CardError (no card, damaged, invalid) or OSError (cannot
    read it, or not a regular file) otherwise."""
    found = read_card(path)
    if found is None:
        raise CardError("no edge_toolkit model card in this file")
    return found
